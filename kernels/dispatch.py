"""The one place that picks which implementation of a kernel runs.

Triton when the input is on a CUDA device and triton imports; the plain-torch reference otherwise.
The environment variable ANTIPHON_KERNELS forces either, read at every call:
- `torch`: the reference everywhere (to compare, to debug, or where a kernel misbehaves); unset, a few
  CPU ops take torch's own fast kernels instead (int8_matmul);
- `triton`: the Triton kernel everywhere. On CPU tensors that is Triton's interpreter, which also needs
  TRITON_INTERPRET=1 in the environment *before* the kernel modules are imported (Triton decides
  compiled or interpreted when it decorates a kernel), e.g.
  `TRITON_INTERPRET=1 ANTIPHON_KERNELS=triton python ...`. tests/kernels/conftest.py sets it.
Unset (or empty): the automatic choice above.
The kernels have no backward: while autograd records (`torch.is_grad_enabled()`, i.e. training) the
reference runs whatever the setting, so gradients flow; inference runs under no_grad / inference_mode.

One function per op, each with the signature of its reference; the kernel modules are imported on first
use, and triton itself only when asked about a CUDA tensor or forced: importing this module costs nothing.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

ENV = "ANTIPHON_KERNELS"
_modules: dict = {}  # kernel modules by name, imported on first use (an import statement per call costs ~15 us)


def _kernel(name: str):
    module = _modules.get(name)
    if module is None:
        module = _modules[name] = importlib.import_module(f"antiphon.kernels.{name}")
    return module


@functools.cache
def _triton_available() -> bool:
    from antiphon.kernels import _triton  # imports triton (~0.2 s): only asked on CUDA or when forced

    return _triton.available()


def _forced() -> str:
    """ANTIPHON_KERNELS, checked: "", "torch" or "triton"."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced not in ("", "torch", "triton"):
        raise ValueError(f"{ENV}={forced!r}: expected 'torch', 'triton', or unset for the automatic choice")
    return forced


def use_triton(x: torch.Tensor) -> bool:
    """True when the Triton kernel should run on tensors like `x` (see the module docstring)."""
    if not os.environ.get(ENV):  # the automatic choice, asked ~100 times per LM step: kept cheap
        return x.is_cuda and not torch.is_grad_enabled() and _triton_available()
    forced = _forced()
    if forced == "torch" or torch.is_grad_enabled():
        return False
    if forced == "triton":
        if not _triton_available():
            raise RuntimeError(f"{ENV}=triton but triton does not import; install triton or unset {ENV}")
        if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(f"{ENV}=triton on a {x.device.type} tensor needs Triton's interpreter: set "
                               "TRITON_INTERPRET=1 before antiphon's kernels are imported")
        return True
    return x.device.type == "cuda" and _triton_available()


def rmsnorm(x, residual, alpha, eps=1e-8):
    """Fused residual add + RMSNorm: see kernels/rmsnorm.py."""
    m = _kernel("rmsnorm")
    return (m.rmsnorm_triton if use_triton(x) else m.rmsnorm_reference)(x, residual, alpha, eps)


def swiglu(u):
    """silu(u[..., :H]) * u[..., H:]: see kernels/swiglu.py."""
    m = _kernel("swiglu")
    return (m.swiglu_triton if use_triton(u) else m.swiglu_reference)(u)


def rope(q, k, positions, max_period):
    """Interleaved RoPE on q and k at integer positions: see kernels/rope_triton.py."""
    m = _kernel("rope_triton")
    return (m.rope_triton if use_triton(q) else m.rope_reference)(q, k, positions, max_period)


def sample(logits, temp, top_k=0, noise=None, rng=None):
    """Temperature + top-k + exponential race: see kernels/sampling.py."""
    m = _kernel("sampling")
    return (m.sample_triton if use_triton(logits) else m.sample_reference)(logits, temp, top_k, noise, rng)


def embedding_sum(tokens, table, offsets):
    """Summed multi-stream embedding lookup: see kernels/embedding_sum.py."""
    m = _kernel("embedding_sum")
    return (m.embedding_sum_triton if use_triton(table) else m.embedding_sum_reference)(tokens, table, offsets)


def rvq_search(residual, codebook, norms, update=False):
    """Nearest centroid per row: see kernels/rvq_search.py."""
    m = _kernel("rvq_search")
    return (m.rvq_search_triton if use_triton(residual) else m.rvq_search_reference)(residual, codebook, norms, update)


def rvq_encode(x, codebooks, norms):
    """The residual loop over K codebooks: see kernels/rvq_search.py."""
    m = _kernel("rvq_search")
    search = m.rvq_search_triton if use_triton(x) else m.rvq_search_reference
    return m.rvq_encode(x, codebooks, norms, search)


def decode_attention(q, keys, values, key_positions, q_positions, context=None, k_scale=None, v_scale=None):
    """Single-query attention over a ring KV cache (int8 keys and values with their scales): see
    kernels/decode_attention.py."""
    m = _kernel("decode_attention")
    fn = m.decode_attention_triton if use_triton(q) else m.decode_attention_reference
    return fn(q, keys, values, key_positions, q_positions, context, k_scale=k_scale, v_scale=v_scale)


def int8_matmul(x, q, scale):
    """x @ W.T with W int8 rows and a scale each: see kernels/quant_matmul.py. On the CPU, for a few rows
    (not forced to the reference, no autograd), torch's weight-only int8 kernel."""
    m = _kernel("quant_matmul")
    if use_triton(x):
        return m.int8_matmul_triton(x, q, scale)
    if (x.device.type == "cpu" and x.numel() <= m.CPU_ROWS * x.shape[-1] and not torch.is_grad_enabled()
            and _forced() != "torch"):
        return m.int8_matmul_cpu(x, q, scale)
    return m.int8_matmul_reference(x, q, scale)


def int4_matmul(x, packed, scales, group_size):
    """x @ W.T with W int4 in groups of group_size columns: see kernels/quant_matmul.py."""
    m = _kernel("quant_matmul")
    return (m.int4_matmul_triton if use_triton(x) else m.int4_matmul_reference)(x, packed, scales, group_size)
