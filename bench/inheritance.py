"""Parameter-inheritance study on the bundled sample corpus (byte tokenizer).

Trains a parent (8 layers, 4 query heads over 2 key/value groups), inherits children of about a
quarter of its size with every width metric (depth `ends`; `learnable` also without folding its soft
mask values into the weights) and with `uniform`, `block_influence` and
`loss_rise` depth (width `activation`), trains each child and a random init of the same shape for the
same steps, and prints: held-out loss right after inheritance and after training, the steps each
inherited child needs to reach the random child's final loss, and the cost in both views: the
child's training tokens only, and parent + inheritance + child FLOPs. Writes a plot and JSON.

Usage: python bench/inheritance.py [--parent-steps 1500] [--child-steps 300] [--seeds 3] [--out DIR]
       [--plot docs/img/inheritance.png] [--quick] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine import checkpoint as ckpt  # noqa: E402
from engine.arch import count_params, flops_per_token  # noqa: E402
from engine.config import ModelConfig  # noqa: E402
from engine.inherit.run import inherit  # noqa: E402
from engine.inherit.spec import InheritSpec  # noqa: E402
from engine.run_record import read_metrics  # noqa: E402
from engine.spec import TrainSpec  # noqa: E402
from engine.train import train  # noqa: E402

SAMPLE = str(REPO / "data" / "sample")
PARENT = dict(n_layer=8, n_embd=64, n_head=4, n_kv_head=2, ffn_hidden=192, block_size=64)
CHILD = dict(n_layer=4, n_embd=48, n_head=2, n_kv_head=2, ffn_hidden=96)
SEQ, BATCH, EVAL_BATCHES = 64, 16, 4
VARIANTS = [("ends", w) for w in ("random", "l1", "l2", "taylor", "activation", "learnable", "learnable-nofold")] + \
           [(d, "activation") for d in ("uniform", "block_influence", "loss_rise")]
CALIB_BATCHES, GATE_STEPS = 8, 300


def train_spec(steps: int, seed: int, eval_every: int, init: str | None = None) -> TrainSpec:
    return TrainSpec.model_validate(dict(
        model={"preset": "tiny", "overrides": PARENT}, data={"sources": [SAMPLE]}, init={"checkpoint": init},
        steps=steps, batch_size=BATCH, micro_batch=BATCH, seq_len=SEQ, seed=seed, eval_every=eval_every,
        eval_batches=EVAL_BATCHES, checkpoint_every=steps, log_every=max(steps // 4, 1), keep_checkpoints=1,
        precision="fp32", backend="cpu", optim={"lr": 3e-3, "warmup_frac": 0.05}))


def val_curve(run_dir: Path) -> list[tuple[int, float]]:
    last = {r["step"]: r["loss"] for r in read_metrics(run_dir) if r.get("split") == "val"}
    return sorted(last.items())


def step0_loss(checkpoint: Path, spec: TrainSpec) -> float:
    """Held-out loss of a checkpoint on exactly the windows the trainer evaluates."""
    from engine.backend import resolve
    from engine.data import TokenData, prepare_data
    from engine.evaluate import load_model
    from engine.train import evaluate

    model, _ = load_model(checkpoint)
    root, _ = prepare_data(spec.data, log=lambda *a: None)
    val = TokenData.open(root, "val", SEQ)
    return evaluate(model, val, EVAL_BATCHES, BATCH, resolve("cpu", "fp32"))["loss"]


def steps_to_reach(curve, target: float) -> int | None:
    return next((s for s, loss in curve if loss <= target), None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--parent-steps", type=int, default=1500)
    ap.add_argument("--child-steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "inheritance"))
    ap.add_argument("--plot", default=str(REPO / "docs" / "img" / "inheritance.png"))
    ap.add_argument("--quick", action="store_true", help="a smoke run: 30 parent / 20 child steps")
    ap.add_argument("--from-results", action="store_true", help="only re-print the table / re-plot from --out")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: tiny ops on a shared "
                                                           "machine run ~10x faster than with spinning threads)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.parent_steps, args.child_steps = 30, 20
    out = Path(args.out)
    if args.from_results:
        summarize(out, args.child_steps, Path(args.plot))
        return
    out.mkdir(parents=True, exist_ok=True)
    quiet = lambda *a, **k: None  # noqa: E731
    t_start = time.perf_counter()
    eval_every = max(args.child_steps // 20, 1)
    tokens_per_step = BATCH * SEQ

    print(f"parent: training {args.parent_steps} steps ...", flush=True)
    t = time.perf_counter()
    parent_res = train(train_spec(args.parent_steps, 0, max(args.parent_steps // 4, 1)), out / "parent",
                       show_progress=False, log=quiet)
    parent_ckpt = Path(parent_res["summary"]["checkpoint"])
    pcfg = ModelConfig.from_dict(ckpt.verify(parent_ckpt)["model_config"])
    print(f"parent: {count_params(pcfg).total / 1e6:.3f}M params, val loss {parent_res['summary']['val_loss']:.4f} "
          f"({time.perf_counter() - t:.0f}s)", flush=True)

    children = {}
    for depth, width in VARIANTS:
        name = f"{depth}/{width}"
        t = time.perf_counter()
        metric = width.removesuffix("-nofold")  # learnable-nofold: gates rank, soft values not folded in
        spec = InheritSpec(parent=str(parent_ckpt), child=CHILD, depth={"method": depth}, width=metric,
                           calib={"sources": [SAMPLE], "batches": CALIB_BATCHES, "micro_batch": BATCH, "seq_len": SEQ},
                           learnable={"steps": GATE_STEPS, "fold": metric == width}, eval_batches=EVAL_BATCHES,
                           backend="cpu")
        res = inherit(spec, out / "inherit" / name.replace("/", "_"), log=quiet)
        # inheritance cost: forward passes of the parent on calibration tokens (x3 with a backward pass)
        calib_tokens = (GATE_STEPS if metric == "learnable" else CALIB_BATCHES) * tokens_per_step \
            if depth in ("block_influence", "loss_rise") or metric in ("taylor", "activation", "learnable") else 0
        fwd_bwd = 1.0 if metric in ("taylor", "learnable") else 1 / 3
        children[name] = {"checkpoint": res["summary"]["checkpoint"], "layers": res["summary"]["layers"],
                          "inherit_flops": flops_per_token(pcfg, SEQ) * calib_tokens * fwd_bwd,
                          "inherit_s": time.perf_counter() - t}
        print(f"inherit {name}: layers {res['summary']['layers']}, held-out loss {res['summary']['inherited_loss']:.4f} "
              f"(random init {res['summary']['random_init_loss']:.4f}) ({time.perf_counter() - t:.0f}s)", flush=True)
    ccfg = ModelConfig.from_dict(ckpt.verify(children[VARIANTS[0][0] + "/" + VARIANTS[0][1]]["checkpoint"])["model_config"])

    results: dict[str, list[dict]] = {}
    for seed in range(args.seeds):
        torch.manual_seed(1000 + seed)
        from engine.model import GPT
        rand_ckpt = ckpt.save(out / f"random_init_seed{seed}", 0, {"model": GPT(ccfg).state_dict()},
                              {"model_config": ccfg.to_dict(), "tokenizer": "byte"})
        runs = {"random init": rand_ckpt, **{n: Path(c["checkpoint"]) for n, c in children.items()}}
        for name, init in runs.items():
            t = time.perf_counter()
            spec = train_spec(args.child_steps, 1 + seed, eval_every, str(init))
            run_dir = out / f"seed{seed}" / name.replace("/", "_").replace(" ", "_")
            train(spec, run_dir, show_progress=False, log=quiet)
            curve = [(0, step0_loss(init, spec))] + val_curve(run_dir)
            results.setdefault(name, []).append({"curve": curve})
            print(f"seed {seed} train {name}: {curve[0][1]:.4f} -> {curve[-1][1]:.4f} "
                  f"({time.perf_counter() - t:.0f}s)", flush=True)

    (out / "results.json").write_text(json.dumps({"curves": results, "children": children}, indent=1, default=str))
    summarize(out, args.child_steps, Path(args.plot))
    print(f"\ntotal time {time.perf_counter() - t_start:.0f}s")


def summarize(out: Path, child_steps: int, plot_path: Path) -> str:
    """The study table (and plot) from a finished run directory's results.json."""
    saved = json.loads((out / "results.json").read_text())
    results, children = saved["curves"], saved["children"]
    parent = json.loads((out / "parent" / "result.json").read_text())["summary"]
    pcfg = ModelConfig.from_dict(ckpt.verify(parent["checkpoint"])["model_config"])
    ccfg = ModelConfig.from_dict(ckpt.verify(next(iter(children.values()))["checkpoint"])["model_config"])
    tokens_per_step, child_fpt = BATCH * SEQ, flops_per_token(ccfg, SEQ)
    parent_flops = parent["flops"]
    seeds = len(results["random init"])
    rand_final = [r["curve"][-1][1] for r in results["random init"]]
    random_cost = child_steps * tokens_per_step * child_fpt

    def ms(xs):
        return f"{statistics.mean(xs):.4f}" + (f" ± {statistics.stdev(xs):.4f}" if len(set(xs)) > 1 else "")

    lines = [f"| child (depth/width) | kept layers | loss after inheritance | loss after {child_steps} steps | steps to "
             "random's final | child-only cost to reach (tokens, x random) | parent+child cost to reach (GFLOP, x random) |",
             "|" + " --- |" * 7]
    for name, runs in results.items():
        if name == "random init":  # by definition it reaches its final loss at the end of its budget
            reach = [child_steps] * len(runs)
        else:
            reach = [steps_to_reach(r["curve"], rand_final[s]) for s, r in enumerate(runs)]
        start, final = [r["curve"][0][1] for r in runs], [r["curve"][-1][1] for r in runs]
        if None in reach:
            reach_s, child_cost, total_cost = f"not reached ({reach})", "-", "-"
        else:
            steps = statistics.mean(reach)
            tokens = steps * tokens_per_step
            flops = tokens * child_fpt + (parent_flops + children[name]["inherit_flops"] if name in children else 0)
            reach_s = f"{steps:.0f}" + (f" ({', '.join(map(str, reach))})" if len(reach) > 1 else "")
            child_cost = f"{tokens:,.0f} ({tokens / (child_steps * tokens_per_step):.2f}x)"
            total_cost = f"{flops / 1e9:,.1f} ({flops / random_cost:.1f}x)"
        layers = children.get(name, {}).get("layers") or "-"
        lines.append(f"| {name} | {layers} | {ms(start)} | {ms(final)} | {reach_s} | {child_cost} | {total_cost} |")
    table = "\n".join(lines)
    n_p, n_c = count_params(pcfg).total, count_params(ccfg).total
    print(f"\nparent {n_p / 1e6:.3f}M params ({pcfg.n_layer} layers, hidden {pcfg.n_embd}, {pcfg.n_head} heads / "
          f"{pcfg.n_kv_head} kv, ffn {pcfg.ffn_hidden}), {parent['steps']} steps, val loss {parent['val_loss']:.4f}, "
          f"{parent_flops / 1e9:,.1f} GFLOP; child {n_c / 1e6:.3f}M params ({n_c / n_p:.0%}: {ccfg.n_layer} layers, "
          f"hidden {ccfg.n_embd}, {ccfg.n_head} heads / {ccfg.n_kv_head} kv, ffn {ccfg.ffn_hidden}); {child_steps} "
          f"child steps x {tokens_per_step} tokens, {seeds} child seed(s), 1 parent; held-out loss every "
          f"{results['random init'][0]['curve'][1][0]} steps")
    print(table)
    plot(results, plot_path, child_steps, rand_final, parent["val_loss"])
    print(f"plot: {plot_path}")
    return table


