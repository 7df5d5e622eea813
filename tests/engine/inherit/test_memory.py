"""Inheriting from a sharded parent never holds the parent: the process's peak resident memory
(VmHWM, reset just before, in a fresh subprocess) grows by less than the child's size plus the
largest parent tensor plus a fixed overhead, while the parent itself is several times that."""
import json
import subprocess
import sys

import torch
import transformers

from tests.conftest import REPO

MiB = 2**20
OVERHEAD = 20 * MiB  # allocator slack, file pages of the shard being read, the checkpoint write

MEASURE = r"""
import json, sys, torch
from engine.inherit.run import inherit
from engine.inherit.spec import InheritSpec
from engine.inherit.source import open_parent

def spec(parent, out, child):
    return InheritSpec(parent=parent, child=child, depth={"method": "uniform"}, width="l2", eval_batches=0,
                       backend="cpu")

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

parent, warm, out, child = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
inherit(spec(warm, out + "_warm", {"n_layer": 1}), out + "_warm", log=lambda *a: None)  # load every code path
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
base = status("VmRSS")
result = inherit(spec(parent, out, child), out, log=lambda *a: None)
print(json.dumps({"peak_growth": status("VmHWM") - base, "largest": open_parent(parent).largest_tensor_bytes(),
                  "checkpoint": result["summary"]["checkpoint"]}))
"""


def save_llama(path, **kw):
    cfg = transformers.LlamaConfig(max_position_embeddings=128, tie_word_embeddings=False, **kw)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(path, max_shard_size="1MB")  # many shards; each big tensor is a shard of its own
    return sum(p.numel() * 4 for p in model.parameters())


def test_peak_memory_from_a_sharded_parent(tmp_path):
    parent_bytes = save_llama(tmp_path / "parent", vocab_size=4096, hidden_size=256, intermediate_size=1024,
                              num_hidden_layers=16, num_attention_heads=8, num_key_value_heads=4, head_dim=32)
    save_llama(tmp_path / "warm", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2)
    assert len(list((tmp_path / "parent").glob("*.safetensors"))) > 16
    child = {"n_layer": 4, "n_embd": 128, "n_head": 4, "n_kv_head": 2, "ffn_hidden": 256}
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "parent"), str(tmp_path / "warm"),
                           str(tmp_path / "child"), json.dumps(child)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    from engine import checkpoint as ckpt
    state = ckpt.load(m["checkpoint"], ("model",))[1]["model"]
    child_bytes = sum(t.numel() * 4 for t in {t.data_ptr(): t for t in state.values()}.values())
    bound = child_bytes + m["largest"] + OVERHEAD
    print(f"parent {parent_bytes / MiB:.1f} MiB, child {child_bytes / MiB:.1f} MiB, largest parent tensor "
          f"{m['largest'] / MiB:.1f} MiB, measured peak growth {m['peak_growth'] / MiB:.1f} MiB, bound {bound / MiB:.1f} MiB")
    assert m["peak_growth"] < bound
    assert bound < parent_bytes / 2  # the bound is meaningful: holding the parent would break it
