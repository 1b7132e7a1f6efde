"""`antiphon train`: the recipes that make the embedded models (docs/TRAINING.md).

`codec` trains a Mimi-architecture codec on datasets of `antiphon data generate`; `lm` trains a
multistream LM for one task on a codec's codes, or fine-tunes a published one (full or LoRA).
Every run lives in its --out directory (state.pt, history.jsonl, loss.png, model/, eval.json) and
resumes from it when started again with the same recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from antiphon.apps.devices import parse_device
from antiphon.apps.help import Formatter
from antiphon.embedded import NAMES
from antiphon.errors import InputError


def register(subparsers, common: list[argparse.ArgumentParser]) -> None:
    train = subparsers.add_parser(
        "train", parents=common, formatter_class=Formatter, help="train the codec or a language model",
        description="Train the embedded models from synthetic speech (see docs/TRAINING.md). A run writes "
                    "OUT/state.pt every --save-every steps and resumes from it when run again with the same "
                    "recipe; OUT/loss.png shows the curves, OUT/model/ holds the exported model and "
                    "OUT/eval.json the evaluation at the end.",
        epilog="examples:\n"
               "  antiphon data generate --kind tts --out data/tts --count 2000\n"
               "  antiphon train codec data/tts data/asr --out runs/codec --eval data/tts-eval\n"
               "  antiphon train lm --task stt data/asr --codec runs/codec/model --out runs/stt --eval data/asr-eval")
    actions = train.add_subparsers(title="commands", metavar="COMMAND", dest="train_command", required=True)

    codec = actions.add_parser(
        "codec", parents=common, formatter_class=Formatter, help="train a Mimi-architecture codec",
        description="Train a codec with Mimi's architecture (a smaller config) on the audio of DATA "
                    "directories: multi-scale mel reconstruction loss, commitment loss, EMA codebooks. "
                    "With --adversarial or --feature above 0, a multi-scale STFT discriminator trains beside "
                    "it from --disc-start, and its hinge adversarial and feature-matching losses join the "
                    "codec's; a run trained without one takes one on when run again with these options and "
                    "a higher --steps (fine-tuning; a fresh discriminator starts at the saved step). "
                    "--init starts from a trained codec; with --trainable decoder only its decoding half "
                    "learns, so its codes, and the language models trained on them, stay valid. "
                    "At the end, the codec is exported to OUT/model and evaluated (STOI, SNR at all its "
                    "codebooks) on the --eval datasets.",
        epilog="examples:\n"
               "  antiphon train codec data/tts data/asr --out runs/codec --steps 6000 --eval data/tts-eval\n"
               "  antiphon train codec data/tts data/asr --out runs/codec --steps 8000 --adversarial 0.1 --feature 1 \\\n"
               "      --eval data/tts-eval    # fine-tunes the run above with a discriminator\n"
               "  antiphon train codec data/tts-slt --out runs/codec-dec --init embedded:codec --trainable decoder \\\n"
               "      --steps 4000 --lr 5e-4    # a better decoder for the embedded models' codes")
    codec.add_argument("data", nargs="+", metavar="DATA", help="dataset directories (antiphon data generate)")
    codec.add_argument("--out", required=True, metavar="DIR", help="run directory (created; resumed when it holds a run)")
    _recipe_arguments(codec, _codec_recipe())
    _run_arguments(codec)
    codec.set_defaults(run=run_codec)

    lm = actions.add_parser(
        "lm", parents=common, formatter_class=Formatter, help="train or fine-tune a multistream LM",
        description="Train a multistream LM for one --task on the codes of --codec (stt: text delayed behind "
                    "the audio; tts: audio delayed behind the text; translation and dialogue: two audio "
                    "streams, Hibiki and Moshi style), or fine-tune a published model (--init, a repo id or "
                    "directory) fully or with low-rank adapters (--lora-rank R; exported in moshi-finetune's "
                    "layout: the base weights as stored, the adapters beside them). A translation model "
                    "fine-tuned with --task dialogue becomes a dialogue model (the same two streams). The "
                    "tokenizer of a new model is trained on the generator's texts unless --tokenizer is given. "
                    "At the end: OUT/model (config.json, weights, codec, tokenizer) and its evaluation on --eval (stt: word error rate; tts: word error rate of its speech "
                    "by pocketsphinx and by --stt-model).",
        epilog="examples:\n"
               "  antiphon train lm --task stt data/asr --codec runs/codec/model --out runs/stt --eval data/asr-eval\n"
               "  antiphon train lm --task tts data/tts-slt --codec runs/codec/model --out runs/tts \\\n"
               "      --eval data/tts-eval --stt-model runs/stt/model\n"
               "  antiphon train lm --task stt data/asr --init kyutai/stt-1b-en_fr --lora-rank 16 --out runs/stt-lora")
    lm.add_argument("data", nargs="+", metavar="DATA", help="dataset directories (antiphon data generate)")
    lm.add_argument("--out", required=True, metavar="DIR", help="run directory (created; resumed when it holds a run)")
    lm.add_argument("--codec", metavar="MODEL", help="codec of a new model (directory or .safetensors)")
    lm.add_argument("--tokenizer", metavar="FILE", help="SentencePiece model for a new model (default: trained here)")
    lm.add_argument("--stt-model", metavar="MODEL", help="tts evaluation: the STT model that transcribes the speech")
    _recipe_arguments(lm, _lm_recipe())
    _run_arguments(lm)
    lm.set_defaults(run=run_lm)

    embed = actions.add_parser(
        "embed", parents=common, formatter_class=Formatter, help="make a trained model an embedded default",
        description="Copy a trained model into the package (antiphon/models/NAME, float16) as the default of "
                    "the commands; the language models share the embedded codec, so embed the codec first. "
                    "--int8 stores a language model's matrices in int8 with a scale per row (Kyutai's q8 "
                    "format; half the size; they load as float). --lora-of BASE stores a model fine-tuned from "
                    "embedded:BASE with --lora-rank as its adapters alone, on BASE's weights.",
        epilog="examples:\n  antiphon train embed codec runs/codec/model && antiphon train embed stt runs/stt/model --int8\n"
               "  antiphon train embed dialogue runs/dialogue/model --lora-of translation")
    embed.add_argument("name", choices=NAMES, help="which embedded model to replace")
    embed.add_argument("source", metavar="MODEL", help="the trained model (a run's model/ directory)")
    embed.add_argument("--int8", action="store_true", help="a language model's matrices in int8 (not the codec)")
    embed.add_argument("--lora-of", metavar="BASE", choices=NAMES,
                       help="store only the LoRA adapters of a model trained with --init embedded:BASE")
    embed.set_defaults(run=run_embed)

    evaluate = actions.add_parser(
        "eval", parents=common, formatter_class=Formatter, help="evaluate a model on held-out datasets",
        description="The evaluation a run does at its end, on any model: the embedded ones (the default: "
                    "embedded:TASK), a run's model/ directory, a Hugging Face repo. codec: STOI and SNR of "
                    "encode -> decode against the input, and pocketsphinx's word error rate on both (English); "
                    "stt: word error rate; tts: the word error rate of its speech read by pocketsphinx and by "
                    "--stt-model; translation: exact match and text word error rate; dialogue: correct answers "
                    "and silence after interruptions. Prints the results as JSON; --json writes them too.",
        epilog="examples:\n"
               "  antiphon train eval stt --eval data/asr-eval data/tts-eval --eval-count 150\n"
               "  antiphon train eval tts --eval data/tts-slt-eval --eval-count 30 --stt-model embedded:stt\n"
               "  antiphon train eval codec runs/codec/model --eval data/tts-eval --num-codebooks 4 --json codec.json")
    evaluate.add_argument("task", choices=("codec", "stt", "tts", "translation", "dialogue"), help="what the model does")
    evaluate.add_argument("model", nargs="?", metavar="MODEL", help="the model (default: embedded:TASK)")
    evaluate.add_argument("--eval", nargs="+", required=True, metavar="DIR", help="held-out datasets (antiphon data generate)")
    evaluate.add_argument("--eval-count", type=int, default=50, metavar="N", help="examples per dataset (default: 50)")
    evaluate.add_argument("--stt-model", metavar="MODEL", help="tts: the STT model that also transcribes its speech")
    evaluate.add_argument("--num-codebooks", type=int, metavar="N", help="codec: codebooks used (default: 8)")
    evaluate.add_argument("--threads", type=int, default=0, metavar="N", help="CPU threads for torch (default: torch's choice)")
    evaluate.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    evaluate.set_defaults(run=run_eval)


def _codec_recipe():
    from antiphon.train.codec_train import CodecRecipe

    return CodecRecipe()


def _recipe_arguments(parser: argparse.ArgumentParser, recipe) -> None:
    group = parser.add_argument_group("recipe (a resumed run must be given the same values)")
    for field in dataclasses.fields(recipe):
        default = getattr(recipe, field.name)
        help = " ".join(filter(None, [field.metadata.get("help"), f"(default: {default})"]))
        group.add_argument(f"--{field.name.replace('_', '-')}", type=type(default), default=default,
                           metavar=field.name.upper(), help=help)


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval", nargs="*", default=[], metavar="DIR", help="held-out datasets to evaluate on at the end")
    parser.add_argument("--eval-count", type=int, default=50, metavar="N", help="examples per eval dataset (default: 50)")
    parser.add_argument("--save-every", type=int, default=250, metavar="N", help="steps between saves (default: 250)")
    parser.add_argument("--threads", type=int, default=0, metavar="N", help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu); "
                                                          "a run may resume on another device")


def _recipe_from(args, recipe_type):
    return recipe_type(**{f.name: getattr(args, f.name) for f in dataclasses.fields(recipe_type)})


def _threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def run_codec(args) -> int:
    from antiphon.train.codec_train import CodecRecipe, train_codec

    _threads(args)
    results = train_codec(args.data, args.out, _recipe_from(args, CodecRecipe), eval_dirs=args.eval,
                          eval_count=args.eval_count, save_every=args.save_every, device=parse_device(args.device))
    print(json.dumps(results, indent=2) if results else f"trained: {args.out}/model")
    return 0


def _lm_recipe():
    from antiphon.train.lm_train import LMRecipe

    return LMRecipe()


def run_lm(args) -> int:
    from antiphon.train.lm_train import LMRecipe, train_lm

    _threads(args)
    if args.codec is None and not args.init and not args.from_stt:
        raise InputError("give --codec (the codec whose codes a new model reads and writes), --init MODEL or --from-stt MODEL")
    results = train_lm(args.data, args.out, _recipe_from(args, LMRecipe), codec_source=args.codec,
                       eval_dirs=args.eval, eval_count=args.eval_count, save_every=args.save_every,
                       tokenizer=args.tokenizer, stt_model=args.stt_model, device=parse_device(args.device))
    print(json.dumps(results, indent=2) if results else f"trained: {args.out}/model")
    return 0


def run_embed(args) -> int:
    from antiphon.train.embed import embed_adapters, embed_codec, embed_lm

    if args.name == "codec":
        if args.int8 or args.lora_of:
            raise InputError("--int8 and --lora-of apply to the language models, not the codec")
        weights = embed_codec(args.source)
    elif args.lora_of:
        if args.int8:
            raise InputError("--lora-of stores adapters, in float16: leave out --int8")
        weights = embed_adapters(args.source, args.name, args.lora_of)
    else:
        weights = embed_lm(args.source, args.name, int8=args.int8)
    print(f"embedded {args.name}: {weights} ({weights.stat().st_size / 1e6:.1f} MB)")
    return 0


def run_eval(args) -> int:
    from antiphon.train.evaluate import check_eval_sets

    if args.eval_count < 1:
        raise InputError(f"--eval-count must be at least 1, not {args.eval_count}")
    if args.stt_model and args.task != "tts":
        raise InputError("--stt-model applies to a tts evaluation")
    if args.num_codebooks is not None and args.task != "codec":
        raise InputError("--num-codebooks applies to a codec evaluation")
    check_eval_sets(args.task, args.eval)
    if args.json and not args.json.parent.is_dir():
        raise InputError(f"--json: no directory {args.json.parent}")
    _threads(args)
    model = args.model or f"embedded:{args.task}"
    if args.task == "codec":
        from antiphon.codec import Codec
        from antiphon.train.codec_train import evaluate_codec

        codec = Codec.from_pretrained(model, num_codebooks=args.num_codebooks or 8)
        results = evaluate_codec(codec, args.eval, args.eval_count)
    else:
        from antiphon.train.evaluate import evaluate_lm

        results = evaluate_lm(model, args.task, args.eval, args.eval_count, stt_model=args.stt_model)
    results = {"model": model} | results
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0
