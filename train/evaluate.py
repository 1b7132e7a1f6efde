"""Evaluation of the trained models on held-out voices and sentences (MODELS.md's quality bars):
word error rates of transcripts (ours, and pocketsphinx as an independent recognizer of our speech)
and exact-match rates of translations, through the same front-ends the commands use."""

from __future__ import annotations

import math
import re
import time

import numpy as np
from tqdm import tqdm

from antiphon.errors import InputError
from antiphon.train.shards import iter_examples, read_manifest

_NOT_WORD = re.compile(r"[^\w']+")
# the dataset kinds each evaluation reads (None: any; a speech dataset's first channel is the one read)
EVAL_KINDS = {"codec": None, "stt": None, "tts": None, "translation": {"translation"}, "dialogue": {"dialogue"}}


def check_eval_sets(task: str, eval_dirs: list[str]) -> None:
    """Each dataset exists and is one the `task` evaluation reads: checked before a model is loaded or trained."""
    for data_dir in eval_dirs:
        kind = read_manifest(data_dir)["kind"]
        if EVAL_KINDS[task] and kind not in EVAL_KINDS[task]:
            raise InputError(f"{data_dir} holds {kind} examples; a {task} evaluation reads "
                             f"{' or '.join(sorted(EVAL_KINDS[task]))} datasets")


def normalize(text: str) -> list[str]:
    """Lowercase words, punctuation dropped (apostrophes kept)."""
    return [w.strip("'") for w in _NOT_WORD.sub(" ", text.lower()).split() if w.strip("'")]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def word_error_rate(pairs: list[tuple[str, str]]) -> float:
    """Corpus WER over (reference, hypothesis) texts: total edits / total reference words."""
    edits = sum(edit_distance(normalize(r), normalize(h)) for r, h in pairs)
    return edits / max(1, sum(len(normalize(r)) for r, _ in pairs))


