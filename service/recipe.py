"""The `recipe` shorthand: the PanGu-pi Pro pipeline as stages, wired by ${stages...} references.

    tokenizer -> [parent] -> inherit -> round1 (train) -> round2 (rounds) -> export -> eval
                                      [-> scratch (train, random init of the child's shape) -> eval_scratch]

The wiring below is the only place that knows which config key of a stage takes which output of
an earlier one. A recipe section is deep-merged over its wiring, so a user can override any key.
What a stage records is the stage registry's (engine/stages.py): the tokenizer stage's `tokenizer` (the
compact SentencePiece model), `id_map` (old id -> new id) and `large_tokenizer` (the one it compacted);
the `checkpoint` of train, inherit and rounds. A reference to anything else fails at import."""
from __future__ import annotations

import copy

from engine.stages import STAGES


# the kind of each stage the recipe writes (what it records is the registry's)
KINDS = {"tokenizer": "tokenizer", "parent": "train", "inherit": "inherit", "round1": "train", "round2": "rounds",
         "export": "export", "eval": "eval", "scratch": "train", "eval_scratch": "eval"}


def output(stage: str, artifact: str) -> str:
    """The reference to `artifact` of the recipe's stage `stage`: only what that stage's kind records."""
    kind = STAGES[KINDS[stage]]
    if artifact not in kind.artifacts:
        raise ValueError(f"recipe wiring: a {kind.name} stage records no artifact {artifact!r} "
                         f"(it records {', '.join(kind.artifacts) or 'none'}; engine/stages.py)")
    return f"${{stages.{stage}.artifacts.{artifact}}}"


TOK = output("tokenizer", "tokenizer")
LARGE_TOK = output("tokenizer", "large_tokenizer")
ID_MAP = output("tokenizer", "id_map")


def ckpt(stage: str) -> str:
    return output(stage, "checkpoint")


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def expand(recipe, resources) -> list[tuple[str, str, dict, tuple]]:
    """[(name, kind, config, loc of the section in the body)]."""
    data = dict(recipe.data)
    sources = data.get("sources", ["data/sample"])
    at = lambda section: ("body", "recipe", section)  # noqa: E731
    tokenized = {**data, "tokenizer": TOK}

    def stage(name: str, wiring: dict, section: dict, loc: tuple) -> tuple[str, str, dict, tuple]:
        return name, KINDS[name], deep_merge(wiring, section), loc

    stages = [stage("tokenizer", {"sources": sources}, recipe.tokenizer, at("tokenizer"))]
    parent = recipe.parent
    if parent.train is not None:
        stages.append(stage("parent", {"data": {**data, "tokenizer": LARGE_TOK}}, parent.train,
                            ("body", "recipe", "parent", "train")))
        parent_path, calib_tokenizer = ckpt("parent"), {"tokenizer": LARGE_TOK}
    else:
        parent_path, calib_tokenizer = parent.checkpoint or parent.hf_dir, {}
    stages += [
        stage("inherit", {"parent": parent_path, "calib": {"sources": sources, **calib_tokenizer},
                          "vocab": {"id_map": ID_MAP, "tokenizer": TOK}}, recipe.inherit, at("inherit")),
        stage("round1", {"data": tokenized, "init": {"checkpoint": ckpt("inherit")}}, recipe.round1, at("round1")),
        stage("round2", {"data": tokenized, "init": {"checkpoint": ckpt("round1")}}, recipe.round2, at("round2")),
        stage("export", {"checkpoint": ckpt("round2"), "tokenizer": TOK}, recipe.export, at("export")),
        stage("eval", {"checkpoint": ckpt("round2"), "data": tokenized}, recipe.eval, at("eval")),
    ]
    if recipe.scratch is not None:  # the control: same shape, same tokenizer, same held-out windows, no parent
        stages += [
            stage("scratch", {"data": tokenized, "init": {"checkpoint": ckpt("inherit"), "weights": "random"}},
                  recipe.scratch, at("scratch")),
            stage("eval_scratch", {"checkpoint": ckpt("scratch"), "data": tokenized}, recipe.eval, at("eval")),
        ]
    return stages


def comparison(stages: list[dict]) -> dict | None:
    """The recipe against its from-scratch control, from what the stages recorded (None until both evals have):
    held-out bits-per-byte of the final model (eval) and of the control (eval_scratch), scored on the same
    held-out windows with the same tokenizer, beside the child's training compute (round1 + round2) and the
    control's, and the parent's cost, stated separately."""
    by = {st["name"]: st.get("summary") or {} for st in stages}
    recipe, scratch = by.get("eval", {}).get("val_bpb"), by.get("eval_scratch", {}).get("val_bpb")
    if recipe is None or scratch is None:
        return None
    child_flops = sum(by.get(n, {}).get("flops") or 0.0 for n in ("round1", "round2"))
    child_tokens = sum(by.get(n, {}).get("tokens") or 0 for n in ("round1", "round2"))
    out = {"recipe_bpb": recipe, "scratch_bpb": scratch, "difference": recipe - scratch,
           "child_tokens": child_tokens, "child_flops": child_flops,
           "scratch_tokens": by.get("scratch", {}).get("tokens"), "scratch_flops": by.get("scratch", {}).get("flops"),
           "parent_tokens": by.get("parent", {}).get("tokens"), "parent_flops": by.get("parent", {}).get("flops")}
    compute = (f"{child_flops / 1e12:.2f} vs {(out['scratch_flops'] or 0) / 1e12:.2f} TFLOP of child training, "
               f"{child_tokens:,} vs {out['scratch_tokens'] or 0:,} tokens")
    parent = (f"; the parent cost {out['parent_flops'] / 1e12:.2f} TFLOP ({out['parent_tokens']:,} tokens) more"
              if out["parent_flops"] else "")
    verdict = "better" if recipe < scratch else "not better"
    out["text"] = (f"recipe vs scratch: {recipe:.4f} vs {scratch:.4f} held-out bits/byte ({recipe - scratch:+.4f}, "
                   f"the recipe is {verdict}) at equal child training compute ({compute}){parent}")
    return out
