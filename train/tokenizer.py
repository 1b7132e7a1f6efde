"""The embedded models' text tokenizer: a SentencePiece unigram model of English and French, trained on
the generator's training texts, with Kyutai's special ids (0 = WORD / unk, 1 = MAIN / bos,
2 = OTHER / eos, 3 = PAD), so that the text streams follow the published models' conventions."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from antiphon.train import texts


def corpus(count: int = 20000, seed: int = 0) -> list[str]:
    """Training-split sentences, questions, answers and translation pairs, both languages."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(count // 4):
        for language in ("en", "fr"):
            lines.append(texts.sample_sentence(rng, language, "train"))
            qa = texts.sample_question(rng, language, "train")
            lines += [qa.question, qa.answer]
        pair = texts.sample_pair(rng, "train")
        lines += [pair.text("en"), pair.text("fr")]
    return lines


def train_tokenizer(path: str | Path, vocab_size: int = 512, seed: int = 0) -> Path:
    """Write a SentencePiece model to `path` and return it."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus(seed=seed)), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        normalization_rule_name="identity", hard_vocab_limit=False, minloglevel=2, num_threads=1)
    path = Path(path)
    path.write_bytes(model.getvalue())
    return path
