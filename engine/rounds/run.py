"""The rounds stage: round 1 (trained here, or an earlier stage's checkpoint), then replay rounds.

Each replay round k scores the pool (the batches round 1 trained on) with round k-1's frozen model,
draws rate x N items, and trains on them from round k-1's weights: a train run of its own in
`OUT/round_k/` (checkpoint, metrics, result.json) beside its pool, scores, drawn ids, selection
report and score histogram. Every piece is resumable: finished rounds are skipped, a scoring pass
continues from its saved chunks, a recorded draw is reused, and training resumes from its last
checkpoint. OUT itself records the stage: every round's metrics at global steps, progress, the
forgetting curve and result.json (lineage round k -> k+1)."""
from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import checkpoint as ckpt
from engine import distributed
from engine.arch import flops_per_token
from engine.backend import resolve
from engine.config import ModelConfig
from engine.data import BatchSampler, SubsetSampler, TokenData, load_batch_ids, prepare_data
from engine.evaluate import load_model
from engine.rounds import sample as sampling
from engine.rounds.plots import forgetting_curve, score_histogram
from engine.rounds.score import batch_scores, fingerprint, score_windows
from engine.rounds.spec import RoundsSpec
from engine.run_record import RunObserver, RunRecord, read_metrics, write_json_atomic
from engine.train import resolve_model_config, train


@dataclass
class Pool:
    batch_ids: np.ndarray  # sorted epoch-0 batch ids that round 1 trained on: what is scored and drawn from
    fresh_used: np.ndarray  # unseen batches already drawn as fresh data by earlier rounds
    source: str

    def save(self, rdir: Path) -> None:
        np.save(rdir / "pool_ids.npy", self.batch_ids)
        np.save(rdir / "fresh_used_ids.npy", self.fresh_used)

    @classmethod
    def load(cls, rdir: Path, source: str) -> Pool | None:
        """The pool saved in rdir, None if there is none."""
        if not (rdir / "pool_ids.npy").exists():
            return None
        fresh = rdir / "fresh_used_ids.npy"
        return cls(np.load(rdir / "pool_ids.npy"), np.load(fresh) if fresh.exists() else np.zeros(0, np.int64), source)


def round_dir(out: Path, k: int) -> Path:
    return out / f"round_{k}"


def read_result(rdir: Path) -> dict | None:
    path = rdir / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


