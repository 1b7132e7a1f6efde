"""Datasets of examples on disk: shards of audio with a JSON index, written with a progress bar.

A dataset directory holds
- `manifest.json`: format, kind, split, seed, count, backends, sample rate, shard names, and how long the
  generation took (seconds of audio per second of wall time: the generation speed);
- `index.jsonl`: one line per example, in index order: its shard and row, duration, and per
  channel the role, language, voice (with its rate and pitch), text and words [word, start_s, stop_s];
- `shard-NNNNN.npz`: `audio` int16 [C, total samples] (the shard's examples one after the other)
  and `offsets` int64 [rows + 1], example r being audio[:, offsets[r]:offsets[r + 1]].
The manifest is written last: a directory without one is an interrupted generation.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from antiphon.errors import InputError
from antiphon.train.dataset import Channel, Example, check_arguments, make_example
from antiphon.train.synth import BACKENDS, SAMPLE_RATE

FORMAT = "antiphon-synthetic-speech/1"
MANIFEST, INDEX = "manifest.json", "index.jsonl"


def write_dataset(out_dir: str | os.PathLike, kind: str, count: int, seed: int, split: str = "train",
                  backends: tuple[str, ...] = BACKENDS, shard_size: int = 256, progress: bool = True,
                  jobs: int = 1, word_lists: float = 0.0) -> dict:
    """Generate examples 0..count-1 of (kind, seed, split, backends, word_lists) into `out_dir` (created; it
    must be empty or absent) and return the manifest. `jobs` > 1 makes examples in that many forked
    processes; each example depends only on its index, so the dataset is the same bit for bit."""
    out = Path(out_dir)
    check_arguments(kind, seed, split, backends, word_lists)
    if count <= 0 or shard_size <= 0 or jobs <= 0:
        raise InputError(f"count, shard size and jobs must be positive, got {count}, {shard_size} and {jobs}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not an empty directory")
    out.mkdir(parents=True, exist_ok=True)
    started, audio_s, shards = time.perf_counter(), 0.0, []
    make = functools.partial(make_example, kind, seed, split=split, backends=backends, word_lists=word_lists)
    with open(out / INDEX, "w", encoding="utf-8") as index, _mapper(jobs) as map_ordered, \
            tqdm(total=count, desc=f"{kind} {split}", unit="ex", disable=not progress) as bar:
        for first in range(0, count, shard_size):
            rows = list(_advance(map_ordered(make, range(first, min(count, first + shard_size))), bar))
            name = f"shard-{len(shards):05d}.npz"
            _write_shard(out / name, rows)
            shards.append(name)
            for row, example in enumerate(rows):
                index.write(json.dumps(_record(example, name, row), ensure_ascii=False) + "\n")
                audio_s += example.duration
    elapsed = time.perf_counter() - started
    manifest = {"format": FORMAT, "kind": kind, "split": split, "seed": seed, "count": count, "backends": list(backends),
                "word_lists": word_lists, "sample_rate": SAMPLE_RATE, "shards": shards, "audio_s": round(audio_s, 3),
                "generation_s": round(elapsed, 3), "audio_s_per_s": round(audio_s / max(elapsed, 1e-9), 2)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def read_manifest(data_dir: str | os.PathLike) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        raise InputError(f"{data_dir} is not a dataset directory: no {MANIFEST} (write one with `antiphon data generate`)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise InputError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def read_index(data_dir: str | os.PathLike) -> list[dict]:
    read_manifest(data_dir)
    with open(Path(data_dir) / INDEX, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def iter_examples(data_dir: str | os.PathLike) -> Iterator[Example]:
    """The dataset's examples in index order, audio back in float32 [C, T]."""
    manifest = read_manifest(data_dir)
    records = read_index(data_dir)
    loaded: tuple[str, dict] | None = None
    for record in records:
        if loaded is None or loaded[0] != record["shard"]:
            with np.load(Path(data_dir) / record["shard"]) as shard:
                loaded = (record["shard"], {"audio": shard["audio"], "offsets": shard["offsets"]})
        audio, offsets = loaded[1]["audio"], loaded[1]["offsets"]
        pcm = audio[:, offsets[record["row"]]:offsets[record["row"] + 1]].astype(np.float32) / 32767.0
        channels = [Channel(c["role"], c["language"], c["voice"], [tuple(w) for w in c["words"]]) for c in record["channels"]]
        yield Example(manifest["kind"], manifest["split"], manifest["seed"], record["index"], pcm, channels, record["info"])


def summarize(data_dir: str | os.PathLike) -> dict:
    """Counts, durations, languages, voices and turn variants of a dataset, for `antiphon data show`."""
    manifest = read_manifest(data_dir)
    records = read_index(data_dir)
    durations = np.array([r["duration"] for r in records]) if records else np.zeros(1)
    languages, voices, backends, turns = Counter(), Counter(), Counter(), Counter()
    words = 0
    for r in records:
        for c in r["channels"]:
            languages[f"{c['role']}:{c['language']}"] += 1
            voices[c["voice"]["voice"]] += 1
            backends[c["voice"]["voice"].split("/")[0]] += 1
            words += len(c["words"])
        turns.update(r["info"].get("turns", []))
    return {"manifest": manifest, "examples": len(records), "hours": float(durations.sum() / 3600),
            "duration_s": {"min": float(durations.min()), "mean": float(durations.mean()), "max": float(durations.max())},
            "words": words, "languages": dict(languages), "backends": dict(backends),
            "distinct_voices": len(voices), "turns": dict(turns)}


def _advance(items, bar):
    for item in items:
        yield item
        bar.update(1)


@contextlib.contextmanager
def _mapper(jobs: int):
    """An ordered map: the built-in one, or a pool of `jobs` forked processes."""
    if jobs == 1:
        yield map
        return
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        yield lambda fn, items: pool.imap(fn, items, chunksize=2)


def _write_shard(path: Path, rows: list[Example]) -> None:
    offsets = np.cumsum([0] + [e.pcm.shape[-1] for e in rows]).astype(np.int64)
    audio = np.concatenate([e.pcm for e in rows], axis=-1)
    audio = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    np.savez(path, audio=audio, offsets=offsets)


def _record(example: Example, shard: str, row: int) -> dict:
    return {"index": example.index, "shard": shard, "row": row, "duration": round(example.duration, 4),
            "channels": [{"role": c.role, "language": c.language, "voice": c.voice, "text": c.text,
                          "words": [list(w) for w in c.words]} for c in example.channels],
            "info": example.info}
