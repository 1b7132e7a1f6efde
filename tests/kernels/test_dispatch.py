"""The dispatch: torch on CPU by default, Triton on CUDA, ANTIPHON_KERNELS forcing either; every op gives
the reference's result through both paths."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from antiphon.kernels import dispatch
from antiphon.kernels import rmsnorm as rmsnorm_module
from antiphon.kernels.embedding_sum import stack_tables


@pytest.fixture(autouse=True)
def _inference():
    """The kernels run only where autograd does not record (see test_training_runs_the_references)."""
    with torch.no_grad():
        yield


def _on(device: str):
    return SimpleNamespace(device=torch.device(device), is_cuda=device == "cuda")


def test_automatic_choice(monkeypatch):
    monkeypatch.delenv(dispatch.ENV, raising=False)
    assert not dispatch.use_triton(torch.zeros(1))
    assert dispatch.use_triton(_on("cuda")) == dispatch._triton_available()
    monkeypatch.setattr(dispatch, "_triton_available", lambda: False)
    assert not dispatch.use_triton(_on("cuda"))  # no triton: torch even on CUDA


def test_importing_the_dispatch_does_not_import_triton():
    import subprocess
    import sys

    code = "import sys, antiphon.lm, antiphon.codec; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_env_forces_either(monkeypatch):
    monkeypatch.setenv(dispatch.ENV, "torch")
    assert not dispatch.use_triton(_on("cuda"))
    monkeypatch.setenv(dispatch.ENV, " Triton ")
    assert dispatch.use_triton(torch.zeros(1))  # the interpreter (conftest sets TRITON_INTERPRET=1)
    monkeypatch.setenv(dispatch.ENV, "")
    assert not dispatch.use_triton(torch.zeros(1))


def test_training_runs_the_references(monkeypatch):
    """The kernels have no backward: with autograd recording, the forced Triton path is not taken and a
    model's gradients are those of the torch path."""
    from tests.lm.tiny import MOSHI, make_tiny_lm, random_codes

    monkeypatch.setenv(dispatch.ENV, "triton")
    with torch.enable_grad():
        assert not dispatch.use_triton(torch.zeros(1))
        lm = make_tiny_lm(MOSHI)
        out = lm(random_codes(MOSHI, 1, 4))
        out.text_logits[out.text_mask].sum().backward()
    assert all(p.grad is not None for p in lm.transformer.parameters())
    assert dispatch.use_triton(torch.zeros(1))  # outside: the kernels again


def test_env_errors_say_what_to_do(monkeypatch):
    monkeypatch.setenv(dispatch.ENV, "cuda")
    with pytest.raises(ValueError, match="expected 'torch', 'triton'"):
        dispatch.use_triton(torch.zeros(1))
    monkeypatch.setenv(dispatch.ENV, "triton")
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        dispatch.use_triton(torch.zeros(1))


def test_the_forced_path_is_the_one_that_runs(monkeypatch):
    calls = []
    monkeypatch.setattr(rmsnorm_module, "rmsnorm_triton", lambda *a: calls.append("triton") or a[0])
    monkeypatch.setattr(rmsnorm_module, "rmsnorm_reference", lambda *a: calls.append("torch") or a[0])
    x = torch.zeros(2, 4)
    for env in ("triton", "torch"):
        monkeypatch.setenv(dispatch.ENV, env)
        dispatch.rmsnorm(x, None, torch.ones(4))
    monkeypatch.delenv(dispatch.ENV)
    dispatch.rmsnorm(x, None, torch.ones(4))
    assert calls == ["triton", "torch", "torch"]


def _run_all():
    gen = torch.Generator().manual_seed(15)
    x = torch.randn(3, 10, generator=gen)
    logits = torch.randn(3, 50, generator=gen)
    noise = torch.empty(3, 50).exponential_(generator=gen)
    table, offsets = stack_tables([torch.randn(n, 6, generator=gen) for n in (11, 5)])
    tokens = torch.tensor([[[3, -1], [4, 0]]])
    codebook = torch.randn(20, 10, generator=gen)
    q = torch.randn(2, 3, 5, 4, generator=gen)
    keys = torch.randn(2, 1, 9, 4, generator=gen)
    key_positions = torch.arange(9).repeat(2, 1)
    return dict(
        rmsnorm=dispatch.rmsnorm(x, x.flip(0), torch.rand(10, generator=gen), 1e-8),
        swiglu=dispatch.swiglu(x),
        rope=dispatch.rope(q, q[:, :, :2], torch.tensor([[4, 5, 6], [0, 1, 2]]), 10_000.0),
        sample=dispatch.sample(logits, 0.9, 7, noise),
        embedding_sum=dispatch.embedding_sum(tokens, table, offsets),
        rvq_search=dispatch.rvq_search(x, codebook, codebook.pow(2).sum(-1)),
        rvq_encode=dispatch.rvq_encode(x, codebook.view(2, 10, 10), codebook.view(2, 10, 10).pow(2).sum(-1)),
        decode_attention=dispatch.decode_attention(q[:, 0, :2], keys, keys, key_positions, torch.tensor([8, 5]), 4),
    )


def test_every_op_gives_the_same_result_on_both_paths(monkeypatch):
    monkeypatch.setenv(dispatch.ENV, "torch")
    reference = _run_all()
    monkeypatch.setenv(dispatch.ENV, "triton")
    kernels = _run_all()
    for name, ref in reference.items():
        torch.testing.assert_close(kernels[name], ref, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
