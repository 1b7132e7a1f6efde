"""`antiphon data`: the synthetic speech the embedded models are trained on.

`voices` lists the synthesizer voices installed here (and, with --check, measures each backend's
speed and how well its word timings follow the audio); `generate` writes a dataset of examples
deterministic from a seed; `show` summarizes a dataset directory.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from antiphon.apps.help import Formatter

CHECK_OFFSETS_MS = (-40, -20, 0, 20, 40)


def register(subparsers, common: list[argparse.ArgumentParser]) -> None:
    data = subparsers.add_parser(
        "data", parents=common, formatter_class=Formatter,
        help="synthetic training speech: voices, generate, show",
        description="Synthetic speech for training: English and French sentences, dialogues and translation "
                    "pairs spoken by espeak-ng, flite and festival voices, with word timestamps and "
                    "augmentation, deterministic from a seed. See docs/DATA.md.",
        epilog="examples:\n"
               "  antiphon data voices                      # voices installed on this machine\n"
               "  antiphon data voices --check              # speed and word-timing accuracy per backend\n"
               "  antiphon data generate --kind dialogue --out data/dialogue --count 1000 --seed 0\n"
               "  antiphon data generate --kind asr --out data/asr-eval --count 200 --split eval\n"
               "  antiphon data show data/dialogue")
    actions = data.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True)

    voices = actions.add_parser(
        "voices", parents=common, formatter_class=Formatter, help="list the voices installed here",
        description="List the synthesizer voices found on this machine, per backend and language, with "
                    "how many are held out for evaluation. Backends not installed are named with the "
                    "Debian packages that bring them (train/apt-packages.txt).",
        epilog="example:\n  antiphon data voices --language fr --all")
    voices.add_argument("--language", choices=("en", "fr"), help="only this language")
    voices.add_argument("--all", action="store_true", help="print every voice, one per line, with its split")
    voices.add_argument("--check", action="store_true",
                        help="synthesize a few sentences per backend and language: print the speed (seconds of "
                             "audio per second) and how often word boundaries fall in quiet spots, at the "
                             "reported times and shifted by -40..40 ms (best at 0 when timings are right)")
    voices.set_defaults(run=run_voices)

    gen = actions.add_parser(
        "generate", parents=common, formatter_class=Formatter, help="write a dataset of examples",
        description="Generate examples 0..COUNT-1 of one kind into OUT (shards of int16 audio, a JSON "
                    "index of texts and word timings, a manifest). The same kind, seed, split and index "
                    "give the same audio, bit for bit, on the same machine with the same voices installed.\n"
                    "Kinds: asr (one speaker, augmented), tts (one speaker, clean), dialogue (model and "
                    "user channels: questions, answers, overlaps, backchannels, interruptions), "
                    "translation (source speech and its translation, lagged word by word).",
        epilog="example:\n  antiphon data generate --kind translation --out data/translation --count 500 --seed 1")
    gen.add_argument("--kind", required=True, choices=("asr", "tts", "dialogue", "translation"), help="what to generate")
    gen.add_argument("--out", required=True, metavar="DIR", help="directory to create (must be empty or absent)")
    gen.add_argument("--count", type=int, default=100, metavar="N", help="number of examples (default: 100)")
    gen.add_argument("--seed", type=int, default=0, metavar="S", help="seed (default: 0)")
    gen.add_argument("--split", choices=("train", "eval"), default="train",
                     help="train: training voices and texts; eval: the held-out ones (default: train)")
    gen.add_argument("--backends", default="espeak-ng,flite,festival", metavar="LIST",
                     help="comma-separated synthesizers to draw voices from (default: all three; festival is the "
                          "slowest, espeak-ng alone the fastest and the only one with French), or voices named "
                          "backend/voice (e.g. flite/slt: that voice only, in either split; the split then "
                          "chooses only the texts)")
    gen.add_argument("--word-lists", type=float, default=0.0, metavar="SHARE",
                     help="asr and tts: this share of the examples say 3-8 words in no grammatical order "
                          "(words of the split's sentences) instead of sentences, so that a recognizer "
                          "learns words, not sentences (default: 0)")
    gen.add_argument("--shard-size", type=int, default=256, metavar="N", help="examples per shard (default: 256)")
    gen.add_argument("--jobs", type=int, default=1, metavar="N",
                     help="processes making examples (default: 1); the dataset is the same for any N")
    gen.set_defaults(run=run_generate)

    show = actions.add_parser(
        "show", parents=common, formatter_class=Formatter, help="summarize a dataset directory",
        description="Print what a dataset directory holds: kind, split, seed, examples, hours, durations, "
                    "languages, backends, voices, dialogue turn variants, and the generation speed.",
        epilog="example:\n  antiphon data show data/dialogue --json")
    show.add_argument("dir", metavar="DIR", help="directory written by `antiphon data generate`")
    show.add_argument("--json", action="store_true", help="print the summary as JSON")
    show.set_defaults(run=run_show)


def run_voices(args: argparse.Namespace) -> int:
    from antiphon.train import synth

    for name in synth.BACKENDS:
        if not synth.installed(name):
            print(f"{name}: not installed (its Debian packages are in train/apt-packages.txt)")
    voices = synth.list_voices(args.language)
    if args.all:
        for v in voices:
            print(f"{v.key}\t{v.language}\t{'eval' if v.held_out else 'train'}")
    else:
        for (backend, language), group in _grouped(voices).items():
            held = sum(v.held_out for v in group)
            names = ", ".join(v.name for v in group[:8]) + (", ..." if len(group) > 8 else "")
            print(f"{backend} {language}: {len(group)} voices ({len(group) - held} train, {held} eval): {names}")
    if args.check:
        _check(voices)
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from antiphon.train.shards import write_dataset

    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    manifest = write_dataset(args.out, args.kind, args.count, args.seed, args.split, backends, args.shard_size,
                             jobs=args.jobs, word_lists=args.word_lists)
    print(f"wrote {manifest['count']} {args.kind} examples ({manifest['audio_s'] / 3600:.2f} h) to {args.out} "
          f"in {manifest['generation_s']:.1f} s: {manifest['audio_s_per_s']:.1f} s of audio per second")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from antiphon.train.shards import summarize

    summary = summarize(args.dir)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    m = summary["manifest"]
    d = summary["duration_s"]
    print(f"{args.dir}: {summary['examples']} {m['kind']} examples, split {m['split']}, seed {m['seed']}, "
          f"backends {', '.join(m['backends'])}")
    print(f"  audio: {summary['hours']:.3f} h, {d['min']:.1f} / {d['mean']:.1f} / {d['max']:.1f} s (min / mean / max), "
          f"{summary['words']} timed words")
    print(f"  channels: {_counts(summary['languages'])}")
    print(f"  backends: {_counts(summary['backends'])}; {summary['distinct_voices']} distinct voices")
    if summary["turns"]:
        print(f"  dialogue turns: {_counts(summary['turns'])}")
    print(f"  generated at {m['audio_s_per_s']:.1f} s of audio per second ({m['generation_s']:.1f} s)")
    return 0


def _check(voices) -> None:
    """Per backend and language: speed and boundary quietness over a few sentences and voices."""
    from antiphon.train import alignment, synth, texts

    print("\nword-timing check (share of touching word boundaries in the quietest quarter of speech):")
    for (backend, language), group in _grouped(voices).items():
        rng = np.random.default_rng(0)
        sentences = [texts.sample_sentence(rng, language, "train") for _ in range(6 if backend == "festival" else 20)]
        audio_s, measured, quiet, chance = 0.0, 0, np.zeros(len(CHECK_OFFSETS_MS)), []
        started = time.perf_counter()
        for i, sentence in enumerate(sentences):
            utt = synth.synthesize(sentence, group[(i * 7919) % len(group)])
            audio_s += utt.duration
            for k, offset in enumerate(CHECK_OFFSETS_MS):
                n, q, c = alignment.boundary_quietness(utt.words, utt.pcm, synth.SAMPLE_RATE, offset / 1000)
                quiet[k] += q
                measured += n if offset == 0 else 0
                chance += [c] if offset == 0 else []
        speed = audio_s / (time.perf_counter() - started)
        shares = "  ".join(f"{o:+d}ms {q / max(measured, 1):.0%}" for o, q in zip(CHECK_OFFSETS_MS, quiet))
        print(f"  {backend} {language}: {speed:.1f} s audio/s; {measured} boundaries: {shares} "
              f"(chance {np.mean(chance):.0%})")


def _grouped(voices) -> dict:
    grouped: dict = {}
    for v in voices:
        grouped.setdefault((v.backend, v.language), []).append(v)
    return grouped


def _counts(counter: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: -kv[1]))
