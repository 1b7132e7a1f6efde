"""Weight-only int8 / group-wise int4 matmul: the quantizers round-trip within half a step, the nibbles
sit where the layout says, the Triton kernels (interpreted on CPU) equal the torch references, and the
references equal a float matmul with the dequantized weight."""

from __future__ import annotations

import pytest
import torch

from antiphon.kernels import dispatch
from antiphon.kernels.quant_matmul import (CPU_ROWS, dequantize_int4, dequantize_int8, int4_matmul_reference,
                                           int4_matmul_triton, int8_matmul_cpu, int8_matmul_reference,
                                           int8_matmul_triton, quantize_int4, quantize_int8)

# bfloat16: Triton's interpreter rounds float32 -> bfloat16 toward zero (the GPU to nearest), up to one
# bfloat16 ulp (2^-7 relative) away from torch's rounding of the same float32 value
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-4), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
       torch.float16: dict(rtol=1e-3, atol=1e-3)}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _data(m, k, n, dtype):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(m, k, generator=gen).to(dtype), torch.randn(n, k, generator=gen)


def test_int8_round_trip_within_half_a_step():
    w = torch.randn(6, 200) * 3
    w[2] = 0
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.dtype == torch.float32 and scale.shape == (6,)
    assert torch.isfinite(scale).all() and q.abs().amax(dim=1).tolist() == [127, 127, 0, 127, 127, 127]
    wdq = dequantize_int8(q, scale)
    assert ((wdq - w).abs() <= scale[:, None] / 2 * (1 + 1e-6)).all()
    assert torch.equal(wdq[2], torch.zeros(200))