def plot(results: dict, path: Path, steps: int, rand_final: list[float], parent_loss: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    names = list(results)
    cmap = plt.get_cmap("tab10")
    for k, name in enumerate(names):
        curve = results[name][0]["curve"]
        style = dict(color="black", linestyle="--", linewidth=2) if name == "random init" else dict(color=cmap(k % 10))
        axes[0].plot(*zip(*curve), label=name, **style)
    axes[0].axhline(statistics.mean(rand_final), color="black", linestyle=":", linewidth=1,
                    label="random child's final loss")
    axes[0].axhline(parent_loss, color="gray", linestyle="-.", linewidth=1, label="parent (4x larger)")
    axes[0].set_xlabel("child training step")
    axes[0].set_ylabel("held-out loss (nats/token)")
    axes[0].set_title(f"children trained {steps} steps (seed 0)")
    axes[0].set_ylim(top=min(6.0, max(results["random init"][0]["curve"][1][1] * 1.3, 3)))
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    start = [statistics.mean(r["curve"][0][1] for r in results[n]) for n in names]
    final = [statistics.mean(r["curve"][-1][1] for r in results[n]) for n in names]
    x = range(len(names))
    axes[1].bar([i - 0.2 for i in x], start, width=0.4, label="after inheritance (step 0)")
    axes[1].bar([i + 0.2 for i in x], final, width=0.4, label=f"after {steps} steps")
    axes[1].set_xticks(list(x), names, rotation=45, ha="right", fontsize=7)
    axes[1].set_ylabel("held-out loss")
    axes[1].set_ylim(bottom=max(0, min(final) - 0.5), top=min(max(start) + 0.2, math.log(320) + 0.3))
    axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
