"""Weight-only quantized matmul for small batches (decode, M = 1..64 rows): out = x @ W.T with W [N, K]
stored as int8 or group-wise int4.

int8: symmetric per output row: scale[n] = absmax(W[n]) / 127 (1 for a zero row), q = round(W / scale)
clamped to [-127, 127]; W ~ q * scale[:, None].
int4: symmetric per (row, group of `group_size` consecutive input columns): scale = absmax / 7 (1 for a
zero group), v = round(W / scale) clamped to [-8, 7], stored as v + 8 in a nibble: byte j of a row holds
column 2j in its low nibble and column 2j + 1 in its high nibble. packed uint8 [N, K // 2], scales
float32 [N, K // group_size]; K a multiple of group_size, group_size even.

The matmul is float32 math on the dequantized weight (x.float() @ W.T), one rounding to x's dtype. The
kernels grid over (blocks of rows, blocks of N), loop over K in BLOCK_K tiles, dequantize the weight tile
to float32 in registers and accumulate with tl.dot (every block dim >= 16, as the GPU needs).
"""

from __future__ import annotations

import torch

from antiphon.kernels._triton import jit, next_power_of_2, tl

BLOCK_N = 32
BLOCK_K = 128
CPU_K_MULTIPLE = 16  # int8_matmul_cpu: torch's kernel only for an inner size K that is a multiple of this
CPU_ROWS = 32  # int8_matmul_cpu up to this many rows: beyond, dequantizing once and a float matmul is faster


def _check_group(k: int, group_size: int, fn: str) -> None:
    if group_size <= 0 or group_size % 2 or k % group_size:
        raise ValueError(f"{fn}: K ({k}) must be a multiple of group_size ({group_size}), an even number")


def _check_x(x: torch.Tensor, k: int, fn: str) -> None:
    if x.shape[-1] != k:
        raise ValueError(f"{fn}: x's last dimension ({x.shape[-1]}) must be the weight's K ({k})")


def _check_int8(q: torch.Tensor, scale: torch.Tensor, fn: str) -> None:
    if q.dtype != torch.int8 or q.dim() != 2:
        raise ValueError(f"{fn}: q must be int8 [N, K], got {q.dtype} {tuple(q.shape)}")
    if scale.shape != (q.shape[0],):
        raise ValueError(f"{fn}: scale {tuple(scale.shape)} must be [N] = [{q.shape[0]}] for q {tuple(q.shape)}")


