"""Data-parallel strategies applied to a model and optimizer from outside: none, DDP, DeepSpeed ZeRO 1-3.

Every strategy exposes the same step interface to the training loop, and the same consolidated,
world-size-independent state (full fp32 weights + AdamW moments keyed by parameter name), so a
checkpoint written by N processes loads into M processes under any strategy."""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import torch

STRATEGIES = ("none", "ddp", "zero1", "zero2", "zero3")


def deepspeed_config(spec, world_size: int, backend_name: str, autocast_dtype=None) -> dict:
    """The DeepSpeed JSON generated from the job config; `parallel.deepspeed_config` (a raw DeepSpeed
    JSON file) is deep-merged over it, then what the job config owns is asserted again: the ZeRO stage
    (from parallel.strategy), the batch sizes and the precision. A file that only sets
    zero_optimization.offload_param must not drop zero_optimization.stage (DeepSpeed would silently run
    stage 0)."""
    stage = int(spec.parallel.strategy[-1])
    owned = {
        "train_batch_size": spec.batch_size,
        "train_micro_batch_size_per_gpu": spec.micro_batch,
        "gradient_accumulation_steps": spec.batch_size // (spec.micro_batch * world_size),
        "zero_optimization": {"stage": stage},
    }
    cfg = deep_merge(owned, {
        "gradient_clipping": spec.optim.grad_clip,
        "zero_allow_untested_optimizer": True,  # our AdamW from the operator table is a client optimizer
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    })
    if spec.parallel.deepspeed_config:
        path = Path(spec.parallel.deepspeed_config)
        if not path.is_file():
            raise ValueError(f"parallel.deepspeed_config: {path} does not exist")
        try:
            user = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"parallel.deepspeed_config: {path} is not valid JSON ({exc})")
        if not isinstance(user, dict):
            raise ValueError(f"parallel.deepspeed_config: {path} must hold a JSON object")
        for key, ours in _flat(owned):
            theirs = _get(user, key)
            if theirs not in (None, "auto", ours):  # "auto": DeepSpeed's placeholder, ours fills it
                raise ValueError(f"parallel.deepspeed_config: {'.'.join(key)}={theirs!r} contradicts the job config "
                                 f"({ours!r}); set it there (parallel.strategy, batch_size, micro_batch)")
        for section in ("fp16", "bf16", "torch_autocast", "amp"):
            if (user.get(section) or {}).get("enabled"):
                raise ValueError(f"parallel.deepspeed_config: {section}.enabled is set by the job's precision; "
                                 "remove it from the DeepSpeed JSON")
        cfg = deep_merge(cfg, user)
    cfg = deep_merge(cfg, owned)  # asserted again after the merge
    # Precision goes through DeepSpeed's own torch_autocast section (not an outer autocast around the
    # engine): DeepSpeed then knows the dtype, reduces the Linear layers' gradients in it, and keeps
    # fp32 master weights, which is the engine's bf16-autocast-over-fp32 semantics.
    if autocast_dtype is not None:
        cfg["torch_autocast"] = {"enabled": True, "dtype": str(autocast_dtype).removeprefix("torch.")}
    offload = (cfg["zero_optimization"].get("offload_optimizer") or {}).get("device", "none")
    if offload == "cpu":
        # The client AdamW then steps ZeRO's fp32 partitions on the CPU; DeepSpeed 0.19 refuses a client
        # optimizer with offload unless told it is intended.
        cfg["zero_force_ds_cpu_optimizer"] = False
    check_deepspeed_config(cfg, backend_name)
    return cfg


