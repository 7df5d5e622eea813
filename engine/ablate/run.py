"""The ablation stage: the paper's cumulative study at equal parameters and equal training tokens, with a
control for every claim and guards that say whether the regime can answer.

    tokenizers (large BPE, compacted by coverage) -> held-out n-gram floors -> shapes (arm 1 chosen, the
    others matched to its parameters) -> parent (cached across runs) -> inherited child -> for every
    budget of the curve and every seed: arms 1-4, then arm 4 continued by one round of hard draws (arm 5)
    and by one round of uniform draws of the same size (the control) -> exports, an independent check of
    the metric, table, JSON, charts.

Every piece is an engine library call (tokenizer stage, train, inherit, rounds, export); every run keeps
its own directory and a finished run (result.json) is read back, so re-running the command resumes."""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.ablate import report
from engine.ablate.shapes import check_matched, match_shape, shape_dict
from engine.ablate.spec import AblateSpec
from engine.arch import count_params, flops_per_token
from engine.config import ModelConfig, padded_vocab
from engine.data import TokenData, list_files, prepare_data
from engine.inherit.run import DATA_DEPTH, DATA_WIDTH
from engine.ngram import ngram_floors
from engine.paths import state_home
from engine.run_record import RunObserver, RunRecord
from engine.spec import DataSpec, TrainSpec

CALIB_BATCHES = 8


@dataclass(frozen=True)
class Arm:
    key: str
    label: str  # cumulative, as in the paper's figure
    shape: str  # base | wide | deep
    tokenizer: str  # large | compact
    inherit: bool = False
    round2: str | None = None  # hard | uniform: arm 4 continued by one round of these draws


ARMS = (Arm("arm1", "1 baseline", "base", "large"),
        Arm("arm2", "2 + compact tokenizer", "wide", "compact"),
        Arm("arm3", "3 + deeper-narrower", "deep", "compact"),
        Arm("arm4", "4 + inheritance", "deep", "compact", inherit=True),
        Arm("arm5", "5 + multi-round (hard)", "deep", "compact", inherit=True, round2="hard"),
        Arm("control", "control: round 2 uniform", "deep", "compact", inherit=True, round2="uniform"))


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _done(run_dir: Path, kind: str, config: dict | None = None) -> dict | None:
    """The result of a finished run in run_dir, None if there is none; a finished run of another config
    is an error (re-running resumes only the same study)."""
    path = run_dir / "result.json"
    if not path.exists() or json.loads(path.read_text()).get("kind") != kind:
        return None
    if config is not None and json.loads((run_dir / "run.json").read_text()).get("config") != config:
        raise ValueError(f"--out: {run_dir} holds a finished run of another config; give a fresh --out")
    return json.loads(path.read_text())


