"""The ablation's outputs: per-arm aggregates over seeds, the table (printed and markdown), the JSON of
every number, and a bar chart in the style of the paper's improvement figure (held-out bits per byte
per cumulative arm, with the change from the previous arm written over each bar)."""
from __future__ import annotations

import statistics
from pathlib import Path

from engine.run_record import write_json_atomic

KEYS = ("steps", "tokens", "bytes", "flops", "extra_flops", "val_loss", "val_bpb", "seconds")


def aggregate(rows: list[dict]) -> dict:
    """Mean over seeds of each number, the per-seed rows, and the seed spread (max - min) of the metrics."""
    out = {k: statistics.mean(r[k] for r in rows) for k in KEYS if all(k in r for r in rows)}
    for k in ("val_bpb", "val_loss"):
        vals = [r[k] for r in rows]
        out[f"{k}_spread"] = max(vals) - min(vals)
        out[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    out["seeds"] = len(rows)
    out["runs"] = rows
    return out


def _m(x: float) -> str:
    return f"{x / 1e6:.3f}M"


def table(study: dict) -> str:
    """One markdown table: the equal-compute result, the equal-bytes result beside it."""
    head = ("| arm | params total / body / emb+head | steps | tokens | bytes seen | train FLOPs | other FLOPs | "
            "held-out bpb | Δ vs previous | loss (nats/token) | seed spread (bpb) | equal-bytes bpb | equal-bytes steps |")
    lines = [head, "|" + "---|" * 13]
    prev = None
    for a in study["arms"]:
        c, b = a["compute"], a["bytes"]
        other = c.get("extra_flops", 0.0)
        if a["inherits"]:
            other_s = f"parent {(study['parent']['flops'] + study['parent']['inherit_flops']) / 1e12:.2f}T"
            if other:
                other_s += f" + scoring {other / 1e12:.3f}T"
        else:
            other_s = "-"
        delta = "" if prev is None else f"{c['val_bpb'] - prev:+.4f}"
        prev = c["val_bpb"]
        eb = f"{b['val_bpb']:.4f} (n={b['seeds']}) | {b['steps']:.0f}" if b else "- | -"
        lines.append(
            f"| {a['label']} | {_m(a['params_total'])} / {_m(a['params_body'])} / {_m(a['params_embedding'])} "
            f"({a['params_vs_arm1']:+.1%}) | {c['steps']:.0f} | {c['tokens']:,.0f} | {c['bytes'] / 1e6:.3f} MB | "
            f"{c['flops'] / 1e12:.3f}T | {other_s} | {c['val_bpb']:.4f} | {delta} | {c['val_loss']:.4f} | "
            f"{c['val_bpb_spread']:.4f} (n={c['seeds']}) | {eb} |")
    return "\n".join(lines)


def headline(study: dict) -> str:
    p = study["parent"]
    return (f"budget {study['budget_flops'] / 1e12:.3f} TFLOP of training per arm (spread across arms "
            f"{study['flops_spread']:.2%}); equal-bytes view at {study['target_bytes'] / 1e6:.3f} MB of training text; "
            f"parent {p['params'] / 1e6:.2f}M params, {p['steps']} steps, {p['flops'] / 1e12:.2f} TFLOP, held-out "
            f"{p['val_bpb']:.4f} bpb; inherited child at step 0 {p['child_step0_bpb']:.4f} bpb vs random init "
            f"{p['random_init_step0_bpb']:.4f}")


def plot(study: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = study["arms"]
    labels = [a["label"].replace(" + ", "\n+ ", 1) for a in arms]
    views = [("compute", "equal training FLOPs", "tab:blue")]
    if all(a["bytes"] for a in arms):
        views.append(("bytes", "equal training bytes", "tab:orange"))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(views)
    lo, hi = [], []
    for j, (view, name, color) in enumerate(views):
        vals = [a[view]["val_bpb"] for a in arms]
        runs = [[r["val_bpb"] for r in a[view]["runs"]] for a in arms]
        err = [[v - min(r) for v, r in zip(vals, runs)], [max(r) - v for v, r in zip(vals, runs)]]
        xs = [i + (j - (len(views) - 1) / 2) * width for i in range(len(arms))]
        ax.bar(xs, vals, width=width * 0.95, color=color, label=name, yerr=err, capsize=3)
        for i, (x, v) in enumerate(zip(xs, vals)):
            text = f"{v:.3f}" if i == 0 else f"{v:.3f}\n{v - vals[i - 1]:+.3f}"
            ax.annotate(text, (x, v + err[1][i]), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                        textcoords="offset points")
        lo.append(min(vals) - max(max(err[0]), 0.0))
        hi.append(max(vals) + max(err[1]))
    span = max(hi) - min(lo)
    ax.set_ylim(min(lo) - 0.6 * span - 0.02, max(hi) + 0.35 * span + 0.02)
    ax.set_xticks(range(len(arms)), labels, fontsize=8)
    ax.set_ylabel("held-out bits per byte (lower is better)")
    seeds = arms[0]["compute"]["seeds"]
    ax.set_title(f"Cumulative ablation on the sample corpus ({study['spec']['scale']} scale, equal parameters, "
                 f"{seeds} seed(s), bars: mean, whiskers: min-max)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(study: dict, out: Path) -> dict[str, Path]:
    paths = {"json": out / "ablation.json", "md": out / "ablation.md", "png": out / "ablation.png"}
    write_json_atomic(paths["json"], study)
    paths["md"].write_text(f"# Ablation ({study['spec']['scale']})\n\n{headline(study)}\n\n{table(study)}\n\n"
                           "![ablation](ablation.png)\n")
    plot(study, paths["png"])
    return paths
