"""The codec trainer: EMA quantizer, a resumed run equals an uninterrupted one, export and evaluation."""

from __future__ import annotations

import json

import pytest
import torch

from antiphon.codec import Codec
from antiphon.codec.quantizer import ResidualVQ
from antiphon.errors import InputError
from antiphon.train.codec_train import DISCRIMINATOR_FIELDS, TINY, CodecRecipe, train_codec
from antiphon.train.losses import MultiScaleMelLoss, mel_filters
from antiphon.train.vq import EmaResidualVQ

RECIPE = CodecRecipe(size="tiny", steps=4, batch=2, segment_frames=2, warmup=2)
ADVERSARIAL = CodecRecipe(**{**RECIPE.__dict__, "adversarial": 0.1, "feature": 1.0, "disc_start": 1, "disc_channels": 4})


def test_ema_quantizer_picks_the_codes_the_codec_encodes():
    torch.manual_seed(0)
    rvq = ResidualVQ(dim=8, codebook_dim=4, codebook_size=16, n_q=3)
    latent = torch.randn(2, 5, 8)
    quantized, _ = EmaResidualVQ(rvq)(latent, 3, update=False)
    codes = rvq.encode(latent, 3)
    torch.testing.assert_close(quantized, rvq.decode(codes), rtol=1e-5, atol=1e-5)


def test_ema_codebooks_converge_on_clustered_data():
    torch.manual_seed(0)
    rvq = ResidualVQ(dim=4, codebook_dim=4, codebook_size=4, n_q=1)
    with torch.no_grad():
        rvq.input_proj.weight.copy_(torch.eye(4))
        rvq.output_proj.weight.copy_(torch.eye(4))
    centers = torch.eye(4) * 5
    ema = EmaResidualVQ(rvq, decay=0.8)
    errors = []
    for _ in range(60):
        data = centers[torch.randint(4, (64,))] + 0.05 * torch.randn(64, 4)
        _, commitment = ema(data[None], 1, update=True)
        errors.append(commitment.item())
    assert errors[-1] < 0.05 < errors[0]
    # every center has a centroid next to it
    distances = torch.cdist(centers, rvq.codebooks[0])
    assert distances.min(dim=1).values.max() < 0.5


def test_mel_loss_is_zero_for_equal_signals_and_grows_with_noise():
    loss = MultiScaleMelLoss(24000)
    wav = torch.sin(torch.arange(4800) / 10.0)[None, None]
    assert loss(wav, wav).item() == 0.0
    small = loss(wav + 0.01 * torch.randn_like(wav), wav).item()
    large = loss(wav + 0.3 * torch.randn_like(wav), wav).item()
    assert 0 < small < large
    filters = mel_filters(512, 32, 24000)
    assert filters.shape == (32, 257) and (filters.sum(1) > 0).all()


def _assert_equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for part, value in a.items():
        if part != "rng":
            torch.testing.assert_close(value, b[part], rtol=0, atol=0, msg=part)


