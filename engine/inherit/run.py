"""The inherit stage: parent -> depth choice -> width scores -> plan -> child checkpoint -> held-out
loss next to a random init of the same shape -> report. Records a run directory per
docs/engine-contract.md."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from engine import checkpoint as ckpt
from engine.arch import count_params
from engine.backend import resolve
from engine.inherit import depth as depth_mod
from engine.inherit import report as report_mod
from engine.inherit import width as width_mod
from engine.inherit.plan import Plan, make_plan
from engine.inherit.shape import child_config
from engine.inherit.slicing import child_state, load_child
from engine.inherit.source import open_parent
from engine.inherit.spec import InheritSpec
from engine.inherit.stream import StreamedParent
from engine.inherit.vocab import beside, load_id_map
from engine.run_record import RunRecord

DATA_DEPTH = ("block_influence", "loss_rise")
DATA_WIDTH = ("taylor", "activation", "learnable")
PHASES = ("depth", "width", "slice", "eval", "report")


def token_windows(calib, tokenizer_spec: str, split: str, n_batches: int, seed: int | None, vocab_limit: int,
                  log=print) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """n_batches x micro_batch windows of calib.seq_len tokens: a seeded sample of the train split
    (calibration), or the first windows of the validation split (seed None, as the trainer evaluates);
    and the UTF-8 bytes of text their targets stand for (the bits-per-byte denominator, as evaluate())."""
    from engine.data import DataError, TokenData, prepare_data

    root, tok = prepare_data(calib, tokenizer_spec, log=log)
    if tok.vocab_size > vocab_limit:
        raise ValueError(f"calib.tokenizer: {tokenizer_spec} has {tok.vocab_size} ids, more than the model's "
                         f"vocabulary of {vocab_limit}")
    data = TokenData.open(root, split, calib.seq_len)
    mb = calib.micro_batch
    n = min(n_batches * mb, len(data) // mb * mb)
    if n == 0:
        raise DataError(f"calib.sources: the {split} split has {len(data)} windows of {calib.seq_len} tokens, "
                        f"fewer than one batch of {mb}")
    windows = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(len(data))[:n]
    batches = [data.batch(windows[s:s + mb]) for s in range(0, n, mb)]
    return batches, sum(data.target_bytes(y) for _, y in batches)


@torch.no_grad()
def mean_loss(model_or_stream, batches, device, layers=None) -> float:
    if isinstance(model_or_stream, StreamedParent):
        s = model_or_stream
        hidden = s.embed([x for x, _ in batches])
        cos, sin = s.rope(batches[0][0].shape[1])
        for i in layers:
            block = s.block(i)
            hidden = [block(h, cos, sin) for h in hidden]
        return float(np.mean(s.losses(hidden, [y for _, y in batches])))
    model_or_stream.eval()
    return float(np.mean([model_or_stream(x.to(device), y.to(device)).item() for x, y in batches]))


def materialise(source, layers: list[int], device):
    """The depth-cut parent at full width, in memory (what gradient-based scores need)."""
    from engine.config import replace

    cfg = replace(source.config, n_layer=len(layers))
    return load_child(child_state(source, Plan.full_width(source.config, layers), source.config, cfg), cfg).to(device)


def score_width(spec: InheritSpec, source, child, layers, batches, gate_batches, device, log,
                progress) -> tuple[width_mod.WidthScores, dict]:
    pcfg, metric = source.config, spec.width
    log(f"width: {metric} scores over {len(layers)} kept layers")
    if metric == "random":
        return width_mod.random_scores(pcfg, len(layers), spec.seed), {}
    if metric in ("l1", "l2"):
        return width_mod.weight_norm_scores(source, layers, 1 if metric == "l1" else 2), {}
    if metric == "activation":
        return width_mod.activation_scores(StreamedParent(source, device), layers, batches), {}
    model = materialise(source, layers, device)
    if metric == "taylor":
        return width_mod.taylor_scores(model, batches, device), {}
    from engine.inherit.learnable import train_gates
    targets = {"heads": 1 - child.n_head / pcfg.n_head, "neurons": 1 - child.ffn_hidden / pcfg.ffn_hidden,
               "channels": 1 - child.n_embd / pcfg.n_embd}
    gates, summary = train_gates(model, gate_batches, targets, spec.learnable, device, log=log, progress=progress)
    la = gates.scores()
    scores = width_mod.WidthScores(*(la[k].detach().cpu().double() for k in ("heads", "neurons", "channels")))
    return scores, {"learnable": summary, "gates": gates}


def _width_report(plan: Plan, scores: width_mod.WidthScores, z: dict | None) -> dict:
    layers = []
    for j, i in enumerate(plan.layers):
        hs, ns = scores.heads[j], scores.neurons[j]
        dropped = sorted(set(range(len(ns))) - set(plan.neurons[j]))
        layers.append({
            "child": j, "parent": i, "heads": plan.heads[j], "head_scores": hs[plan.heads[j]].tolist(),
            "all_head_scores": hs.tolist(), "groups": plan.groups[j], "neurons": plan.neurons[j],
            "neuron_scores": ns[plan.neurons[j]].tolist(),
            "neuron_score_kept_mean": ns[plan.neurons[j]].mean().item(),
            "neuron_score_dropped_mean": ns[dropped].mean().item() if dropped else None,
            **({"head_gates": z["heads"][j][plan.heads[j]].tolist()} if z else {})})
    cs = scores.channels
    dropped = sorted(set(range(len(cs))) - set(plan.channels))
    return {"layers": layers, "channels": {
        "kept": plan.channels, "scores": cs[plan.channels].tolist(), "score_kept_mean": cs[plan.channels].mean().item(),
        "score_dropped_mean": cs[dropped].mean().item() if dropped else None,
        **({"gates": z["channels"][plan.channels].tolist()} if z else {})}}


def inherit(spec: InheritSpec, out_dir: str | Path, log=print) -> dict:
    t0 = time.perf_counter()
    out = Path(out_dir)
    record = RunRecord(out)
    source = open_parent(spec.parent)
    pcfg = source.config
    id_map = spec.vocab.id_map or (beside(spec.vocab.tokenizer) if spec.vocab.tokenizer else None)
    vocab = load_id_map(id_map, pcfg.vocab_size) if id_map else None
    explicit_n = len(spec.depth.layers) if spec.depth.method == "explicit" else None
    ccfg = child_config(spec.child, pcfg, len(vocab) if vocab else None, explicit_n)
    backend = resolve(spec.backend, "fp32")
    device = backend.device
    record.start("inherit", spec.model_dump(mode="json"), backend=backend.describe(), parent=str(source.path),
                 parent_config=pcfg.to_dict(), child_config=ccfg.to_dict())
    log(f"parent {source.path} ({source.kind}): {count_params(pcfg).total / 1e6:.3f}M params; child "
        f"{count_params(ccfg).total / 1e6:.3f}M ({ccfg.n_layer} layers, hidden {ccfg.n_embd}, {ccfg.n_head}/"
        f"{ccfg.n_kv_head} heads, ffn {ccfg.ffn_hidden}, vocab {ccfg.vocab_size})")

    def phase(name, done=0, total=1):
        k = PHASES.index(name)
        record.progress(k * 100 + int(100 * done / max(total, 1)), len(PHASES) * 100, None, f"inherit:{name}")

    calib_tok = spec.calib.tokenizer or source.tokenizer or "byte"
    batches = gate_batches = None
    if spec.depth.method in DATA_DEPTH or spec.width in DATA_WIDTH:
        n = spec.calib.batches
        if spec.width == "learnable":
            n = max(n, spec.learnable.steps)  # a fresh batch for every gate step, as far as the corpus goes
        gate_batches, _ = token_windows(spec.calib, calib_tok, "train", n, spec.seed, pcfg.vocab_size, log)
        batches = gate_batches[:spec.calib.batches]

    phase("depth")
    stream = StreamedParent(source, device)
    layers, depth_info = depth_mod.choose_layers(spec.depth, pcfg.n_layer, ccfg.n_layer, stream, batches, log)
    log(f"depth: {depth_info['method']} keeps parent layers {layers}")

    phase("width")
    torch.manual_seed(spec.seed)
    scores, extra = score_width(spec, source, ccfg, layers, batches, gate_batches, device, log,
                                progress=lambda d, t: phase("width", d, t))
    plan = make_plan(layers, scores.heads, scores.neurons, scores.channels, pcfg, ccfg, vocab)
    fold, z = None, None
    if "gates" in extra:
        from engine.inherit.learnable import fold_values
        fold, z = fold_values(extra.pop("gates"), layers, ccfg, pcfg)
        fold = fold if spec.learnable.fold else None

    phase("slice")
    state = child_state(source, plan, pcfg, ccfg, fold, progress=lambda d, t: phase("slice", d, t))
    child_tok = spec.vocab.tokenizer or (None if vocab else calib_tok)
    summary_meta = {"parent": str(source.path), "depth": depth_info["method"], "width": spec.width,
                    "layers": layers}
    path = ckpt.save(out / "checkpoints", 0, {"model": state},
                     {"model_config": ccfg.to_dict(), "tokenizer": child_tok, "inherited_from": summary_meta})
    log(f"child checkpoint {path}")

    phase("eval")
    heldout, heldout_scored = {}, None
    if spec.eval_batches and child_tok:
        val, val_bytes = token_windows(spec.calib, child_tok, "val", spec.eval_batches, None, ccfg.vocab_size, log)
        val_tokens = sum(y.numel() for _, y in val)

        def bits_per_byte(loss: float) -> float:  # batches share one shape: the mean of batch means is per token
            return loss * val_tokens / np.log(2) / val_bytes
        child = load_child(state, ccfg).to(device)
        torch.manual_seed(spec.seed)
        from engine.model import GPT
        rand = GPT(ccfg).to(device)
        for name, m in (("inherited", child), ("random_init", rand)):
            loss = mean_loss(m, val, device)
            heldout[name] = {"loss": loss, "bpb": bits_per_byte(loss)}
        if vocab is None:
            loss = mean_loss(stream, val, device, layers=range(pcfg.n_layer))
            heldout["parent"] = {"loss": loss, "bpb": bits_per_byte(loss)}
        heldout_scored = {"tokens": val_tokens, "bytes": val_bytes}
        log("held-out loss: " + ", ".join(f"{k} {v['loss']:.4f}" for k, v in heldout.items()))
    elif spec.eval_batches:
        log("held-out loss skipped: a child with an id map needs vocab.tokenizer to be evaluated")

    phase("report")
    width_report = {"metric": spec.width, **_width_report(plan, scores, z), **extra}
    report = {"parent": {"path": str(source.path), "kind": source.kind, "config": pcfg.to_dict(),
                         "params": count_params(pcfg).total, "tokenizer": source.tokenizer},
              "child": {"config": ccfg.to_dict(), "params": count_params(ccfg).total, "tokenizer": child_tok},
              "depth": {**depth_info, "kept": layers}, "width": width_report,
              "vocab": {"id_map": str(id_map), "kept": len(vocab)} if vocab else None,
              "heldout": heldout, "heldout_scored": heldout_scored, "plan": plan.to_dict(), "checkpoint": str(path),
              "seconds": time.perf_counter() - t0}
    paths = report_mod.write(report, out)
    record.progress(len(PHASES) * 100, len(PHASES) * 100, 0, "inherit:done")
    summary = {"checkpoint": str(path), "parent_params": report["parent"]["params"],
               "child_params": report["child"]["params"], "layers": layers, "depth": depth_info["method"],
               "width": spec.width, **{f"{k}_loss": v["loss"] for k, v in heldout.items()},
               **{f"{k}_bpb": v["bpb"] for k, v in heldout.items()}}
    artifacts = [{"name": "checkpoint", "path": str(path), "type": "checkpoint"},
                 {"name": "report", "path": str(paths["json"]), "type": "report"},
                 {"name": "report_md", "path": str(paths["md"]), "type": "report"},
                 {"name": "report_plot", "path": str(paths["png"]), "type": "plot"}]
    inputs = [str(source.path)] + ([str(s) for s in spec.calib.sources] if batches or heldout else [])
    inputs += [str(p) for p in (id_map, spec.vocab.tokenizer) if p]
    return record.result("inherit", summary, artifacts, inputs)
