"""`antiphon train lm`: a multistream LM for one task, teacher-forced on a codec's codes of synthetic
speech (train/streams.py lays the streams out as the task's front-end reads them), or a published
model fine-tuned the same way, fully or with low-rank adapters (train/lora.py).

Loss: cross-entropy of the output streams only (DSM: the text for stt; text actions and audio for
tts, translation and dialogue), over the positions `LM.forward` marks valid. The codes of every
dataset are computed once per codec and kept in OUT/codes-<dataset>.pt. Batches depend only on
(seed, step): a resumed run is the run that was not interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from antiphon.checkpoint_io import read_safetensors
from antiphon.errors import InputError
from antiphon.lm import LM, LMConfig
from antiphon.lm.checkpoint import Source, read_config
from antiphon.lm.config import LORA_NAME
from antiphon.lm.layers import Embedding
from antiphon.lm.weight_formats import reference_linears
from antiphon.train import lora, streams
from antiphon.train.evaluate import check_eval_sets, evaluate_lm
from antiphon.train.run_dir import RunDir, Training, warmup_cosine
from antiphon.train.shards import iter_examples, read_manifest

logger = logging.getLogger(__name__)

TOKENIZER_NAME = "tokenizer.model"
CODEC_NAME, CODEC_CONFIG_NAME = "codec.safetensors", "codec.json"  # beside a new model
TEXT_DELAY_S = 0.48  # stt: text 6 steps behind the audio (Kyutai stt-1b-en_fr: 0.5 s)
AUDIO_DELAY_S = 0.96  # tts: audio 12 steps behind the text
NEW_MODEL_CODEBOOKS = 4  # per stream, when the recipe leaves it at 0


@dataclasses.dataclass
class LMRecipe:
    task: str = "stt"
    size: str = "small"
    codebooks: int = dataclasses.field(default=0, metadata={"help": (
        "audio codebooks per stream: 0 reads 4 in a new model and keeps a fine-tuned or --from-stt model's own; "
        "more than an STT model's own (with --init) grows its input, the new codebooks' embeddings starting at zero")})
    steps: int = 3000
    batch: int = 16
    seq_steps: int = 112  # 9 s
    lr: float = 2e-3
    warmup: int = 100
    init: str = ""  # fine-tune this model (repo id or directory) instead of a new one
    lora_rank: int = 0  # > 0: train low-rank adapters only (with --init)
    text_dropout: float = 0.0  # share of input text tokens the model reads as the zero token (targets kept)
    from_stt: str = dataclasses.field(default="", metadata={"help": (
        "translation and dialogue: start a new model from this trained STT model (its codec, tokenizer, "
        "temporal transformer and text head; its audio embeddings read the source or user stream), so the "
        "model starts out recognizing speech")})
    seed: int = 0


def model_config(recipe: LMRecipe, text_card: int, card: int) -> LMConfig:
    """A new model of `recipe.task` at `recipe.size`, reading and writing `codebooks` codebooks of `card`."""
    sizes = {"small": dict(dim=192, num_heads=4, num_layers=4, hidden_scale=4.0, depformer_dim=128,
                           depformer_num_heads=4, depformer_num_layers=2, depformer_dim_feedforward=512),
             "tiny": dict(dim=32, num_heads=2, num_layers=1, hidden_scale=2.0, depformer_dim=16,
                          depformer_num_heads=2, depformer_num_layers=1, depformer_dim_feedforward=32)}
    if recipe.size not in sizes:
        raise InputError(f"unknown LM size {recipe.size!r}: choose from {', '.join(sizes)}")
    k = recipe.codebooks or NEW_MODEL_CODEBOOKS
    acoustic = [0] + [1] * (k - 1)  # codebook 0 (semantic) leads the acoustic ones by a step
    task = {
        "stt": dict(n_q=k, dep_q=0, delays=(0,) * (1 + k), model_type="stt",
                    stt_config={"audio_delay_seconds": TEXT_DELAY_S}),
        "tts": dict(n_q=k, dep_q=k, delays=(0, *acoustic), model_type="tts",
                    tts_config={"audio_delay": AUDIO_DELAY_S, "second_stream_ahead": 0}),
        # text greedy, as the STT front-end reads it: the translation's words are what it is measured on
        "translation": dict(n_q=2 * k, dep_q=k, delays=(0, *acoustic, *acoustic), model_type="hibiki",
                            lm_gen_config={"temp_text": 0.0}),
        "dialogue": dict(n_q=2 * k, dep_q=k, delays=(0, *acoustic, *acoustic), model_type="moshi"),
    }[recipe.task]
    return LMConfig(**sizes[recipe.size], **task, context=250, text_card=text_card, card=card,
                    depformer_weights_per_step=False, depformer_multi_linear=True, depformer_pos_emb="none",
                    tokenizer_name=TOKENIZER_NAME, mimi_name=CODEC_NAME, mimi_config_name=CODEC_CONFIG_NAME,
                    moshi_name="model.safetensors")


def delay_steps(config: LMConfig) -> int:
    if config.model_type == "stt":
        return round(config.stt_config.get("audio_delay_seconds", 0.0) * streams.FRAME_RATE)
    if config.model_type == "tts":
        return round(config.tts_config["audio_delay"] * streams.FRAME_RATE)
    return 0


def encode_dataset(codec, data_dir: str, cache: Path, progress: bool = True) -> list[dict]:
    """Every example's channels -> codes int16 [C, K, F], with its words; cached in `cache`. A cache of more
    codebooks than the codec reads serves their first K; one of fewer is encoded again."""
    k = codec.num_codebooks
    if cache.exists():
        cached = torch.load(cache, weights_only=False)
        if not cached or cached[0]["codes"].shape[1] >= k:
            return [item | {"codes": item["codes"][:, :k]} for item in cached]
        logger.info("%s holds %d codebooks, %d are read: encoding %s again", cache, cached[0]["codes"].shape[1], k,
                    data_dir)
    manifest = read_manifest(data_dir)
    if manifest["sample_rate"] != codec.sample_rate:
        raise InputError(f"{data_dir} is at {manifest['sample_rate']} Hz, the codec at {codec.sample_rate} Hz")
    out = []
    with torch.inference_mode():
        for example in tqdm(iter_examples(data_dir), total=manifest["count"], desc=f"encode {data_dir}",
                            disable=not progress):
            codes = codec.encode(torch.from_numpy(example.pcm)[:, None])  # [C, K, F]
            out.append({"codes": codes.to(torch.int16), "words": [c.words for c in example.channels],
                        "text": [c.text for c in example.channels], "language": example.channels[0].language,
                        "info": example.info})
    torch.save(out, cache)
    return out


def silence_codes(codec) -> torch.Tensor:
    """long [K]: the codes of digital silence once the codec's state has settled (2 s in), what the
    transcriber feeds it after the audio to flush the text delay."""
    with torch.inference_mode():
        codes = codec.encode(torch.zeros(1, 1, int(2 * codec.sample_rate)))  # [1, K, F]
    return codes[0, :, -1].long()


def drop_text(batch: torch.Tensor, share: float) -> torch.Tensor:
    """batch [B, 1 + n_q, T] with each text token replaced by the zero token (-1) with probability `share`
    (torch's generator): the model must read the audio, not only its own transcript so far."""
    dropped = batch.clone()
    dropped[:, 0] = batch[:, 0].masked_fill(torch.rand(batch[:, 0].shape, device=batch.device) < share, -1)
    return dropped


def lm_loss(model: LM, batch: torch.Tensor, text_dropout: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of the output streams over their valid positions; with `text_dropout`, the model
    reads a share of the text tokens as the zero token (`drop_text`), the targets stay whole."""
    out = model(batch, inputs=drop_text(batch, text_dropout) if text_dropout > 0 else None)
    text_target = batch[:, :1]
    text = F.cross_entropy(out.text_logits[out.text_mask], text_target[out.text_mask])
    parts = {"text": text}
    loss = text
    dep_q = model.config.dep_q
    if dep_q:
        target = batch[:, 1:1 + dep_q]
        audio = F.cross_entropy(out.logits[out.mask], target[out.mask])
        parts["audio"] = audio
        loss = loss + audio
    return loss, parts


def train_lm(data_dirs: list[str], out: str, recipe: LMRecipe, codec_source: str, eval_dirs: list[str] = (),
             eval_count: int = 50, save_every: int = 250, log_every: int = 10, tokenizer: str | None = None,
             stt_model: str | None = None, progress: bool = True, device: str | torch.device = "cpu") -> dict:
    """Train (or resume) into `out` on `device`; returns the evaluation (empty without eval_dirs)."""
    from antiphon.codec import Codec

    if recipe.task not in streams.TASKS:
        raise InputError(f"unknown task {recipe.task!r}: choose from {', '.join(streams.TASKS)}")
    if recipe.init and recipe.from_stt:
        raise InputError("give --init (fine-tune a model) or --from-stt (start a new one), not both")
    if recipe.lora_rank and not recipe.init:
        raise InputError("--lora-rank adapts a published model: give --init MODEL")
    if not 0 <= recipe.text_dropout < 1:
        raise InputError(f"--text-dropout is a share in [0, 1), got {recipe.text_dropout}")
    check_eval_sets(recipe.task, list(eval_dirs))
    if not (recipe.codebooks or recipe.init or recipe.from_stt):
        recipe = dataclasses.replace(recipe, codebooks=NEW_MODEL_CODEBOOKS)  # recorded as runs before 0 meant it
    run = RunDir(out)
    resuming = run.start(dataclasses.asdict(recipe) | {"codec": str(codec_source or "")},
                         defaults=dataclasses.asdict(LMRecipe()))
    if recipe.init:
        model, codec, tokenizer_path = _published(recipe)
    elif recipe.from_stt:
        model, codec, tokenizer_path = _from_stt(recipe, run)
    else:
        codec = Codec.from_pretrained(codec_source, num_codebooks=recipe.codebooks)
        tokenizer_path = _tokenizer(run, tokenizer)
        model = _new_model(recipe, tokenizer_path, codec)
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    logger.info("%s model: %.2f M parameters, %.2f M trained", recipe.task,
                sum(p.numel() for p in model.parameters()) / 1e6, sum(p.numel() for p in trainable) / 1e6)
    optimizer = torch.optim.AdamW(trainable, lr=recipe.lr, betas=(0.9, 0.95), weight_decay=0.01)
    training = Training(model, optimizer, warmup_cosine(optimizer, recipe.warmup, recipe.steps))
    step = run.resume(training) if resuming else 0
    sp = _load_sentencepiece(tokenizer_path)
    delay = delay_steps(model.config)
    silence = silence_codes(codec) if recipe.task == "stt" else None
    sequences = []
    for data_dir in data_dirs:
        for item in encode_dataset(codec, data_dir, run.path / f"codes-{Path(data_dir).name}.pt", progress):
            codes = [c.long() for c in item["codes"]]
            if recipe.task in ("translation", "dialogue") and len(codes) < 2:
                raise InputError(f"{data_dir}: {recipe.task} needs two-channel examples")
            sequences += streams.sequences(recipe.task, sp, codes, item["words"], delay, codec.cardinality, silence)
    logger.info("%d training sequences from %s", len(sequences), ", ".join(data_dirs))
    model.train()

    def save() -> None:
        run.save_step(step, training)
        run.plot(f"{recipe.task} LM training")

    with tqdm(total=recipe.steps, initial=step, desc=f"train {recipe.task}", unit="step", disable=not progress) as bar:
        while step < recipe.steps:
            torch.manual_seed(recipe.seed * 1_000_003 + step)
            rng = np.random.default_rng([recipe.seed, step])
            picks = rng.integers(len(sequences), size=recipe.batch)
            batch = streams.crop_batch([sequences[i] for i in picks], recipe.seq_steps, rng).to(device)
            loss, parts = lm_loss(model, batch, recipe.text_dropout)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            training.schedule.step()
            step += 1
            bar.update(1)
            if step % log_every == 0 or step == recipe.steps:
                record = {"step": step, "loss": round(loss.item(), 5)} | {k: round(v.item(), 5) for k, v in parts.items()}
                run.log(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}")
            if step % save_every == 0 or step == recipe.steps:
                save()
    # moshi-finetune's format holds one set of adapters: on a model stored as adapters itself, all are merged
    adapters_only = recipe.lora_rank and not read_config(model.source)[1].lora
    export(model, codec, tokenizer_path, run.model_path, lora_base=model.source if adapters_only else None)
    if not eval_dirs:
        return {}
    results = evaluate_lm(run.model_path, recipe.task, list(eval_dirs), eval_count, stt_model=stt_model,
                          progress=progress) | {"steps": step}
    run.write_eval(results)
    return results


def export(model: LM, codec, tokenizer_path: Path, directory: Path, lora_base: Source | None = None) -> None:
    """A model repository: config.json, the weights, and beside them the codec and the tokenizer (codec.*,
    tokenizer.model). The weights are the model's own, adapters merged; or, for adapters on `lora_base`
    (the source of the weights they adapt), in moshi-finetune's layout: the base weights file as it is
    stored, the adapters in lora.safetensors, and `"lora": true` in config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    saved = codec.save_pretrained(directory / "codec-tmp")
    codec_config = saved.with_suffix(".json")
    shutil.move(saved, directory / CODEC_NAME)
    if codec_config.exists():
        shutil.move(codec_config, directory / CODEC_CONFIG_NAME)
    shutil.rmtree(directory / "codec-tmp")
    shutil.copy(tokenizer_path, directory / TOKENIZER_NAME)
    model.config = dataclasses.replace(model.config, mimi_name=CODEC_NAME, tokenizer_name=TOKENIZER_NAME,
                                       mimi_config_name=CODEC_CONFIG_NAME if codec_config.exists() else None)
    model.eval()
    if lora_base is None:
        lora.merge(model)
        model.save_pretrained(directory)
    else:
        _save_adapters(model, lora_base, directory)


def _save_adapters(model: LM, base: Source, directory: Path) -> None:
    base_config, stored = read_config(base)
    weights = Path(base_config.moshi_name).name
    shutil.copy(base.fetch(base_config.moshi_name), directory / weights)
    adapters, scaling = lora.adapters(model)
    rank = next(iter(adapters.values())).shape[0]
    # Kyutai's loader puts an adapter on every Linear and expects each in the file: zero ones where none trained
    for key, tensor in read_safetensors(directory / weights).items():
        for linear, rows in reference_linears(key, tensor.shape, model.config.depformer_weight_sets):
            if f"{linear}.lora_A.weight" not in adapters:
                adapters[f"{linear}.lora_A.weight"] = torch.zeros(rank, tensor.shape[1])
                adapters[f"{linear}.lora_B.weight"] = torch.zeros(len(range(tensor.shape[0])[rows]), rank)
    save_file(adapters, str(directory / LORA_NAME))
    config = dataclasses.replace(model.config, moshi_name=weights).to_kyutai()
    config |= {"quantize": stored.quantize, "lora": True, "lora_rank": rank, "lora_scaling": scaling,
               "lora_name": LORA_NAME}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _published(recipe: LMRecipe):
    """The model to fine-tune, its codec (as many codebooks as one of its streams) and tokenizer file."""
    model = LM.from_pretrained(recipe.init, device="cpu", dtype=torch.float32)
    cfg = model.config
    task = {"stt": "stt", "tts": "tts", "hibiki": "translation"}.get(cfg.model_type, "dialogue")
    if (task, recipe.task) == ("translation", "dialogue"):
        # The same two-stream model: it listens to one stream and speaks the other; now it learns to answer.
        model.config = cfg = dataclasses.replace(cfg, model_type="moshi", lm_gen_config={})
    elif task != recipe.task:
        raise InputError(f"{recipe.init} is a {task} model (model_type {cfg.model_type!r}), not a {recipe.task} one")
    codec = model.codec
    if recipe.codebooks and recipe.codebooks != (cfg.dep_q or cfg.n_q):
        if task != "stt" or recipe.codebooks < cfg.n_q:
            raise InputError(f"{recipe.init} has {cfg.dep_q or cfg.n_q} codebooks per stream; --codebooks can only "
                             "grow an STT model's input")
        grow_input(model, recipe.codebooks)
    codec.num_codebooks = model.config.dep_q or model.config.n_q
    tokenizer_path = model.source.fetch(cfg.tokenizer_name)
    if recipe.lora_rank:
        lora.add_lora(model, recipe.lora_rank)
    return model, codec, tokenizer_path


def _from_stt(recipe: LMRecipe, run: RunDir):
    """A new translation or dialogue model whose listening half is a trained STT model: the temporal
    transformer, text embedding, text head and norm are copied, and the STT's audio embeddings become
    those of the second (source / user) stream; the model's own audio embeddings and depth transformer
    start new. The STT's codec and tokenizer are the new model's."""
    if recipe.task not in ("translation", "dialogue"):
        raise InputError(f"--from-stt starts a translation or dialogue model, not a {recipe.task} one")
    stt = LM.from_pretrained(recipe.from_stt, device="cpu", dtype=torch.float32)
    if stt.config.model_type != "stt":
        raise InputError(f"{recipe.from_stt} is not an STT model (model_type {stt.config.model_type!r})")
    if recipe.codebooks and stt.config.n_q != recipe.codebooks:
        raise InputError(f"{recipe.from_stt} reads {stt.config.n_q} codebooks; give --codebooks {stt.config.n_q}")
    codec = stt.codec
    codec.num_codebooks = stt.config.n_q
    tokenizer_path = _tokenizer(run, str(stt.source.fetch(stt.config.tokenizer_name)))
    model = _new_model(dataclasses.replace(recipe, codebooks=stt.config.n_q), tokenizer_path, codec)
    copy_listener(stt, model)
    return model, codec, tokenizer_path


def grow_input(model: LM, codebooks: int) -> None:
    """Make an STT `model` read `codebooks` of its codec's codebooks instead of its n_q: the new ones'
    embedding tables start at zero, so the grown model says what it said until it trains."""
    cfg = model.config
    if codebooks > model.codec.config.n_q:
        raise InputError(f"the model's codec has {model.codec.config.n_q} codebooks, not {codebooks}")
    for _ in range(codebooks - cfg.n_q):
        table = Embedding(cfg.card + 1, cfg.dim)
        torch.nn.init.zeros_(table.weight)
        model.emb.append(table)
    model.config = dataclasses.replace(cfg, n_q=codebooks, delays=(*cfg.delays, *(cfg.delays[-1:] * (codebooks - cfg.n_q))))
    logger.info("the STT model now reads %d codebooks (was %d)", codebooks, cfg.n_q)


def copy_listener(stt: LM, model: LM) -> None:
    """Copy `stt`'s weights into `model` (module names and shapes must agree): emb.{i} -> emb.{dep_q + i},
    every transformer, text and norm weight as is."""
    ours = model.state_dict()
    offset = model.config.dep_q
    copied = {}
    for name, value in stt.state_dict().items():
        if name.startswith("extra_heads."):
            continue  # the STT's VAD heads have no counterpart
        if name.startswith("emb."):
            index, rest = name[len("emb."):].split(".", 1)
            name = f"emb.{int(index) + offset}.{rest}"
        if name not in ours or ours[name].shape != value.shape:
            raise InputError(f"the STT model does not fit a {model.config.model_type} model of this size: {name} "
                             f"{tuple(value.shape)} vs {tuple(ours[name].shape) if name in ours else 'absent'}")
        copied[name] = value
    model.load_state_dict(copied, strict=False)


def _tokenizer(run: RunDir, given: str | None) -> Path:
    path = run.path / TOKENIZER_NAME
    if given:
        if not Path(given).is_file():
            raise InputError(f"tokenizer not found: {given}")
        if not path.exists():
            shutil.copy(given, path)
    elif not path.exists():
        from antiphon.train.tokenizer import train_tokenizer

        train_tokenizer(path)
    return path


def _new_model(recipe: LMRecipe, tokenizer_path: Path, codec) -> LM:
    text_card = _load_sentencepiece(tokenizer_path).vocab_size()
    torch.manual_seed(recipe.seed)
    return init_weights(LM(model_config(recipe, text_card, codec.cardinality)))


def init_weights(model: LM) -> LM:
    """A new model's weights: Normal(0, 0.02) matrices and embeddings (LM builds them uninitialised);
    norms and layer scales keep their built values."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
    return model


def _load_sentencepiece(path: Path):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(path))
