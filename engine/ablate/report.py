"""The ablation's outputs: per-arm aggregates over seeds at every budget, the verdict on each formula
(a gain or a loss counts only beyond the seed spread), the regime guards, the table (markdown), the JSON
of every number, a bar chart of the full budget in the style of the paper's figure, and the budget curve."""
from __future__ import annotations

import statistics
from pathlib import Path

from engine.arch import count_params, flops_per_token
from engine.run_record import write_json_atomic

KEYS = ("steps", "tokens", "bytes", "flops", "extra_flops", "val_loss", "val_bpb", "tokens_per_param", "epochs",
        "seconds")
# each claim: (the arm that adds it, the arm it is read against)
CLAIMS = (("arm2", "arm1", "compact tokenizer"), ("arm3", "arm2", "deeper-narrower"),
          ("arm4", "arm3", "parameter inheritance"), ("arm5", "arm4", "a second round (hard draws)"),
          ("arm5", "control", "hard draws rather than uniform ones"))
BELOW_FLOOR = 0.05  # bpb: "clearly below" the bigram floor


def aggregate(rows: list[dict]) -> dict:
    """Mean over seeds of each number, the per-seed rows, the spread (max - min) and sample std of the metrics."""
    out = {k: statistics.mean(r[k] for r in rows) for k in KEYS if all(k in r for r in rows)}
    for k in ("val_bpb", "val_loss"):
        vals = [r[k] for r in rows]
        out[f"{k}_min"], out[f"{k}_max"] = min(vals), max(vals)
        out[f"{k}_spread"] = max(vals) - min(vals)
        out[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    out["seeds"] = len(rows)
    out["runs"] = [{k: v for k, v in r.items() if k != "arm"} for r in rows]
    return out


def compare(new: dict, old: dict) -> dict:
    """new - old in held-out bpb: the mean, the per-seed paired differences, and whether the seed ranges are
    apart (a gain: new's worst seed beats old's best; a loss: the other way round; else within the spread)."""
    by_seed = {r["seed"]: r["val_bpb"] for r in old["runs"]}
    paired = [r["val_bpb"] - by_seed[r["seed"]] for r in new["runs"] if r["seed"] in by_seed]
    if new["val_bpb_max"] < old["val_bpb_min"]:
        verdict = "gain"
    elif new["val_bpb_min"] > old["val_bpb_max"]:
        verdict = "loss"
    else:
        verdict = "within the seed spread"
    return {"delta": new["val_bpb"] - old["val_bpb"], "paired": paired,
            "paired_std": statistics.stdev(paired) if len(paired) > 1 else 0.0, "verdict": verdict}


def build(spec, ctx: dict, rows: list[dict], diffs: dict, checks: list[dict], seconds: float) -> dict:
    from engine.ablate.run import ARMS

    sc, shapes, data = spec.shape, ctx["shapes"], ctx["data"]
    arms = []
    for a in ARMS:
        cfg, p = shapes[a.shape], count_params(shapes[a.shape])
        curve = {b: aggregate([r for r in rows if r["arm"] == a.key and r["budget"] == b]) for b in spec.budgets}
        arms.append({"key": a.key, "label": a.label, "tokenizer": a.tokenizer, "vocab": cfg.vocab_size,
                     "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "ffn_hidden": cfg.ffn_hidden,
                     "params_total": p.total, "params_body": p.body, "params_embedding": p.embedding,
                     "embedding_share": p.embedding_share, "params_vs_arm1": diffs[a.shape],
                     "flops_per_token": flops_per_token(cfg, sc.seq_len), "inherits": a.inherit, "round2": a.round2,
                     "full": curve[1.0], "curve": {f"{b:g}": c for b, c in curve.items()}})
    by_key = {a["key"]: a for a in arms}
    claims = []
    for new, old, what in CLAIMS:
        at = {f"{b:g}": compare(by_key[new]["curve"][f"{b:g}"], by_key[old]["curve"][f"{b:g}"]) for b in spec.budgets}
        claims.append({"claim": what, "arm": new, "against": old, "full": at["1"], "curve": at})
    parent = ctx["inherit"]["parent"]
    study = {"spec": spec.model_dump(mode="json"), "scale": sc.__dict__, "tokens_per_step": sc.batch_size * sc.seq_len,
             "tokenizers": {"large": ctx["tok"]["large"], "compact": ctx["tok"]["compact"],
                            "compaction": ctx["tok"]["summary"]},
             "data": data, "arms": arms, "claims": claims,
             "parent": {**{k: parent[k] for k in ("params", "steps", "tokens", "flops", "val_bpb", "val_loss", "dir",
                                                  "config")},
                        "inherit_flops": ctx["inherit"]["inherit_flops"], "kept_layers": ctx["inherit"]["layers"],
                        "child_step0_bpb": ctx["inherit"]["child_step0_bpb"],
                        "random_init_step0_bpb": ctx["inherit"]["random_init_step0_bpb"]},
             "independent_check": checks, "seconds": seconds}
    study["verdict"] = verdict_lines(study)
    return study


def verdict_lines(study: dict) -> list[str]:
    """The report's first lines: what could make the study unable to answer, then each claim's outcome."""
    arms = {a["key"]: a for a in study["arms"]}
    arm1, parent, large = arms["arm1"]["full"], study["parent"], study["data"]["large"]
    lines = []
    if not parent["val_bpb"] < arm1["val_bpb_min"]:
        lines.append(f"WARNING: the parent ({parent['val_bpb']:.4f} bpb) is not clearly better than arm 1 "
                     f"({arm1['val_bpb']:.4f}, best seed {arm1['val_bpb_min']:.4f}): inheritance cannot show its "
                     "value from it")
    if not arm1["val_bpb_max"] < large["bigram_bpb"] - BELOW_FLOOR:
        lines.append(f"WARNING: arm 1 ends at {arm1['val_bpb']:.4f} bpb, not clearly below its tokenizer's bigram "
                     f"floor {large['bigram_bpb']:.4f}: the models may still be learning n-gram statistics")
    if not lines:
        lines.append(f"regime: arm 1 ends {large['bigram_bpb'] - arm1['val_bpb']:.3f} bpb below its bigram floor "
                     f"({large['bigram_bpb']:.4f}); the parent ({parent['val_bpb']:.4f}) beats every seed of arm 1 "
                     f"({arm1['val_bpb_min']:.4f}-{arm1['val_bpb_max']:.4f})")
    for c in study["claims"]:
        f = c["full"]
        lines.append(f"{c['claim']}: {f['verdict']} ({c['arm']} - {c['against']} = {f['delta']:+.4f} bpb at the full "
                     f"budget, paired over seeds sd {f['paired_std']:.4f})")
    return lines


def _m(x: float) -> str:
    return f"{x / 1e6:.3f}M"


def table(study: dict) -> str:
    """The full budget: one row per arm with its guards."""
    head = ("| arm | layers x width | params total / emb+head (share) | steps | training tokens | tokens/param | "
            "epochs | bytes seen | train FLOPs | other FLOPs | held-out bpb (mean ± sd) | min-max | Δ vs previous |")
    lines = [head, "|" + "---|" * 13]
    prev = None
    parent = study["parent"]
    for a in study["arms"]:
        c = a["full"]
        other = []
        if a["inherits"]:
            other.append(f"parent {(parent['flops'] + parent['inherit_flops']) / 1e12:.2f}T")
        if c.get("extra_flops"):
            other.append(f"scoring {c['extra_flops'] / 1e12:.3f}T")
        tokens = f"{c['tokens']:,.0f}" + (" (after arm 4's)" if a["round2"] else "")
        delta = "" if prev is None else f"{c['val_bpb'] - prev:+.4f}"
        if a["key"] != "control":
            prev = c["val_bpb"]
        else:
            delta = f"{c['val_bpb'] - study['arms'][4]['full']['val_bpb']:+.4f} vs arm 5"
        lines.append(
            f"| {a['label']} | {a['n_layer']} x {a['n_embd']} | {_m(a['params_total'])} / {_m(a['params_embedding'])} "
            f"({a['embedding_share']:.0%}) | {c['steps']:.0f} | {tokens} | {c['tokens_per_param']:.2f} | "
            f"{c['epochs']:.2f} | {c['bytes'] / 1e6:.2f} MB | {c['flops'] / 1e12:.3f}T | {' + '.join(other) or '-'} | "
            f"{c['val_bpb']:.4f} ± {c['val_bpb_std']:.4f} (n={c['seeds']}) | {c['val_bpb_min']:.4f}-"
            f"{c['val_bpb_max']:.4f} | {delta} |")
    return "\n".join(lines)


def curve_table(study: dict) -> str:
    budgets = list(study["arms"][0]["curve"])
    lines = ["| arm | " + " | ".join(f"budget {b} (n)" for b in budgets) + " |", "|" + "---|" * (len(budgets) + 1)]
    for a in study["arms"]:
        cells = [f"{a['curve'][b]['val_bpb']:.4f} ({a['curve'][b]['seeds']})" for b in budgets]
        lines.append(f"| {a['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def guards(study: dict) -> str:
    rows = ["| tokenizer | pieces | bytes/token | training tokens | held-out bytes | unigram floor | bigram floor |",
            "|---|---|---|---|---|---|---|"]
    for name, d in study["data"].items():
        rows.append(f"| {name} | {d['vocab']:,} | {d['train_bytes_per_token']:.3f} | {d['train_tokens']:,} | "
                    f"{d['val_bytes']:,} | {d['unigram_bpb']:.4f} | {d['bigram_bpb']:.4f} |")
    return "\n".join(rows)


def plot(study: dict, path: Path) -> Path:
    from engine.plots import plt, save  # matplotlib: loaded only when a plot is drawn

    arms = study["arms"]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    vals = [a["full"]["val_bpb"] for a in arms]
    err = [[v - a["full"]["val_bpb_min"] for v, a in zip(vals, arms)],
           [a["full"]["val_bpb_max"] - v for v, a in zip(vals, arms)]]
    colors = ["tab:blue"] * 5 + ["tab:gray"]
    ax.bar(range(len(arms)), vals, color=colors, yerr=err, capsize=3)
    for i, v in enumerate(vals):
        ref = vals[4] if arms[i]["key"] == "control" else (vals[i - 1] if i else None)
        text = f"{v:.3f}" if ref is None else f"{v:.3f}\n{v - ref:+.3f}"
        ax.annotate(text, (i, v + err[1][i]), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                    textcoords="offset points")
    for name, style in (("large", "--"), ("compact", ":")):
        ax.axhline(study["data"][name]["bigram_bpb"], color="tab:red", ls=style, lw=1,
                   label=f"bigram floor, {name} tokenizer")
    lo, hi = min(vals) - max(err[0]), max(max(vals) + max(err[1]), study["data"]["large"]["bigram_bpb"])
    span = hi - lo
    ax.set_ylim(lo - 0.5 * span - 0.02, hi + 0.3 * span + 0.02)
    ax.set_xticks(range(len(arms)), [a["label"].replace(" + ", "\n+ ", 1).replace(": ", ":\n") for a in arms],
                  fontsize=8)
    ax.set_ylabel("held-out bits per byte (lower is better)")
    ax.set_title(f"Cumulative ablation, full budget ({study['spec']['scale']} scale, equal parameters and training "
                 f"tokens, {arms[0]['full']['seeds']} seeds; bars: mean, whiskers: min-max)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper right")
    return save(fig, path)


def plot_curve(study: dict, path: Path) -> Path:
    from engine.plots import plt, save  # matplotlib: loaded only when a plot is drawn

    fig, ax = plt.subplots(figsize=(8, 5))
    for a in study["arms"]:
        pts = sorted(a["curve"].values(), key=lambda c: c["tokens"])
        xs = [c["runs"][0].get("total_tokens", c["tokens"]) for c in pts]
        ys = [c["val_bpb"] for c in pts]
        err = [[y - c["val_bpb_min"] for y, c in zip(ys, pts)], [c["val_bpb_max"] - y for y, c in zip(ys, pts)]]
        ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=2, label=a["label"],
                    ls="--" if a["key"] == "control" else "-")
    for name, style in (("large", "--"), ("compact", ":")):
        ax.axhline(study["data"][name]["bigram_bpb"], color="tab:red", ls=style, lw=1,
                   label=f"bigram floor, {name} tokenizer")
    ax.set_xscale("log")
    ax.set_xlabel("training tokens of the arm (arm 5 and the control: arm 4's plus round 2's)")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title("Budget curve: every arm at each budget (mean, whiskers min-max over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)


def markdown(study: dict) -> str:
    p = study["parent"]
    checks = "\n".join(f"- {c['arm']}: engine {c['engine_fp32_bpb']:.6f}, transformers {c['transformers_bpb']:.6f} "
                       f"({c['difference']:+.2e}); the run's own figure {c['engine_bpb']:.6f} "
                       f"({c['engine_bpb'] - c['engine_fp32_bpb']:+.2e} from fp32)"
                       for c in study["independent_check"]) or "- (exports off)"
    return (f"# Ablation ({study['spec']['scale']})\n\n" + "\n".join(f"- {v}" for v in study["verdict"]) +
            f"\n\nParent: {p['params']:,} params, {p['steps']} steps, {p['tokens']:,} tokens, held-out "
            f"{p['val_bpb']:.4f} bpb; the inherited child at step 0 {p['child_step0_bpb']:.4f} bpb (random init "
            f"{p['random_init_step0_bpb']:.4f}).\n\n## Full budget\n\n{table(study)}\n\n![ablation](ablation.png)\n\n"
            f"## Budget curve (held-out bpb, mean over the seeds)\n\n{curve_table(study)}\n\n"
            f"![budget curve](budget_curve.png)\n\n## Regime guards\n\n{guards(study)}\n\n"
            f"## Held-out bpb recomputed by transformers on the exports (seed 0, fp32)\n\n{checks}\n")


def write(study: dict, out: Path) -> dict[str, Path]:
    paths = {"json": out / "ablation.json", "md": out / "ablation.md", "png": out / "ablation.png",
             "curve": out / "budget_curve.png"}
    write_json_atomic(paths["json"], study)
    paths["md"].write_text(markdown(study))
    plot(study, paths["png"])
    plot_curve(study, paths["curve"])
    return paths
