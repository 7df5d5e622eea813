"""Ascend NPU operators through torch_npu's fused kernels (`npu_kernels.ops.OPERATORS`), the NPU
runtime set-up (`npu_kernels.runtime.configure_npu`), and the argument builder for
npu_fusion_attention (`npu_kernels.fusion_attention`, pure and tested everywhere). torch_npu is
imported lazily and only when present: nothing here imports it at module import time."""
