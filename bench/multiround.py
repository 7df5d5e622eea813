"""Multiple-round training study on the bundled sample corpus (byte tokenizer, `tiny` preset).

Round 1 trains on the first part of an epoch (the rest stays unseen). Then, from round 1's weights
and for the same number of steps (= tokens), a second round with
  hard       hard-sample replay: rate 0.5 of round 1's batches drawn by softmax(loss / T), T = 1, trained as
             the next epoch of round 1's run (the paper; the default lr_schedule: continue): AdamW moments
             carried, the learning-rate schedule goes on (round 1's had ended: its floor)
  hard/seq   the same, scored and drawn per sequence instead of per batch
  hard/rewarm    the same draw as hard, with its own warmup + cosine from optim.lr and fresh moments
  hard/constant  the same draw as hard, at round 1's last learning rate with fresh moments
  uniform    uniform resampling of round 1's batches at the same rate (the control); uniform' is
             the same with another draw: the spread between the two is the noise of one draw
  fresh      continuing on batches no round has seen (the other control)
For each: held-out loss and bits per byte over the whole validation split (never the training loss
on the drawn subset), the loss on round 1's first tenth (what round 1 forgot) and on round 1's
batches (every 5th), and the compute: training FLOPs + the scoring pass's forward FLOPs. Also the
scoring pass's throughput relative to training throughput (target >= 2.5x, no backward pass): as the stage
recorded it, and measured back to back (interleaved, same model). Writes a plot and JSON.

Usage: python bench/multiround.py [--round1-steps 200] [--rate 0.5] [--threads 1] [--out DIR]
       [--plot docs/img/multiround.png]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.arch import flops_per_token  # noqa: E402
from engine.backend import resolve  # noqa: E402
from engine.data import BatchSampler, TokenData  # noqa: E402
from engine.plots import plt  # noqa: E402
from engine.rounds.run import run_rounds  # noqa: E402
from engine.evaluate import load_model  # noqa: E402
from engine.rounds.score import sequence_losses  # noqa: E402
from engine.rounds.spec import RoundsSpec  # noqa: E402
from engine.run_record import read_metrics  # noqa: E402
from engine.spec import TrainSpec  # noqa: E402
from engine.train import param_groups, train  # noqa: E402

SAMPLE = str(REPO / "data" / "sample")
BATCH, MICRO, SCORE_MICRO = 16, 16, 64
COMMON = dict(model={"preset": "tiny"}, data={"sources": [SAMPLE], "probe_batches": 8}, batch_size=BATCH,
              micro_batch=MICRO, precision="fp32", backend="cpu", log_every=20, eval_every=20,
              eval_batches=16, keep_checkpoints=1)  # 16 x 16 windows cover the whole validation split
VARIANTS = {"hard": dict(strategy="hard"), "hard/seq": dict(strategy="hard", granularity="sequence"),
            "hard/rewarm": dict(strategy="hard", lr_schedule="rewarm"),
            "hard/constant": dict(strategy="hard", lr_schedule="constant"),
            "uniform": dict(strategy="uniform"), "uniform'": dict(strategy="uniform", sample_seed=2),
            "fresh": dict(strategy="fresh")}


def quiet(*a, **k):
    pass


def mean_loss(checkpoint: str, data: TokenData, windows: np.ndarray, backend) -> float:
    model, _ = load_model(checkpoint, backend, frozen=True)
    losses = [sequence_losses(model, *data.batch(windows[i:i + SCORE_MICRO]), backend)
              for i in range(0, len(windows), SCORE_MICRO)]
    return float(torch.cat(losses).mean())


def back_to_back_throughput(checkpoint: str, data: TokenData, backend, repeats: int = 3, steps: int = 4) -> dict:
    """Training steps (forward + backward + AdamW, micro batch 16) and scoring passes (forward, 64
    sequences a pass) on the same model and windows, alternated so that machine load hits both alike."""
    model, _ = load_model(checkpoint, backend)  # trainable
    opt = backend.ops.adamw(param_groups(model, 0.1), lr=1e-4)
    windows = np.arange(steps * SCORE_MICRO)
    train_tps, score_tps = [], []
    for _ in range(repeats + 1):  # the first round warms up both
        t = time.perf_counter()
        for s in range(steps * SCORE_MICRO // MICRO):
            x, y = data.batch(windows[s * MICRO:(s + 1) * MICRO])
            model(x, y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        train_tps.append(len(windows) * data.seq_len / (time.perf_counter() - t))
        t = time.perf_counter()
        for s in range(steps):
            sequence_losses(model, *data.batch(windows[s * SCORE_MICRO:(s + 1) * SCORE_MICRO]), backend)
        score_tps.append(len(windows) * data.seq_len / (time.perf_counter() - t))
    tr, sc = statistics.median(train_tps[1:]), statistics.median(score_tps[1:])
    return {"train_tokens_per_s": tr, "score_tokens_per_s": sc, "ratio": sc / tr}


def plot(out_png: Path, round1_dir: Path, variants: dict, r1_steps: int, r1_val: float):
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    rows = read_metrics(round1_dir)
    for split, style, label in (("probe", "o-", "round 1's first tenth (forgetting probe)"),
                                ("val", "s--", "held-out"), ("train", "-", "training batches")):
        pts = sorted({r["step"]: r["loss"] for r in rows if r.get("split") == split}.items())
        a.plot(*zip(*pts), style, markersize=3, label=label, alpha=0.6 if split == "train" else 1)
    a.set_title("round 1: loss on its early batches vs held-out")
    a.set_xlabel("step")
    a.set_ylabel("loss (nats/byte)")
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    for i, (name, v) in enumerate(variants.items()):
        pts = sorted({r["step"]: r["loss"] for r in read_metrics(v["dir"]) if r.get("split") == "val"}.items())
        b.plot([r1_steps] + [r1_steps + s for s, _ in pts], [r1_val] + [x for _, x in pts], "o-", color=f"C{i}",
               markersize=3,
               label=f"{name}: {v['val_loss']:.4f}")
    b.axhline(r1_val, color="gray", ls=":", lw=1)
    b.set_title("round 2 (same tokens): held-out loss")
    b.set_xlabel("global step")
    b.grid(alpha=0.3)
    b.legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--round1-steps", type=int, default=200)
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable numbers on a shared, oversubscribed machine)")
    ap.add_argument("--out", default=".tinyforge/bench/multiround")
    ap.add_argument("--plot", default=str(REPO / "docs" / "img" / "multiround.png"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    t_start = time.perf_counter()

    r1_dir = out / "round1"
    r1 = train(TrainSpec.model_validate({**COMMON, "steps": args.round1_steps, "checkpoint_every": args.round1_steps}),
               r1_dir, show_progress=False, log=quiet)["summary"]
    print(f"round 1: {args.round1_steps} steps, held-out loss {r1['val_loss']:.4f} bpb {r1['val_bpb']:.4f} "
          f"({time.perf_counter() - t_start:.0f}s)", flush=True)

    variants = {}
    for name, extra in VARIANTS.items():
        spec = RoundsSpec.model_validate({**COMMON, "init": {"checkpoint": r1["checkpoint"]}, "rate": args.rate,
                                          "score_chunk": 1024, "score_micro_batch": SCORE_MICRO, **extra})
        run_dir = out / name.replace("/", "_").replace("'", "_2")
        s = run_rounds(spec, run_dir, log=quiet)["summary"]
        variants[name] = {**s, "dir": run_dir / "round_2"}
        print(f"{name}: {s['steps']} steps, held-out loss {s['val_loss']:.4f} ({time.perf_counter() - t_start:.0f}s)",
              flush=True)

    backend = resolve("cpu", "fp32")
    data_dir = Path(json.loads((r1_dir / "run.json").read_text())["data_dir"])
    data = TokenData.open(data_dir, "train", 128)
    sampler = BatchSampler(len(data), BATCH, COMMON.get("seed", 1337))
    seen = args.round1_steps
    early = np.concatenate([sampler.windows(b, epoch=0) for b in range(seen // 10)])
    pool = np.concatenate([sampler.windows(b, epoch=0) for b in range(0, seen, 5)])
    fpt = flops_per_token(load_model(r1["checkpoint"], backend)[0].config, 128)

    rows = [("round 1 only", r1["val_loss"], r1["val_bpb"], mean_loss(r1["checkpoint"], data, early, backend),
             mean_loss(r1["checkpoint"], data, pool, backend), 0, 0.0, r1["flops"], None)]
    for name, s in variants.items():
        sel = s["rounds"][0].get("selection") or {}
        rows.append((f"+ round 2 {name}", s["val_loss"], s["val_bpb"], mean_loss(s["checkpoint"], data, early, backend),
                     mean_loss(s["checkpoint"], data, pool, backend), s["tokens"], s["scoring_flops"] or 0.0,
                     r1["flops"] + s["flops"] + (s["scoring_flops"] or 0.0), sel))

    print(f"\nsample corpus, byte tokenizer, preset tiny, batch {BATCH}x128 tokens, round 1 = {seen} steps "
          f"({seen * BATCH * 128:,} tokens, {seen} of {sampler.batches_per_epoch} batches of the epoch), "
          f"rate {args.rate}, T 1.0\n")
    print("| run | held-out loss | held-out bpb | loss on round 1's first tenth | loss on round 1's batches "
          "(every 5th) | round-2 tokens | scoring GFLOP | total GFLOP | "
          "drawn: mean score vs pool, ESS, top-k overlap |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, loss, bpb, e, p, tok, sfl, tfl, sel in rows:
        drawn = "" if not sel or sel.get("mean_score_selected") is None else \
            (f"{sel['mean_score_selected']:.4f} vs {sel['mean_score_pool']:.4f}, {sel['ess_fraction']:.1%}, "
             f"{sel['topk_overlap']:.1%}")
        print(f"| {name} | {loss:.4f} | {bpb:.4f} | {e:.4f} | {p:.4f} | {tok:,} | {sfl / 1e9:.1f} | {tfl / 1e9:.1f} | "
              f"{drawn} |")

    hard = variants["hard"]
    sel = hard["rounds"][0]["selection"]
    in_run = sel["scoring_tokens_per_s"] / hard["rounds"][0]["train_tokens_per_s"]
    ab = back_to_back_throughput(r1["checkpoint"], data, backend)
    print(f"\nscoring pass (hard): {sel['scoring_tokens']:,} tokens in {sel['scoring_seconds']:.1f}s = "
          f"{sel['scoring_tokens_per_s']:,.0f} tok/s; = {sel['scoring_tokens'] * fpt / 3 / 1e9:.1f} GFLOP forward, "
          f"{sel['scoring_tokens'] * fpt / 3 / hard['flops']:.0%} of round 2's training FLOPs")
    print(f"throughput as recorded by the stage: scoring {sel['scoring_tokens_per_s']:,.0f} tok/s vs round-2 "
          f"training {hard['rounds'][0]['train_tokens_per_s']:,.0f} tok/s = {in_run:.2f}x")
    print(f"throughput back to back (same model, alternated): scoring {ab['score_tokens_per_s']:,.0f} tok/s vs "
          f"training {ab['train_tokens_per_s']:,.0f} tok/s = {ab['ratio']:.2f}x (target >= 2.5x: "
          f"{'met' if ab['ratio'] >= 2.5 else 'NOT met'})")

    plot(Path(args.plot), r1_dir, variants, seen, r1["val_loss"])
    (out / "study.json").write_text(json.dumps({"rows": rows, "throughput": {"in_run": in_run, **ab}},
                                               indent=1, default=str))
    print(f"\nplot {args.plot}; JSON {out / 'study.json'}; {time.perf_counter() - t_start:.0f}s "
          f"on {torch.get_num_threads()} thread(s)")


if __name__ == "__main__":
    main()
