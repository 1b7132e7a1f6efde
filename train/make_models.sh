#!/usr/bin/env bash
# The whole recipe of the embedded models (MODELS.md): data, codec, stt, tts, embed. Every step is
# resumable: run the script again after a stop and it goes on where it was (a dataset without its
# manifest is an interrupted generation: it is made again; a training run resumes from its state.pt).
# The language models train in two stages, as the embedded ones were: a first run, then a fine-tuning
# run (--init) on its data plus a second dataset with word lists (docs/DATA.md). The codec's decoder
# is then fine-tuned on more audio with its encoder and codebooks frozen: the codes the language
# models read and write are unchanged, their speech gets the better decoder. The translation model starts
# from the second-stage STT model (--from-stt: its listening half). The TTS and translation models are
# embedded in int8, the STT in float16 (the size budget holds the four models that way; MODELS.md). The
# dialogue model is the embedded translation model with low-rank adapters trained on dialogues
# (--init embedded:translation --lora-rank), embedded as its adapters alone (--lora-of translation).
# The STT has a third stage: fine-tuned again on new word-list data plus both speakers of the
# translation pairs and the dialogues (an stt run reads every channel of a two-channel dataset), then
# three times more on the same plus fresh translation pairs, dialogues and utterances (new speakers),
# and once more, half as long, on the newest of those datasets.
# Usage: train/make_models.sh [DATA_DIR] [RUNS_DIR]; CODEC_STEPS, DECODER_STEPS, STT_STEPS, STT2_STEPS,
# STT3_STEPS, STT4_STEPS, STT5_STEPS, STT6_STEPS, STT7_STEPS, TTS_STEPS, TTS2_STEPS, TRANSLATION_STEPS,
# DIALOGUE_STEPS, JOBS override.
set -euo pipefail
DATA=${1:-data}
RUNS=${2:-runs}
ANTIPHON=${ANTIPHON:-antiphon}
JOBS=${JOBS:-2}
CODEC_STEPS=${CODEC_STEPS:-24000}
DECODER_STEPS=${DECODER_STEPS:-12000}
STT_STEPS=${STT_STEPS:-12000}
TTS_STEPS=${TTS_STEPS:-8000}
STT2_STEPS=${STT2_STEPS:-8000}
TTS2_STEPS=${TTS2_STEPS:-5000}
TRANSLATION_STEPS=${TRANSLATION_STEPS:-11000}
STT3_STEPS=${STT3_STEPS:-20000}
STT4_STEPS=${STT4_STEPS:-20000}
STT5_STEPS=${STT5_STEPS:-20000}
STT6_STEPS=${STT6_STEPS:-20000}
STT7_STEPS=${STT7_STEPS:-10000}
DIALOGUE_STEPS=${DIALOGUE_STEPS:-5500}

dataset() {  # dataset NAME ARGS...: generate DATA/NAME unless it is complete
  local out="$DATA/$1"; shift
  [ -f "$out/manifest.json" ] && return
  rm -rf "$out"
  "$ANTIPHON" data generate --out "$out" --jobs "$JOBS" "$@"
}

dataset tts --kind tts --count 2000 --seed 0
dataset asr --kind asr --count 2000 --seed 0
dataset tts-eval --kind tts --count 150 --split eval --seed 0
dataset asr-eval --kind asr --count 150 --split eval --seed 0
dataset asr2 --kind asr --count 16000 --seed 20
dataset tts-slt2 --kind tts --backends flite/slt --count 3000 --seed 21
dataset asr3 --kind asr --count 16000 --seed 30 --word-lists 0.5
dataset asr4 --kind asr --count 16000 --seed 40 --word-lists 0.5
dataset asr5 --kind asr --count 16000 --seed 60 --word-lists 0.5
dataset asr6 --kind asr --count 16000 --seed 70 --word-lists 0.5
dataset tts-slt3 --kind tts --backends flite/slt --count 24000 --seed 31 --word-lists 0.25
dataset tts-slt-eval --kind tts --backends flite/slt --count 100 --split eval --seed 1
dataset translation2 --kind translation --count 8000 --seed 40
dataset translation3 --kind translation --count 8000 --seed 41
dataset translation4 --kind translation --count 8000 --seed 42
dataset translation5 --kind translation --count 8000 --seed 43
dataset translation6 --kind translation --count 8000 --seed 44
dataset translation-eval --kind translation --count 100 --split eval --seed 0
dataset dialogue2 --kind dialogue --count 6000 --seed 50
dataset dialogue3 --kind dialogue --count 6000 --seed 51
dataset dialogue4 --kind dialogue --count 6000 --seed 52
dataset dialogue-eval --kind dialogue --count 100 --split eval --seed 0

