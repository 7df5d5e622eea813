"""CUDA fallback operators: the project's own Triton kernels (RMSNorm, rotary, SwiGLU, fused linear
cross-entropy, each with its backward), attention through SDPA's flash backend or flash-attn, and
fused AdamW. `cuda_fallback.ops.OPERATORS` is what the operator table loads; `cuda_fallback.liger`
offers Liger-Kernel's versions as an alternative. The kernels also run on CPU fp32 tensors under
Triton's interpreter (TRITON_INTERPRET=1 set before they are imported), which is how CI tests them."""