class Ablation:
    def __init__(self, spec: AblateSpec, out_dir: str | Path, log=print):
        self.spec, self.sc, self.log = spec, spec.shape, log
        self.out = Path(out_dir).resolve()
        self.record = RunRecord(self.out)
        self.cache = Path(spec.cache_dir) if spec.cache_dir else state_home() / "datasets"
        self.tokens_per_step = self.sc.batch_size * self.sc.seq_len
        self.t0 = time.time()

    # --- tokenizers and data --------------------------------------------------------------------
    def tokenizers(self) -> dict:
        """The large BPE trained on the corpus and its compaction by coverage (the tokenizer stage), cached
        across runs by corpus and settings."""
        from engine.tokenizer.run import run_stage
        from engine.tokenizer.spec import TokenizerStageSpec

        files = [f"{f.resolve()}:{f.stat().st_size}" for f in list_files(self.spec.sources)]
        tspec = TokenizerStageSpec(action="compact", sources=self.spec.sources, vocab_size=self.sc.large_vocab,
                                   compact_coverage=self.spec.compact_coverage, workers=1)
        tdir = self.cache / "ablate-tokenizers" / _key([files, tspec.model_dump(mode="json")])
        res = _done(tdir, "tokenizer")
        if res is None:
            self.log(f"tokenizer: training a {self.sc.large_vocab:,}-piece BPE on the corpus, compacting it to "
                     f"{self.spec.compact_coverage:.0%} coverage ({tdir})")
            res = run_stage(tspec, tdir, log=lambda m: self.log(f"  tokenizer: {m}"))
        arts = {a["name"]: str((tdir / a["path"]).resolve()) for a in res["artifacts"]}
        return {"large": arts["large_tokenizer"], "compact": arts["tokenizer"], "id_map": arts["id_map"],
                "summary": res["summary"]}

    def dataset(self, tokenizer: str) -> dict:
        """The tokenised corpus, its sizes, bytes per token, and the held-out unigram / bigram floors."""
        root, tok = prepare_data(DataSpec(sources=self.spec.sources, tokenizer=tokenizer, cache_dir=str(self.cache),
                                          val_fraction=self.sc.val_fraction), log=lambda m: self.log(f"  data: {m}"))
        meta = json.loads((root / "meta.json").read_text())
        val = TokenData.open(root, "val", self.sc.seq_len)
        floors = ngram_floors(root, seq_len=self.sc.seq_len)  # exactly the targets every arm is scored on
        return {"dir": str(root), "vocab": tok.vocab_size, "train_tokens": meta["tokens"]["train"],
                "train_bytes": meta["bytes"]["train"], "val_tokens": meta["tokens"]["val"],
                "val_bytes": meta["bytes"]["val"],
                "train_bytes_per_token": meta["bytes"]["train"] / meta["tokens"]["train"],
                "val_windows": len(val), "eval_batches": math.ceil(len(val) / self.sc.batch_size),
                "unigram_bpb": floors["unigram_bpb"], "bigram_bpb": floors["bigram_bpb"]}

    def shapes(self, vocab: dict) -> dict[str, ModelConfig]:
        """Arm 1 (large vocabulary, shallow and wide, tied) as chosen; arm 2 (its depth) and arms 3-5
        (deep_layers) matched to its parameters at the compact vocabulary; the parent as chosen."""
        sc = self.sc
        base = ModelConfig(vocab_size=padded_vocab(vocab["large"]), n_layer=sc.base_layers, n_embd=sc.base_width,
                           n_head=sc.base_width // sc.head_dim, block_size=sc.seq_len, tie_embeddings=True)
        target, v = count_params(base).total, padded_vocab(vocab["compact"])
        wide = match_shape(target, v, sc.base_layers, sc.head_dim, sc.seq_len, tie=True)
        deep = match_shape(target, v, sc.deep_layers, sc.head_dim, sc.seq_len, tie=True)
        parent = ModelConfig(vocab_size=padded_vocab(vocab["large"]), n_layer=sc.parent_layers,
                             n_embd=sc.parent_width, n_head=sc.parent_width // sc.head_dim, block_size=sc.seq_len,
                             tie_embeddings=True)
        for name in ("n_layer", "n_embd", "ffn_hidden", "n_head"):  # the child is cut out of the parent
            if getattr(deep, name) > getattr(parent, name):
                raise ValueError(f"parent_{name}: the parent's {getattr(parent, name)} is smaller than the deep "
                                 f"arm's {getattr(deep, name)}; the child could not be cut out of it")
        if count_params(parent).total < 3 * count_params(deep).total:
            raise ValueError(f"parent_width: the parent has {count_params(parent).total:,} parameters, less than 3x "
                             f"the child's {count_params(deep).total:,}")
        return {"base": base, "wide": wide, "deep": deep, "parent": parent}

    # --- runs ---------------------------------------------------------------------------------
    def train_config(self, shape: ModelConfig, tokenizer: str, steps: int, seed: int, eval_batches: int,
                     init: str | None = None) -> dict:
        sc = self.sc
        return dict(model={"preset": "micro", "overrides": shape_dict(shape)},
                    data={"sources": self.spec.sources, "tokenizer": tokenizer, "cache_dir": str(self.cache),
                          "val_fraction": self.sc.val_fraction},
                    init={"checkpoint": init}, optim={"lr": sc.lr}, steps=steps, batch_size=sc.batch_size,
                    micro_batch=sc.batch_size, seq_len=sc.seq_len, seed=seed, backend=self.spec.backend,
                    precision=self.spec.precision, compile=self.spec.compile,
                    log_every=max(steps // 4, 1), eval_every=steps,
                    eval_batches=eval_batches, checkpoint_every=steps, keep_checkpoints=1)

    def train_job(self, run_dir: Path, config: dict, name: str) -> "Job":
        return Job("train", run_dir, TrainSpec.model_validate(config).model_dump(mode="json"), name, self.spec.threads)

    def round2_job(self, run_dir: Path, arm4: dict, steps: int, seed: int, strategy: str, ctx: dict,
                   name: str) -> "Job":
        """Arm 4's checkpoint continued by one round: rate x its batches drawn (hard: p = softmax(loss / T) under
        arm 4's model; uniform: the control), one pass over them as the next epoch of the same run."""
        from engine.rounds.spec import RoundsSpec

        cfg = self.train_config(ctx["shapes"]["deep"], ctx["tok"]["compact"], steps, seed,
                                ctx["data"]["compact"]["eval_batches"])
        cfg.update(init={"checkpoint": arm4["checkpoint"]}, steps=None, rounds=1, rate=self.spec.replay_rate,
                   temperature=self.spec.replay_temperature, strategy=strategy, lr_schedule="continue")
        cfg["data"]["probe_batches"] = 0
        return Job("rounds", run_dir, RoundsSpec.model_validate(cfg).model_dump(mode="json"), name, self.spec.threads)

    def parent_job(self, ctx: dict) -> "Job":
        """The parent: large tokenizer, same corpus; cached across runs by its config."""
        pcfg = ctx["shapes"]["parent"]
        config = self.train_config(pcfg, ctx["tok"]["large"], self.spec.parent_steps, 0,
                                   ctx["data"]["large"]["eval_batches"])
        job = self.train_job(self.cache / "ablate-parents" / _key(TrainSpec.model_validate(config).model_dump(
            mode="json")), config, "parent")
        self.log(f"parent: {count_params(pcfg).total:,} params ({pcfg.n_layer} layers x {pcfg.n_embd}), "
                 f"{self.spec.parent_steps} steps ({job.run_dir})")
        return job

    def child(self, ctx: dict, parent: dict) -> dict:
        """The deep arm's child cut out of the parent: layers by inherit_depth, widths by inherit_width,
        vocabulary rows by the compact tokenizer's id map."""
        from engine.inherit.run import inherit
        from engine.inherit.spec import InheritSpec

        sc, spec, tok, data = self.sc, self.spec, ctx["tok"], ctx["data"]
        pcfg = ctx["shapes"]["parent"]
        self.log(f"parent: held-out {parent['val_bpb']:.4f} bpb, {parent['flops'] / 1e12:.2f} TFLOP")
        idir = self.out / "inherit"
        res = _done(idir, "inherit")
        if res is None:
            deep = ctx["shapes"]["deep"]
            child = {k: getattr(deep, k) for k in ("vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head",
                                                   "ffn_hidden", "tie_embeddings")}
            ispec = InheritSpec(parent=parent["checkpoint"], child=child, depth={"method": spec.inherit_depth},
                                width=spec.inherit_width,
                                calib={"sources": spec.sources, "tokenizer": tok["large"], "batches": CALIB_BATCHES,
                                       "micro_batch": sc.batch_size, "seq_len": sc.seq_len,
                                       "cache_dir": str(self.cache), "val_fraction": self.sc.val_fraction},
                                vocab={"tokenizer": tok["compact"], "id_map": tok["id_map"]},
                                eval_batches=data["compact"]["eval_batches"], seed=0, backend=spec.backend)
            res = inherit(ispec, idir, log=lambda m: self.log(f"  inherit: {m}"))
        # calibration: forward passes of the parent (a third of a training step per token, x3 with a backward
        # pass); loss_rise forks one stream per layer, so it counts as n_layer passes
        s, tokens = res["summary"], CALIB_BATCHES * self.tokens_per_step
        if spec.inherit_width == "learnable":
            tokens = max(CALIB_BATCHES, 300) * self.tokens_per_step
        passes = {"block_influence": 1, "loss_rise": pcfg.n_layer}.get(spec.inherit_depth, 0)
        passes += {"activation": 1, "taylor": 3, "learnable": 3}.get(spec.inherit_width, 0)
        uses_data = spec.inherit_depth in DATA_DEPTH or spec.inherit_width in DATA_WIDTH
        return {"parent": {**parent, "dir": str(Path(parent["checkpoint"]).parents[1]),
                           "params": count_params(pcfg).total, "config": shape_dict(pcfg)},
                "child_checkpoint": s["checkpoint"], "layers": s["layers"],
                "inherit_flops": flops_per_token(pcfg, sc.seq_len) / 3 * tokens * passes if uses_data else 0.0,
                "child_step0_bpb": s.get("inherited_bpb"), "random_init_step0_bpb": s.get("random_init_bpb")}

    def arm_job(self, arm: Arm, budget: float, seed: int, ctx: dict, arm4: dict | None = None) -> "Job":
        """One arm at one budget and seed. Arms 1-4 train budget x budget_steps; arm 5 and the control continue
        arm 4's run of the same budget and seed (`arm4`, its summary) for one pass over the drawn batches."""
        steps = max(1, round(budget * self.spec.budget_steps))
        run_dir = self.out / "runs" / f"budget{budget:g}" / f"seed{seed}" / arm.key
        name, train_seed = f"{arm.key} budget {budget:g} seed {seed}", 1000 + seed
        if arm.round2:
            return self.round2_job(run_dir, arm4, steps, train_seed, arm.round2, ctx, name)
        init = ctx["inherit"]["child_checkpoint"] if arm.inherit else None
        data = ctx["data"][arm.tokenizer]
        return self.train_job(run_dir, self.train_config(ctx["shapes"][arm.shape], ctx["tok"][arm.tokenizer], steps,
                                                         train_seed, data["eval_batches"], init), name)

    def arm_row(self, arm: Arm, budget: float, seed: int, s: dict, ctx: dict, arm4: dict | None = None) -> dict:
        """The table's numbers of one finished arm run (`s`, its summary)."""
        data, shape = ctx["data"][arm.tokenizer], ctx["shapes"][arm.shape]
        if arm.round2 is None:
            row = {"steps": s["steps"], "tokens": s["tokens"], "flops": s["flops"], "extra_flops": 0.0}
        else:
            r = s["rounds"][-1]
            row = {"steps": r["steps"], "tokens": r["tokens"], "flops": s["flops"],
                   "extra_flops": s.get("scoring_flops") or 0.0, "after_arm4_steps": arm4["steps"],
                   "total_tokens": arm4["tokens"] + r["tokens"],
                   "selection": {k: (r.get("selection") or {}).get(k) for k in
                                 ("mean_score_pool", "mean_score_selected", "ess_fraction")}}
        row.update(arm=arm.key, val_loss=s["val_loss"], val_bpb=s["val_bpb"], checkpoint=s["checkpoint"], seed=seed,
                   budget=budget, bytes=row["tokens"] * data["train_bytes_per_token"], seconds=s.get("seconds"))
        row["tokens_per_param"] = row.get("total_tokens", row["tokens"]) / count_params(shape).total
        row["epochs"] = row.get("total_tokens", row["tokens"]) / data["train_tokens"]
        return row

    def export(self, rows: list[dict], ctx: dict) -> list[dict]:
        """Every arm's final model (full budget, every seed) as a Hugging Face directory under exports/, and the
        held-out bits-per-byte of the seed-0 exports recomputed by transformers (an independent implementation
        of the model) over the same windows, in fp32 both: the engine's figure again in fp32 beside it, since
        the runs evaluate at their training precision (bf16 on a bf16-native CPU)."""
        from engine.hf import export

        checks = []
        for row in rows:
            arm = next(a for a in ARMS if a.key == row["arm"])
            hf_dir = self.out / "exports" / f"seed{row['seed']}" / arm.key
            if not (hf_dir / "config.json").exists():
                export(Path(row["checkpoint"]), hf_dir, ctx["tok"][arm.tokenizer])
            row["export"] = str(hf_dir)
            if row["seed"] == 0:
                data = ctx["data"][arm.tokenizer]
                fp32 = engine_fp32_bpb(Path(row["checkpoint"]), data["dir"], self.sc.seq_len, self.sc.batch_size,
                                       data["eval_batches"])
                bpb = transformers_bpb(hf_dir, data["dir"], self.sc.seq_len, self.sc.batch_size)
                checks.append({"arm": arm.key, "engine_bpb": row["val_bpb"], "engine_fp32_bpb": fp32,
                               "transformers_bpb": bpb, "difference": bpb - fp32})
        return checks

    # --- the schedule -----------------------------------------------------------------------------
    def schedule(self, ctx: dict) -> list[dict]:
        """Every run of the study on `workers` processes, each as soon as what it needs is there: the parent
        and arms 1-3 at once, arm 4 after the inherited child, arm 5 and the control after their arm 4.
        Finished runs (result.json) are read back instead of run."""
        spec = self.spec
        pairs = [(b, seed) for b in sorted(spec.budgets, reverse=True)
                 for seed in range(spec.seeds if b == 1.0 else spec.curve_seeds)]
        n_runs, rows, arm4 = len(pairs) * len(ARMS), [], {}
        pending = [("parent", None, None)] + [(arm, b, seed) for b, seed in pairs for arm in ARMS]
        t0, done_runs = time.time(), 0
        with JobPool(spec.workers) as pool:
            while pending or pool.busy:
                for item in list(pending):
                    arm, budget, seed = item
                    if arm == "parent":
                        job = self.parent_job(ctx)
                    elif arm.inherit and "inherit" not in ctx or arm.round2 and (budget, seed) not in arm4:
                        continue
                    else:
                        job = self.arm_job(arm, budget, seed, ctx, arm4.get((budget, seed)))
                    if not pool.submit(job, item):
                        break
                    pending.remove(item)
                for (arm, budget, seed), summary in pool.wait_one():
                    if arm == "parent":
                        ctx["inherit"] = self.child(ctx, summary)
                        continue
                    row = self.arm_row(arm, budget, seed, summary, ctx, arm4.get((budget, seed)))
                    if arm.key == "arm4":
                        arm4[(budget, seed)] = summary
                    rows.append(row)
                    done_runs += 1
                    elapsed = time.time() - t0
                    eta = elapsed / done_runs * (n_runs - done_runs)
                    self.record.progress(done_runs, n_runs, eta, f"budget {budget:g} seed {seed} {arm.key}")
                    self.log(f"[{done_runs}/{n_runs}] {arm.label}, budget {budget:g}, seed {seed}: held-out "
                             f"{row['val_bpb']:.4f} bpb, {row['tokens']:,} tokens, {row['tokens_per_param']:.2f} "
                             f"tokens/param ({row['seconds'] or 0:.0f}s; eta {eta / 60:.1f} min, load "
                             f"{os.getloadavg()[0]:.1f})")
        return rows

    # --- the whole study --------------------------------------------------------------------------
    def run(self) -> dict:
        spec, sc, log = self.spec, self.sc, self.log
        torch.set_num_threads(spec.threads)
        self.record.start("ablate", spec.model_dump(mode="json"),
                          backend={"backend": spec.backend, "device": spec.backend, "precision": spec.precision,
                                   "ops": {}}, world_size=1)
        self.record.progress(0, 1, None, "tokenizer")
        tok = self.tokenizers()
        data = {name: self.dataset(tok[name]) for name in ("large", "compact")}
        for name, d in data.items():
            log(f"{name} tokenizer: {d['vocab']:,} pieces, {d['train_bytes_per_token']:.3f} bytes/token, "
                f"{d['train_tokens']:,} training tokens; held-out floors: unigram {d['unigram_bpb']:.4f}, "
                f"bigram {d['bigram_bpb']:.4f} bpb")
        shapes = self.shapes({k: d["vocab"] for k, d in data.items()})
        diffs = check_matched({k: shapes[k] for k in ("base", "wide", "deep")})
        ctx = {"tok": tok, "data": data, "shapes": shapes}
        for a in ARMS[:3]:
            c, p = shapes[a.shape], count_params(shapes[a.shape])
            log(f"{a.label}: {c.n_layer} layers x {c.n_embd} (ffn {c.ffn_hidden}), {p.total:,} params "
                f"({diffs[a.shape]:+.2%} vs arm 1; embedding {p.embedding_share:.0%}), "
                f"{flops_per_token(c, sc.seq_len) / 1e6:.2f} MFLOP/token")
        rows = self.schedule(ctx)
        n_runs = len(rows)
        self.record.progress(n_runs, n_runs, 0, "export")
        checks = self.export([r for r in rows if r["budget"] == 1.0], ctx) if spec.export else []
        rows.sort(key=lambda r: (r["budget"], r["seed"], [a.key for a in ARMS].index(r["arm"])))
        study = report.build(spec, ctx, rows, diffs, checks, seconds=round(time.time() - self.t0, 1))
        paths = report.write(study, self.out)
        log(study["verdict"][0])
        log(f"wall time {study['seconds'] / 60:.1f} min; wrote {', '.join(str(p) for p in paths.values())}")
        artifacts = [{"name": "ablation", "path": str(paths["json"]), "type": "report"},
                     {"name": "ablation_md", "path": str(paths["md"]), "type": "report"},
                     {"name": "plot", "path": str(paths["png"]), "type": "plot"},
                     {"name": "budget_curve", "path": str(paths["curve"]), "type": "plot"},
                     {"name": "large_tokenizer", "path": tok["large"], "type": "tokenizer"},
                     {"name": "tokenizer", "path": tok["compact"], "type": "tokenizer"}]
        summary = {"arms": {a["key"]: {"val_bpb": a["full"]["val_bpb"], "val_bpb_std": a["full"]["val_bpb_std"],
                                       "params": a["params_total"]} for a in study["arms"]},
                   "verdict": study["verdict"], "seconds": study["seconds"]}
        return self.record.result("ablate", summary, artifacts, list(spec.sources))


@dataclass(frozen=True)
class Job:
    """One engine run of the study: a train or rounds config and the directory it records into."""
    kind: str  # train | rounds
    run_dir: Path
    config: dict  # validated and dumped
    name: str
    threads: int


class WallTime(RunObserver):
    """Adds the run's wall time to its summary before result.json, the run's done marker, is written (once,
    atomically): a run with a result.json is a finished run with all its fields."""

    def __init__(self):
        self.t0 = time.time()

    def on_result(self, result: dict) -> dict:
        return {**result, "summary": {**result["summary"], "seconds": round(time.time() - self.t0, 1)}}


def run_job(job: Job) -> dict:
    """Run `job` (in a worker process, or inline) unless it finished before; its summary, with its wall time."""
    done = _done(job.run_dir, job.kind, job.config)
    if done is not None:
        return done["summary"]
    torch.set_num_threads(job.threads)
    log = lambda m, *a, **k: print(f"  {job.name}: {m}", file=sys.stderr, flush=True)  # noqa: E731
    if job.kind == "train":
        from engine.train import train
        res = train(TrainSpec.model_validate(job.config), job.run_dir, show_progress=False, log=log,
                    observer=WallTime())
    else:
        from engine.rounds.run import run_rounds
        from engine.rounds.spec import RoundsSpec
        res = run_rounds(RoundsSpec.model_validate(job.config), job.run_dir, log=log, observer=WallTime())
    return res["summary"]


class JobPool:
    """`workers` processes (spawned: no forked torch state), each running one job at a time with its own
    threads; with one worker the jobs run inline, in order. Independent runs on separate cores beat one run
    on two threads at these sizes (small matrices do not parallelise well)."""

    def __init__(self, workers: int):
        self.workers, self.futures = workers, {}
        self.inline: list = []
        self.ex = None
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing import get_context
            self.ex = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.ex:
            self.ex.shutdown(cancel_futures=True)

    @property
    def busy(self) -> bool:
        return bool(self.futures or self.inline)

    def submit(self, job: Job, tag) -> bool:
        """Start `job` if a worker is free (False: none is)."""
        if self.ex is None:
            if self.inline:
                return False
            self.inline.append((tag, job))
            return True
        if len(self.futures) >= self.workers:
            return False
        self.futures[self.ex.submit(run_job, job)] = tag
        return True

    def wait_one(self) -> list[tuple]:
        """(tag, summary) of the jobs that finished, waiting for at least one."""
        if self.ex is None:
            return [(tag, run_job(job)) for tag, job in [self.inline.pop()]] if self.inline else []
        from concurrent.futures import FIRST_COMPLETED, wait
        finished, _ = wait(self.futures, return_when=FIRST_COMPLETED)
        return [(self.futures.pop(f), f.result()) for f in finished]


@torch.no_grad()
def engine_fp32_bpb(checkpoint: Path, data_dir: str, seq_len: int, batch: int, n_batches: int) -> float:
    """Held-out bits-per-byte of a checkpoint by the engine's own evaluation, in fp32 on the CPU."""
    from engine.backend import resolve
    from engine.evaluate import load_model
    from engine.train import evaluate

    backend = resolve("cpu", "fp32")
    model, _ = load_model(checkpoint, backend)
    val = TokenData.open(Path(data_dir), "val", seq_len, vocab_limit=model.config.vocab_size)
    return evaluate(model, val, n_batches, batch, backend)["bpb"]


@torch.no_grad()
def transformers_bpb(hf_dir: Path, data_dir: str, seq_len: int, batch: int) -> float:
    """Held-out bits-per-byte of a Hugging Face export computed by transformers' Llama over every held-out
    window, with the bytes of exactly the scored tokens."""
    import numpy as np
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    val = TokenData.open(Path(data_dir), "val", seq_len)
    token_bytes = np.load(Path(data_dir) / "token_bytes.npy")
    nats, n_bytes = 0.0, 0
    for start in range(0, len(val), batch):
        x, y = val.batch(range(start, min(start + batch, len(val))))
        logits = model(input_ids=x).logits.float()
        nats += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        n_bytes += int(token_bytes[y.numpy()].sum())
    return nats / math.log(2) / n_bytes


def run_ablation(spec: AblateSpec, out_dir: str | Path, log=print) -> dict:
    return Ablation(spec, out_dir, log).run()
