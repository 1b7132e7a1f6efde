"""Datasets on disk: what is written reads back as the examples generated, the index and the
summary agree with them, and bad directories are refused with a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from antiphon.errors import InputError
from antiphon.train import dataset, shards

ESPEAK = ("espeak-ng",)


def test_written_examples_read_back(tmp_path):
    manifest = shards.write_dataset(tmp_path / "d", "dialogue", 5, seed=2, backends=ESPEAK, shard_size=2, progress=False)
    assert manifest["count"] == 5 and len(manifest["shards"]) == 3 and manifest["audio_s_per_s"] > 0
    read = list(shards.iter_examples(tmp_path / "d"))
    assert [e.index for e in read] == list(range(5))
    for example in read:
        original = dataset.make_example("dialogue", 2, example.index, backends=ESPEAK)
        assert example.pcm.shape == original.pcm.shape
        assert np.abs(example.pcm - np.clip(original.pcm, -1, 1)).max() <= 1 / 32767
        assert [c.words for c in example.channels] == [c.words for c in original.channels]
        assert example.info == original.info
    summary = shards.summarize(tmp_path / "d")
    assert summary["examples"] == 5
    assert np.isclose(summary["hours"] * 3600, sum(e.duration for e in read), atol=1e-2)
    assert summary["words"] == sum(len(c.words) for e in read for c in e.channels)
    assert sum(summary["turns"].values()) == sum(len(e.info["turns"]) for e in read)


def test_refuses_a_non_empty_directory_and_a_non_dataset(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(InputError, match="not an empty directory"):
        shards.write_dataset(tmp_path / "full", "asr", 1, seed=0, backends=ESPEAK, progress=False)
    with pytest.raises(InputError, match="not a dataset directory"):
        shards.summarize(tmp_path / "full")
    with pytest.raises(InputError, match="positive"):
        shards.write_dataset(tmp_path / "new", "asr", 0, seed=0, progress=False)


def test_parallel_jobs_write_the_same_dataset(tmp_path):
    one = shards.write_dataset(tmp_path / "one", "asr", 5, seed=4, backends=ESPEAK, shard_size=3, progress=False)
    two = shards.write_dataset(tmp_path / "two", "asr", 5, seed=4, backends=ESPEAK, shard_size=3, progress=False, jobs=2)
    assert one["shards"] == two["shards"]
    for name in one["shards"]:
        a, b = np.load(tmp_path / "one" / name), np.load(tmp_path / "two" / name)
        assert np.array_equal(a["audio"], b["audio"]) and np.array_equal(a["offsets"], b["offsets"])
    assert (tmp_path / "one" / "index.jsonl").read_text() == (tmp_path / "two" / "index.jsonl").read_text()
    with pytest.raises(InputError, match="positive"):
        shards.write_dataset(tmp_path / "three", "asr", 5, seed=4, backends=ESPEAK, progress=False, jobs=0)