"$ANTIPHON" train codec "$DATA/tts" "$DATA/asr" --out "$RUNS/codec" --steps "$CODEC_STEPS" \
    --eval "$DATA/tts-eval" "$DATA/asr-eval" --eval-count 40
"$ANTIPHON" train codec "$DATA/tts" "$DATA/asr" "$DATA/asr2" "$DATA/tts-slt2" --out "$RUNS/codec-dec" \
    --init "$RUNS/codec/model" --trainable decoder --steps "$DECODER_STEPS" --lr 5e-4 \
    --eval "$DATA/tts-eval" "$DATA/asr-eval" "$DATA/tts-slt-eval" --eval-count 40
"$ANTIPHON" train lm --task stt "$DATA/asr2" --codec "$RUNS/codec/model" --out "$RUNS/stt" \
    --steps "$STT_STEPS" --text-dropout 0.5 --eval "$DATA/asr-eval" "$DATA/tts-eval" --eval-count 60
"$ANTIPHON" train lm --task stt "$DATA/asr2" "$DATA/asr3" --init "$RUNS/stt/model" --out "$RUNS/stt2" \
    --steps "$STT2_STEPS" --lr 1e-3 --text-dropout 0.5 --eval "$DATA/asr-eval" "$DATA/tts-eval" "$DATA/tts-slt-eval" \
    --eval-count 60
stt_more_speakers() {  # stt_more_speakers STAGE STEPS DATASET...: fine-tune the stage before it on them
    local stage=$1 steps=$2; shift 2
    "$ANTIPHON" train lm --task stt "${@/#/$DATA/}" --init "$RUNS/stt$((stage - 1))/model" --out "$RUNS/stt$stage" \
        --steps "$steps" --lr 1e-3 --text-dropout 0.5 --eval "$DATA/asr-eval" "$DATA/tts-eval" "$DATA/tts-slt-eval" \
        --eval-count 60
}
stt_more_speakers 3 "$STT3_STEPS" asr4 translation2 translation3 dialogue2
stt_more_speakers 4 "$STT4_STEPS" asr4 translation2 translation3 dialogue2 translation4 dialogue3
stt_more_speakers 5 "$STT5_STEPS" asr4 asr5 translation2 translation3 translation4 translation5 dialogue2 dialogue3
stt_more_speakers 6 "$STT6_STEPS" asr4 asr5 asr6 translation2 translation3 translation4 translation5 translation6 \
    dialogue2 dialogue3 dialogue4
stt_more_speakers 7 "$STT7_STEPS" asr4 asr5 asr6 translation4 translation5 translation6 dialogue4
"$ANTIPHON" train lm --task tts "$DATA/tts-slt2" --codec "$RUNS/codec/model" --out "$RUNS/tts" \
    --steps "$TTS_STEPS" --batch 8 --eval "$DATA/tts-slt-eval" --eval-count 30 --stt-model "$RUNS/stt2/model"
"$ANTIPHON" train lm --task tts "$DATA/tts-slt2" "$DATA/tts-slt3" --init "$RUNS/tts/model" --out "$RUNS/tts2" \
    --steps "$TTS2_STEPS" --batch 8 --lr 1e-3 --eval "$DATA/tts-slt-eval" --eval-count 30 --stt-model "$RUNS/stt2/model"
"$ANTIPHON" train lm --task translation "$DATA/translation2" "$DATA/translation3" --from-stt "$RUNS/stt2/model" \
    --out "$RUNS/translation" --steps "$TRANSLATION_STEPS" --seq-steps 72 --lr 1e-3 --text-dropout 0.3 \
    --eval "$DATA/translation-eval" --eval-count 50

"$ANTIPHON" train embed codec "$RUNS/codec-dec/model"
"$ANTIPHON" train embed stt "$RUNS/stt7/model"
"$ANTIPHON" train embed tts "$RUNS/tts2/model" --int8
"$ANTIPHON" train embed translation "$RUNS/translation/model" --int8
"$ANTIPHON" train lm --task dialogue "$DATA/dialogue2" --init embedded:translation --lora-rank 32 \
    --out "$RUNS/dialogue" --steps "$DIALOGUE_STEPS" --text-dropout 0.3 --eval "$DATA/dialogue-eval" --eval-count 50
"$ANTIPHON" train embed dialogue "$RUNS/dialogue/model" --lora-of translation
