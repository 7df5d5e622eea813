"""Optional distillation while training an inherited child (Minitron's recommendation; beyond the
paper): the training loss becomes (1 - alpha) x LM loss + alpha x T^2 x KL(teacher || student) on
temperature-T distributions, the teacher's logits computed on the fly for each micro-batch.

Attached from outside the model with hooks (no change to GPT or its state dict): the final norm's
output is captured, and the model's forward output (the LM loss, in training mode only) is replaced
by the mixed loss. Evaluation is untouched. Switched on by `distill.teacher` in the train config."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F


def load_teacher(path: str, device, dtype=None):
    """The teacher (usually the parent) in memory, frozen, in eval mode."""
    from engine.inherit.run import materialise
    from engine.inherit.source import open_parent

    source = open_parent(path)
    model = materialise(source, list(range(source.config.n_layer)), device)
    return model.eval().requires_grad_(False)


def kl_loss(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """Mean over tokens of T^2 KL(softmax(t / T) || softmax(s / T)) (Hinton et al.'s scaling)."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1).flatten(0, -2)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1).flatten(0, -2)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


def attach_distillation(model, spec, device, log=print) -> list:
    """Hooks that make `model(x, y)` return the distillation objective while training. `spec` is the
    train config's DistillSpec (teacher, alpha, temperature, id_map)."""
    teacher = load_teacher(spec.teacher, device)
    kept = None
    if spec.id_map:  # child on a compact tokenizer: teacher sees parent ids, KL over the kept tokens
        from engine.inherit.vocab import load_id_map
        kept = torch.tensor(load_id_map(spec.id_map, teacher.config.vocab_size), device=device)
    elif teacher.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"distill.teacher: vocabulary {teacher.config.vocab_size} differs from the student's "
                         f"{model.config.vocab_size}; give distill.id_map")
    log(f"distillation from {Path(spec.teacher)} (alpha {spec.alpha}, temperature {spec.temperature})")
    captured = {}

    def keep_hidden(module, args, out):
        captured["h"] = out

    def mix_loss(module, args, out):
        if not module.training or len(args) < 2 or args[1] is None:
            return out
        x = args[0]
        h = captured.pop("h")
        with torch.no_grad():
            t_logits = teacher(kept[x] if kept is not None else x)
        s_logits = module.lm_head(h)
        if kept is not None:
            t_logits, s_logits = t_logits[..., kept], s_logits[..., :len(kept)]
        return (1 - spec.alpha) * out + spec.alpha * kl_loss(s_logits, t_logits, spec.temperature)

    return [model.norm.register_forward_hook(keep_hidden), model.register_forward_hook(mix_loss)]