def deep_merge(base: dict, over: dict) -> dict:
    """A copy of `base` with `over` merged in, recursively for nested objects."""
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def _flat(d: dict, prefix=()):
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _flat(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _get(d: dict, key: tuple):
    for part in key:
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def initialize_deepspeed(model, optimizer, config: dict):
    """`deepspeed.initialize`, with DeepSpeed's communication backend kept from building its shared-memory
    all-reduce op (`deepspeed_shm_comm`) when it starts. Only `inference_all_reduce` (DeepSpeed inference's
    tensor parallelism) calls that op, which falls back to torch.distributed without it; ZeRO training's
    collectives never use it. On a CPU the backend JIT-builds it with g++ in every new environment,
    before the first step: 49.8 s on a 2-core Zen 3 (session 14). DeepSpeed keeps the compatibility
    table it consults in one module-level dict so that edits to it persist."""
    import deepspeed
    import deepspeed.ops
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed.initialize(model=model, optimizer=optimizer, config=config)


def check_deepspeed_config(cfg: dict, backend_name: str) -> None:
    """Refuse at plan time what cannot run on this device, with the setting named."""
    zero = cfg.get("zero_optimization", {})
    for key in ("offload_optimizer", "offload_param"):
        device = (zero.get(key) or {}).get("device", "none")
        if device == "nvme":
            raise ValueError(f"parallel.deepspeed_config: zero_optimization.{key}.device=nvme needs NVMe swap "
                             "space and async I/O, not configured here")
        if device == "cpu" and backend_name == "cpu":
            raise ValueError(f"parallel.deepspeed_config: zero_optimization.{key}.device=cpu offloads to the CPU "
                             "from an accelerator; the job already runs on the CPU backend")
    if zero.get("offload_param") and int(zero.get("stage", 0)) != 3:
        raise ValueError("parallel.deepspeed_config: zero_optimization.offload_param needs ZeRO stage 3 "
                         "(parallel.strategy: zero3)")
    if zero.get("offload_optimizer") and int(zero.get("stage", 0)) == 0:
        raise ValueError("parallel.deepspeed_config: zero_optimization.offload_optimizer needs a ZeRO stage")


class Parallel:
    def __init__(self, model, optimizer, spec, world, backend):
        self.model, self.optimizer, self.world, self.spec = model, optimizer, world, spec
        self.strategy = spec.parallel.strategy if world.size > 1 or spec.parallel.strategy.startswith("zero") \
            else "none"
        self.accum = spec.batch_size // (spec.micro_batch * world.size)
        self.engine = None
        self.names = {p: n for n, p in model.named_parameters()}
        if self.strategy == "ddp" or (self.strategy == "none" and world.size > 1):
            self.strategy = "ddp"
            self.wrapped = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=None if backend.device.type == "cpu" else [backend.device.index])
        elif self.strategy.startswith("zero"):
            import deepspeed
            if self.strategy == "zero3":  # the fused loss reads lm_head.weight outside lm_head's forward
                deepspeed.zero.register_external_parameter(model, model.lm_head.weight)
            self.engine, self.optimizer, _, _ = initialize_deepspeed(
                model, optimizer, deepspeed_config(spec, world.size, backend.name, backend.autocast_dtype))
            self.wrapped = self.engine
        else:
            self.wrapped = model

    def forward_backward(self, x, y, micro_index: int, autocast) -> torch.Tensor:
        """The micro-batch's loss, detached and left on the device: the loop reads it once a step, so an
        accelerator's queue is not drained after every micro-batch."""
        last = micro_index == self.accum - 1
        sync = self.wrapped.no_sync() if (self.strategy == "ddp" and not last) else nullcontext()
        with sync:
            # DeepSpeed applies the job's precision itself (its torch_autocast section)
            with nullcontext() if self.engine is not None else autocast:
                loss = self.wrapped(x, y)
            if self.engine is not None:
                # DeepSpeed divides by the accumulation steps itself, and its step() must follow every
                # backward: it counts micro-steps and only updates at the accumulation boundary.
                self.engine.backward(loss)
                self.engine.step()
            else:
                (loss / self.accum).backward()
        return loss.detach()

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def step(self) -> float | torch.Tensor:
        """Clip, update, zero the gradients; the gradient norm before clipping (a device tensor, read
        only at log steps)."""
        if self.engine is not None:
            norm = self.engine.get_global_grad_norm()
            return float(norm) if norm is not None else float("nan")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.optim.grad_clip or float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    # --- consolidated state: identical format whatever the strategy and world size -------------
    def full_state(self) -> tuple[dict, dict]:
        """(model state dict, {"step", "moments": {name: (exp_avg, exp_avg_sq)}}), fp32 on CPU.
        Collective under ZeRO: every rank must call it."""
        if self.engine is None:
            state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            moments, step = {}, 0
            for p, name in self.names.items():
                st = self.optimizer.state.get(p)
                if st:
                    moments[name] = (st["exp_avg"].cpu().clone(), st["exp_avg_sq"].cpu().clone())
                    step = int(st["step"])
            return state, {"step": step, "moments": moments}
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
        self._ensure_optimizer_state()
        state, moments = {}, {}
        for name, p in self.model.named_parameters():
            state[name] = safe_get_full_fp32_param(p).detach().cpu().clone()
            m = safe_get_full_optimizer_state(p, "exp_avg")
            if m is not None:
                moments[name] = (m.cpu().clone(), safe_get_full_optimizer_state(p, "exp_avg_sq").cpu().clone())
        for key, value in self.model.state_dict(keep_vars=True).items():  # tied weights: one tensor, two names
            if key not in state:
                state[key] = state[self.names[value]]
        return state, {"step": self._deepspeed_step(), "moments": moments}

    @staticmethod
    @torch.no_grad()
    def _set_working_param(p, value: torch.Tensor) -> None:
        if hasattr(p, "ds_tensor"):  # ZeRO-3: this rank's slice of the flattened, padded parameter
            part = p.ds_tensor
            flat = value.flatten().to(part.dtype)
            flat = torch.nn.functional.pad(flat, (0, part.numel() * torch.distributed.get_world_size() - flat.numel()))
            part.copy_(flat.narrow(0, part.numel() * torch.distributed.get_rank(), part.numel()))
        else:
            p.copy_(value.to(p.dtype))

    def _ensure_optimizer_state(self) -> None:
        """AdamW creates its moments lazily at the first step, and ZeRO links them to parameters only
        then: before a resume's first step, create zero moments in the inner (client) optimizer over
        ZeRO's flat fp32 partitions and link them, exactly as a first step would."""
        inner = self.optimizer.optimizer
        # ZeRO-3 empties the inner optimizer's param groups between steps: take its flat partitions
        flats = getattr(self.optimizer, "fp32_partitioned_groups_flat", None) or \
            [flat for group in inner.param_groups for flat in group["params"]]
        for flat in flats:
            st = inner.state[flat]
            st.setdefault("step", torch.tensor(0.0))
            st.setdefault("exp_avg", torch.zeros_like(flat))
            st.setdefault("exp_avg_sq", torch.zeros_like(flat))
        if hasattr(self.optimizer, "_lazy_init_hp_params_optimizer_state"):  # ZeRO 1/2
            # ZeRO 1/2 link moments after stepping the first param group only, so the second group
            # (no weight decay) stays unlinked: relink every group now that all states exist.
            self.optimizer._hp_optimizer_states_linked = False
            self.optimizer._lazy_init_hp_params_optimizer_state()

    def _deepspeed_step(self) -> int:
        for st in self.optimizer.state.values():
            if "step" in st:
                return int(st["step"])
        return int(self.engine.global_steps)

    def load_full_state(self, model_state: dict, optim_state: dict) -> None:
        """Inverse of full_state; call on every rank."""
        if self.engine is None:
            self.model.load_state_dict(model_state)
            if optim_state["moments"]:
                for p, name in self.names.items():
                    if name in optim_state["moments"]:
                        m, v = optim_state["moments"][name]
                        self.optimizer.state[p] = {"step": torch.tensor(float(optim_state["step"])),
                                                   "exp_avg": m.to(p.device).clone(),
                                                   "exp_avg_sq": v.to(p.device).clone()}
            return
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state
        self._ensure_optimizer_state()
        for name, p in self.model.named_parameters():
            value = model_state[name].to(torch.float32)
            safe_set_full_fp32_param(p, value)  # the fp32 master partition only...
            self._set_working_param(p, value)  # ...so also the weights the next forward uses
            if name in optim_state["moments"]:
                m, v = optim_state["moments"][name]
                safe_set_full_optimizer_state(p, m, "exp_avg")
                safe_set_full_optimizer_state(p, v, "exp_avg_sq")
        for st in self.optimizer.state.values():
            if "step" in st:
                st["step"] = torch.tensor(float(optim_state["step"])) if torch.is_tensor(st["step"]) \
                    else optim_state["step"]