def pocketsphinx_transcribe(pcm: np.ndarray, sample_rate: int) -> str:
    """English speech -> text by pocketsphinx's default US English model, at 16 kHz."""
    from pocketsphinx import Decoder

    from antiphon.audio_io import resample

    audio = resample(pcm.astype(np.float32)[None], sample_rate, 16000)[0]
    decoder = Decoder(samprate=16000, loglevel="FATAL")
    decoder.start_utt()
    decoder.process_raw((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes(), full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr if hyp is not None else ""


def _examples(data_dir: str, count: int, progress: bool, what: str):
    bar = tqdm(total=count, desc=f"{what} {data_dir}", disable=not progress)
    for example, _ in zip(iter_examples(data_dir), range(count)):
        yield example
        bar.update(1)
    bar.close()


def evaluate_stt(lm, eval_dirs: list[str], count: int, progress: bool = True) -> dict:
    from antiphon.apps.transcribe_cmd import transcribe

    out = {}
    for data_dir in eval_dirs:
        pairs, by_language = [], {}
        for example in _examples(data_dir, count, progress, "stt"):
            hyp = " ".join(w["text"] for w in transcribe(lm, example.pcm[0]))
            pair = (example.channels[0].text, hyp)
            pairs.append(pair)
            by_language.setdefault(example.channels[0].language, []).append(pair)
        out[data_dir] = {"examples": len(pairs), "wer": round(word_error_rate(pairs), 4),
                         "wer_by_language": {k: round(word_error_rate(v), 4) for k, v in sorted(by_language.items())},
                         "samples": [{"ref": r, "hyp": h} for r, h in pairs[:5]]}
    return out


def evaluate_tts(lm, eval_dirs: list[str], count: int, stt_model: str | None, progress: bool = True) -> dict:
    """Speak each example's text; transcribe it with pocketsphinx (English) and with our STT."""
    from antiphon.apps.speak_cmd import speak
    from antiphon.apps.transcribe_cmd import transcribe

    stt = None
    if stt_model:
        from antiphon.lm import LM

        stt = LM.from_pretrained(stt_model)
    out = {}
    for data_dir in eval_dirs:
        ours, sphinx, spoken = [], [], 0
        for i, example in enumerate(_examples(data_dir, count, progress, "tts")):
            spoken += 1
            text = example.channels[0].text
            pcm, _ = speak(lm, text, cfg=None, seed=i)
            pcm = pcm[0]
            if stt is not None:
                ours.append((text, " ".join(w["text"] for w in transcribe(stt, pcm))))
            if example.channels[0].language == "en":
                sphinx.append((text, pocketsphinx_transcribe(pcm, lm.codec.sample_rate)))
        result = {"examples": spoken}
        if ours:
            result["wer_our_stt"] = round(word_error_rate(ours), 4)
            result["samples_our_stt"] = [{"ref": r, "hyp": h} for r, h in ours[:5]]
        if sphinx:
            result["wer_pocketsphinx_en"] = round(word_error_rate(sphinx), 4)
            result["pocketsphinx_examples"] = len(sphinx)
            result["samples_pocketsphinx"] = [{"ref": r, "hyp": h} for r, h in sphinx[:5]]
        out[data_dir] = result
    return out


def evaluate_translation(lm, eval_dirs: list[str], count: int, progress: bool = True) -> dict:
    """Exact match of the whole translation (normalized words) through the streaming Translator: the
    source up to where training ends it (`streams.END_LAG_S` after its last word), its end-of-input
    frame, then silence until the model's EOS (or 10 s)."""
    import torch

    from antiphon.lm.tasks import Translator
    from antiphon.train.streams import END_LAG_S, FRAME_RATE

    codec = lm.codec
    codec.num_codebooks = lm.config.n_q - lm.config.dep_q
    tokenizer = lm.tokenizer
    silence = codec.encode(torch.zeros(1, 1, codec.frame_size))  # [1, K, 1]
    out = {}
    for data_dir in eval_dirs:
        pairs = []
        for example in _examples(data_dir, count, progress, "translation"):
            end = math.ceil((example.channels[1].words[-1][2] + END_LAG_S) * FRAME_RATE) * codec.frame_size
            source = codec.encode(torch.from_numpy(example.pcm[1][:end])[None, None])  # [1, K, F]
            translator = Translator(lm, 1, temp=0.0, temp_text=0.0)
            frames = [source[..., f:f + 1] for f in range(source.shape[-1])] + [translator.end_of_input()]
            frames += [silence] * 125
            pieces = []
            with torch.inference_mode():
                for frame in frames:
                    step = translator.step(frame)
                    if step is None:
                        continue
                    if bool(step.is_end[0]):
                        break
                    if bool(step.is_word[0]):
                        pieces.append(int(step.text[0]))
            pairs.append((example.channels[0].text, tokenizer.decode(pieces)))
        exact = sum(normalize(r) == normalize(h) for r, h in pairs)
        out[data_dir] = {"examples": len(pairs), "exact_match": round(exact / max(1, len(pairs)), 4),
                         "wer": round(word_error_rate(pairs), 4), "samples": [{"ref": r, "hyp": h} for r, h in pairs[:5]]}
    return out


SILENCE_DBFS = -40.0  # a frame quieter than this is silence
SILENT_FRAMES = 3  # ... and the model has stopped once this many such frames follow one another


def _silent_frames(pcm: np.ndarray, frame: int) -> np.ndarray:
    """bool [frames]: which frames of `frame` samples are quieter than SILENCE_DBFS."""
    frames = pcm[: len(pcm) // frame * frame].reshape(-1, frame)
    return 10 * np.log10(np.maximum((frames ** 2).mean(axis=1), 1e-12)) < SILENCE_DBFS


def stops_speaking_at(pcm: np.ndarray, after_s: float, sample_rate: int, frame: int) -> float | None:
    """The start (s) of the first run of SILENT_FRAMES silent frames at or after `after_s`; None if none."""
    silent = _silent_frames(pcm, frame)
    first = int(np.ceil(after_s * sample_rate / frame))
    for f in range(first, len(silent) - SILENT_FRAMES + 1):
        if silent[f:f + SILENT_FRAMES].all():
            return f * frame / sample_rate
    return None


def speaking_at(pcm: np.ndarray, at_s: float, sample_rate: int, frame: int) -> bool:
    """Whether any of the SILENT_FRAMES frames before `at_s` is not silent: there is speech to stop."""
    end = int(at_s * sample_rate / frame)
    return bool((~_silent_frames(pcm, frame)[max(0, end - SILENT_FRAMES):end]).any())


def answer_recall(reference: str, hypothesis: str) -> float:
    """The share of the reference's words (with repeats) that the hypothesis says."""
    left = normalize(hypothesis)
    found = 0
    for word in normalize(reference):
        if word in left:
            left.remove(word)
            found += 1
    return found / max(1, len(normalize(reference)))


def evaluate_dialogue(lm, eval_dirs: list[str], count: int, progress: bool = True) -> dict:
    """Through the streaming Dialogue front-end, fed the user's channel: an answer is correct when the
    model's text stream says >= 80% of the reference answers' words; after each interruption, the
    model's decoded speech must fall silent within 0.5 s of the user's first word (silent_within_0_5_s);
    stopped_within_0_5_s counts only the interruptions where it was speaking when the user began."""
    import torch

    from antiphon.lm.tasks import Dialogue

    codec = lm.codec
    codec.num_codebooks = lm.config.n_q - lm.config.dep_q
    tokenizer, frame = lm.tokenizer, codec.frame_size
    out = {}
    for data_dir in eval_dirs:
        correct, stops, speaking, samples = [], [], [], []
        for example in _examples(data_dir, count, progress, "dialogue"):
            user = codec.encode(torch.from_numpy(example.pcm[1])[None, None])  # [1, K, F]
            dialogue = Dialogue(lm, 1, temp=0.0, temp_text=0.0)
            pieces, audio = [], []
            with torch.inference_mode():
                for f in range(user.shape[-1]):
                    step = dialogue.step(user[..., f:f + 1])
                    if step is None or not bool(step.ready[0]):
                        audio.append(torch.zeros(lm.config.dep_q, 1, dtype=torch.long))
                        continue
                    if bool(step.is_word[0]):
                        pieces.append(int(step.text[0]))
                    audio.append(step.audio[0])
                pcm = codec.decode(torch.cat(audio, dim=-1)[None])[0, 0].numpy()
            reference, said = example.channels[0].text, tokenizer.decode(pieces)
            correct.append(answer_recall(reference, said) >= 0.8)
            samples.append({"user": example.channels[1].text, "ref": reference, "hyp": said})
            for cut in example.info.get("interruptions", []):
                stop = stops_speaking_at(pcm, cut["user_starts_s"], codec.sample_rate, frame)
                stops.append(stop is not None and stop - cut["user_starts_s"] <= 0.5)
                speaking.append(speaking_at(pcm, cut["user_starts_s"], codec.sample_rate, frame))
        stopped = [s for s, was in zip(stops, speaking) if was]
        out[data_dir] = {"examples": len(correct), "answers_correct": round(float(np.mean(correct or [0])), 4),
                         "interruptions": len(stops), "silent_within_0_5_s": round(float(np.mean(stops or [0])), 4),
                         "speaking_when_interrupted": round(float(np.mean(speaking or [0])), 4),
                         "stopped_within_0_5_s": round(float(np.mean(stopped or [0])), 4), "samples": samples[:5]}
    return out


def evaluate_lm(model_dir, task: str, eval_dirs: list[str], count: int, stt_model: str | None = None,
                progress: bool = True) -> dict:
    from antiphon.lm import LM

    started = time.perf_counter()
    lm = LM.from_pretrained(model_dir)
    if task == "stt":
        results = evaluate_stt(lm, eval_dirs, count, progress)
    elif task == "tts":
        results = evaluate_tts(lm, eval_dirs, count, stt_model, progress)
    elif task == "translation":
        results = evaluate_translation(lm, eval_dirs, count, progress)
    else:
        results = evaluate_dialogue(lm, eval_dirs, count, progress)
    return results | {"eval_s": round(time.perf_counter() - started, 1)}
