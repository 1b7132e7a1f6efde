"""`antiphon bench`: each target runs end to end and writes the JSON it promises (tiny runs: these
check the harness, not the speed)."""

from __future__ import annotations

import json

import pytest

from antiphon.apps.cli import main


def _run(tmp_path, *argv):
    out = tmp_path / "result.json"
    assert main(["bench", *argv, "--warmup", "1", "--rounds", "2", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_bench_codec_without_reference(tmp_path, capsys):
    result = _run(tmp_path, "codec", "--frames", "2", "--no-reference")
    assert result["antiphon"]["steps"] == 4  # 2 timed frames x 2 rounds
    assert result["antiphon"]["ms_median"] > 0
    assert result["settings"]["num_codebooks"] == 8 and "reference" not in result
    assert "codec streaming, batch 1" in capsys.readouterr().out


def test_bench_codec_quantized(tmp_path, capsys):
    result = _run(tmp_path, "codec", "--frames", "2", "--no-reference", "--quantize", "int8")
    assert result["settings"]["quantize"] == "int8" and result["antiphon"]["steps"] == 4
    assert "int8 weights" in capsys.readouterr().out


def test_bench_lm_without_reference(tmp_path):
    result = _run(tmp_path, "lm", "--steps", "3", "--batch", "2", "--no-reference")
    assert result["antiphon"]["steps"] == 6
    assert 70e6 < result["settings"]["parameters"] < 80e6
    assert result["settings"]["batch"] == 2 and result["settings"]["quantize"] is None


def test_bench_lm_quantized(tmp_path, capsys):
    result = _run(tmp_path, "lm", "--steps", "2", "--no-reference", "--quantize", "int8")
    assert result["settings"]["quantize"] == "int8" and result["antiphon"]["steps"] == 4
    assert "int8 weights" in capsys.readouterr().out


@pytest.mark.reference
def test_bench_codec_against_the_reference(tmp_path):
    pytest.importorskip("moshi")
    result = _run(tmp_path, "codec", "--frames", "2")
    assert result["reference"]["implementation"] == "moshi 0.2.13"
    assert result["reference"]["steps"] == 4
    assert result["reference"]["codes_agreement"] == 1.0
    assert len(result["speedup_per_round"]) == 2 and result["speedup_vs_reference"] > 0


def test_bench_serve_with_a_tiny_pair(tmp_path, monkeypatch, capsys):
    from antiphon.apps import bench_serve

    from tests.streaming.tiny_pair import make_pair

    monkeypatch.setattr(bench_serve, "make_models", lambda args, directory: (*make_pair(), None))
    result = _run(tmp_path, "serve", "--seconds", "1", "--slots", "1,2", "--no-reference")
    assert [r["slots"] for r in result["runs"]] == [1, 2]
    one, two = result["runs"]
    assert one["rounds"] == 2 and len(result["one_session_rounds"]) == 2
    assert two["frames"]["sent"] == 2 * 12 and two["frames"]["out_expected"] == 24
    assert two["latency_ms"]["count"] == two["frames"]["out_received"] > 0
    assert result["antiphon"]["steps"] == one["latency_ms"]["count"] and result["antiphon"]["ms_median"] > 0
    assert result["antiphon"]["sessions_held"] in (0, 1, 2) and "reference" not in result
    assert "sessions held in real time: antiphon" in capsys.readouterr().out
