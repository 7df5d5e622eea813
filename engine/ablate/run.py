"""The ablation stage: tokenizers -> shapes and budgets -> parent -> inherited child -> the five arms per
seed at equal training FLOPs -> the arms that saw more bytes than the fewest again, each with its own
schedule ending at that byte count -> table, JSON, bar chart. Every piece is an engine library call
(spm stage, train, inherit, rounds); every run keeps its own run directory, and a finished run
(result.json present) is read back instead of trained again, so re-running the command resumes."""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.ablate import report
from engine.ablate.shapes import check_matched
from engine.ablate.spec import AblateSpec
from engine.arch import count_params, flops_per_token
from engine.config import ModelConfig, model_config
from engine.data import TokenData, prepare
from engine.inherit.run import DATA_DEPTH, DATA_WIDTH
from engine.paths import state_home
from engine.run_record import RunRecord
from engine.spec import TrainSpec
from engine.tokenizers import load_tokenizer


@dataclass(frozen=True)
class Arm:
    key: str
    label: str  # cumulative, as in the paper's figure
    shape: str  # base | wide | deep
    tokenizer: str  # large | compact
    inherit: bool = False
    rounds: bool = False


ARMS = (Arm("arm1", "1 baseline", "base", "large"),
        Arm("arm2", "2 + compact tokenizer", "wide", "compact"),
        Arm("arm3", "3 + deeper-narrower", "deep", "compact"),
        Arm("arm4", "4 + inheritance", "deep", "compact", inherit=True),
        Arm("arm5", "5 + multi-round", "deep", "compact", inherit=True, rounds=True))


def _done(run_dir: Path, kind: str, config: dict | None = None) -> dict | None:
    """The result of a finished run in run_dir, None if there is none; a finished run of another config
    is an error (re-running resumes only the same study)."""
    path = run_dir / "result.json"
    if not path.exists() or json.loads(path.read_text()).get("kind") != kind:
        return None
    if config is not None and json.loads((run_dir / "run.json").read_text()).get("config") != config:
        raise ValueError(f"--out: {run_dir} holds a finished run of another config; give a fresh --out")
    return json.loads(path.read_text())


