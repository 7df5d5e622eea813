"""The child's ModelConfig, resolved from a preset / config file / explicit fields against the parent,
and checked so that every child dimension can be cut out of the parent's."""
from __future__ import annotations

from engine.config import PRESETS, ModelConfig, preset_names
from engine.inherit.spec import CHILD_SHAPE_FIELDS, ChildSpec
from engine.spec import read_config_file

INHERITED = ("head_dim", "rope_theta", "norm_eps")  # properties of the weights themselves


def child_config(spec: ChildSpec, parent: ModelConfig, vocab_rows: int | None = None,
                 n_layer: int | None = None) -> ModelConfig:
    """`vocab_rows`: rows an id map keeps (the default vocab); `n_layer`: layers an explicit depth
    list keeps (the default depth)."""
    if spec.preset:
        if spec.preset not in PRESETS:
            raise ValueError(f"child.preset: unknown preset {spec.preset!r}; known: {', '.join(preset_names())}")
        base, origin = dict(PRESETS[spec.preset].config), f"preset {spec.preset!r}"
        base.pop("head_dim", None)
    elif spec.config:
        base, origin = read_config_file(spec.config), f"config {spec.config}"
        unknown = set(base) - set(ModelConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"child.config: unknown field(s) {sorted(unknown)} in {spec.config}")
        for name in INHERITED:
            if base.get(name) not in (None, getattr(parent, name)):
                raise ValueError(f"child.config: {name}={base[name]} differs from the parent's "
                                 f"{getattr(parent, name)}; heads are kept whole so it must match")
    else:
        base, origin = {k: getattr(parent, k) for k in (*CHILD_SHAPE_FIELDS, "block_size", "tie_embeddings")}, "parent"
        if n_layer:
            base["n_layer"] = n_layer
        if vocab_rows:
            base["vocab_size"] = vocab_rows
        if spec.n_head and not spec.n_kv_head and spec.n_head % parent.n_kv_head:
            # fewer heads than the parent's groups: keep the parent's heads per group, drop groups
            base["n_kv_head"] = max(1, spec.n_head // (parent.n_head // parent.n_kv_head))
    base.update({k: v for k in (*CHILD_SHAPE_FIELDS, "tie_embeddings") if (v := getattr(spec, k)) is not None})
    if base.get("vocab_size") is None:
        base["vocab_size"] = vocab_rows or parent.vocab_size
    base.setdefault("n_layer", n_layer or parent.n_layer)
    base.setdefault("tie_embeddings", parent.tie_embeddings)
    base.setdefault("block_size", parent.block_size)
    base.update({k: getattr(parent, k) for k in INHERITED})
    try:
        child = ModelConfig(**base)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"child: {origin} gives an invalid model ({exc})")
    check_fits(child, parent, vocab_rows)
    return child


def check_fits(child: ModelConfig, parent: ModelConfig, vocab_rows: int | None) -> None:
    for name in ("n_layer", "n_embd", "ffn_hidden", "n_kv_head"):
        if getattr(child, name) > getattr(parent, name):
            raise ValueError(f"child.{name}: {getattr(child, name)} is more than the parent's {getattr(parent, name)}")
    g_child, g_parent = child.n_head // child.n_kv_head, parent.n_head // parent.n_kv_head
    if g_child > g_parent:
        raise ValueError(f"child.n_head: {child.n_head} query heads over {child.n_kv_head} key/value groups is "
                         f"{g_child} per group, more than the parent's {g_parent}")
    if vocab_rows is None and child.vocab_size != parent.vocab_size:
        raise ValueError(f"child.vocab_size: {child.vocab_size} differs from the parent's {parent.vocab_size}; "
                         "a smaller vocabulary needs vocab.id_map (a compact tokenizer's id map)")
    if vocab_rows is not None and child.vocab_size < vocab_rows:
        raise ValueError(f"child.vocab_size: {child.vocab_size} is fewer than the {vocab_rows} tokens vocab.id_map keeps")
