"""Dataset loader of the tinyforge_mc task: the JSONL beside this file, read without the Hugging Face hub
(so the task runs with HF_DATASETS_OFFLINE=1 from any working directory)."""
import json
from pathlib import Path

JSONL = Path(__file__).resolve().parent / "tinyforge_mc.jsonl"


def load(**_metadata):
    import datasets

    rows = [json.loads(line) for line in JSONL.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