@pytest.mark.parametrize("group_size", [32, 128])
def test_int4_round_trip_within_half_a_step(group_size):
    w = torch.randn(5, 256) * 3
    w[1, group_size:2 * group_size] = 0
    packed, scales = quantize_int4(w, group_size)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 128)
    assert scales.dtype == torch.float32 and scales.shape == (5, 256 // group_size) and torch.isfinite(scales).all()
    wdq = dequantize_int4(packed, scales, group_size)
    step = scales.repeat_interleave(group_size, dim=1)
    assert ((wdq - w).abs() <= step / 2 * (1 + 1e-6)).all()
    assert torch.equal(wdq[1, group_size:2 * group_size], torch.zeros(group_size))


def test_int4_packing_order():
    # W = v * scale of the group, v integers in [-7, 7] with a 7 in each group: scale and v come back exactly
    group_size, k = 4, 8
    v = torch.tensor([[7, -3, 0, 1, -7, 7, 2, -1],
                      [1, 2, 3, 7, 7, -6, -5, 4]])
    group_scale = torch.tensor([[0.25, 2.0], [0.5, 1.0]])
    packed, scales = quantize_int4(v * group_scale.repeat_interleave(group_size, dim=1), group_size)
    assert torch.equal(scales, group_scale)
    assert packed[0, 0].item() == 0x5F  # column 0 (7 + 8 = 0xF) low, column 1 (-3 + 8 = 5) high
    for n in range(2):
        for j in range(k // 2):
            assert packed[n, j].item() == (v[n, 2 * j] + 8) | (v[n, 2 * j + 1] + 8) << 4
    assert torch.equal(dequantize_int4(packed, scales, group_size),
                       v * group_scale.repeat_interleave(group_size, dim=1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, k, n", [(1, 64, 48), (3, 200, 130), (16, 64, 1), (33, 200, 48), (70, 64, 130)])
def test_int8_matmul_equals_reference(dtype, m, k, n):
    x, w = _data(m, k, n, dtype)
    q, scale = quantize_int8(w)
    out = int8_matmul_triton(x, q, scale)
    ref = int8_matmul_reference(x, q, scale)
    assert out.shape == (m, n) and out.dtype == dtype and ref.dtype == dtype
    torch.testing.assert_close(out, ref, **TOL[dtype])
    torch.testing.assert_close(ref, (x.float() @ dequantize_int8(q, scale).T).to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, k, n, group_size", [(1, 128, 48, 32), (3, 256, 130, 128), (16, 256, 1, 64),
                                                 (33, 128, 130, 64), (70, 256, 48, 32)])
def test_int4_matmul_equals_reference(dtype, m, k, n, group_size):
    x, w = _data(m, k, n, dtype)
    packed, scales = quantize_int4(w, group_size)
    out = int4_matmul_triton(x, packed, scales, group_size)
    ref = int4_matmul_reference(x, packed, scales, group_size)
    assert out.shape == (m, n) and out.dtype == dtype and ref.dtype == dtype
    torch.testing.assert_close(out, ref, **TOL[dtype])
    torch.testing.assert_close(ref, (x.float() @ dequantize_int4(packed, scales, group_size).T).to(dtype),
                               rtol=0, atol=0)


def test_leading_dims_flatten_to_rows():
    x = torch.randn(2, 3, 128)
    w = torch.randn(20, 128)
    q, scale = quantize_int8(w)
    packed, scales = quantize_int4(w, 64)
    out8, out4 = int8_matmul_triton(x, q, scale), int4_matmul_triton(x, packed, scales, 64)
    assert out8.shape == out4.shape == (2, 3, 20)
    torch.testing.assert_close(out8, int8_matmul_reference(x.reshape(6, 128), q, scale).reshape(2, 3, 20),
                               **TOL[torch.float32])
    torch.testing.assert_close(out4, int4_matmul_reference(x.reshape(6, 128), packed, scales, 64).reshape(2, 3, 20),
                               **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 2, 4, 9])
def test_int8_matmul_cpu_is_the_reference_within_bfloat16_rounding(dtype, m):
    # torch's CPU kernel reads bfloat16 activations and scales: ~3e-3 relative on Gaussian data
    x, w = _data(m, 256, 96, dtype)
    q, scale = quantize_int8(w.t().contiguous().t())  # a column-major weight quantizes to row-major q
    assert q.is_contiguous()
    out = int8_matmul_cpu(x.reshape(1, m, 256), q, scale)
    reference = int8_matmul_reference(x.reshape(1, m, 256), q, scale)
    assert out.dtype == dtype and out.shape == (1, m, 96)
    error = ((out.float() - reference.float()).norm() / reference.float().norm()).item()
    assert 0 < error < 6e-3


@pytest.mark.parametrize("k", [8, 40, 88, 200])
def test_int8_matmul_cpu_is_right_for_an_inner_size_torchs_kernel_gets_wrong(k):
    # on an AVX-512 CPU torch's kernel crashes (8, 88) or sums wrongly (40, 200) for these: the reference runs
    x, w = _data(2, k, 33, torch.float32)
    q, scale = quantize_int8(w)
    torch.testing.assert_close(int8_matmul_cpu(x, q, scale), int8_matmul_reference(x, q, scale), rtol=0, atol=0)


def test_dispatch_takes_the_cpu_kernel_for_a_few_rows_without_autograd(monkeypatch):
    x, w = _data(CPU_ROWS + 1, 128, 64, torch.float32)
    q, scale = quantize_int8(w)
    few = x[:CPU_ROWS]
    monkeypatch.delenv(dispatch.ENV, raising=False)
    with torch.no_grad():
        assert torch.equal(dispatch.int8_matmul(few, q, scale), int8_matmul_cpu(few, q, scale))
        assert torch.equal(dispatch.int8_matmul(x, q, scale), int8_matmul_reference(x, q, scale))  # too many rows
    assert torch.equal(dispatch.int8_matmul(few, q, scale), int8_matmul_reference(few, q, scale))  # autograd
    monkeypatch.setenv(dispatch.ENV, "torch")
    with torch.no_grad():
        assert torch.equal(dispatch.int8_matmul(few, q, scale), int8_matmul_reference(few, q, scale))
    assert not torch.equal(int8_matmul_cpu(few, q, scale), int8_matmul_reference(few, q, scale))


def test_quantization_error_is_small():
    # relative Frobenius error of x @ W.T on Gaussian weights: about 0.7% (int8), 10% / 12% (int4, group 32 / 128)
    x, w = _data(64, 256, 512, torch.float32)
    exact = x @ w.T
    for name, out, bound in [("int8", int8_matmul_triton(x, *quantize_int8(w)), 0.01),
                             ("int4/32", int4_matmul_triton(x, *quantize_int4(w, 32), 32), 0.12),
                             ("int4/128", int4_matmul_triton(x, *quantize_int4(w, 128), 128), 0.15)]:
        error = ((out - exact).norm() / exact.norm()).item()
        assert error < bound, f"{name}: relative error {error:.4f} >= {bound}"


def test_bad_inputs_raise():
    w = torch.randn(8, 64)
    q, scale = quantize_int8(w)
    packed, scales = quantize_int4(w, 32)
    for fn in (int8_matmul_reference, int8_matmul_triton, int8_matmul_cpu):
        with pytest.raises(ValueError, match=r"last dimension \(63\).*K \(64\)"):
            fn(torch.randn(2, 63), q, scale)
        with pytest.raises(ValueError, match="int8"):
            fn(torch.randn(2, 64), q.to(torch.int16), scale)
        with pytest.raises(ValueError, match=r"scale \(4,\)"):
            fn(torch.randn(2, 64), q, scale[:4])
    for fn in (int4_matmul_reference, int4_matmul_triton):
        with pytest.raises(ValueError, match=r"last dimension \(128\).*K \(64\)"):
            fn(torch.randn(2, 128), packed, scales, 32)
        with pytest.raises(ValueError, match="uint8"):
            fn(torch.randn(2, 64), packed.to(torch.int8), scales, 32)
        with pytest.raises(ValueError, match=r"K \(64\) must be a multiple of group_size \(48\)"):
            fn(torch.randn(2, 64), packed, scales, 48)
        with pytest.raises(ValueError, match=r"scales \(8, 2\) must be \[N, K // group_size\] = \[8, 4\]"):
            fn(torch.randn(2, 64), packed, scales, 16)
    with pytest.raises(ValueError, match=r"K \(200\) must be a multiple of group_size \(128\)"):
        quantize_int4(torch.randn(4, 200), 128)
    with pytest.raises(ValueError, match=r"group_size \(5\)"):
        quantize_int4(torch.randn(4, 20), 5)