@pytest.mark.parametrize("base", [RECIPE, ADVERSARIAL], ids=["mel", "adversarial"])
def test_resumed_run_equals_the_uninterrupted_one(tmp_path, speech_dir, base):
    # a run stopped after 2 steps, then resumed with more: --steps may change on resume; with all
    # steps inside the warmup the schedule does not depend on it, so both runs see the same rates
    recipe = CodecRecipe(**{**base.__dict__, "warmup": 10})
    train_codec([speech_dir], tmp_path / "straight", recipe, save_every=2, progress=False)
    interrupted = tmp_path / "resumed"
    train_codec([speech_dir], interrupted, CodecRecipe(**{**recipe.__dict__, "steps": 2}), save_every=2, progress=False)
    train_codec([speech_dir], interrupted, recipe, save_every=2, progress=False)
    a = torch.load(tmp_path / "straight" / "state.pt", weights_only=False)
    b = torch.load(interrupted / "state.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    assert ("discriminator" in a) == ("disc_optimizer" in a) == recipe.has_discriminator
    _assert_equal_states(a, b)  # model, optimizer, schedule, quantizer (and discriminator, its optimizer)
    history = [json.loads(line)["step"] for line in (interrupted / "history.jsonl").read_text().splitlines()]
    assert history == sorted(set(history))  # no step logged twice


def test_export_loads_and_is_evaluated(tmp_path, speech_dir):
    results = train_codec([speech_dir], tmp_path / "run", RECIPE, eval_dirs=[speech_dir], eval_count=2, progress=False)
    codec = Codec.from_pretrained(tmp_path / "run" / "model", num_codebooks=TINY.n_q)
    assert codec.config == TINY
    assert results[speech_dir]["examples"] == 2 and 0.0 <= results[speech_dir]["stoi"] <= 1.0
    assert results["kbps"] == pytest.approx(TINY.n_q * 6 * 12.5 / 1000)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["steps"] == 4


def test_evaluation_hears_the_resynthesis_with_pocketsphinx(tmp_path, speech_dir, monkeypatch):
    from antiphon.train.codec_train import evaluate_codec
    from antiphon.train.shards import iter_examples

    train_codec([speech_dir], tmp_path / "run", RECIPE, progress=False)
    codec = Codec.from_pretrained(tmp_path / "run" / "model", num_codebooks=TINY.n_q)
    english = sum(e.channels[0].language == "en" for e, _ in zip(iter_examples(speech_dir), range(4)))
    assert english > 0
    tiny = evaluate_codec(codec, [speech_dir], 4, progress=False)[speech_dir]
    assert tiny["english_examples"] == english and 0 <= tiny["wer_pocketsphinx_input"] < tiny["wer_pocketsphinx"]
    monkeypatch.setattr(codec, "encode", lambda wav: wav)  # a perfect codec: the resynthesis is the input
    monkeypatch.setattr(codec, "decode", lambda codes: codes)
    perfect = evaluate_codec(codec, [speech_dir], 4, progress=False)[speech_dir]
    assert perfect["wer_pocketsphinx"] == perfect["wer_pocketsphinx_input"] == tiny["wer_pocketsphinx_input"]
    assert perfect["stoi"] > 0.99


def test_another_recipe_in_the_same_directory_is_refused(tmp_path, speech_dir):
    train_codec([speech_dir], tmp_path, CodecRecipe(**{**RECIPE.__dict__, "steps": 1}), progress=False)
    with pytest.raises(InputError, match="another recipe.*lr"):
        train_codec([speech_dir], tmp_path, CodecRecipe(**{**RECIPE.__dict__, "lr": 0.5}), progress=False)


def test_unknown_size_and_missing_data_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="unknown codec size"):
        train_codec([str(tmp_path)], tmp_path / "a", CodecRecipe(size="huge"), progress=False)
    with pytest.raises(InputError, match="not a dataset directory"):
        train_codec([str(tmp_path / "nothing")], tmp_path / "b", RECIPE, progress=False)


def test_every_weight_of_the_codec_trains():
    # weights stored in the small-batch layout (kernels/layout.py) once came out frozen
    codec = Codec(TINY, num_codebooks=TINY.n_q)
    assert [n for n, p in codec.named_parameters() if not p.requires_grad] == []


def test_the_adversarial_losses_apply_from_disc_start_and_are_logged(tmp_path, speech_dir):
    train_codec([speech_dir], tmp_path, ADVERSARIAL, log_every=1, progress=False)
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    assert "disc" not in history[0]  # step index 0 < disc_start
    for record in history[1:]:
        assert record["disc"] > 0 and record["adv"] > 0 and record["fm"] > 0
        assert record["loss"] == pytest.approx(record["mel"] + record["commitment"] + 0.1 * record["adv"] + record["fm"],
                                               abs=1e-4)


@pytest.mark.parametrize("recorded", ["older than the fields", "without a discriminator"])
def test_a_run_without_a_discriminator_goes_on_with_one(tmp_path, speech_dir, recorded, caplog):
    train_codec([speech_dir], tmp_path, CodecRecipe(**{**RECIPE.__dict__, "steps": 2}), save_every=2, progress=False)
    if recorded == "older than the fields":
        saved = json.loads((tmp_path / "recipe.json").read_text())
        (tmp_path / "recipe.json").write_text(json.dumps({k: v for k, v in saved.items() if k not in DISCRIMINATOR_FIELDS}))
    mel_only = torch.load(tmp_path / "state.pt", weights_only=False)
    assert "discriminator" not in mel_only
    with caplog.at_level("INFO", logger="antiphon.train.codec_train"):
        train_codec([speech_dir], tmp_path, ADVERSARIAL, log_every=1, progress=False)
    assert "a fresh one starts" in caplog.text
    state = torch.load(tmp_path / "state.pt", weights_only=False)
    assert state["step"] == 4 and "discriminator" in state and "disc_optimizer" in state
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history if "adv" in r] == [3, 4]
    assert json.loads((tmp_path / "recipe.json").read_text())["adversarial"] == 0.1
    # from now on it is a run with a discriminator: its weights must stay
    with pytest.raises(InputError, match="another recipe.*adversarial"):
        train_codec([speech_dir], tmp_path, CodecRecipe(**{**ADVERSARIAL.__dict__, "adversarial": 0.2}), progress=False)
    # and the other fields are still checked when it takes one on
    other = tmp_path / "other"
    train_codec([speech_dir], other, CodecRecipe(**{**RECIPE.__dict__, "steps": 1}), progress=False)
    with pytest.raises(InputError, match="another recipe.*lr"):
        train_codec([speech_dir], other, CodecRecipe(**{**ADVERSARIAL.__dict__, "lr": 0.5}), progress=False)


