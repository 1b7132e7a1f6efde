"""`antiphon bench serve`'s density mode (apps/bench_density.py): the harness end to end on tiny models (the
speed is not checked), the real shapes' sizes against the published figures, the roofline's bytes model."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from antiphon.apps import bench_density
from antiphon.apps.cli import main
from antiphon.lm import LM
from antiphon.lm.layers import Embedding
from antiphon.lm.quantize import quantize_lm
from antiphon.streaming.tasks import task_of

from tests.lm.tiny import MOSHI, TTS_CROSS
from tests.streaming.tiny_pair import TASK_LMS, make_pair


def _density(tmp_path, monkeypatch, task, *argv):
    monkeypatch.setattr(bench_density, "build_models", lambda args, device, dtype: make_pair(task=task))
    out = tmp_path / "density.json"
    assert main(["bench", "serve", "--density", "--seconds", "0.24", "--warmup", "1", "--json", str(out), *argv]) == 0
    return json.loads(out.read_text())


def test_density_runs_end_to_end_and_writes_its_json(tmp_path, monkeypatch, capsys):
    result = _density(tmp_path, monkeypatch, "dialogue", "--slots", "1,2", "--no-reference", "--hbm-gbps", "100")
    assert set(result) >= {"benchmark", "machine", "settings", "runs", "sessions_held", "memory_per_session", "codec_alone"}
    assert result["settings"]["task"] == "dialogue" and result["settings"]["timed_ticks"] == 3
    assert [r["slots"] for r in result["runs"]] == [1, 2] and [r["slots"] for r in result["codec_alone"]] == [1, 2]
    for r in result["runs"]:
        ticks = r["ticks"]
        assert ticks["count"] == 3 and 0 < ticks["p50_ms"] <= ticks["p99_ms"] <= ticks["max_ms"]
        assert r["held"] is (ticks["p99_ms"] <= 80.0)
        assert r["frames_out"] > 0 and r["state_bytes_per_session"] > r["codec_state_bytes_per_session"] > 0
        line = r["roofline"]
        assert line["bytes_per_tick"]["total"] == sum(v for k, v in line["bytes_per_tick"].items() if k != "total")
        assert line["bytes_per_tick_at_full_context"] >= line["bytes_per_tick"]["total"]
        assert line["achieved_bytes_per_s"] > 0 and line["fraction_of_hbm"] == pytest.approx(
            line["achieved_bytes_per_s"] / 100e9, rel=1e-3)
    one, two = result["runs"]
    assert two["roofline"]["bytes_per_tick"]["kv"] == 2 * one["roofline"]["bytes_per_tick"]["kv"] > 0
    assert result["sessions_held"] == max((r["slots"] for r in result["runs"] if r["held"]), default=0)
    assert result["memory_per_session"]["state_bytes"] == two["state_bytes_per_session"]
    assert all(r["x_real_time"] > 0 for r in result["codec_alone"])
    assert "reference" not in result
    out = capsys.readouterr().out
    assert "serve density: dialogue-10m" in out and "sessions held (tick p99 <= 80 ms): antiphon" in out


def test_density_with_int8_weights_and_cache_reads_fewer_bytes(tmp_path, monkeypatch):
    plain = _density(tmp_path, monkeypatch, "dialogue", "--slots", "2", "--no-reference")
    small = _density(tmp_path, monkeypatch, "dialogue", "--slots", "2", "--no-reference", "--quantize", "int8",
                     "--kv-dtype", "int8")
    assert (small["settings"]["quantize"], small["settings"]["kv_dtype"]) == ("int8", "int8")
    a, b = plain["runs"][0], small["runs"][0]
    assert b["ticks"]["count"] == 3 and b["frames_out"] == a["frames_out"] > 0
    assert b["state_bytes_per_session"] < a["state_bytes_per_session"]
    assert small["settings"]["weight_bytes_read_per_tick"] < plain["settings"]["weight_bytes_read_per_tick"]
    assert b["roofline"]["bytes_per_tick"]["kv"] < a["roofline"]["bytes_per_tick"]["kv"]


@pytest.mark.parametrize("task", ["stt", "translation", "tts"])
def test_density_serves_every_task(tmp_path, monkeypatch, task):
    result = _density(tmp_path, monkeypatch, task, "--slots", "2", "--no-reference")
    run = result["runs"][0]
    assert result["settings"]["task"] == task
    assert run["ticks"]["count"] == 3 and run["frames_out"] > 0
    assert "fraction_of_hbm" in run["roofline"] and result["settings"]["hbm_bytes_per_s"] is None


def test_memory_per_session_grows_with_context_and_layers():
    codec = make_pair(task="dialogue")[1]

    def state(config):
        lm = bench_density.random_lm(config, torch.device("cpu"), torch.float32)
        options = bench_density.task_options(lm, "dialogue")
        return bench_density.density_run(lm, codec, 2, 1, 2, options)["state_bytes_per_session"]

    base = TASK_LMS["dialogue"]
    assert 0 < state(base) < state(dataclasses.replace(base, context=50)) < state(
        dataclasses.replace(base, context=50, num_layers=4))


def test_the_search_doubles_then_bisects():
    ran = []

    def one(n):
        ran.append(n)
        return {"slots": n, "held": n <= 11}

    rows = bench_density.sweep(one, [1, 2, 4, 8, 16, 32, 64], search=True)
    assert ran == [1, 2, 4, 8, 16, 12, 10, 11]
    assert max(r["slots"] for r in rows if r["held"]) == 11 and [r["slots"] for r in rows] == sorted(ran)
    ran.clear()
    assert [r["slots"] for r in bench_density.sweep(one, [1, 16, 32], search=False)] == [1, 16, 32] == ran


def test_real_shapes_have_the_published_sizes():
    with torch.device("meta"):
        models = {name: LM(bench_density.shape_config(name)) for name in bench_density.SHAPES}
    count = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert count["moshi-7b"] == 7_687_729_152  # kyutai-moshi-mimi.md §2.8
    assert count["stt-1b"] == pytest.approx(1.0e9, rel=0.03)  # §2.9: ~1.0 B
    assert count["stt-2.6b"] == pytest.approx(2.6e9, rel=0.03)  # §2.9: ~2.6 B
    tts = models["tts-1.6b"]  # the released weights file (§2.9): bfloat16, the conditioners float32, a small header
    conditioners = sum(p.numel() for p in tts.condition_provider.parameters())
    file_bytes = 2 * (count["tts-1.6b"] - conditioners) + 4 * conditioners
    assert 0 < 3_683_719_712 - file_bytes < 100_000
    hibiki = models["hibiki-2b"].config  # configs/moshi_dev_2b.json (§2.9)
    assert (hibiki.dim, hibiki.num_layers, hibiki.n_q, hibiki.dep_q, hibiki.text_card) == (2560, 24, 32, 16, 48000)
    assert {name: task_of(m) for name, m in models.items()} == {
        "moshi-7b": "dialogue", "stt-1b": "stt", "stt-2.6b": "stt", "hibiki-2b": "translation", "tts-1.6b": "tts"}


def test_a_real_shape_needs_random_weights(capsys):
    assert main(["bench", "serve", "--shape", "moshi-7b", "--no-reference"]) == 2
    assert "--random-weights" in capsys.readouterr().err


def test_tick_bytes_against_a_hand_count():
    # tests/lm/tiny MOSHI: dim 32, 2 layers of 4 heads, FF int(4.125 * 32) = 132 -> gated hidden 88; text 40;
    # n_q 4, dep_q 2, card 24; depformer 16 wide, 2 layers of 2 heads, FF 66 -> hidden 44, a weight set per step.
    temporal = 2 * (3 * 32 * 32 + 32 * 32 + 2 * 32 + 2 * 88 * 32 + 32 * 88)  # in/out proj, 2 norms, gated FFN
    depformer = 2 * (2 * 3 * 16 * 16 + 2 * 16 * 16 + 2 * 16 + 2 * (2 * 44 * 16 + 16 * 44))
    heads = 32 + 40 * 32 + 2 * 16 * 32 + 2 * 24 * 16  # out_norm, text_linear, depformer_in, linears
    weights = temporal + depformer + heads
    lm = bench_density.random_lm(MOSHI, torch.device("cpu"), torch.float32)
    assert bench_density.weights_read(lm) == 4 * weights
    parts = bench_density.tick_bytes(MOSHI, 2 * weights, itemsize=2, slots=3, length=7, codec_weights=1000,
                                     codec_state=10)
    kv = 2 * 2 * 4 * 8 * 5  # keys and values x layers x heads x head dim x min(length 7, context 5)
    rows = (1 + 4) * 32 + (1 + 2 - 1) * 16  # text + audio rows; the depformer's text + dep_q - 1 audio rows
    assert parts == {"lm_weights": 2 * weights, "embedding_rows": 3 * rows * 2, "kv": 3 * kv * 2, "codec_weights": 1000,
                     "codec_state": 30, "total": 2 * weights + 6 * rows + 6 * kv + 1030}
    # an int8 cache: a byte per value and a float32 scale per head vector of 8 values
    int8 = bench_density.tick_bytes(MOSHI, 0, 2, slots=3, length=7,
                                    kv_itemsize=bench_density.kv_value_bytes(MOSHI, "int8", 2))
    assert int8["kv"] == 3 * kv * (1 + 4 / 8)
    # int8 weights: the temporal transformer's matrices at a byte per value, plus a float32 scale per row
    quantize_lm(lm, "int8")
    matrices = 2 * (3 * 32 * 32 + 32 * 32 + 2 * 88 * 32 + 32 * 88)
    rows_out = 2 * (3 * 32 + 32 + 2 * 88 + 32)
    assert bench_density.weights_read(lm) == 4 * weights - 4 * matrices + matrices + 4 * rows_out
    # cross-attention: its key/value projections run once per session; their keys and values are read per slot
    tts = bench_density.random_lm(TTS_CROSS, torch.device("cpu"), torch.bfloat16)
    tables = sum(m.weight.numel() for m in tts.modules() if isinstance(m, Embedding))
    conditioners = sum(p.numel() for p in tts.condition_provider.parameters())
    total = sum(p.numel() for p in tts.parameters())
    assert bench_density.weights_read(tts) == 2 * (total - tables - conditioners - 2 * (2 * 32 * 32))
    with_cross = bench_density.tick_bytes(TTS_CROSS, 0, 2, slots=1, length=1, cross_positions=6)
    without = bench_density.tick_bytes(TTS_CROSS, 0, 2, slots=1, length=1)
    assert with_cross["kv"] - without["kv"] == 2 * 2 * 32 * 6 * 2


def test_random_lm_is_built_in_its_dtype():
    lm = bench_density.random_lm(TTS_CROSS, torch.device("cpu"), torch.bfloat16)
    assert lm.dtype == torch.bfloat16 and {p.dtype for p in lm.condition_provider.parameters()} == {torch.float32}
    assert all(torch.isfinite(p.float()).all() for p in lm.parameters())
    assert (lm.out_norm.alpha == 1).all() and lm.text_linear.weight.float().std().item() == pytest.approx(0.02, rel=0.2)


def test_the_dtype_defaults_to_bfloat16_for_the_real_shapes():
    def dtype(shape, given=None):
        return bench_density.run_dtype(argparse.Namespace(shape=shape, dtype=given), torch.device("cpu"))

    assert (dtype("moshi-7b"), dtype("dialogue-10m"), dtype("stt-1b", "float16")) == (
        torch.bfloat16, torch.float32, torch.float16)


def test_hbm_bandwidth_from_the_device_name(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100 80GB HBM3")
    assert bench_density.hbm_bandwidth(cuda, None) == (3.35e12, "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H200")
    assert bench_density.hbm_bandwidth(cuda, None)[0] == 4.8e12
    assert bench_density.hbm_bandwidth(cuda, 1000.0) == (1e12, "--hbm-gbps")
    assert bench_density.hbm_bandwidth(torch.device("cpu"), None)[0] is None


@pytest.mark.reference
def test_density_against_the_reference(tmp_path, monkeypatch):
    """Quantized here: the reference still loads the model as published (saved before quantizing)."""
    pytest.importorskip("moshi")
    result = _density(tmp_path, monkeypatch, "dialogue", "--slots", "1,2", "--quantize", "int8")
    ref = result["reference"]
    assert ref["implementation"] == "moshi 0.2.13" and [r["slots"] for r in ref["runs"]] == [1, 2]
    assert all(r["ticks"]["count"] == 3 for r in ref["runs"])
    assert set(ref["tick_p50_ratio_reference_over_antiphon"]) == {"1", "2"}
    assert ref["sessions_held"] == max((r["slots"] for r in ref["runs"] if r["held"]), default=0)
