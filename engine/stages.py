"""The stage kinds: the one registry that the engine's schemas, the `tinyforge` command, the service's
validation and the worker read. Adding a kind is a row here plus its schema and its command module.

Everything is a "module:attr" string, loaded on use (engine/importing.py): reading this registry imports
neither torch nor pydantic, so the service and `tinyforge --help` stay cheap."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# the device family a stage runs on (engine/backend.py resolves auto); every schema's `backend` field
Backend = Literal["auto", "cpu", "cuda", "npu"]
BACKENDS: tuple[str, ...] = Backend.__args__


@dataclass(frozen=True)
class StageKind:
    name: str  # the job file's `kind`
    spec: str  # "module:Class" of its pydantic config schema
    command: str  # `tinyforge <command> --config FILE --out DIR` runs it
    entry: str  # "module:attr" of that click command
    distributed: bool  # runs one process per device (torchrun / DeepSpeed / srun) when given several
    # what its result.json records for later stages and the service to read back (docs/engine-contract.md):
    artifacts: tuple[str, ...]  # artifact names, referenced as ${stages.NAME.artifacts.<name>}
    summary: tuple[str, ...] = ()  # summary keys it always records: ${stages.NAME.summary.<key>}, the comparison

    def load_spec(self):
        from engine.importing import import_object
        return import_object(self.spec, f"stage kind {self.name!r}: schema")

    def load_command(self):
        from engine.importing import import_object
        return import_object(self.entry, f"stage kind {self.name!r}: command")


_TRAINED = ("steps", "tokens", "flops", "val_loss", "val_bpb", "checkpoint")  # train and rounds

STAGES: dict[str, StageKind] = {k.name: k for k in (
    StageKind("tokenizer", "engine.tokenizer.spec:TokenizerStageSpec", "tokenizer",
              "engine.commands.tokenizer:tokenizer", distributed=False,
              # train: tokenizer; compact: large_tokenizer, tokenizer, id_map...; report: large_tokenizer, report...
              artifacts=("tokenizer", "large_tokenizer", "id_map", "id_map_npy", "counts", "counts_tsv",
                         "compact_summary", "report", "report_md", "plot"),
              summary=("action", "seconds")),
    StageKind("train", "engine.spec:TrainSpec", "train", "engine.commands.train:train", distributed=True,
              artifacts=("checkpoint", "loss_curve"), summary=(*_TRAINED, "params")),
    StageKind("inherit", "engine.inherit.spec:InheritSpec", "inherit", "engine.commands.inherit:inherit",
              distributed=True, artifacts=("checkpoint", "report", "report_md", "report_plot"),
              summary=("checkpoint", "child_params", "parent_params", "layers")),
    StageKind("rounds", "engine.rounds.spec:RoundsSpec", "rounds", "engine.commands.rounds:rounds", distributed=True,
              artifacts=("checkpoint", "forgetting_curve"), summary=(*_TRAINED, "rounds")),
    StageKind("eval", "engine.spec:EvalSpec", "eval", "engine.commands.evaluate:evaluate", distributed=False,
              artifacts=(), summary=("checkpoint", "val_loss", "val_ppl", "val_bpb")),
    StageKind("export", "engine.spec:ExportSpec", "export-hf", "engine.commands.export_hf:export_hf",
              distributed=False, artifacts=("hf_model",), summary=("hf_dir",)),
    StageKind("ablate", "engine.ablate.spec:AblateSpec", "ablate", "engine.commands.ablate:ablate",
              distributed=False,
              artifacts=("ablation", "ablation_md", "plot", "budget_curve", "large_tokenizer", "tokenizer"),
              summary=("arms",)),
)}

# kind -> "module:Class" of its schema: the shape the service's TINYFORGE_STAGE_SPECS registry points at
STAGE_SPECS: dict[str, str] = {k.name: k.spec for k in STAGES.values()}