@pytest.fixture(scope="module")
def trained_codec(tmp_path_factory, speech_dir):
    run = tmp_path_factory.mktemp("codec-run")
    train_codec([speech_dir], run, RECIPE, progress=False)
    return str(run / "model")


def _codes_and_audio(model: str, speech_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    from antiphon.train.shards import iter_examples

    codec = Codec.from_pretrained(model, num_codebooks=TINY.n_q)
    wav = torch.from_numpy(next(iter(iter_examples(speech_dir))).pcm[:1])[None]
    codes = codec.encode(wav)
    return codes, codec.decode(codes)


def test_decoder_fine_tuning_keeps_every_code(tmp_path, speech_dir, trained_codec):
    recipe = CodecRecipe(**{**RECIPE.__dict__, "steps": 3, "lr": 1e-2, "init": trained_codec, "trainable": "decoder"})
    train_codec([speech_dir], tmp_path, recipe, progress=False)
    before = Codec.from_pretrained(trained_codec, num_codebooks=TINY.n_q).state_dict()
    after = Codec.from_pretrained(tmp_path / "model", num_codebooks=TINY.n_q).state_dict()
    changed = {name.split(".")[0] for name in before if not torch.equal(before[name], after[name])}
    assert changed == {"upsample", "decoder_transformer", "decoder"}
    codes, audio = _codes_and_audio(trained_codec, speech_dir)
    new_codes, new_audio = _codes_and_audio(str(tmp_path / "model"), speech_dir)
    assert torch.equal(codes, new_codes)  # a language model trained on these codes still reads them
    assert not torch.equal(audio, new_audio)


def test_a_run_from_a_trained_codec_keeps_its_codebooks(tmp_path, speech_dir, trained_codec, monkeypatch):
    def no_reseeding(*args):
        raise AssertionError("a trained codebook was re-seeded from a batch")

    monkeypatch.setattr(EmaResidualVQ, "_seed", no_reseeding)
    recipe = CodecRecipe(**{**RECIPE.__dict__, "steps": 2, "size": "unused with init", "init": trained_codec})
    train_codec([speech_dir], tmp_path, recipe, progress=False)
    before = Codec.from_pretrained(trained_codec, num_codebooks=TINY.n_q)
    after = Codec.from_pretrained(tmp_path / "model", num_codebooks=TINY.n_q)
    assert after.config == before.config
    assert not torch.equal(before.encoder.state_dict()["model.0.conv.weight"], after.encoder.state_dict()["model.0.conv.weight"])
    # the EMA moved the centroids towards two batches, it did not replace them
    drift = (after.quantizer.rvq_first.codebooks - before.quantizer.rvq_first.codebooks).norm(dim=-1)
    assert drift.median() < 0.5 * before.quantizer.rvq_first.codebooks.norm(dim=-1).median()


def test_adopted_statistics_reproduce_the_codebooks():
    torch.manual_seed(0)
    rvq = ResidualVQ(dim=8, codebook_dim=4, codebook_size=16, n_q=2)
    with torch.no_grad():
        rvq.codebooks.normal_()
    ema = EmaResidualVQ(rvq)
    ema.adopt()
    assert ema.initialized.all()
    torch.testing.assert_close(ema.sums / ema.usage[..., None], rvq.codebooks, rtol=0, atol=0)


def test_decoder_training_needs_a_trained_codec_and_trainable_is_checked(tmp_path, speech_dir, trained_codec):
    with pytest.raises(InputError, match="give --init"):
        train_codec([speech_dir], tmp_path / "a", CodecRecipe(**{**RECIPE.__dict__, "trainable": "decoder"}), progress=False)
    with pytest.raises(InputError, match="unknown --trainable 'encoder'"):
        train_codec([speech_dir], tmp_path / "b", CodecRecipe(**{**RECIPE.__dict__, "init": trained_codec,
                                                                "trainable": "encoder"}), progress=False)