class Stage:
    """What every round shares: the spec, the world, the backend, the tokenised data and the record."""

    def __init__(self, spec: RoundsSpec, out_dir: str | Path, log=print, show_progress: bool | None = False,
                 observer: RunObserver | None = None):
        self.spec, self.out = spec, Path(out_dir).resolve()  # round checkpoints are recorded absolute
        self.world = distributed.world_from_env()
        self.backend = resolve(spec.backend, spec.precision, spec.ops, self.world.local_rank)
        distributed.init(self.world, self.backend.process_group,
                         single_process_group=spec.parallel.strategy.startswith("zero"))
        self.record = RunRecord(self.out, enabled=self.world.is_main, observer=observer)
        self.log = log if self.world.is_main else (lambda *a, **k: None)
        self.show_progress = show_progress
        self.data_dir, tokenizer = prepare_data(spec.data, log=self.log)
        self.cfg, _ = resolve_model_config(spec, tokenizer.vocab_size)
        self.vocab = tokenizer.vocab_size
        self.seq_len = spec.seq_len or self.cfg.block_size
        self.train_data = TokenData.open(self.data_dir, "train", self.seq_len, vocab_limit=self.cfg.vocab_size)
        self.sampler = BatchSampler(len(self.train_data), spec.batch_size, spec.seed)
        # the last global step of each split in the stage's metrics: a resumed round repeats steps
        self.last_step: dict[str, int] = {}
        for r in read_metrics(self.out) if self.world.is_main else ():
            self.last_step[r.get("split")] = max(self.last_step.get(r.get("split"), -1), r["step"])
        self.on_chunk = None  # optional observer of scoring progress: on_chunk(done, total)

    # --- the pool ---------------------------------------------------------------------------
    def seen_batches(self, config: dict, steps: int, where: str) -> np.ndarray:
        """Epoch-0 batch ids a train run with `config` visited in its first `steps` steps."""
        data = config.get("data", {})
        if data.get("window_ids"):
            raise ValueError(f"pool: round 1 ({where}) trained on chosen sequences, not batches; set pool: all")
        if data.get("batch_ids"):
            sub = SubsetSampler(self.sampler, load_batch_ids(data["batch_ids"]), config["seed"])
            return np.unique(sub.ids if steps >= len(sub.ids) else [sub.batch_id(s) for s in range(steps)])
        return np.arange(min(steps, self.sampler.batches_per_epoch), dtype=np.int64)

    def all_batches(self) -> Pool:
        return Pool(np.arange(self.sampler.batches_per_epoch, dtype=np.int64), np.zeros(0, np.int64), "all")

    def parent_pool(self, checkpoint: str) -> Pool:
        """The batches round 1 trained on, read from the run record beside its checkpoint
        (RUN/checkpoints/step_N -> RUN/run.json), or carried by an earlier rounds stage."""
        if self.spec.pool == "all":
            return self.all_batches()
        path = Path(checkpoint)
        run_dir = path.parent.parent
        carried = Pool.load(run_dir, f"{run_dir} (an earlier round)")
        if carried:
            return carried
        if not (run_dir / "run.json").exists():
            raise ValueError(f"pool: the checkpoint {checkpoint} has no run record ({run_dir / 'run.json'}) telling "
                             "which batches round 1 trained on; set pool: all to score every batch")
        config = json.loads((run_dir / "run.json").read_text())["config"]
        manifest = ckpt.verify(path)
        for name in ("seed", "batch_size"):
            if config.get(name) != getattr(self.spec, name):
                raise ValueError(f"{name}: round 1 ({run_dir}) used {name}={config.get(name)} but this stage "
                                 f"{getattr(self.spec, name)}; its batch ids would name other batches (match it, "
                                 "or set pool: all)")
        parent_seq = config.get("seq_len") or manifest["model_config"]["block_size"]
        if parent_seq != self.seq_len:
            raise ValueError(f"seq_len: round 1 ({run_dir}) used {parent_seq}, this stage {self.seq_len}")
        if manifest.get("data_dir") and Path(manifest["data_dir"]) != Path(self.data_dir):
            raise ValueError(f"data.sources: round 1 ({run_dir}) trained on {manifest['data_dir']}, this stage "
                             f"tokenises to {self.data_dir}; give the same data (or set pool: all)")
        return Pool(self.seen_batches(config, manifest["step"], str(run_dir)), np.zeros(0, np.int64),
                    f"{run_dir} ({manifest['step']} steps)")

    def pool_windows(self, pool: Pool) -> np.ndarray:
        return np.concatenate([self.sampler.windows(int(b), epoch=0) for b in pool.batch_ids])

    def plan(self, pool: Pool) -> dict:
        """How many items each replay round draws and how many steps it trains."""
        n_items = len(pool.batch_ids) * (self.spec.batch_size if self.spec.granularity == "sequence" else 1)
        n0 = max(1, round(self.spec.rate * n_items))
        one_pass = n0 if self.spec.granularity == "batch" else n0 // self.spec.batch_size
        if one_pass == 0:
            raise ValueError(f"rate: {n0} sequences drawn are fewer than one batch of {self.spec.batch_size}")
        return {"n_items": n_items, "n0": n0, "steps": self.spec.steps or one_pass}

    # --- score -------------------------------------------------------------------------------
    def score_compile(self, n_windows: int, flops_per_token: float) -> tuple[bool, str]:
        """torch.compile the scoring pass when the pool is long enough to repay it: the training rule
        (engine/compiling.py, `compile` of this config) on the pool's forward-only FLOPs."""
        from engine import compiling
        from engine.peaks import device_peak
        peak, _ = device_peak(self.backend.device, self.backend.autocast_dtype)
        on, why, _ = compiling.decide(self.spec.compile, steps=1, tokens_per_step=n_windows * self.seq_len,
                                      flops_per_token=flops_per_token / 3, peak_flops=peak,
                                      device_type=self.backend.device.type,
                                      autocast_dtype=self.backend.autocast_dtype, strategy="none")
        return on, why

    def score(self, rdir: Path, checkpoint: str, pool: Pool, k: int, offset: int = 0, total: int = 0) -> dict:
        """Loss of every pool item under `checkpoint` (minus the reference's for reducible loss):
        writes rdir/item_scores.npy and pool_ids.npy; returns the scoring stats."""
        spec, mb = self.spec, self.spec.score_micro_batch or 4 * self.spec.micro_batch
        windows = self.pool_windows(pool)
        models = [("model", checkpoint)] + ([("reference", spec.reference)] if spec.score == "reducible" else [])
        losses, stats = None, {"tokens": 0, "seconds": 0.0, "flops": 0.0, "chunks": 0, "resumed_chunks": 0}
        for name, path in models:
            model, manifest = load_model(path, self.backend, frozen=True)
            if model.config.vocab_size < self.vocab:
                raise ValueError(f"reference: {path} has {model.config.vocab_size} vocabulary rows, fewer than the "
                                 f"tokenizer's {self.vocab}")
            fpt = flops_per_token(ModelConfig.from_dict(manifest["model_config"]), self.seq_len)
            compiled, why = self.score_compile(len(windows), fpt)
            self.log(f"round {k}: scoring with the {name}, compile {'on' if compiled else 'off'}: {why}")
            key = fingerprint(manifest, self.data_dir, windows, self.seq_len, spec.score_chunk, spec.precision,
                              compiled)
            every = max(1, -(-len(windows) // spec.score_chunk) // 10)

            def progress(done, n, name=name):
                if self.on_chunk:
                    self.on_chunk(done, n)
                if done % every == 0 or done >= n:
                    self.log(f"round {k}: scoring with the {name} {done}/{n} chunks")
                    self.record.progress(offset, total or offset, None, f"round {k}: scoring {done}/{n}")

            sp = score_windows(model, self.train_data, windows, rdir / "scores" / name, key, backend=self.backend,
                               world=self.world, micro_batch=mb, chunk=spec.score_chunk, progress=progress,
                               compiled=compiled)
            del model
            losses = sp.losses if losses is None else losses - sp.losses
            stats["tokens"] += sp.tokens
            stats["seconds"] += sp.seconds
            stats["flops"] += sp.tokens * fpt / 3  # forward only: a third of the training FLOPs
            stats["chunks"] += sp.chunks
            stats["resumed_chunks"] += sp.resumed_chunks
        stats["tokens_per_s"] = stats["tokens"] / stats["seconds"] if stats["seconds"] and stats["tokens"] else None
        items = batch_scores(losses, spec.batch_size) if spec.granularity == "batch" else losses
        if self.world.is_main:
            rdir.mkdir(parents=True, exist_ok=True)
            np.save(rdir / "item_scores.npy", items)
            pool.save(rdir)
            write_json_atomic(rdir / "scoring.json", {"checkpoint": str(checkpoint), "score": spec.score,
                                                      "reference": spec.reference, "granularity": spec.granularity,
                                                      "n_items": len(items), **stats})
        distributed.barrier(self.world)
        return stats

    # --- sample ------------------------------------------------------------------------------
    def sample(self, rdir: Path, k: int, pool: Pool, parent: str, scoring: dict | None = None) -> dict:
        """Draw round k's items; records selected_ids.npy (batch ids, or window ids for sequence
        granularity), selection.json and score_hist.png. A recorded draw with the same inputs is reused."""
        spec, plan = self.spec, self.plan(pool)
        scored = spec.strategy == "hard"
        scores = np.load(rdir / "item_scores.npy") if scored else None
        seed = spec.sample_seed if spec.sample_seed is not None else spec.seed + k
        n_fresh = plan["n0"] if spec.strategy == "fresh" else round(spec.fresh_fraction * plan["n0"])
        n_replay = plan["n0"] - n_fresh
        unseen = np.setdiff1d(np.arange(self.sampler.batches_per_epoch), np.union1d(pool.batch_ids, pool.fresh_used))
        gb = spec.batch_size if spec.granularity == "sequence" else 1
        n_fresh_batches = -(-n_fresh // gb)
        key = {"strategy": spec.strategy, "temperature": spec.temperature, "rate": spec.rate, "seed": seed,
               "fresh_fraction": spec.fresh_fraction, "granularity": spec.granularity, "n0": plan["n0"],
               "pool_sha256": _sha(pool.batch_ids), "unseen_sha256": _sha(unseen),
               "scores_sha256": _sha(scores) if scored else None}
        recorded = json.loads((rdir / "selection.json").read_text()) if (rdir / "selection.json").exists() else None
        if recorded and recorded.get("key") == key and (rdir / "selected_ids.npy").exists():
            return recorded

        if n_fresh_batches > len(unseen):
            raise ValueError(f"fresh_fraction: {n_fresh_batches} fresh batches wanted but only {len(unseen)} of "
                             f"{self.sampler.batches_per_epoch} have not been trained on; lower it or the rate")
        g = sampling.seeded(seed)
        p = sampling.exp_distribution(scores, spec.temperature) if scored else \
            sampling.uniform_distribution(plan["n_items"])
        chosen = sampling.draw(p, n_replay, g) if n_replay else np.zeros(0, np.int64)
        fresh = unseen[sampling.draw(sampling.uniform_distribution(len(unseen)), n_fresh_batches, g)] \
            if n_fresh_batches else np.zeros(0, np.int64)
        if spec.granularity == "batch":
            selected = np.concatenate([pool.batch_ids[chosen], fresh])
        else:
            windows = self.pool_windows(pool)
            fresh_windows = np.concatenate([self.sampler.windows(int(b), epoch=0) for b in fresh]) if len(fresh) \
                else np.zeros(0, np.int64)
            selected = np.concatenate([windows[chosen], fresh_windows[:n_fresh]])  # whole batches drawn, N0 kept
        diag = sampling.diagnostics(scores, p, chosen) if scored else \
            {"n_pool": plan["n_items"], "n_selected": int(n_replay), "ess": float(plan["n_items"]),
             "ess_fraction": 1.0}
        info = {"round": k, "parent_checkpoint": str(parent), "pool_source": pool.source, "key": key,
                "selected": "window ids" if spec.granularity == "sequence" else "batch ids",
                "n_selected": int(len(selected)), "n_replay": int(n_replay), "n_fresh_batches": int(len(fresh)),
                "diagnostics": diag, "scoring": scoring or _read_json(rdir / "scoring.json")}
        if self.world.is_main:
            np.save(rdir / "selected_ids.npy", selected)
            np.save(rdir / "fresh_ids.npy", fresh)
            pool.save(rdir)
            if scored:
                score_histogram(scores, chosen, rdir / "score_hist.png",
                                f"round {k}: {spec.score} scores, T={spec.temperature}, rate {spec.rate}")
            write_json_atomic(rdir / "selection.json", info)
        distributed.barrier(self.world)
        return info

    # --- train -------------------------------------------------------------------------------
    def train_round(self, k: int, rdir: Path, tspec, offset: int, total: int, extra: dict) -> dict:
        done = read_result(rdir)
        if done and done.get("kind") == "round":
            return done
        return train(tspec, rdir, show_progress=self.show_progress, log=lambda msg: self.log(f"round {k}: {msg}"),
                     observer=RoundObserver(self, k, rdir, offset, total, extra))

    def continued_lr(self, parent: str) -> float:
        """The last learning rate of the run that wrote `parent` (lr_schedule: constant)."""
        rows = [r for r in read_metrics(Path(parent).parent.parent) if r.get("split") == "train" and "lr" in r]
        if rows:
            return rows[-1]["lr"]
        self.log("no metrics beside the parent checkpoint: continuing at optim.lr x min_lr_ratio")
        return self.spec.optim.lr * self.spec.optim.min_lr_ratio


class RoundObserver(RunObserver):
    """Follows round k's train run as it records: its metrics go into the stage's at global steps with a
    `round` field (steps the stage has are skipped: a resumed round repeats them), so the service sees one
    series; its progress becomes the stage's; and its result.json is written once as the round's (kind
    `round`, the selection's files, the round's figures), so a round with a result.json is finished."""

    def __init__(self, stage: Stage, k: int, rdir: Path, offset: int, total: int, extra: dict):
        self.stage, self.k, self.rdir, self.offset, self.total, self.extra = stage, k, rdir, offset, total, extra
        self.tokens_per_s: list[float] = []

    def on_metric(self, row: dict) -> None:
        if row.get("split") == "train" and "tokens_per_s" in row:
            self.tokens_per_s.append(row["tokens_per_s"])
        row = {**row, "step": row["step"] + self.offset, "round": self.k}
        last = self.stage.last_step
        if row["step"] > last.get(row.get("split"), -1):
            last[row.get("split")] = row["step"]
            self.stage.record.metric(**row)

    def on_progress(self, row: dict) -> None:
        self.stage.record.progress(self.offset + row["step"], self.total, row["eta_s"], f"round {self.k}: train")

    def on_result(self, result: dict) -> dict:
        artifacts = list(result["artifacts"])
        for name, file, typ in (("selected_ids", "selected_ids.npy", "data"), ("pool_ids", "pool_ids.npy", "data"),
                                ("selection", "selection.json", "report"),
                                ("score_histogram", "score_hist.png", "plot")):
            if (self.rdir / file).exists():
                artifacts.append({"name": name, "path": file, "type": typ})
        rates = self.tokens_per_s  # the first interval holds the warm-up: left out when there are others
        return {**result, "kind": "round", "artifacts": artifacts,
                "summary": {**result["summary"], "round": self.k, "global_step_offset": self.offset,
                            "train_tokens_per_s": statistics.median(rates[1:] or rates) if rates else None,
                            **self.extra}}


def run_rounds(spec: RoundsSpec, out_dir: str | Path, log=print, show_progress: bool | None = False,
               observer: RunObserver | None = None) -> dict:
    """`observer` sees the stage's own records (engine/run_record.py RunObserver)."""
    st = Stage(spec, out_dir, log, show_progress, observer)
    out, world = st.out, st.world
    st.record.start("rounds", spec.model_dump(mode="json"), backend=st.backend.describe(), world_size=world.size,
                    data_dir=str(st.data_dir))
    rounds, lineage, offset = [], [], 0
    if spec.first_round_steps:
        pool = Pool(st.seen_batches(spec.model_dump(), spec.first_round_steps, "this stage"), np.zeros(0, np.int64),
                    "round 1 of this stage")
        plan = st.plan(pool)
        total = spec.first_round_steps + spec.rounds * plan["steps"]
        rdir = round_dir(out, 1)
        if world.is_main:
            rdir.mkdir(parents=True, exist_ok=True)
            pool.save(rdir)
        optim = {"schedule_steps": total} if spec.lr_schedule == "continue" else {}  # one schedule, every round
        res = st.train_round(1, rdir, spec.round_spec(steps=spec.first_round_steps, optim=optim), 0, total,
                             {"parent": None})
        parent, offset = res["summary"]["checkpoint"], spec.first_round_steps
        rounds.append(res["summary"])
        lineage.append({"round": 1, "checkpoint": parent, "parent": None})
    else:
        parent = spec.init.checkpoint
        pool = st.parent_pool(parent)
        plan = st.plan(pool)
        total = spec.rounds * plan["steps"]
        lineage.append({"round": 1, "checkpoint": parent, "parent": None, "trained_by": "an earlier stage"})
    unit = "batches" if spec.granularity == "batch" else "sequences"
    st.log(f"pool: {len(pool.batch_ids)} batches ({pool.source}); each replay round draws {plan['n0']} {unit} "
           f"({spec.strategy}) and trains {plan['steps']} steps")

    for k in range(2, 2 + spec.rounds):
        rdir = round_dir(out, k)
        done = read_result(rdir)
        if not (done and done.get("kind") == "round"):
            if world.is_main:
                rdir.mkdir(parents=True, exist_ok=True)
            scoring = st.score(rdir, parent, pool, k, offset, total) if spec.strategy == "hard" else None
            sel = st.sample(rdir, k, pool, parent, scoring)
        else:
            sel = _read_json(rdir / "selection.json")
        ids = str(rdir / "selected_ids.npy")
        data = {"batch_ids": ids} if spec.granularity == "batch" else {"window_ids": ids}
        optim, init = {}, {"checkpoint": parent, "continue_run": spec.lr_schedule == "continue"}
        if spec.lr_schedule == "constant":
            optim = {"lr": st.continued_lr(parent), "warmup_frac": 0.0, "min_lr_ratio": 1.0,
                     "lr_scaling_base_batch": None}
        tspec = spec.round_spec(steps=plan["steps"], data=data, optim=optim, init=init)
        res = st.train_round(k, rdir, tspec, offset, total, {"parent": parent, "selection": _brief(sel)})
        pool = Pool(pool.batch_ids, np.union1d(pool.fresh_used, np.load(rdir / "fresh_ids.npy")), pool.source)
        parent = res["summary"]["checkpoint"]
        offset += plan["steps"]
        rounds.append(res["summary"])
        lineage.append({"round": k, "checkpoint": parent, "parent": lineage[-1]["checkpoint"]})

    if not world.is_main:
        return {"kind": "rounds", "summary": {"checkpoint": parent}}
    return _finish(st, rounds, lineage, parent)


def _finish(st: Stage, rounds: list[dict], lineage: list[dict], last: str) -> dict:
    spec, out = st.spec, st.out
    starts = [(r["round"], r["global_step_offset"]) for r in rounds]
    plot = forgetting_curve(read_metrics(out), starts, out / "forgetting.png",
                            f"forgetting probe and held-out loss, {len(rounds)} round(s) here")
    final = rounds[-1]
    replays = [r for r in rounds if r.get("selection")]
    score_tokens = sum((r["selection"].get("scoring_tokens") or 0) for r in replays)
    score_s = sum((r["selection"].get("scoring_seconds") or 0) for r in replays)
    score_tps = score_tokens / score_s if score_s else None
    train_tps = statistics.median([r["train_tokens_per_s"] for r in rounds if r.get("train_tokens_per_s")] or [0])
    summary = {"rounds": [_row(r) for r in rounds], "lineage": lineage, "checkpoint": last,
               "val_loss": final["val_loss"], "val_ppl": final["val_ppl"], "val_bpb": final["val_bpb"],
               "steps": sum(r["steps"] for r in rounds), "tokens": sum(r["tokens"] for r in rounds),
               "flops": sum(r["flops"] for r in rounds),
               "scoring_tokens": score_tokens,
               "scoring_flops": sum((r["selection"].get("scoring_flops") or 0) for r in replays),
               "scoring_tokens_per_s": score_tps,
               "score_vs_train_throughput": score_tps / train_tps if score_tps and train_tps else None}
    artifacts = [{"name": "checkpoint", "path": last, "type": "checkpoint"},
                 {"name": "forgetting_curve", "path": str(plot), "type": "plot"}]
    for r in rounds:
        rdir = round_dir(out, r["round"])
        artifacts.append({"name": f"round_{r['round']}_checkpoint", "path": r["checkpoint"],
                          "type": "checkpoint"})
        for name, file, typ in (("selected_ids", "selected_ids.npy", "data"), ("score_histogram", "score_hist.png",
                                                                                 "plot")):
            if r.get("selection") and (rdir / file).exists():
                artifacts.append({"name": f"round_{r['round']}_{name}", "path": str(rdir / file), "type": typ})
    inputs = [str(s) for s in spec.data.sources] + ([spec.data.tokenizer] if spec.data.tokenizer != "byte" else [])
    inputs += [p for p in (spec.init.checkpoint, spec.reference) if p]
    return st.record.result("rounds", summary, artifacts, inputs)


def _brief(sel: dict) -> dict:
    d, s = sel.get("diagnostics", {}), sel.get("scoring") or {}
    return {"strategy": sel["key"]["strategy"], "seed": sel["key"]["seed"], "n_selected": sel["n_selected"],
            "n_fresh_batches": sel["n_fresh_batches"], "mean_score_pool": d.get("mean_score_pool"),
            "mean_score_selected": d.get("mean_score_selected"), "ess_fraction": d.get("ess_fraction"),
            "topk_overlap": d.get("topk_overlap"), "scoring_tokens": s.get("tokens"),
            "scoring_seconds": s.get("seconds"), "scoring_flops": s.get("flops"),
            "scoring_tokens_per_s": s.get("tokens_per_s")}


def _row(r: dict) -> dict:
    keep = ("round", "steps", "tokens", "val_loss", "val_bpb", "checkpoint", "train_tokens_per_s", "parent")
    return {**{k: r.get(k) for k in keep}, **({"selection": r["selection"]} if r.get("selection") else {})}


def _sha(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None



def _pool_for(st: Stage, out: Path, checkpoint: str) -> Pool:
    return Pool.load(out, f"{out} (recorded)") or st.parent_pool(checkpoint)


def score_checkpoint(spec: RoundsSpec, out_dir: str | Path, checkpoint: str | None = None, k: int = 2,
                     log=print) -> dict:
    """The scoring piece alone: loss of every pool item under `checkpoint` (default init.checkpoint)
    into OUT/item_scores.npy (resumable from OUT/scores/)."""
    checkpoint = checkpoint or spec.init.checkpoint
    if not checkpoint:
        raise ValueError("init.checkpoint: scoring needs the model to score with (--checkpoint)")
    st = Stage(spec, out_dir, log)
    st.record.start("score", spec.model_dump(mode="json"), backend=st.backend.describe(), world_size=st.world.size)
    pool = _pool_for(st, st.out, spec.init.checkpoint or checkpoint)  # the batches round 1 trained on
    stats = st.score(st.out, checkpoint, pool, k)
    scores = np.load(st.out / "item_scores.npy")
    summary = {**stats, "checkpoint": checkpoint, "n_items": len(scores), "n_pool_batches": len(pool.batch_ids),
               "mean_score": float(scores.mean()), "granularity": spec.granularity}
    return st.record.result("score", summary, [{"name": "scores", "path": str(st.out / "item_scores.npy"),
                                                 "type": "data"}], [checkpoint])


def sample_scores(spec: RoundsSpec, out_dir: str | Path, checkpoint: str | None = None, k: int = 2,
                  log=print) -> dict:
    """The sampling piece alone: draw round k's items from OUT/item_scores.npy (written by
    score_checkpoint; not needed by the uniform and fresh strategies) into OUT/selected_ids.npy."""
    checkpoint = checkpoint or spec.init.checkpoint or ""
    st = Stage(spec, out_dir, log)
    if spec.strategy == "hard" and not (st.out / "item_scores.npy").exists():
        raise ValueError(f"--out: {st.out / 'item_scores.npy'} does not exist; run `tinyforge rounds score` first")
    if not (st.out / "pool_ids.npy").exists() and not checkpoint:
        raise ValueError("init.checkpoint: no recorded pool in --out and no checkpoint to read round 1's batches from")
    st.record.start("sample", spec.model_dump(mode="json"), backend=st.backend.describe(), world_size=st.world.size)
    info = st.sample(st.out, k, _pool_for(st, st.out, spec.init.checkpoint or checkpoint), checkpoint)
    artifacts = [{"name": "selected_ids", "path": str(st.out / "selected_ids.npy"), "type": "data"}]
    if (st.out / "score_hist.png").exists():
        artifacts.append({"name": "score_histogram", "path": str(st.out / "score_hist.png"), "type": "plot"})
    return st.record.result("sample", _brief(info), artifacts, [checkpoint] if checkpoint else [])
