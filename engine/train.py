"""The training loop: AdamW, warmup + cosine, clipping, accumulation, bf16 autocast over fp32 master
weights, periodic evaluation, atomic checkpoints with bit-identical resume (also after SIGKILL), SIGTERM ->
save and exit, and a policy for non-finite losses (fail, skip the update, or roll back with a lower LR)."""
from __future__ import annotations

import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from engine import checkpoint as ckpt
from engine import compiling, distributed, faults
from engine.arch import count_params, flops_per_token, memory_fit_error
from engine.backend import Backend, resolve
from engine.config import ModelConfig, model_config, padded_vocab, replace
from engine.data import (BatchSampler, SubsetSampler, TokenData, WindowSubsetSampler, load_batch_ids, prepare_data,
                         rank_slice)
from engine.model import GPT
from engine.parallel import Parallel
from engine.peaks import device_peak
from engine.run_record import RunObserver, RunRecord, read_metrics
from engine.spec import TrainSpec


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was saved."""


def lr_at(step: int, total: int, spec: TrainSpec, base_lr: float) -> float:
    warmup = int(spec.optim.warmup_frac * total)
    if step < warmup:
        return base_lr * (step + 1) / warmup
    floor = base_lr * spec.optim.min_lr_ratio
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (base_lr - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))


def lr_schedule(spec: TrainSpec, init_state: dict | None, init_step: int) -> dict:
    """Where this run sits on its learning-rate schedule: `offset` (steps of the run it continues, added to
    this run's step) and `total` (the schedule's length). A fresh run: offset 0, total = its steps. A
    continued run (init.continue_run) follows the schedule its checkpoint recorded; one that had ended
    leaves the learning rate at its floor. optim.schedule_steps sets the length either way."""
    offset, total = 0, spec.steps
    if init_state is not None:
        before = init_state.get("schedule") or {"offset": 0, "total": init_step}
        offset = before["offset"] + init_step
        total = before["total"]
    return {"offset": offset, "total": spec.optim.schedule_steps or total}


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: norms and biases (1-d tensors) are not decayed."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def resolve_model_config(spec: TrainSpec, vocab_size: int) -> tuple[ModelConfig, Path | None]:
    """The init checkpoint's config wins (an inherited child has its own shape); else the preset."""
    if spec.init.checkpoint:
        manifest = ckpt.verify(Path(spec.init.checkpoint))
        return ModelConfig.from_dict(manifest["model_config"]), Path(spec.init.checkpoint)
    if spec.init.hf_dir:
        from engine.hf import read_hf_config
        return read_hf_config(Path(spec.init.hf_dir)), None
    overrides = dict(spec.model.overrides)
    explicit_vocab = overrides.pop("vocab_size", None)  # wins over both the preset and the tokenizer
    cfg = model_config(spec.model.preset, vocab_size=padded_vocab(vocab_size), **overrides)
    return (replace(cfg, vocab_size=explicit_vocab) if explicit_vocab else cfg), None


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def available_memory_bytes(backend: Backend) -> float:
    if backend.name == "cuda":
        return torch.cuda.mem_get_info(backend.device)[0]
    if backend.name == "npu":
        return torch.npu.mem_get_info(backend.device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@torch.no_grad()
def evaluate(model, data: TokenData, n_batches: int, micro_batch: int, backend: Backend, windows=None) -> dict:
    """Held-out metrics over the first n_batches x micro_batch windows of `data` (or the given windows):
    mean loss (nats/token), perplexity, and bits-per-byte = summed loss / ln 2 / the UTF-8 bytes of exactly
    the target tokens scored (data.token_bytes; engine/tokenizer/load.py token_byte_lengths has the convention),
    with `tokens` and `bytes` the counts scored."""
    model.eval()
    windows = np.arange(min(len(data), n_batches * micro_batch)) if windows is None else np.asarray(windows)
    if len(windows) == 0:
        model.train()
        return {}
    total, count, n_bytes = 0.0, 0, 0
    for start in range(0, len(windows), micro_batch):
        x, y = data.batch(windows[start:start + micro_batch])
        with backend.autocast():
            loss = model(x.to(backend.device), y.to(backend.device))
        total += loss.item() * y.numel()
        count += y.numel()
        n_bytes += data.target_bytes(y)
    model.train()
    loss = total / count
    return {"loss": loss, "ppl": math.exp(min(loss, 50)), "bpb": total / math.log(2) / n_bytes if n_bytes else math.nan,
            "tokens": count, "bytes": n_bytes}


def train(spec: TrainSpec, out_dir: str | Path, show_progress: bool | None = None, log=print,
          observer: RunObserver | None = None) -> dict:
    """Train `spec` recording into out_dir (engine/run_record.py); `observer` sees each record as it is written
    (a stage training runs inside itself: rounds, the ablation) and may add to result.json."""
    out_dir = Path(out_dir)
    world = distributed.world_from_env()
    if spec.deterministic:  # before the backend: cuBLAS reads its workspace setting at its first handle
        from engine import determinism
        determinism.enable()
    backend = resolve(spec.backend, spec.precision, spec.ops, world.local_rank)
    threads = None
    if backend.device.type == "cpu":
        chosen, why = distributed.choose_cpu_threads()
        if chosen:
            torch.set_num_threads(chosen)
        threads = {"intra_op": torch.get_num_threads(), "why": why}
    distributed.init(world, backend.process_group, single_process_group=spec.parallel.strategy.startswith("zero"),
                     device=backend.device)
    record = RunRecord(out_dir, enabled=world.is_main, observer=observer)
    say = log if world.is_main else (lambda *a, **k: None)

    data_dir, tokenizer = prepare_data(spec.data, log=say)

    # every RNG a checkpoint saves starts from the seed, so an uninterrupted run and a resumed one agree bit
    # for bit in all of it (the process-random numpy/python states would differ between any two runs)
    torch.manual_seed(spec.seed)
    np.random.seed(spec.seed % 2**32)
    random.seed(spec.seed)
    cfg, init_ckpt = resolve_model_config(spec, tokenizer.vocab_size)
    seq_len = spec.seq_len or cfg.block_size
    if seq_len > cfg.block_size:
        raise ValueError(f"seq_len: {seq_len} exceeds the model's block_size {cfg.block_size}")
    train_data = TokenData.open(data_dir, "train", seq_len, vocab_limit=cfg.vocab_size)
    val_data = TokenData.open(data_dir, "val", seq_len)
    if spec.batch_size % (spec.micro_batch * world.size):
        raise ValueError(f"batch_size: {spec.batch_size} is not divisible by micro_batch x world size "
                         f"({spec.micro_batch} x {world.size})")
    sampler = BatchSampler(len(train_data), spec.batch_size, spec.seed)
    if spec.data.batch_ids:
        sampler = SubsetSampler(sampler, load_batch_ids(spec.data.batch_ids), spec.seed)
    elif spec.data.window_ids:
        sampler = WindowSubsetSampler(len(train_data), load_batch_ids(spec.data.window_ids, "data.window_ids"),
                                      spec.batch_size, spec.seed)
    # forgetting probe: fixed batches from the first tenth of this run's schedule, re-measured at each eval
    probe_steps = np.linspace(0, max(spec.steps // 10 - 1, 0), spec.data.probe_batches).astype(int).tolist()
    probe_windows = np.concatenate([sampler.windows(s) for s in probe_steps]) if probe_steps else None

    # validation checked against the planned limit; this device's free memory is known only now
    limit, source = ((spec.memory_limit_gb * 2**30, "memory_limit_gb") if spec.memory_limit_gb
                     else (available_memory_bytes(backend), f"free {backend.name} memory"))
    problem = memory_fit_error(cfg, spec.micro_batch, seq_len, spec.batch_size, limit, source,
                               autocast=backend.autocast_dtype is not None,
                               fused_ce=backend.ops.chosen.get("linear_cross_entropy") != "torch",
                               shards=world.size if spec.parallel.strategy.startswith("zero") else 1)
    if problem:
        raise MemoryError(": ".join(problem))

    model = GPT(cfg, backend.ops)
    init_parts, init_step = None, 0
    if init_ckpt and spec.init.weights == "load":
        init_manifest, init_parts = ckpt.load(init_ckpt, ("model", "train_state") if spec.init.continue_run
                                              else ("model",))
        init_step = init_manifest["step"]
        model.load_state_dict(init_parts["model"])
    elif spec.init.hf_dir and spec.init.weights == "load":
        from engine.hf import load_hf_weights
        load_hf_weights(model, Path(spec.init.hf_dir))
    model.to(backend.device)
    if spec.distill.teacher:  # KL to the teacher's logits, mixed into the training loss by hooks
        from engine.inherit.distill import attach_distillation
        attach_distillation(model, spec.distill, backend.device, log=say)
    base_lr = spec.optim.lr
    if spec.optim.lr_scaling_base_batch:
        base_lr *= (spec.batch_size / spec.optim.lr_scaling_base_batch) ** 0.5
    optimizer = backend.ops.adamw(param_groups(model, spec.optim.weight_decay), lr=base_lr,
                                  betas=spec.optim.betas, eps=spec.optim.eps, weight_decay=spec.optim.weight_decay)
    injected = faults.NonfiniteLoss(model, faults.nonfinite_steps())  # tests only; a no-op by default
    par = Parallel(model, optimizer, spec, world, backend)
    peak, peak_source = device_peak(backend.device, backend.autocast_dtype)

    ckpt_root = out_dir / "checkpoints"
    if world.is_main:
        ckpt.remove_stale_temps(ckpt_root)  # partial writes of a killed run: never valid, only clutter
    nonfinite = {"events": 0, "lr_scale": 1.0}  # kept in every checkpoint, so a resume keeps a lowered LR
    compiled = {"on": False, "resumed": None}  # the compile decision, kept in checkpoints so a resume keeps it

    def restore(on_corrupt) -> int | None:
        latest = ckpt.latest_valid(ckpt_root, on_corrupt=on_corrupt)
        if not latest:
            return None
        manifest, parts = ckpt.load(latest)
        par.load_full_state(parts["model"], parts["train_state"]["optimizer"])
        set_rng_state(parts["train_state"]["rng"])
        nonfinite.update(parts["train_state"].get("nonfinite", {}))
        compiled["resumed"] = parts["train_state"].get("compiled")
        say(f"resumed from {latest} at step {manifest['step']} (written by {manifest.get('world_size', 1)} "
            "process(es))")
        record.event("resumed", f"resumed from step {manifest['step']}", checkpoint=str(latest))
        return manifest["step"]

    def corrupt(path, why):
        say(f"warning: {why}; using an older one")
        record.event("checkpoint_corrupt", why, path=str(path))

    start_step = restore(corrupt) or 0
    continued = init_parts["train_state"] if spec.init.continue_run else None
    schedule = lr_schedule(spec, continued, init_step)
    if continued is not None and start_step == 0:  # AdamW moments and step count carry over: one run
        par.load_full_state(init_parts["model"], continued["optimizer"])
    init_parts = None

    counts = count_params(cfg)
    fpt = flops_per_token(cfg, seq_len)
    record.start("train", spec.model_dump(mode="json"), backend=backend.describe(), world_size=world.size,
                 model_config=cfg.to_dict(), params={"total": counts.total, "embedding": counts.embedding,
                                                     "body": counts.body}, data_dir=str(data_dir),
                 tokens_per_step=spec.batch_size * seq_len, device_peak_flops=peak,
                 device_peak_source=peak_source, deterministic=spec.deterministic, lr_schedule=schedule,
                 threads=threads)
    say(f"model {counts.total / 1e6:.2f}M params ({counts.embedding_share:.0%} embedding+head), "
        f"backend {backend.describe()}")
    if threads:
        say(f"threads {threads['intra_op']}: {threads['why']}")
    say(f"{'warning: ' if 'expect' in backend.notes['precision_choice'] else ''}precision "
        f"{backend.describe()['precision']}: {backend.notes['precision_choice']}")
    compiled["on"], why, est = compiling.decide(
        spec.compile, steps=spec.steps, tokens_per_step=spec.batch_size * seq_len, flops_per_token=fpt,
        peak_flops=peak, device_type=backend.device.type, autocast_dtype=backend.autocast_dtype,
        strategy=par.strategy, resumed=compiled["resumed"])
    say(f"compile {'on' if compiled['on'] else 'off'}: {why}")
    record.event("compile", why, enabled=compiled["on"], estimated_eager_run_s=round(est, 1))
    if compiled["on"]:  # the training forward only, from outside the model; evaluation stays eager
        par.wrapped = compiling.compile_training(par.wrapped, backend.device.type)

    stop = {"flag": False}
    in_main_thread = threading.current_thread() is threading.main_thread()  # signals only install there
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True)) if in_main_thread else None

    saved = {"step": start_step if start_step else None}  # the newest checkpoint this process wrote or resumed

    def save(step: int) -> Path:
        saved["step"] = step
        path = None
        model_state, optim_state = par.full_state()  # consolidated: loads into any world size
        if world.is_main:
            try:
                path = ckpt.save(ckpt_root, step, {"model": model_state,
                                                    "train_state": {"optimizer": optim_state, "rng": rng_state(),
                                                                    "step": step, "nonfinite": dict(nonfinite),
                                                                    "compiled": compiled["on"],
                                                                    "schedule": schedule}},
                                 {"model_config": cfg.to_dict(), "tokenizer": spec.data.tokenizer,
                                  "data_dir": str(data_dir), "world_size": world.size,
                                  "strategy": par.strategy}, keep=spec.keep_checkpoints)
            except ckpt.DiskFull as exc:
                try:  # the run directory may be on the same full disk
                    record.event("disk_full", str(exc), path=str(exc.path), step=step)
                except OSError:
                    pass
                raise
        distributed.barrier(world)
        return path or ckpt_root / f"step_{step:08d}"

    def on_nonfinite(done: int, loss_val: float) -> int | None:
        """Apply nonfinite.policy to a non-finite loss at step `done`: None to skip the update, the step
        rolled back to, or raise FloatingPointError."""
        par.optimizer.zero_grad(set_to_none=True)  # the batch's gradients are non-finite: never apply them
        nonfinite["events"] += 1
        policy, n = spec.nonfinite.policy, nonfinite["events"]
        what = f"loss became {loss_val} at step {done}"
        if policy == "fail" or n > spec.nonfinite.max_events:
            why = (f"{what} (nonfinite.policy=fail)" if policy == "fail" else
                   f"{what}: non-finite loss number {n}, over nonfinite.max_events={spec.nonfinite.max_events}")
            record.event("nonfinite_loss", why, step=done, loss=str(loss_val), action="fail", count=n)
            raise FloatingPointError(why)
        if policy == "skip":
            record.event("nonfinite_loss", f"{what}: update skipped", step=done, loss=str(loss_val),
                         action="skip", count=n)
            return None
        events = nonfinite["events"]
        back = restore(corrupt)
        if back is None:
            raise FloatingPointError(f"{what}: no valid checkpoint to roll back to")
        nonfinite["events"], nonfinite["lr_scale"] = events, nonfinite["lr_scale"] * spec.nonfinite.lr_factor
        save(back)  # the checkpoint again, now with the lowered LR: a resume from it keeps the LR
        record.event("nonfinite_loss", f"{what}: rolled back to step {back}, learning rate x "
                                       f"{nonfinite['lr_scale']:g}", step=done, loss=str(loss_val),
                     action="rollback", count=n, to_step=back, lr_scale=nonfinite["lr_scale"])
        say(f"warning: {what}; rolled back to step {back}, learning rate x {nonfinite['lr_scale']:g}")
        return back

    def stop_in_failed_step(step: int, exc: Exception) -> None:
        """A step raised after SIGTERM arrived. A SIGTERM sent to the whole process group (Slurm, a process
        group kill) also stops the step's helpers, e.g. inductor's C++ compiler in the first compiled step,
        and the step fails. It failed before its update, so the weights and optimizer are those before it:
        they are checkpointed and the run stops as for any SIGTERM. A failure without a SIGTERM, or in a run
        of several processes (whose peers may wait in a collective), is raised as it is."""
        if not stop["flag"] or world.size > 1:
            return
        par.optimizer.zero_grad(set_to_none=True)
        if saved["step"] != step:
            save(step)
        failed = f"step {step + 1} failed after the signal ({type(exc).__name__})"
        record.event("preempted", f"SIGTERM: {failed}; checkpoint saved at step {step}", step=step,
                     error=str(exc)[:2000])
        raise Preempted(f"stopped by SIGTERM at step {step}; checkpoint saved ({failed})") from exc

    if spec.nonfinite.policy == "rollback" and ckpt.latest_valid(ckpt_root) is None:
        save(0)  # something to roll back to before the first periodic checkpoint
    progress = _progress_bar(spec.steps, start_step, show_progress and world.is_main)
    tokens_per_step = spec.batch_size * seq_len
    t_last, last_val = time.perf_counter(), {}
    model.train()
    try:
        with progress:
            step = start_step
            while step < spec.steps:
                lr = lr_at(schedule["offset"] + step, schedule["total"], spec, base_lr) * nonfinite["lr_scale"]
                par.set_lr(lr)
                windows = rank_slice(sampler.windows(step), world.rank, world.size)
                done = injected.step = step + 1
                losses = []  # device tensors, read once a step: no host sync between micro-batches
                try:
                    for m in range(par.accum):
                        x, y = train_data.batch(windows[m * spec.micro_batch:(m + 1) * spec.micro_batch])
                        losses.append(par.forward_backward(x.to(backend.device), y.to(backend.device), m,
                                                           backend.autocast()))
                    loss_val = distributed.mean_across(sum(map(float, losses)) / par.accum, world,
                                                       backend.device)
                except Exception as exc:
                    stop_in_failed_step(step, exc)
                    raise
                step += 1
                finite = math.isfinite(loss_val)
                if finite:
                    grad_norm = par.step()
                    if compiled["on"] and "first_step_s" not in compiled:  # compile time: in the first step
                        compiled["first_step_s"] = round(time.perf_counter() - t_last, 2)
                        record.event("compiled", f"first compiled step took {compiled['first_step_s']} s "
                                                 "(compilation included)", seconds=compiled["first_step_s"])
                else:
                    back = on_nonfinite(done, loss_val)
                    injected.step_done()
                    if back is not None:
                        step = back
                        continue
                if finite and (done % spec.log_every == 0 or done == spec.steps):
                    grad_norm = float(grad_norm)
                    dt = time.perf_counter() - t_last
                    steps_done = spec.log_every if done % spec.log_every == 0 else done % spec.log_every
                    tps = tokens_per_step * steps_done / dt
                    record.metric(step=done, split="train", loss=loss_val, lr=lr, grad_norm=grad_norm,
                                  tokens_per_s=tps, mfu=tps * fpt / (peak * world.size))
                    record.progress(done, spec.steps, (spec.steps - done) * dt / steps_done, "train")
                    progress.update(done, f"loss {loss_val:.3f}")
                    if not progress.live:
                        say(f"step {done}/{spec.steps} loss {loss_val:.4f} lr {lr:.2e} grad {grad_norm:.2f} "
                            f"tok/s {tps:,.0f}")
                    t_last = time.perf_counter()
                if done % spec.eval_every == 0 or done == spec.steps:
                    last_val = evaluate(model, val_data, spec.eval_batches, spec.micro_batch, backend)
                    record.metric(step=done, split="val", **last_val)
                    if probe_windows is not None:
                        probe = evaluate(model, train_data, len(probe_windows), spec.micro_batch, backend,
                                         windows=probe_windows)
                        record.metric(step=done, split="probe", loss=probe["loss"])
                    say(f"step {done}: val loss {last_val['loss']:.4f} bpb {last_val['bpb']:.4f}")
                    t_last = time.perf_counter()
                if done % spec.checkpoint_every == 0 or done == spec.steps:
                    save(done)
                if stop["flag"]:
                    if done % spec.checkpoint_every:
                        save(done)
                    record.event("preempted", f"SIGTERM: checkpoint saved at step {done}")
                    raise Preempted(f"stopped by SIGTERM at step {done}; checkpoint saved")
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)

    final = ckpt.list_checkpoints(ckpt_root)[-1]
    if not last_val:
        last_val = evaluate(model, val_data, spec.eval_batches, spec.micro_batch, backend)
    plot = None
    if world.is_main:
        from engine.plots import loss_curve  # matplotlib: a second of start-up that only the end needs
        plot = loss_curve(read_metrics(out_dir), out_dir / "loss.png", "training loss")
    summary = {"steps": spec.steps, "tokens": spec.steps * tokens_per_step, "params": counts.total,
               "val_loss": last_val.get("loss"), "val_ppl": last_val.get("ppl"), "val_bpb": last_val.get("bpb"),
               "val_tokens": last_val.get("tokens"), "val_bytes": last_val.get("bytes"),
               "flops": spec.steps * tokens_per_step * fpt, "checkpoint": str(final),
               "nonfinite": {"policy": spec.nonfinite.policy, **nonfinite}, "lr_schedule": schedule}
    summary["compile"] = {"enabled": compiled["on"], "first_step_s": compiled.get("first_step_s")}
    artifacts = [{"name": "checkpoint", "path": str(final), "type": "checkpoint"}]
    if plot:
        artifacts.append({"name": "loss_curve", "path": str(plot), "type": "plot"})
    inputs = [str(s) for s in spec.data.sources] + ([spec.data.tokenizer] if spec.data.tokenizer != "byte" else [])
    inputs += [p for p in (spec.init.checkpoint, spec.init.hf_dir) if p]
    return record.result("train", summary, artifacts, inputs)


class _progress_bar:
    """A rich progress bar on a terminal; nothing (log lines instead) elsewhere."""

    def __init__(self, total: int, start: int, enabled: bool | None):
        self.live = sys.stderr.isatty() if enabled is None else enabled
        self.total, self.start = total, start

    def __enter__(self):
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
            self.bar = Progress(TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                TextColumn("{task.description}"), TimeRemainingColumn())
            self.bar.__enter__()
            self.task = self.bar.add_task("", total=self.total, completed=self.start)
        return self

    def update(self, step: int, text: str):
        if self.live:
            self.bar.update(self.task, completed=step, description=text)

    def __exit__(self, *exc):
        if self.live:
            self.bar.__exit__(*exc)
