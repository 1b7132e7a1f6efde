"""Small-batch CPU layouts: the same values and shapes, and matmuls equal to torch's in every layout."""

from __future__ import annotations

import pytest
import torch

from antiphon.kernels import layout


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (6, 4, 3), (3, 8, 5)])
def test_small_batch_layout_keeps_shape_and_values(shape):
    weight = torch.randn(shape)
    param = layout.small_batch_layout(weight)
    assert param.shape == weight.shape and torch.equal(param, weight)
    n, k = shape[0], weight[0].numel()
    assert param.flatten(1).t().is_contiguous() == (k < n)  # widening weights are stored input-major
    copy = torch.nn.Parameter(torch.zeros(shape))
    copy.data = param.data.clone(memory_format=torch.preserve_format)
    assert copy.stride() == param.stride()


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("rows", [1, 2, 5, 17, 40])
@pytest.mark.parametrize("k, n", [(12, 30), (30, 12), (7, 5), (64, 64)])
@pytest.mark.parametrize("input_major", [True, False])
def test_matmul_equals_torch(threads, rows, k, n, input_major):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(rows, k)
        w = torch.randn(k, n)
        w = w.contiguous() if input_major else w.t().contiguous().t()
        torch.testing.assert_close(layout.matmul(x, w), x @ w, rtol=1e-5, atol=1e-5)
        x3 = torch.randn(2, rows, k)
        torch.testing.assert_close(layout.matmul(x3, w), x3 @ w, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(before)


def test_linear_takes_either_layout_and_a_bias():
    weight, bias = torch.randn(10, 4, 3), torch.randn(10)
    x = torch.randn(3, 12)
    expected = torch.nn.functional.linear(x, weight.flatten(1), bias)
    for w in (weight, layout.small_batch_layout(weight), weight.flatten(1).t().contiguous().t().view(10, 4, 3)):
        torch.testing.assert_close(layout.linear(x, w, bias), expected, rtol=1e-5, atol=1e-5)
