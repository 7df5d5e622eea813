"""The inheritance report: report.json (everything, with scores), report.md (for people) and
report.png (layer and head scores, kept ones marked)."""
from __future__ import annotations

import json
from pathlib import Path

from engine.run_record import write_json_atomic


def _fmt(x, nd=4):
    return "-" if x is None else f"{x:.{nd}f}"


def _ranges(ids: list[int]) -> str:
    """[0,1,2,5,7,8] -> '0-2,5,7-8' (compact lists of kept neurons / channels)."""
    out, start = [], None
    for k, i in enumerate(ids):
        if start is None:
            start = i
        if k + 1 == len(ids) or ids[k + 1] != i + 1:
            out.append(f"{start}" if start == i else f"{start}-{i}")
            start = None
    return ",".join(out)


def markdown(r: dict) -> str:
    p, c = r["parent"], r["child"]
    lines = [f"# Parameter inheritance: {r['depth']['method']} depth, {r['width']['metric']} width", "",
             f"parent: `{p['path']}` ({p['kind']}), {p['params'] / 1e6:.3f}M params: {p['config']['n_layer']} layers, "
             f"hidden {p['config']['n_embd']}, {p['config']['n_head']} heads / {p['config']['n_kv_head']} kv, "
             f"ffn {p['config']['ffn_hidden']}, vocab {p['config']['vocab_size']}",
             f"child: {c['params'] / 1e6:.3f}M params ({c['params'] / p['params']:.1%} of the parent): "
             f"{c['config']['n_layer']} layers, hidden {c['config']['n_embd']}, {c['config']['n_head']} heads / "
             f"{c['config']['n_kv_head']} kv, head_dim {c['config']['head_dim']}, ffn {c['config']['ffn_hidden']}, "
             f"vocab {c['config']['vocab_size']}{', tied' if c['config']['tie_embeddings'] else ''}", ""]
    ev = r.get("heldout") or {}
    if ev:
        lines += ["## Held-out loss (nats/token), before any training", "",
                  "| model | loss | bits/byte |", "| --- | --- | --- |"]
        for name in ("parent", "inherited", "random_init"):
            if ev.get(name):
                lines.append(f"| {name.replace('_', ' ')} | {_fmt(ev[name]['loss'])} | {_fmt(ev[name].get('bpb'))} |")
        if r.get("heldout_scored"):
            lines += ["", f"Over the first {r['heldout_scored']['tokens']:,} held-out target tokens "
                      f"({r['heldout_scored']['bytes']:,} bytes of text); bits/byte divides by those bytes."]
        lines.append("")
    d = r["depth"]
    lines += ["## Layers", "", "| parent layer | score | kept as |", "| --- | --- | --- |"]
    scores = d.get("scores")
    for i in range(p["config"]["n_layer"]):
        kept = d["kept"].index(i) if i in d["kept"] else None
        lines.append(f"| {i} | {_fmt(scores[i]) if scores else '-'} | {'' if kept is None else f'child {kept}'} |")
    lines += ["", "## Width per kept layer", "",
              "| child layer | parent layer | kv groups kept | query heads kept (score) | neurons kept | "
              "neuron score kept / dropped (mean) |", "| --- | --- | --- | --- | --- | --- |"]
    for L in r["width"]["layers"]:
        heads = ", ".join(f"{h} ({s:.3g})" for h, s in zip(L["heads"], L["head_scores"]))
        lines.append(f"| {L['child']} | {L['parent']} | {L['groups']} | {heads} | {len(L['neurons'])} | "
                     f"{_fmt(L['neuron_score_kept_mean'], 3)} / {_fmt(L['neuron_score_dropped_mean'], 3)} |")
    ch = r["width"]["channels"]
    lines += ["", f"hidden channels kept ({len(ch['kept'])} of {p['config']['n_embd']}): {_ranges(ch['kept'])}",
              f"channel score kept / dropped (mean): {_fmt(ch['score_kept_mean'], 3)} / "
              f"{_fmt(ch['score_dropped_mean'], 3)}"]
    if r.get("vocab"):
        lines += ["", f"vocabulary: {r['vocab']['kept']} parent rows kept through `{r['vocab']['id_map']}`"]
    if r["width"].get("learnable"):
        fin = r["width"]["learnable"]["final"]
        lines += ["", "learnable gates, final expected sparsity vs target: " + ", ".join(
            f"{k} {fin.get(k, 0):.3f}/{v:.3f}" for k, v in r["width"]["learnable"]["targets"].items())]
    lines += ["", f"checkpoint: `{r['checkpoint']}`", f"time: {r['seconds']:.1f}s", ""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> Path:
    from engine.plots import plt, save  # matplotlib: loaded only when a plot is drawn
    import numpy as np

    d, layers = r["depth"], r["width"]["layers"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    n = r["parent"]["config"]["n_layer"]
    scores = d.get("scores") or [1.0] * n
    colors = ["tab:blue" if i in d["kept"] else "lightgray" for i in range(n)]
    axes[0].bar(range(n), scores, color=colors)
    axes[0].set_xticks(range(n))
    axes[0].set_title(f"layers ({d['method']}; blue = kept)")
    axes[0].set_xlabel("parent layer")
    axes[0].set_ylabel("score" if d.get("scores") else "(positional)")
    H = r["parent"]["config"]["n_head"]
    grid = np.array([L["all_head_scores"] for L in layers])
    im = axes[1].imshow(grid, aspect="auto", cmap="viridis")
    for row, L in enumerate(layers):
        for h in L["heads"]:
            axes[1].scatter(h, row, marker="s", s=60, facecolors="none", edgecolors="red")
    axes[1].set_xticks(range(H))
    axes[1].set_yticks(range(len(layers)), [f"{L['parent']}" for L in layers])
    axes[1].set_xlabel("query head")
    axes[1].set_ylabel("parent layer")
    axes[1].set_title(f"head scores ({r['width']['metric']}; red = kept)")
    fig.colorbar(im, ax=axes[1])
    return save(fig, path)


def write(r: dict, out_dir: Path) -> dict[str, Path]:
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md", "png": out_dir / "report.png"}
    write_json_atomic(paths["json"], r)
    paths["md"].write_text(markdown(r))
    plot(r, paths["png"])
    return paths


def load(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "report.json").read_text())
