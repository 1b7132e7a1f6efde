"""The LM trainer: stream layouts the front-ends read, loss, resume, export, LoRA and fine-tuning."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from antiphon.errors import InputError
from antiphon.lm import LM
from antiphon.lm.weight_formats import reference_linears
from antiphon.train import lora, streams
from antiphon.train.codec_train import CodecRecipe, train_codec
from antiphon.train.lm_train import LMRecipe, drop_text, init_weights, lm_loss, model_config, train_lm
from tests.streaming.tiny_pair import LetterTokenizer

TINY = LMRecipe(size="tiny", steps=4, batch=2, seq_steps=24, warmup=10)


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory, speech_dir):
    out = tmp_path_factory.mktemp("codec")
    train_codec([speech_dir], out, CodecRecipe(size="tiny", steps=1, batch=1, segment_frames=2), progress=False)
    return str(out / "model")


# ---------------------------------------------------------------------- layouts
def test_stt_text_is_delayed_behind_the_words():
    words = [("ab", 0.0, 0.2), ("cde", 0.4, 0.6)]
    row = streams.text_stream(LetterTokenizer(), words, 20, delay_steps=3)
    tok = LetterTokenizer().encode
    # "ab": WORD at floor(0 * 12.5) + 3 = 3, pieces at 4, 5; "cde": at floor(0.4 * 12.5) + 3 = 8
    assert row[3] == streams.WORD and row[4:6].tolist() == tok("ab")
    assert row[8] == streams.WORD and row[9:12].tolist() == tok("cde")
    assert set(row[[0, 1, 2, 6, 7, 12]].tolist()) == {streams.PAD}


def test_stt_sequence_ends_with_silence_long_enough_for_the_last_words_delayed_text():
    audio = torch.arange(2 * 10).view(2, 10)  # 10 steps; the last word starts at step 8
    silence = torch.tensor([7, 9])
    words = [("ab", 0.0, 0.2), ("cd", 0.65, 0.8)]
    seq = streams.build("stt", LetterTokenizer(), [audio], [words], delay_steps=3, silence=silence)
    assert seq.shape == (3, 10 + 3 + streams.STT_TAIL_STEPS)
    assert torch.equal(seq[1:, :10], audio) and (seq[1:, 10:] == silence[:, None]).all()
    # "cd" at floor(0.65 * 12.5) + 3 = 11, after the audio: in the tail, not dropped
    assert seq[0, 11] == streams.WORD and seq[0, 12:14].tolist() == LetterTokenizer().encode("cd")
    with pytest.raises(ValueError, match="silence"):
        streams.build("stt", LetterTokenizer(), [audio], [words], delay_steps=3)


def test_silence_codes_are_what_the_codec_makes_of_silence(codec_dir):
    from antiphon.codec import Codec
    from antiphon.train.lm_train import silence_codes

    codec = Codec.from_pretrained(codec_dir, num_codebooks=2)
    codes = silence_codes(codec)
    assert codes.shape == (2,) and codes.dtype == torch.long
    settled = codec.encode(torch.zeros(1, 1, 3 * codec.sample_rate))[0, :, -1]
    assert torch.equal(codes, settled.long())


def test_a_word_whose_step_is_taken_starts_at_the_first_free_one():
    words = [("abc", 0.0, 0.1), ("d", 0.08, 0.2)]  # "d" would start at step 1, inside "abc"
    row = streams.text_stream(LetterTokenizer(), words, 12)
    assert row[0] == streams.WORD and row[4] == streams.WORD


def test_tts_layout_follows_the_padding_machine_and_delays_the_audio():
    words = [("ab", 0.0, 0.2), ("c", 0.1, 0.3)]
    audio = torch.arange(2 * 6).view(2, 6)
    seq = streams.build("tts", LetterTokenizer(), [audio], [words], delay_steps=3)
    assert seq.shape == (3, 9)
    text = seq[0]
    # initial padding 2; "ab" at 2, its pieces at 3 and 4; its padding_between + 2 - 1 = 2 forced
    # steps count from step 3, its pieces among them: "c" (due at step 1) starts at 5
    assert text[2] == streams.WORD and text[5] == streams.WORD
    assert (seq[1:, :3] == -1).all() and torch.equal(seq[1:, 3:], audio)


@pytest.mark.parametrize("starts", [(0.0, 0.1, 0.5, 0.9, 0.95), (0.0,) * 5], ids=["timed", "all-due-at-once"])
def test_tts_text_stream_is_what_the_padding_machine_feeds(starts):
    """Replayed through the inference padding machine, asking for a word where the row has one (or, when
    all are due at once, at every step: the earliest the machine allows), the machine feeds the row."""
    from antiphon.lm.tts import PaddingMachine, text_to_entries

    tok = LetterTokenizer()
    words = [(w, t, t + 0.1) for w, t in zip(("ab", "cde", "f", "gh", "i"), starts)]
    row = streams.text_stream(tok, words, 40, first_step=2, padding_between=1)
    machine = PaddingMachine(text_card=64, initial_padding=2, max_padding=8)
    machine.push(text_to_entries(tok, " ".join(w for w, _, _ in words), padding_between=1))
    machine.end()
    asks = [streams.WORD if token == streams.WORD or starts[-1] == 0.0 else streams.PAD for token in row.tolist()]
    fed = [machine.advance(step, sampled) for step, sampled in enumerate(asks)]
    assert fed == row.tolist()
    assert [w.text for w in machine.said] == [w for w, _, _ in words]


def test_tts_text_keeps_up_with_speech_of_four_words_a_second():
    # 20 two-letter words, one every 0.25 s (3.125 steps): each takes 1 + 2 steps (marker, pieces; the
    # forced padding_between + 2 - 1 = 2 steps count those pieces), so no word's text falls behind its audio
    words = [("ab", 0.25 * i, 0.25 * i + 0.2) for i in range(20)]
    row = streams.text_stream(LetterTokenizer(), words, 80, padding_between=1)
    markers = (row == streams.WORD).nonzero().flatten().tolist()
    due = [math.floor(start * streams.FRAME_RATE) for _, start, _ in words]
    assert len(markers) == 20 and max(m - d for m, d in zip(markers, due)) <= 1


def test_two_channel_layout_puts_the_output_speaker_first():
    out, inp = torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)
    seq = streams.build("dialogue", LetterTokenizer(), [out, inp], [[("a", 0.0, 0.1)], []], 0)
    assert seq.shape == (5, 5) and (seq[1:3] == 0).all() and (seq[3:] == 1).all()


def test_stt_learns_from_every_channel_and_the_two_channel_tasks_from_the_pair():
    first, second = torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)
    words = [[("ab", 0.0, 0.1)], [("cd", 0.1, 0.2)]]
    silence = torch.tensor([7, 9])
    stt = streams.sequences("stt", LetterTokenizer(), [first, second], words, 1, silence=silence)
    for seq, codes, said in zip(stt, [first, second], words, strict=True):
        assert torch.equal(seq, streams.build("stt", LetterTokenizer(), [codes], [said], 1, silence=silence))
    pair = streams.sequences("translation", LetterTokenizer(), [first, second], words, 0)
    assert len(pair) == 1 and torch.equal(pair[0], streams.build("translation", LetterTokenizer(), [first, second],
                                                                 words, 0))


def test_an_stt_run_reads_both_sides_of_translation_pairs(tmp_path, translation_dir, codec_dir, caplog):
    with caplog.at_level(logging.INFO, logger="antiphon.train.lm_train"):
        train_lm([translation_dir], tmp_path, dataclasses.replace(TINY, steps=1), codec_dir, progress=False)
    assert f"6 training sequences from {translation_dir}" in caplog.text  # 3 pairs, two speakers each


def test_crop_pads_short_sequences_with_the_zero_token():
    seqs = [torch.zeros(3, 4, dtype=torch.long), torch.ones(3, 30, dtype=torch.long)]
    batch = streams.crop_batch(seqs, 10, np.random.default_rng(0))
    assert batch.shape == (2, 3, 10)
    assert (batch[0, :, 4:] == -1).all() and (batch[1] == 1).all()


# ---------------------------------------------------------------------- training
@pytest.mark.parametrize("task", streams.TASKS)
def test_the_loss_of_each_task_falls_when_fitting_one_batch(task):
    torch.manual_seed(0)
    model = init_weights(LM(model_config(dataclasses.replace(TINY, task=task, codebooks=2), text_card=40, card=16)))
    k = model.config.n_q
    batch = torch.randint(0, 16, (2, 1 + k, 12))
    batch[:, 0] = torch.randint(0, 40, (2, 12))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss, parts = lm_loss(model, batch)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first
    assert ("audio" in parts) == (task != "stt")


def test_text_dropout_hides_input_text_and_keeps_the_targets():
    torch.manual_seed(0)
    model = init_weights(LM(model_config(dataclasses.replace(TINY, codebooks=2), text_card=40, card=16)))
    codes = torch.randint(0, 16, (2, 3, 40))
    codes[:, 0] = torch.randint(0, 40, (2, 40))
    dropped = drop_text(codes, 0.5)
    assert torch.equal(dropped[:, 1:], codes[:, 1:])  # audio untouched
    hidden = dropped[:, 0] == -1
    assert 0.3 < hidden.float().mean() < 0.7 and torch.equal(dropped[:, 0][~hidden], codes[:, 0][~hidden])
    plain, same, read = model(codes), model(codes, inputs=codes), model(codes, inputs=dropped)
    torch.testing.assert_close(same.text_logits, plain.text_logits, equal_nan=True)
    assert torch.equal(read.text_mask, plain.text_mask)  # targets and their mask come from `codes`
    first_drop = int(hidden[0].nonzero()[0])  # the model reads step t's text at step t + 1
    torch.testing.assert_close(read.text_logits[0, :, : first_drop + 1], plain.text_logits[0, :, : first_drop + 1],
                               equal_nan=True)
    assert not torch.allclose(read.text_logits[0, :, first_drop + 1:], plain.text_logits[0, :, first_drop + 1:])
    with pytest.raises(InputError, match="must have the codes' shape"):
        model(codes, inputs=dropped[:, :, :5])


def test_a_run_older_than_a_recipe_field_resumes_with_its_default(tmp_path, speech_dir, codec_dir):
    out = tmp_path / "run"
    train_lm([speech_dir], out, dataclasses.replace(TINY, steps=1), codec_dir, progress=False)
    recipe = json.loads((out / "recipe.json").read_text())
    del recipe["text_dropout"]  # as a run recorded before the field existed
    (out / "recipe.json").write_text(json.dumps(recipe))
    train_lm([speech_dir], out, dataclasses.replace(TINY, steps=2), codec_dir, progress=False)
    with pytest.raises(InputError, match="differs in text_dropout"):
        train_lm([speech_dir], out, dataclasses.replace(TINY, steps=3, text_dropout=0.3), codec_dir, progress=False)
    with pytest.raises(InputError, match="--text-dropout"):
        train_lm([speech_dir], tmp_path / "bad", dataclasses.replace(TINY, text_dropout=1.0), codec_dir, progress=False)


def test_stt_run_resumes_exports_and_is_evaluated(tmp_path, speech_dir, codec_dir):
    straight = train_lm([speech_dir], tmp_path / "a", TINY, codec_dir, progress=False)
    assert straight == {}
    resumed = tmp_path / "b"
    train_lm([speech_dir], resumed, dataclasses.replace(TINY, steps=2), codec_dir, progress=False)
    results = train_lm([speech_dir], resumed, TINY, codec_dir, eval_dirs=[speech_dir], eval_count=2, progress=False)
    a = torch.load(tmp_path / "a" / "state.pt", weights_only=False)["model"]
    b = torch.load(resumed / "state.pt", weights_only=False)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    lm = LM.from_pretrained(resumed / "model")
    assert lm.config.model_type == "stt" and lm.tokenizer.vocab_size() == lm.config.text_card
    assert lm.codec.num_codebooks >= lm.config.n_q
    assert results[speech_dir]["examples"] == 2 and results[speech_dir]["wer"] >= 0


def test_a_lora_run_exports_the_base_weights_and_its_adapters_as_moshi_finetune_does(tmp_path, speech_dir, codec_dir):
    train_lm([speech_dir], tmp_path / "base", dataclasses.replace(TINY, steps=1), codec_dir, progress=False)
    base = tmp_path / "base" / "model"
    recipe = dataclasses.replace(TINY, steps=3, init=str(base), lora_rank=2, lr=1e-2)
    train_lm([speech_dir], tmp_path / "lora", recipe, None, progress=False)
    out = tmp_path / "lora" / "model"
    config = json.loads((out / "config.json").read_text())
    assert config["lora"] is True and config["lora_rank"] == 2 and config["lora_name"] == "lora.safetensors"
    assert (out / "model.safetensors").read_bytes() == (base / "model.safetensors").read_bytes()
    # loading merges the adapters into exactly the weights the run trained: W + scale * B @ A
    trained = torch.load(tmp_path / "lora" / "state.pt", weights_only=False)["model"]
    before, after = LM.from_pretrained(base).state_dict(), LM.from_pretrained(out).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("transformer.") for k in changed)  # adapters only touch the transformer
    for name in changed:
        module, attribute = name.rsplit(".", 1)
        prefix = f"{module}.parametrizations.{attribute}"
        merged = trained[f"{prefix}.original"] + 2.0 * trained[f"{prefix}.0.up"] @ trained[f"{prefix}.0.down"]
        torch.testing.assert_close(after[name], merged, msg=name)
    # named as the reference's Linears are, one pair for each (zero where nothing was trained)
    sets = LM.from_pretrained(out).config.depformer_weight_sets
    stored = load_file(str(out / "lora.safetensors"))
    every = {m for k, v in load_file(str(base / "model.safetensors")).items() for m, _ in reference_linears(k, v.shape, sets)}
    assert set(stored) == {f"{m}.lora_{x}.weight" for m in every for x in "AB"}
    trained_linears = {m for k in changed for m, _ in reference_linears(k, after[k].shape, 1)}
    assert {k.rsplit(".", 2)[0] for k, v in stored.items() if k.endswith("lora_B.weight") and v.any()} == trained_linears

    # adapters on that model (itself adapters): one file holds one set, so the export merges both
    again = dataclasses.replace(recipe, init=str(out), seed=1)
    train_lm([speech_dir], tmp_path / "again", again, None, progress=False)
    assert "lora" not in json.loads((tmp_path / "again" / "model" / "config.json").read_text())
    trained = torch.load(tmp_path / "again" / "state.pt", weights_only=False)["model"]
    twice = LM.from_pretrained(tmp_path / "again" / "model").state_dict()
    for name in changed:
        module, attribute = name.rsplit(".", 1)
        prefix = f"{module}.parametrizations.{attribute}"
        merged = after[name] + 2.0 * trained[f"{prefix}.0.up"] @ trained[f"{prefix}.0.down"]
        torch.testing.assert_close(twice[name], merged, msg=name)


def test_a_translation_model_adapted_to_dialogue_embeds_as_its_adapters_alone(tmp_path, translation_dir, dialogue_dir,
                                                                             codec_dir, caplog):
    from antiphon.train.embed import embed_adapters, embed_codec, embed_lm

    translation = dataclasses.replace(TINY, task="translation", steps=1)
    train_lm([translation_dir], tmp_path / "t", translation, codec_dir, progress=False)
    models = tmp_path / "models"
    embed_codec(codec_dir, models)
    embed_lm(str(tmp_path / "t" / "model"), "translation", models, int8=True)
    recipe = dataclasses.replace(TINY, task="dialogue", steps=2, init=str(models / "translation"), lora_rank=2, lr=1e-2)
    train_lm([dialogue_dir], tmp_path / "d", recipe, None, progress=False)
    adapters = embed_adapters(str(tmp_path / "d" / "model"), "dialogue", "translation", models)
    assert sorted(p.name for p in (models / "dialogue").iterdir()) == ["config.json", "lora.safetensors", "tokenizer.model"]
    assert adapters.stat().st_size < 0.2 * (models / "translation" / "model.safetensors").stat().st_size
    kept = load_file(str(adapters))  # the zero adapters of the run's export left out
    assert kept and all(v.dtype == torch.float16 and v.any() for k, v in kept.items() if k.endswith("lora_B.weight"))
    lm, trained = LM.from_pretrained(models / "dialogue"), LM.from_pretrained(tmp_path / "d" / "model")
    assert lm.config.model_type == "moshi" and lm.codec.config == trained.codec.config
    codes = torch.randint(0, lm.config.card, (1, 1 + lm.config.n_q, 6))
    torch.testing.assert_close(lm(codes).text_logits, trained(codes).text_logits, rtol=0.01, atol=0.01)
    with pytest.raises(InputError, match="holds no LoRA adapters"):
        embed_adapters(str(tmp_path / "t" / "model"), "dialogue", "translation", models)
    embed_lm(str(tmp_path / "t" / "model"), "other", models)  # the same model in float16: other bytes
    with pytest.raises(InputError, match="other weights than the embedded other model's"):
        embed_adapters(str(tmp_path / "d" / "model"), "dialogue", "other", models)
    assert (models / "dialogue").is_dir()  # a refused embedding changes nothing
    with caplog.at_level(logging.WARNING):
        embed_lm(str(tmp_path / "t" / "model"), "translation", models)  # new base weights: the adapters go
    assert not (models / "dialogue").exists() and "removed the embedded dialogue model" in caplog.text


def test_lora_starts_as_the_base_model_and_merging_keeps_its_outputs():
    torch.manual_seed(0)
    model = init_weights(LM(model_config(dataclasses.replace(TINY, codebooks=2), text_card=40, card=16)))
    codes = torch.randint(0, 16, (1, 3, 8))
    reference = model(codes).text_logits.detach()
    total = sum(p.numel() for p in model.parameters())
    trained = lora.add_lora(model, rank=2)
    assert 0 < trained < total // 2
    torch.testing.assert_close(model(codes).text_logits, reference)
    with torch.no_grad():
        for module, _ in lora.targets(model):
            for delta in module.parametrizations.values():
                delta[0].up.normal_()
    adapted = model(codes).text_logits.detach()
    lora.merge(model)
    assert not any("parametrizations" in k for k in model.state_dict())
    torch.testing.assert_close(model(codes).text_logits, adapted, rtol=1e-4, atol=1e-4)


def test_recipe_errors_are_clear(tmp_path, speech_dir, codec_dir):
    with pytest.raises(InputError, match="unknown task"):
        train_lm([speech_dir], tmp_path / "a", dataclasses.replace(TINY, task="sing"), codec_dir, progress=False)
    with pytest.raises(InputError, match="--init"):
        train_lm([speech_dir], tmp_path / "b", dataclasses.replace(TINY, lora_rank=4), codec_dir, progress=False)
    with pytest.raises(InputError, match="two-channel"):
        train_lm([speech_dir], tmp_path / "c", dataclasses.replace(TINY, task="dialogue"), codec_dir, progress=False)


def test_an_stt_model_grown_to_more_codebooks_starts_as_it_was_then_learns_them(tmp_path, speech_dir, codec_dir):
    train_lm([speech_dir], tmp_path / "two", dataclasses.replace(TINY, steps=1, codebooks=2), codec_dir, progress=False)
    small = LM.from_pretrained(tmp_path / "two" / "model")
    grow = dataclasses.replace(TINY, steps=0, init=str(tmp_path / "two" / "model"), codebooks=4)
    train_lm([speech_dir], tmp_path / "four", grow, None, progress=False)
    grown = LM.from_pretrained(tmp_path / "four" / "model")
    assert (small.config.n_q, grown.config.n_q, grown.config.delays) == (2, 4, (0,) * 5)
    assert grown.codec.num_codebooks == 4
    for k in (2, 3):
        assert not grown.emb[k].weight.any()
    codes = torch.randint(0, 64, (1, 5, 10))
    codes[:, 0] = torch.randint(0, small.config.text_card, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(grown(codes).text_logits, small(codes[:, :3]).text_logits, equal_nan=True)
    # the run's codes cache of two codebooks is encoded again at four; then training reaches the new tables
    (tmp_path / "more").mkdir()
    (tmp_path / "two" / "codes-tts.pt").rename(tmp_path / "more" / "codes-tts.pt")
    train_lm([speech_dir], tmp_path / "more", dataclasses.replace(grow, steps=2), None, progress=False)
    cached = torch.load(tmp_path / "more" / "codes-tts.pt", weights_only=False)
    assert cached[0]["codes"].shape[1] == 4
    trained = LM.from_pretrained(tmp_path / "more" / "model")
    assert trained.emb[3].weight.any()
    with pytest.raises(InputError, match="can only grow"):
        train_lm([speech_dir], tmp_path / "fewer", dataclasses.replace(grow, init=str(tmp_path / "four" / "model"),
                                                                       codebooks=2), None, progress=False)
    with pytest.raises(InputError, match="codec has 4 codebooks, not 5"):
        train_lm([speech_dir], tmp_path / "five", dataclasses.replace(grow, codebooks=5), None, progress=False)


def test_a_codes_cache_of_more_codebooks_serves_fewer(tmp_path, speech_dir, codec_dir):
    from antiphon.codec import Codec
    from antiphon.train.lm_train import encode_dataset

    codec = Codec.from_pretrained(codec_dir, num_codebooks=4)
    full = encode_dataset(codec, speech_dir, tmp_path / "codes.pt", progress=False)
    codec.num_codebooks = 2
    served = encode_dataset(codec, speech_dir, tmp_path / "codes.pt", progress=False)
    assert [s["codes"].shape[1] for s in served] == [2] * len(full)
    assert all(torch.equal(s["codes"], f["codes"][:, :2]) for s, f in zip(served, full))


def test_eval_sets_a_run_cannot_read_are_refused_before_it_trains(tmp_path, speech_dir, translation_dir, codec_dir):
    recipe = dataclasses.replace(TINY, task="translation")
    with pytest.raises(InputError, match="holds tts examples; a translation evaluation reads translation"):
        train_lm([translation_dir], tmp_path / "a", recipe, codec_dir, eval_dirs=[speech_dir], progress=False)
    with pytest.raises(InputError, match="not a dataset directory"):
        train_lm([speech_dir], tmp_path / "b", TINY, codec_dir, eval_dirs=[str(tmp_path / "none")], progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_dialogue_trains_on_two_channel_examples(tmp_path, dialogue_dir, codec_dir):
    train_lm([dialogue_dir], tmp_path, dataclasses.replace(TINY, task="dialogue", steps=2), codec_dir, progress=False)
    lm = LM.from_pretrained(tmp_path / "model")
    assert lm.config.model_type == "moshi" and lm.config.dep_q * 2 == lm.config.n_q


def test_every_weight_of_a_new_lm_trains():
    model = LM(model_config(dataclasses.replace(TINY, task="tts"), text_card=40, card=16))
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == []


def test_translation_marks_the_end_of_the_source_and_of_the_target():
    target, source = torch.zeros(2, 30, dtype=torch.long), torch.ones(2, 30, dtype=torch.long)
    words = [[("ab", 0.4, 0.9)], [("c", 0.0, 0.5)]]
    seq = streams.build("translation", LetterTokenizer(), [target, source], words, 0, card=16)
    end_of_input = int(np.ceil((0.5 + streams.END_LAG_S) * 12.5))  # 10
    assert (seq[3:, end_of_input] == 16).all() and (seq[3:, :end_of_input] == 1).all()
    # EOS the step after the end of input and after the target's last word ends
    assert seq[0, 13] == streams.EOS and (seq[0] == streams.EOS).sum() == 1  # ceil(0.9 * 12.5) + 1


def test_embedding_shares_one_codec_and_halves_the_weights(tmp_path, speech_dir, codec_dir):
    from antiphon.train.embed import embed_codec, embed_lm

    train_lm([speech_dir], tmp_path / "run", dataclasses.replace(TINY, steps=1), codec_dir, progress=False)
    models = tmp_path / "models"
    embed_codec(codec_dir, models)
    weights = embed_lm(str(tmp_path / "run" / "model"), "stt", models)
    assert sorted(p.name for p in (models / "stt").iterdir()) == ["config.json", "model.safetensors", "tokenizer.model"]
    lm, trained = LM.from_pretrained(models / "stt"), LM.from_pretrained(tmp_path / "run" / "model")
    assert weights.stat().st_size < 0.6 * (tmp_path / "run" / "model" / "model.safetensors").stat().st_size
    codes = torch.randint(0, lm.config.card, (1, 1 + lm.config.n_q, 6))
    torch.testing.assert_close(lm(codes).text_logits, trained(codes).text_logits, rtol=0.02, atol=0.02)
    assert lm.codec.config == trained.codec.config  # ../codec, shared


def test_an_int8_embedding_quarters_the_matrices_and_loads_as_the_trained_model(tmp_path, speech_dir, codec_dir):
    from antiphon.train.embed import embed_codec, embed_lm

    train_lm([speech_dir], tmp_path / "run", dataclasses.replace(TINY, steps=1), codec_dir, progress=False)
    models = tmp_path / "models"
    embed_codec(codec_dir, models)
    half = embed_lm(str(tmp_path / "run" / "model"), "stt", models).stat().st_size
    weights = embed_lm(str(tmp_path / "run" / "model"), "stt", models, int8=True)
    stored = load_file(str(weights))
    assert {v.dtype for k, v in stored.items() if v.dim() == 2} == {torch.int8}
    assert stored["text_emb.weight_scb"].shape == stored["text_emb.weight"].shape[:1]
    assert weights.stat().st_size < 0.6 * half
    lm, trained = LM.from_pretrained(models / "stt"), LM.from_pretrained(tmp_path / "run" / "model")
    for name, value in trained.state_dict().items():  # each row within half a step of its int8 grid
        if value.dim() == 2:
            step = value.abs().amax(dim=1, keepdim=True) / 127
            assert ((lm.state_dict()[name] - value).abs() <= 0.5 * step + 1e-3 * value.abs() + 1e-6).all(), name
    codes = torch.randint(0, lm.config.card, (1, 1 + lm.config.n_q, 6))
    torch.testing.assert_close(lm(codes).text_logits, trained(codes).text_logits, rtol=0.05, atol=0.05)
    embed_lm(str(models / "stt"), "stt", models, int8=True)  # an embedded model re-embedded in place
    assert LM.from_pretrained(models / "stt").tokenizer.vocab_size() == lm.config.text_card


def test_dialogue_and_translation_runs_are_evaluated_end_to_end(tmp_path, dialogue_dir, translation_dir, codec_dir):
    dialogue = train_lm([dialogue_dir], tmp_path / "d", dataclasses.replace(TINY, task="dialogue", steps=1), codec_dir,
                        eval_dirs=[dialogue_dir], eval_count=2, progress=False)[dialogue_dir]
    assert dialogue["examples"] == 2 and 0 <= dialogue["answers_correct"] <= 1
    assert dialogue["interruptions"] >= 0 and 0 <= dialogue["silent_within_0_5_s"] <= 1
    assert 0 <= dialogue["speaking_when_interrupted"] <= 1 and 0 <= dialogue["stopped_within_0_5_s"] <= 1
    translation = train_lm([translation_dir], tmp_path / "t", dataclasses.replace(TINY, task="translation", steps=1),
                           codec_dir, eval_dirs=[translation_dir], eval_count=2, progress=False)[translation_dir]
    assert translation["examples"] == 2 and 0 <= translation["exact_match"] <= 1 and translation["wer"] >= 0
    assert LM.from_pretrained(tmp_path / "t" / "model").config.model_type == "hibiki"


def test_a_translation_model_from_an_stt_model_starts_with_its_listening_weights(tmp_path, speech_dir, translation_dir,
                                                                                codec_dir):
    train_lm([speech_dir], tmp_path / "stt", dataclasses.replace(TINY, steps=2), codec_dir, progress=False)
    stt = LM.from_pretrained(tmp_path / "stt" / "model")
    recipe = dataclasses.replace(TINY, task="translation", steps=0, from_stt=str(tmp_path / "stt" / "model"))
    train_lm([translation_dir], tmp_path / "t", recipe, None, progress=False)
    model = LM.from_pretrained(tmp_path / "t" / "model")
    assert model.config.model_type == "hibiki" and model.config.text_card == stt.config.text_card
    ours, theirs = model.state_dict(), stt.state_dict()
    k = stt.config.n_q
    for i in range(k):  # the STT's audio embeddings read the source stream, after the model's own k
        torch.testing.assert_close(ours[f"emb.{k + i}.weight"], theirs[f"emb.{i}.weight"], rtol=0, atol=0)
    rows = torch.arange(stt.config.text_card + 1) != 2  # a Hibiki model loads with EOS's row as PAD's
    torch.testing.assert_close(ours["text_emb.weight"][rows], theirs["text_emb.weight"][rows], rtol=0, atol=0)
    for name in theirs:
        if name.startswith(("transformer.", "text_linear.", "out_norm.")):
            torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0, msg=name)
    assert not torch.equal(ours["emb.0.weight"], theirs["emb.0.weight"])  # its own speech starts new


def test_from_stt_errors_are_clear(tmp_path, speech_dir, translation_dir, codec_dir):
    train_lm([translation_dir], tmp_path / "hibiki", dataclasses.replace(TINY, task="translation", steps=1), codec_dir,
             progress=False)
    not_stt = dataclasses.replace(TINY, task="translation", from_stt=str(tmp_path / "hibiki" / "model"))
    with pytest.raises(InputError, match="not an STT model"):
        train_lm([translation_dir], tmp_path / "a", not_stt, None, progress=False)
    with pytest.raises(InputError, match="translation or dialogue"):
        train_lm([speech_dir], tmp_path / "b", dataclasses.replace(TINY, from_stt="x"), None, progress=False)
    with pytest.raises(InputError, match="not both"):
        train_lm([speech_dir], tmp_path / "c", dataclasses.replace(TINY, from_stt="x", init="y"), None, progress=False)


def test_the_translation_eval_ends_the_source_where_training_marks_its_end(tmp_path, translation_dir, codec_dir,
                                                                           monkeypatch):
    from antiphon.lm.tasks import Translator
    from antiphon.train.evaluate import evaluate_translation
    from antiphon.train.shards import iter_examples

    train_lm([translation_dir], tmp_path, dataclasses.replace(TINY, task="translation", steps=1), codec_dir,
             progress=False)
    lm = LM.from_pretrained(tmp_path / "model")
    fed: list[tuple[Translator, list[torch.Tensor]]] = []  # per example: its translator, the frames it was fed
    step = Translator.step

    def recording_step(self, codes, active=None):
        if not fed or fed[-1][0] is not self:
            fed.append((self, []))
        fed[-1][1].append(codes)
        return step(self, codes, active)

    monkeypatch.setattr(Translator, "step", recording_step)
    evaluate_translation(lm, [translation_dir], 3, progress=False)
    k, card = lm.config.n_q - lm.config.dep_q, lm.config.card
    assert len(fed) == 3
    for (_, frames), example in zip(fed, iter_examples(translation_dir)):
        got = next(i for i, codes in enumerate(frames) if (codes == card).all())
        steps = -(-example.pcm.shape[-1] // 1920)
        layout = streams.build("translation", LetterTokenizer(), [torch.zeros(k, steps, dtype=torch.long)] * 2,
                               [c.words for c in example.channels], 0, card)
        assert got == int((layout[1 + k] == card).nonzero()[0])


@pytest.mark.reference
def test_a_lora_runs_export_loads_in_the_reference_as_in_antiphon(tmp_path, dialogue_dir, codec_dir):
    """Kyutai's loader (`get_moshi_lm(lora_weights=...)`) reads the exported adapters and gives the logits
    antiphon gives."""
    pytest.importorskip("moshi")
    from moshi.models.loaders import get_moshi_lm
    from moshi.utils.compile import no_compile

    from tests.lm.reference import reference_kwargs

    base = dataclasses.replace(TINY, task="dialogue", steps=1)
    train_lm([dialogue_dir], tmp_path / "base", base, codec_dir, progress=False)
    recipe = dataclasses.replace(base, steps=3, init=str(tmp_path / "base" / "model"), lora_rank=2, lr=0.2, warmup=1)
    train_lm([dialogue_dir], tmp_path / "lora", recipe, None, progress=False)
    out = tmp_path / "lora" / "model"
    ours = LM.from_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    keys = {"lora": True, "lora_rank": config["lora_rank"], "lora_scaling": config["lora_scaling"]}
    reference = get_moshi_lm(out / ours.config.moshi_name, lm_kwargs=reference_kwargs(ours.config) | keys,
                             device="cpu", dtype=torch.float32, lora_weights=out / "lora.safetensors")
    codes = torch.randint(0, ours.config.card, (2, 1 + ours.config.n_q, 8))
    with torch.no_grad(), no_compile():
        expected = reference(codes)
    got = ours(codes)
    torch.testing.assert_close(got.text_logits, expected.text_logits, atol=1e-4, rtol=0, equal_nan=True)
    torch.testing.assert_close(got.logits, expected.logits.float(), atol=1e-4, rtol=0, equal_nan=True)
    unadapted = LM.from_pretrained(tmp_path / "base" / "model")(codes).text_logits
    assert (got.text_logits - unadapted).nan_to_num().abs().max() > 1e-4  # the adapters matter