def _quiet_prefix(log, prefix: str):
    """The trainer's log lines, prefixed; the per-step lines only every few steps (log_every)."""
    return lambda msg, *a, **k: log(f"  {prefix}: {msg}")


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
        """The large SentencePiece model trained on the corpus, and its compaction (engine/spm stage)."""
        from engine.spm.run import run_stage
        from engine.spm.spec import TokenizerStageSpec

        tdir = self.out / "tokenizer"
        res = _done(tdir, "tokenizer")
        if res is None:
            self.log(f"tokenizer: training a {self.sc.large_vocab:,}-piece BPE on the corpus, compacting to "
                     f"{self.sc.compact_vocab:,}")
            res = run_stage(TokenizerStageSpec(action="compact", sources=self.spec.sources,
                                               vocab_size=self.sc.large_vocab, compact_vocab=self.sc.compact_vocab),
                            tdir, log=lambda m: self.log(f"  tokenizer: {m}"))
        arts = {a["name"]: str((tdir / a["path"]).resolve()) for a in res["artifacts"]}
        return {"large": arts["large_tokenizer"], "compact": arts["tokenizer"], "id_map": arts["id_map"],
                "summary": res["summary"]}

    def data_info(self, tokenizer: str) -> dict:
        """Bytes per token of the train and held-out splits, and how many micro-batches cover the held-out split."""
        tok = load_tokenizer(tokenizer)
        root = prepare(self.spec.sources, tok, self.cache, log=lambda m: self.log(f"  data: {m}"))
        train = TokenData.open(root, "train", self.sc.seq_len)
        val = TokenData.open(root, "val", self.sc.seq_len)
        meta = json.loads((root / "meta.json").read_text())
        return {"vocab": tok.vocab_size, "train_bytes_per_token": train.bytes_per_token,
                "val_bytes_per_token": val.bytes_per_token, "val_windows": len(val),
                "val_tokens": meta["tokens"]["val"], "val_bytes": meta["bytes"]["val"],
                "train_tokens": meta["tokens"]["train"], "train_bytes": meta["bytes"]["train"],
                "eval_batches": math.ceil(len(val) / self.sc.batch_size)}

    # --- runs ---------------------------------------------------------------------------------
    def train_spec(self, preset: str, tokenizer: str, steps: int, seed: int, eval_batches: int,
                   init: str | None = None) -> dict:
        sc = self.sc
        return dict(model={"preset": preset},
                    data={"sources": self.spec.sources, "tokenizer": tokenizer, "cache_dir": str(self.cache)},
                    init={"checkpoint": init}, optim={"lr": sc.lr}, steps=steps, batch_size=sc.batch_size,
                    micro_batch=sc.batch_size, seq_len=sc.seq_len, seed=seed, backend=self.spec.backend,
                    precision=self.spec.precision, log_every=max(steps // 4, 1), eval_every=steps,
                    eval_batches=eval_batches, checkpoint_every=steps, keep_checkpoints=1)

    def train(self, run_dir: Path, config: dict, name: str) -> dict:
        from engine.train import train

        spec = TrainSpec.model_validate(config)
        res = _done(run_dir, "train", spec.model_dump(mode="json"))
        if res is None:
            t = time.time()
            res = train(spec, run_dir, show_progress=False,
                        log=_quiet_prefix(self.log, name))
            res["summary"]["seconds"] = round(time.time() - t, 1)
            (run_dir / "result.json").write_text(json.dumps(res, indent=1))
        return res["summary"]

    def rounds(self, run_dir: Path, config: dict, round1_ckpt: str, steps: int, name: str) -> dict:
        from engine.rounds.run import run_rounds
        from engine.rounds.spec import RoundsSpec

        cfg = {**config, "init": {"checkpoint": round1_ckpt}, "steps": steps, "rounds": 1,
               "rate": self.spec.replay_rate, "temperature": self.spec.replay_temperature, "strategy": "hard"}
        spec = RoundsSpec.model_validate(cfg)
        res = _done(run_dir, "rounds", spec.model_dump(mode="json"))
        if res is None:
            t = time.time()
            res = run_rounds(spec, run_dir, log=_quiet_prefix(self.log, name))
            res["summary"]["seconds"] = round(time.time() - t, 1)
            (run_dir / "result.json").write_text(json.dumps(res, indent=1, default=str))
        return res["summary"]

    def parent_and_child(self, tok: dict, parent_cfg: ModelConfig, data: dict) -> dict:
        """Train the parent (large tokenizer, same corpus), then cut the deep arm's child out of it."""
        from engine.inherit.run import inherit
        from engine.inherit.spec import InheritSpec

        sc, spec = self.sc, self.spec
        self.log(f"parent: {sc.parent_preset} ({count_params(parent_cfg).total / 1e6:.2f}M params), "
                 f"{spec.parent_steps} steps")
        parent = self.train(self.out / "parent", self.train_spec(sc.parent_preset, tok["large"], spec.parent_steps, 0,
                                                                 data["large"]["eval_batches"]), "parent")
        self.log(f"parent: held-out {parent['val_bpb']:.4f} bpb, {parent['flops'] / 1e12:.2f} TFLOP")
        idir = self.out / "inherit"
        res = _done(idir, "inherit")
        calib_batches = 8
        if res is None:
            self.log(f"inherit: child {sc.deep_preset} from the parent, depth {spec.inherit_depth}, width "
                     f"{spec.inherit_width}, vocabulary rows by the compact tokenizer's id map")
            ispec = InheritSpec(parent=parent["checkpoint"], child={"preset": sc.deep_preset},
                                depth={"method": spec.inherit_depth}, width=spec.inherit_width,
                                calib={"sources": spec.sources, "tokenizer": tok["large"], "batches": calib_batches,
                                       "micro_batch": sc.batch_size, "seq_len": sc.seq_len,
                                       "cache_dir": str(self.cache)},
                                vocab={"tokenizer": tok["compact"], "id_map": tok["id_map"]},
                                eval_batches=data["compact"]["eval_batches"], seed=0, backend=spec.backend)
            res = inherit(ispec, idir, log=lambda m: self.log(f"  inherit: {m}"))
        # calibration cost: forward passes of the parent (a third of a training step per token; x3 with a
        # backward pass); loss_rise forks one stream per layer, so it is counted as n_layer passes
        s = res["summary"]
        tokens = calib_batches * self.tokens_per_step
        if spec.inherit_width == "learnable":
            tokens = max(calib_batches, 300) * self.tokens_per_step
        passes = {"block_influence": 1, "loss_rise": parent_cfg.n_layer}.get(spec.inherit_depth, 0)
        passes += {"activation": 1, "taylor": 3, "learnable": 3}.get(spec.inherit_width, 0)
        uses_data = spec.inherit_depth in DATA_DEPTH or spec.inherit_width in DATA_WIDTH
        inherit_flops = flops_per_token(parent_cfg, sc.seq_len) / 3 * tokens * passes if uses_data else 0.0
        bpt = data["compact"]["val_bytes_per_token"]
        return {"parent": parent, "child_checkpoint": s["checkpoint"], "layers": s["layers"],
                "inherit_flops": inherit_flops,
                "child_step0_bpb": s.get("inherited_loss", float("nan")) / math.log(2) / bpt,
                "random_init_step0_bpb": s.get("random_init_loss", float("nan")) / math.log(2) / bpt}

    def run_arm(self, arm: Arm, steps: int, seed: int, view: str, ctx: dict) -> dict:
        """One arm at one seed for `steps` steps (arm 5: round 1 then the replay round, same total steps)."""
        tok_path = ctx["tok"][arm.tokenizer]
        data = ctx["data"][arm.tokenizer]
        preset = ctx["presets"][arm.shape]
        init = ctx["inherit"]["child_checkpoint"] if arm.inherit else None
        run_dir = self.out / view / f"seed{seed}" / arm.key
        name = f"{arm.key} seed {seed} ({view})"
        train_seed = 1000 + seed
        t = time.time()
        if not arm.rounds:
            s = self.train(run_dir, self.train_spec(preset, tok_path, steps, train_seed, data["eval_batches"], init),
                           name)
            row = {"steps": s["steps"], "tokens": s["tokens"], "flops": s["flops"], "val_loss": s["val_loss"],
                   "val_bpb": s["val_bpb"], "extra_flops": 0.0}
        else:
            s1_steps = max(1, round(steps * self.spec.round1_fraction))
            s2_steps = steps - s1_steps
            r1 = self.train(run_dir / "round_1", self.train_spec(preset, tok_path, s1_steps, train_seed,
                                                                 data["eval_batches"], init), name + " round 1")
            base = self.train_spec(preset, tok_path, s2_steps, train_seed, data["eval_batches"])
            base.pop("init")
            r2 = self.rounds(run_dir / "rounds", base, r1["checkpoint"], s2_steps, name + " round 2")
            row = {"steps": r1["steps"] + r2["steps"], "tokens": r1["tokens"] + r2["tokens"],
                   "flops": r1["flops"] + r2["flops"], "val_loss": r2["val_loss"], "val_bpb": r2["val_bpb"],
                   "extra_flops": r2.get("scoring_flops") or 0.0, "round1_steps": r1["steps"],
                   "round2_steps": r2["steps"], "round1_val_bpb": r1["val_bpb"],
                   "scoring_tokens": r2.get("scoring_tokens")}
        row["bytes"] = row["tokens"] * data["train_bytes_per_token"]
        row["seed"] = seed
        row["seconds"] = round(time.time() - t, 1)
        return row

    # --- the whole study --------------------------------------------------------------------------
    def run(self) -> dict:
        spec, sc, log = self.spec, self.sc, self.log
        torch.set_num_threads(spec.threads)
        self.record.start("ablate", spec.model_dump(mode="json"),
                          backend={"backend": spec.backend, "device": spec.backend, "precision": spec.precision,
                                   "ops": {}}, world_size=1)
        self.record.progress(0, 1, None, "tokenizer")
        tok = self.tokenizers()
        data = {name: self.data_info(tok[name]) for name in ("large", "compact")}
        log(f"tokenizers: large {data['large']['vocab']:,} pieces ({data['large']['train_bytes_per_token']:.3f} "
            f"bytes/token), compact {data['compact']['vocab']:,} ({data['compact']['train_bytes_per_token']:.3f} "
            "bytes/token)")

        presets = {"base": sc.base_preset, "wide": sc.wide_preset, "deep": sc.deep_preset}
        cfgs = {k: model_config(p) for k, p in presets.items()}
        for k, c in cfgs.items():
            need = data["large" if k == "base" else "compact"]["vocab"]
            if c.vocab_size < need:
                raise ValueError(f"model.preset: {presets[k]} has {c.vocab_size} vocabulary rows, fewer than the "
                                 f"tokenizer's {need}")
        diffs = check_matched(cfgs)
        fpt = {k: flops_per_token(c, sc.seq_len) for k, c in cfgs.items()}
        budget = spec.baseline_steps * self.tokens_per_step * fpt["base"]
        steps = {a.key: round(budget / (self.tokens_per_step * fpt[a.shape])) for a in ARMS}
        for a in ARMS:
            p = count_params(cfgs[a.shape])
            log(f"{a.label}: {presets[a.shape]} {p.total:,} params ({diffs[a.shape]:+.2%} vs arm 1; body {p.body:,}, "
                f"embedding+head {p.embedding:,}), {fpt[a.shape] / 1e6:.2f} MFLOP/token -> {steps[a.key]} steps")

        # equal bytes: the fewest bytes any arm sees under the compute budget; arms that see more run again
        bytes_per_step = {a.key: self.tokens_per_step * data[a.tokenizer]["train_bytes_per_token"] for a in ARMS}
        target_bytes = min(steps[k] * bytes_per_step[k] for k in steps)
        bytes_steps = {k: max(1, round(target_bytes / bytes_per_step[k])) for k in steps}

        ctx = {"tok": tok, "data": data, "presets": presets}
        parent_cfg = model_config(sc.parent_preset)
        ctx["inherit"] = self.parent_and_child(tok, parent_cfg, data)

        jobs = [("compute", seed, a, steps[a.key]) for seed in range(spec.seeds) for a in ARMS]
        jobs += [("bytes", seed, a, bytes_steps[a.key]) for seed in range(spec.bytes_seeds) for a in ARMS
                 if bytes_steps[a.key] != steps[a.key]]
        runs: dict[str, dict[str, list[dict]]] = {"compute": {}, "bytes": {}}
        t_runs = time.time()
        for i, (view, seed, arm, n) in enumerate(jobs):
            elapsed = time.time() - t_runs
            eta = elapsed / i * (len(jobs) - i) if i else None
            self.record.progress(i, len(jobs), eta, f"{view} seed {seed} {arm.key}")
            log(f"[{i + 1}/{len(jobs)}] {arm.label}, seed {seed}, equal {view}: {n} steps"
                + (f" (eta of the runs {eta / 60:.1f} min)" if eta else ""))
            row = self.run_arm(arm, n, seed, view, ctx)
            runs[view].setdefault(arm.key, []).append(row)
            log(f"[{i + 1}/{len(jobs)}] {arm.key} seed {seed}: held-out {row['val_bpb']:.4f} bpb, loss "
                f"{row['val_loss']:.4f}, {row['tokens']:,} tokens, {row['bytes'] / 1e6:.3f} MB, "
                f"{row['flops'] / 1e12:.3f} TFLOP ({row['seconds']:.0f}s)")
        # arms whose equal-bytes steps equal their equal-compute steps share those runs
        for seed in range(spec.bytes_seeds):
            for a in ARMS:
                if bytes_steps[a.key] == steps[a.key]:
                    runs["bytes"].setdefault(a.key, []).append(runs["compute"][a.key][seed])
        self.record.progress(len(jobs), len(jobs), 0, "report")

        flops = [statistics.mean(r["flops"] for r in runs["compute"][a.key]) for a in ARMS]
        spread = max(flops) / min(flops) - 1
        for a, f in zip(ARMS, flops):  # whole steps: each arm is off the budget by at most half a step
            if abs(f - budget) > 0.5 * self.tokens_per_step * fpt[a.shape] * (1 + 1e-9):
                raise RuntimeError(f"{a.key}: {f:.4g} training FLOPs, more than half a step from the budget "
                                   f"{budget:.4g}")
        study = {
            "spec": spec.model_dump(mode="json"), "scale": sc.__dict__, "tokens_per_step": self.tokens_per_step,
            "tokenizers": {"large": tok["large"], "compact": tok["compact"], "compaction": tok["summary"]},
            "data": data, "budget_flops": budget, "flops_spread": spread, "target_bytes": target_bytes,
            "parent": {"preset": sc.parent_preset, "params": count_params(parent_cfg).total,
                       "steps": ctx["inherit"]["parent"]["steps"], "tokens": ctx["inherit"]["parent"]["tokens"],
                       "flops": ctx["inherit"]["parent"]["flops"], "val_bpb": ctx["inherit"]["parent"]["val_bpb"],
                       "val_loss": ctx["inherit"]["parent"]["val_loss"],
                       "inherit_flops": ctx["inherit"]["inherit_flops"], "kept_layers": ctx["inherit"]["layers"],
                       "child_step0_bpb": ctx["inherit"]["child_step0_bpb"],
                       "random_init_step0_bpb": ctx["inherit"]["random_init_step0_bpb"]},
            "arms": [], "seconds": None}
        for a in ARMS:
            p = count_params(cfgs[a.shape])
            study["arms"].append({
                "key": a.key, "label": a.label, "preset": presets[a.shape], "tokenizer": a.tokenizer,
                "vocab": cfgs[a.shape].vocab_size, "n_layer": cfgs[a.shape].n_layer, "n_embd": cfgs[a.shape].n_embd,
                "ffn_hidden": cfgs[a.shape].ffn_hidden, "params_total": p.total, "params_body": p.body,
                "params_embedding": p.embedding, "params_vs_arm1": diffs[a.shape], "flops_per_token": fpt[a.shape],
                "inherits": a.inherit, "replay_round": a.rounds,
                "compute": report.aggregate(runs["compute"][a.key]),
                "bytes": report.aggregate(runs["bytes"][a.key]) if runs["bytes"].get(a.key) else None})
        study["seconds"] = round(time.time() - self.t0, 1)
        paths = report.write(study, self.out)
        log(f"wall time {study['seconds'] / 60:.1f} min; wrote {', '.join(str(p) for p in paths.values())}")
        artifacts = [{"name": "ablation", "path": str(paths["json"]), "type": "report"},
                     {"name": "ablation_md", "path": str(paths["md"]), "type": "report"},
                     {"name": "plot", "path": str(paths["png"]), "type": "plot"},
                     {"name": "large_tokenizer", "path": tok["large"], "type": "tokenizer"},
                     {"name": "tokenizer", "path": tok["compact"], "type": "tokenizer"}]
        summary = {"arms": {a["key"]: {"val_bpb": a["compute"]["val_bpb"],
                                       "val_bpb_equal_bytes": a["bytes"]["val_bpb"] if a["bytes"] else None,
                                       "params": a["params_total"], "flops": a["compute"]["flops"]}
                            for a in study["arms"]},
                   "budget_flops": budget, "target_bytes": target_bytes, "seconds": study["seconds"]}
        return self.record.result("ablate", summary, artifacts, list(spec.sources))


def run_ablation(spec: AblateSpec, out_dir: str | Path, log=print) -> dict:
    return Ablation(spec, out_dir, log).run()
