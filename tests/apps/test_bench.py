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


def test_bench_lm_without_reference(tmp_path):
    result = _run(tmp_path, "lm", "--steps", "3", "--batch", "2", "--no-reference")
    assert result["antiphon"]["steps"] == 6
    assert 70e6 < result["settings"]["parameters"] < 80e6
    assert result["settings"]["batch"] == 2


@pytest.mark.reference
def test_bench_codec_against_the_reference(tmp_path):
    pytest.importorskip("moshi")
    result = _run(tmp_path, "codec", "--frames", "2")
    assert result["reference"]["implementation"] == "moshi 0.2.13"
    assert result["reference"]["steps"] == 4
    assert result["reference"]["codes_agreement"] == 1.0
    assert len(result["speedup_per_round"]) == 2 and result["speedup_vs_reference"] > 0
