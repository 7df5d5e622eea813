"""Build tinyforge_mc.jsonl: a small multiple-choice task for lm-evaluation-harness from the bundled
sample corpus (data/sample). Each question is the beginning of a line of the corpus; the choices are
its true continuation and three continuations cut the same way from other lines of the same kind
(English verse, Chinese reviews, Python code). Deterministic: the same corpus gives the same file.

    python evals/lm_eval/make_tinyforge_mc.py            # rewrites evals/lm_eval/tinyforge_mc.jsonl

The lines come from the corpus the demo trains on, so this measures how well a model learned that
corpus (and that the Hugging Face export evaluates in lm-eval), not general ability."""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parents[1] / "data" / "sample"
CHOICES = 4
SEED = 0
COUNTS = {"en": 50, "zh": 25, "code": 25}  # 100 questions


def english(root: Path) -> list[tuple[str, str]]:
    """Spoken lines of 8-14 words (no speaker names, no stage directions): first half | rest."""
    out = []
    for name in ("macbeth.txt", "julius_caesar.txt"):
        for line in (root / "en" / name).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            words = line.split()
            if not 8 <= len(words) <= 14 or line.isupper() or "[" in line or not re.match(r"[A-Z]", line):
                continue
            cut = len(words) // 2
            out.append((" ".join(words[:cut]), " " + " ".join(words[cut:])))
    return out


def chinese(root: Path) -> list[tuple[str, str]]:
    """The first 8 characters of a review | the next 6 (reviews with at least 14 Chinese characters there)."""
    out = []
    for name in ("reviews_pos.txt", "reviews_neg.txt"):
        for line in (root / "zh" / name).read_text(encoding="utf-8").splitlines():
            head = line.strip()[:14]
            if len(head) == 14 and all("\u4e00" <= ch <= "\u9fff" for ch in head):
                out.append((head[:8], head[8:]))
    return out


def code(root: Path) -> list[tuple[str, str]]:
    """Code lines of 6-10 space-separated tokens (no comments or docstrings): indentation + first half | rest."""
    out = []
    for line in (root / "code" / "python_stdlib_sample.py.txt").read_text(encoding="utf-8").splitlines():
        body = line.strip()
        words = body.split(" ")
        if not 6 <= len(words) <= 10 or body.startswith(("#", '"', "'")) or not body.isascii():
            continue
        indent = line[:len(line) - len(line.lstrip())]
        cut = len(words) // 2
        out.append((indent + " ".join(words[:cut]), " " + " ".join(words[cut:])))
    return out


def build(root: Path = SAMPLE, seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for lang, pairs in (("en", english(root)), ("zh", chinese(root)), ("code", code(root))):
        pairs = sorted(set(pairs))  # one question per distinct line; sorted so the draw is reproducible
        endings = sorted({e for _, e in pairs})
        for context, answer in rng.sample(pairs, COUNTS[lang]):
            # distractors of about the answer's length, so length alone does not give the answer away
            near = [e for e in endings if e != answer and abs(len(e) - len(answer)) <= max(3, len(answer) // 4)]
            wrong = rng.sample(near if len(near) >= CHOICES - 1 else [e for e in endings if e != answer],
                               CHOICES - 1)
            choices = wrong + [answer]
            rng.shuffle(choices)
            items.append({"id": f"{lang}-{len(items):03d}", "lang": lang, "context": context, "choices": choices,
                          "label": choices.index(answer)})
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "tinyforge_mc.jsonl")
    args = ap.parse_args()
    items = build()
    args.out.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items), encoding="utf-8")
    print(f"wrote {len(items)} questions to {args.out}")


if __name__ == "__main__":
    main()