def _check_int4(packed: torch.Tensor, scales: torch.Tensor, group_size: int, fn: str) -> int:
    """-> K."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"{fn}: packed must be uint8 [N, K // 2], got {packed.dtype} {tuple(packed.shape)}")
    k = 2 * packed.shape[1]
    _check_group(k, group_size, fn)
    if scales.shape != (packed.shape[0], k // group_size):
        raise ValueError(f"{fn}: scales {tuple(scales.shape)} must be [N, K // group_size] = "
                         f"[{packed.shape[0]}, {k // group_size}] for packed {tuple(packed.shape)}, "
                         f"group_size {group_size}")
    return k


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (q int8 [N, K], scale float32 [N])."""
    w = weight.float()
    scale = w.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale  # row-major whatever the weight's layout


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q int8 [N, K], scale [N] -> float32 [N, K]."""
    _check_int8(q, scale, "dequantize_int8")
    return q.float() * scale.float()[:, None]


def quantize_int4(weight: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (packed uint8 [N, K // 2], scales float32 [N, K // group_size])."""
    n, k = weight.shape
    _check_group(k, group_size, "quantize_int4")
    w = weight.float().reshape(n, k // group_size, group_size)
    scales = w.abs().amax(dim=2) / 7
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    v = (torch.round(w / scales[:, :, None]).clamp_(-8, 7) + 8).to(torch.uint8).reshape(n, k)
    return v[:, 0::2] | (v[:, 1::2] << 4), scales


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """packed uint8 [N, K // 2], scales [N, K // group_size] -> float32 [N, K]."""
    k = _check_int4(packed, scales, group_size, "dequantize_int4")
    v = torch.stack([packed & 0xF, packed >> 4], dim=2).reshape(packed.shape[0], k).float() - 8
    return v * scales.float().repeat_interleave(group_size, dim=1)


def int8_matmul_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [..., K], q int8 [N, K], scale [N] -> [..., N] in x's dtype."""
    _check_int8(q, scale, "int8_matmul")
    _check_x(x, q.shape[1], "int8_matmul")
    return (x.float() @ dequantize_int8(q, scale).T).to(x.dtype)


def int8_matmul_cpu(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Same contract as int8_matmul_reference, on the CPU through torch's weight-only int8 kernel
    (torch._weight_int8pack_mm), which reads bfloat16 activations and scales: x, the scales and the
    output round to bfloat16 (a relative error of ~3e-3 beside the reference). Its cost grows with the
    rows (a pass over the weight per row): at 1-2 rows it is 2-3x faster than a float32 matmul of the
    float weight, at ~8 rows as fast, at 32 (CPU_ROWS) still faster than dequantizing first (2-core AVX2).
    An inner size K that is not a multiple of CPU_K_MULTIPLE takes the reference: on an AVX-512 CPU
    (torch 2.13) the kernel then returns wrong sums (K = 40, 200) or crashes the process (K = 8, 88)."""
    _check_int8(q, scale, "int8_matmul")
    _check_x(x, q.shape[1], "int8_matmul")
    if q.shape[1] % CPU_K_MULTIPLE:
        return int8_matmul_reference(x, q, scale)
    rows = x.reshape(-1, q.shape[1]).to(torch.bfloat16)
    out = torch._weight_int8pack_mm(rows, q, scale.to(torch.bfloat16))  # [rows, N]
    return out.to(x.dtype).view(*x.shape[:-1], q.shape[0])


def int4_matmul_reference(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
                          group_size: int) -> torch.Tensor:
    """x [..., K], packed uint8 [N, K // 2], scales [N, K // group_size] -> [..., N] in x's dtype."""
    _check_x(x, _check_int4(packed, scales, group_size, "int4_matmul"), "int4_matmul")
    return (x.float() @ dequantize_int4(packed, scales, group_size).T).to(x.dtype)


@jit
def _int8_matmul_kernel(x_ptr, q_ptr, scale_ptr, out_ptr, M, N, K,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # program (block of rows, block of N); x [M, K], q [N, K], out [M, N] contiguous
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < M
    cmask = cols < N
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * K  # [BLOCK_M, 1]
    q_rows = q_ptr + cols.to(tl.int64)[:, None] * K  # [BLOCK_N, 1]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        x = tl.load(x_rows + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
        w = tl.load(q_rows + ks[None, :], mask=cmask[:, None] & kmask[None, :], other=0).to(tl.float32)
        acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
    acc = acc * tl.load(scale_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]  # per-row scale
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])


@jit
def _int4_matmul_kernel(x_ptr, p_ptr, scales_ptr, out_ptr, M, N, K, GROUP: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # program (block of rows, block of N); x [M, K], packed [N, K // 2], scales [N, K // GROUP], out [M, N]
    # contiguous. A tile of BLOCK_K columns is BLOCK_K // 2 bytes; byte j holds columns 2j (low nibble)
    # and 2j + 1 (high nibble), both in group 2j // GROUP: out = x_even @ low.T + x_odd @ high.T.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < M
    cmask = cols < N
    half = K // 2
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * K  # [BLOCK_M, 1]
    p_rows = p_ptr + cols.to(tl.int64)[:, None] * half  # [BLOCK_N, 1]
    s_rows = scales_ptr + cols.to(tl.int64)[:, None] * (K // GROUP)  # [BLOCK_N, 1]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for b0 in range(0, half, BLOCK_K // 2):
        bs = b0 + tl.arange(0, BLOCK_K // 2)  # byte index in a row
        bmask = bs < half
        xmask = rmask[:, None] & bmask[None, :]
        x_even = tl.load(x_rows + 2 * bs[None, :], mask=xmask, other=0.0).to(tl.float32)
        x_odd = tl.load(x_rows + 2 * bs[None, :] + 1, mask=xmask, other=0.0).to(tl.float32)
        wmask = cmask[:, None] & bmask[None, :]
        byte = tl.load(p_rows + bs[None, :], mask=wmask, other=0).to(tl.int32)  # [BLOCK_N, BLOCK_K // 2]
        scale = tl.load(s_rows + (2 * bs[None, :]) // GROUP, mask=wmask, other=0.0).to(tl.float32)
        low = ((byte & 0xF) - 8).to(tl.float32) * scale
        high = ((byte >> 4) - 8).to(tl.float32) * scale
        acc = tl.dot(x_even, tl.trans(low), acc, input_precision="ieee")
        acc = tl.dot(x_odd, tl.trans(high), acc, input_precision="ieee")
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])


def _launch(kernel, x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, n: int, **meta) -> torch.Tensor:
    """Flatten x [..., K] to M rows, one program per (BLOCK_M rows, BLOCK_N outputs) -> [..., N]."""
    k = x.shape[-1]
    xs = x.reshape(-1, k).contiguous()
    m = xs.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m and n:
        block_m = min(64, max(16, next_power_of_2(m)))
        kernel[(-(-m // block_m), -(-n // BLOCK_N))](xs, weight.contiguous(), scales.contiguous(), out, m, n, k,
                                                     BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, **meta)
    return out.reshape(x.shape[:-1] + (n,))


def int8_matmul_triton(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Same contract as int8_matmul_reference."""
    _check_int8(q, scale, "int8_matmul")
    _check_x(x, q.shape[1], "int8_matmul")
    return _launch(_int8_matmul_kernel, x, q, scale, q.shape[0])


def int4_matmul_triton(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
                       group_size: int) -> torch.Tensor:
    """Same contract as int4_matmul_reference."""
    _check_x(x, _check_int4(packed, scales, group_size, "int4_matmul"), "int4_matmul")
    return _launch(_int4_matmul_kernel, x, packed, scales, packed.shape[0], GROUP=group_size)
