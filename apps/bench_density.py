"""`antiphon bench serve --shape <model> --random-weights` (and `--density` at the tiny shape): serving
density without the network. One engine (streaming.engine.Engine, the task of the model's type: dialogue
for moshi-7b, transcription for stt-*, translation for hibiki-2b, speech for tts-1.6b) holds N live
sessions, each fed in process one 80 ms frame of the bench's speech-like audio per tick (TTS: words); the
bench times the tick against N and reports the most sessions held, the memory per session, a roofline
line, the codec alone, and the reference implementation on the same weights when asked.

Timed: `Engine.tick()` with N live slots (the scheduler's plan, codec encode, LM step, codec decode, the
events to the sessions), with torch.cuda.synchronize before and after on CUDA. The first --warmup ticks,
plus the ticks before every slot gives output (its join tick, the LM's delays, a TTS model's audio
delay), run untimed; then --seconds of ticks are timed. The LM runs in --dtype (default bfloat16; the
tiny shape on CPU: float32), built directly on the device in it (random weights: a 7B model never exists in
float32 on the host); the codec in float32, as the reference runs Mimi.

Definitions (also written into the JSON):
- held: tick p99 <= 80 ms. Sessions held: the largest N that held. Without --slots, N = 1, 2, 4, ... up
  to --max-slots until one does not hold (or runs out of memory), then bisection between the last that
  held and the first that did not; with --slots, exactly those.
- memory per session: on CUDA, the slope over the runs of the peak memory allocated above the model
  (torch.cuda.max_memory_allocated; activations and the codec's state included); everywhere, the bytes
  of the streaming state per session (LM rings, the depformer's cache, cross-attention keys and values,
  the codec's state).
- roofline (`tick_bytes`): the bytes a tick reads from memory: the LM's weights once (every matrix but
  the embedding tables, the conditioners and the cross-attention key/value projections, which run once
  per session), per session its embedding rows, its keys and values (every temporal layer at its length,
  at most the context; the cross-attention's), its codec state; the codec's weights once. Against the
  tick p50: bytes per second, and the fraction of the HBM bandwidth (H100 SXM 3.35e12 B/s, H200 4.8e12,
  from the device name, or --hbm-gbps; unknown on CPU). The slots' length is that of the median timed tick
  (all sessions start together; a longer --warmup measures deeper into the context); the bytes at the full
  context are written beside, not measured.
- codec alone: N streams batched in the codec's streaming mode, encode + decode of one 80 ms frame each
  per tick; x real time = N * 80 ms / tick p50.
- the reference (the `moshi` package, tests/reference/density_bench.py): LMGen + Mimi serving the same N
  as one batch (Mimi encode, LMGen.step, Mimi decode; STT: no decode), on the same weights and sampling,
  timed per tick the same way; it holds N when its p99 <= 80 ms. It runs after antiphon, in a child
  process, once antiphon's model is freed (both could not hold N sessions' state on one GPU at once).
  It needs the weights saved to disk first: for moshi-7b about 15 GB and minutes, and as long again for
  the child to load them; --no-reference skips it. The TTS model's reference loop is not wired.
"""

from __future__ import annotations

import gc
import logging
import tempfile
import time

import numpy as np
import torch

from antiphon.apps.bench_cmd import ReferenceRunner, device_sync, machine, write_json
from antiphon.apps.bench_serve import FRAME, SAMPLING, TICK_MS, bench_frames
from antiphon.apps.bench_serve import SHAPES as TINY_SHAPES
from antiphon.errors import InputError

logger = logging.getLogger(__name__)

QUALITY = ["very_bad", "bad", "neutral", "good", "very_good"]
CFG_VALUES = ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]
DEFAULT_MAX_SLOTS = 64

# The published models at their real sizes (random weights). Values from
# /work/shared/reference/kyutai-moshi-mimi.md: §2.1 (Moshi 7B: the LMConfig defaults) and the table of §2.9;
# kyutai-stt-tts-hibiki-unmute.md §1.1 (STT), §2.1-2.3 (TTS). Every shape keeps LMConfig's hidden_scale 4.125,
# gating, norm and RoPE (stt: the doc's gated hidden 5632). hibiki-2b is configs/moshi_dev_2b.json (the
# doc's table: "matches [UNVERIFIED identity]"); it builds 3.73 B parameters where the model card says 2.7 B,
# so the released depformer is likely smaller (shared or distilled step weights). tts-1.6b: the doc's
# third-party architecture, with the depformer's feed-forward 3072 and the conditioners' sizes of a mirror
# of its config.json; it matches the released weights file (3 683 719 712 B: bfloat16, conditioners float32).
SHAPES = {
    "moshi-7b": dict(),
    "stt-1b": dict(dim=2048, num_heads=16, num_layers=16, context=750, max_period=100000.0, text_card=8000, n_q=32,
                   dep_q=0, delays=(0,) * 33, extra_heads_num_heads=4, extra_heads_dim=6, model_type="stt",
                   stt_config={"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0},
                   lm_gen_config={"temp": 0.0, "temp_text": 0.0, "top_k": 250, "top_k_text": 50}),
    "stt-2.6b": dict(dim=2048, num_heads=32, num_layers=48, context=375, max_period=100000.0, text_card=4000, n_q=32,
                     dep_q=0, delays=(0,) * 33, model_type="stt",
                     stt_config={"audio_delay_seconds": 2.5, "audio_silence_prefix_seconds": 1.0},
                     lm_gen_config={"temp": 0.0, "temp_text": 0.0, "top_k": 250, "top_k_text": 50}),
    "hibiki-2b": dict(dim=2560, num_heads=20, num_layers=24, context=3000, max_period=100000.0, text_card=48000,
                      n_q=32, dep_q=16, delays=(0, 0) + (2,) * 15 + (0,) + (2,) * 15, model_type="hibiki",
                      conditioners={"description": {"type": "lut", "lut": {"n_bins": 31, "dim": 16, "tokenizer": "noop",
                                                                            "possible_values": QUALITY}}},
                      fuser={"sum": ["description"]}),
    "tts-1.6b": dict(dim=2048, num_heads=16, num_layers=16, context=500, text_card=8000, n_q=32, dep_q=32,
                     delays=(0, 0) + (2,) * 31, depformer_num_layers=4, depformer_dim_feedforward=3072,
                     depformer_low_rank_embeddings=128,
                     depformer_weights_per_step_schedule=tuple(range(8)) + (8,) * 8 + (9,) * 8 + (10,) * 8,
                     demux_second_stream=True, cross_attention=True, model_type="tts",
                     tts_config={"audio_delay": 1.28, "second_stream_ahead": 2},
                     lm_gen_config={"temp": 0.6, "temp_text": 0.6, "top_k": 250, "top_k_text": 50},
                     conditioners={"speaker_wavs": {"type": "tensor", "tensor": {"dim": 512}},
                                   "cfg": {"type": "lut", "lut": {"n_bins": 7, "dim": 16, "tokenizer": "noop",
                                                                  "possible_values": CFG_VALUES}},
                                   "control": {"type": "lut", "lut": {"n_bins": 1, "dim": 2048, "tokenizer": "noop",
                                                                      "possible_values": ["ok"]}}},
                     fuser={"cross_attention_pos_emb": True, "cross_attention_pos_emb_scale": 1.0,
                            "sum": ["control", "cfg"], "cross": ["speaker_wavs"]}),
}
# Peak HBM bandwidth (bytes/s) by GPU name, the most specific name first.
HBM_BYTES_PER_S = (("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VOICE_FRAMES = 125  # a TTS session's voice: 10 s of speaker embedding at 12.5 Hz (reference: tts-voices)


def add_options(parser) -> None:
    """The density mode's options, on `antiphon bench serve`."""
    parser.add_argument("--density", action="store_true",
                        help="no network: time the engine's tick against N sessions fed in process (always so "
                             "for the real model shapes)")
    parser.add_argument("--random-weights", action="store_true",
                        help="random weights at the real model size (needed by the real shapes: no checkpoints here)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="density: the LM's dtype (default bfloat16; the tiny shape on CPU: float32; the codec "
                             "stays float32)")
    parser.add_argument("--quantize", choices=("int8", "int4"), default=None,
                        help="density: weight-only quantization of the temporal transformer (lm/quantize.py; the "
                             "reference keeps the unquantized weights)")
    parser.add_argument("--kv-dtype", choices=("bfloat16", "int8"), default=None,
                        help="density: how the attention cache stores keys and values (default: the LM's dtype)")
    parser.add_argument("--hbm-gbps", type=float, default=None, metavar="GB/S",
                        help="density: the memory bandwidth for the roofline (default: from the GPU's name)")


# ---------------------------------------------------------------------------------------- models
def shape_config(name: str):
    from antiphon.lm import LMConfig

    return LMConfig(**{**TINY_SHAPES, **SHAPES}[name])


def random_lm(config, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """LM(config) with random weights, allocated once, on `device` in `dtype` (its conditioners in float32,
    as loaded checkpoints keep them): N(0, 0.02) matrices and tables, norms and scales 1, biases 0."""
    from antiphon.lm import LM

    with torch.device("meta"):
        lm = LM(config).to(dtype=dtype)
    if lm.is_conditioned:
        lm.condition_provider.float()
    lm = lm.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if p.dim() >= 2 and not name.endswith("alpha"):
                p.normal_(0.0, 0.02, generator=generator)
            else:
                p.fill_(0.0 if name.endswith("bias") else 1.0)
    return lm.eval()


def build_models(args, device: torch.device, dtype: torch.dtype):
    """(lm, codec): the random LM of `args.shape` built on the device in its dtype, and the full-size random
    codec (float32) giving the codebooks it reads and writes. (The tests replace this with tiny pairs.)"""
    from antiphon.codec import Codec

    config = shape_config(args.shape)
    lm = random_lm(config, device, dtype)
    torch.manual_seed(0)
    return lm, Codec(num_codebooks=config.codec_num_codebooks).to(device)


def sampling_for(config) -> dict:
    """The sampling both sides use: the model's lm_gen_config over the serve bench's."""
    return {**SAMPLING, **{k: v for k, v in config.lm_gen_config.items() if k in SAMPLING}}


class BenchTokenizer:
    """The TTS sessions' stand-in text tokenizer: a token per letter, ids 4 .. text_card - 1."""

    def __init__(self, text_card: int):
        self.text_card = text_card

    def encode(self, word: str) -> list[int]:
        return [4 + ord(c) % (self.text_card - 4) for c in word]


def task_options(lm, task: str) -> dict:
    """The engine's options for the model's task: sampling and a seeded generator; TTS adds the
    tokenizer and, for a model that speaks in a given voice, a random one."""
    options = {**sampling_for(lm.config), "rng": torch.Generator(lm.device).manual_seed(0)}
    if task == "tts":
        options["tokenizer"] = BenchTokenizer(lm.config.text_card)
        if lm.is_conditioned and "speaker_wavs" in lm.condition_provider.fused:
            dim = lm.condition_provider.conditioners["speaker_wavs"].spec.dim
            options["voice"] = torch.randn(1, dim, VOICE_FRAMES, generator=torch.Generator().manual_seed(0))
    return options


def untimed_ticks(config, warmup: int) -> int:
    """`warmup` plus the ticks before every slot gives output: its join tick, the LM's delays, a TTS
    model's audio delay."""
    audio_delay = round(config.tts_config.get("audio_delay", 0.0) * 1000 / TICK_MS)
    return warmup + 2 + max(config.delays) + audio_delay


# ---------------------------------------------------------------------------------------- the roofline
def weights_read(lm) -> int:
    """Bytes of the weights a tick reads once whatever the sessions: all but the embedding tables (read by
    row), the conditioners and the cross-attention key/value projections (applied once per session);
    quantized weights (lm/quantize.py) at their stored size, scales included."""
    from antiphon.lm.layers import Embedding
    from antiphon.quantize import QuantizedWeight
    from antiphon.lm.transformer import CrossAttention

    tables = {id(m.weight) for m in lm.modules() if isinstance(m, Embedding)}
    total = sum(p.nbytes for name, p in lm.named_parameters()
                if id(p) not in tables and not name.startswith("condition_provider."))
    total += sum(b.nbytes for m in lm.modules() if isinstance(m, QuantizedWeight) for b in m.buffers())
    cross = sum(m.in_proj_weight[m.in_proj_weight.shape[1]:].nbytes for m in lm.modules() if isinstance(m, CrossAttention))
    return total - cross


def kv_value_bytes(config, kv_dtype: str | None, itemsize: int) -> float:
    """Bytes per stored key (or value) element: the model's itemsize, bfloat16's 2, or int8's 1 plus its
    float32 scale shared by a head's vector (antiphon/kv_ring.py)."""
    return {None: itemsize, "bfloat16": 2, "int8": 1 + 4 / (config.dim // config.num_heads)}[kv_dtype]


def tick_bytes(config, weights: int, itemsize: int, slots: int, length: int, cross_positions: int = 0,
               codec_weights: int = 0, codec_state: int = 0, kv_itemsize: float | None = None) -> dict:
    """Bytes one tick reads (module docstring): `weights` bytes (`weights_read`) once; per slot its
    embedding rows (the text row, two with the demuxed second stream, and one per input stream; in the
    depformer one per step, of the low rank when set), its keys and values (2 x every temporal layer x KV
    heads x head dim x min(length, context) in `kv_itemsize` bytes each (default `itemsize`), and 2 x
    layers x dim x `cross_positions`) and `codec_state` bytes; `codec_weights` bytes once. The other LM
    values in `itemsize` bytes."""
    kv_heads, head_dim = config.num_heads // config.kv_repeat, config.dim // config.num_heads
    steps = min(length, config.context or length)
    ring = 2 * config.num_layers * kv_heads * head_dim * steps * (itemsize if kv_itemsize is None else kv_itemsize)
    cross = 2 * config.num_layers * config.dim * cross_positions * itemsize
    text_rows = 2 if config.demux_second_stream else 1
    rows = (text_rows + config.n_q) * config.dim
    if config.dep_q:
        rows += (text_rows + config.dep_q - 1) * (config.depformer_low_rank_embeddings or config.depformer_dim)
    parts = {"lm_weights": weights, "embedding_rows": slots * rows * itemsize, "kv": round(slots * (ring + cross)),
             "codec_weights": codec_weights, "codec_state": slots * codec_state}
    return {**parts, "total": sum(parts.values())}


def hbm_bandwidth(device: torch.device, gbps: float | None) -> tuple[float | None, str]:
    """(bytes/s or None, where from): --hbm-gbps, else the GPU's name, else unknown."""
    if gbps:
        return gbps * 1e9, "--hbm-gbps"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, bandwidth in HBM_BYTES_PER_S:
            if key in name:
                return bandwidth, name
        return None, f"{name}: unknown bandwidth (give --hbm-gbps)"
    return None, "unknown on CPU (give --hbm-gbps)"


def roofline(parts: dict, p50_ms: float, bandwidth: float | None) -> dict:
    achieved = parts["total"] / (p50_ms / 1000)
    return {"bytes_per_tick": parts, "achieved_bytes_per_s": round(achieved),
            "fraction_of_hbm": None if bandwidth is None else round(achieved / bandwidth, 6)}


def codec_bytes(codec) -> int:
    """The codec's weights and buffers (codebooks included), in bytes."""
    return sum(t.nbytes for t in [*codec.parameters(), *codec.buffers()])


# ---------------------------------------------------------------------------------------- one run
def engine_state_bytes(engine) -> tuple[int, int]:
    """(LM, codec) streaming state of all the engine's slots, in bytes: the LM's rings, the depformer's
    cache and the cross-attention keys and values; the codec's layers."""
    from antiphon.apps.serve_cmd import state_bytes
    from antiphon.stateful import stateful_modules

    generator = engine.task.runner.generator
    lm = sum(state_bytes(s) for s in generator.states.values())
    lm += sum(t.nbytes for t in generator.depth_cache or ())
    lm += sum(k.nbytes + v.nbytes for k, v in generator.cross or ())
    return lm, sum(state_bytes(m.state) for m in stateful_modules(engine.codec))


def _ms(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"count": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "max_ms": round(float(ms.max()), 3),
            "mean_ms": round(float(ms.mean()), 3), "overruns": int((ms > TICK_MS).sum())}


def _out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or isinstance(error.__cause__, torch.OutOfMemoryError)


def _fresh_peak(device: torch.device) -> int | None:
    """Free what the last run left and restart the peak count: the memory allocated now (CUDA only)."""
    gc.collect()
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _feed(engine, task: str, sessions: int, audio: np.ndarray, tick: int) -> None:
    """Every session's input for one tick: a frame of audio, or (TTS) a word, four on the first tick."""
    from antiphon.streaming.frames import InputFrame, TextIn

    for session in range(sessions):
        if task == "tts":
            engine.submit(TextIn(session, "one more word to say" if tick == 0 else f"word{tick}"))
        else:
            engine.submit(InputFrame(session, audio[tick]))


def density_run(lm, codec, slots: int, ticks: int, untimed: int, options: dict) -> dict:
    """One engine of `slots` live sessions: `untimed` ticks, then `ticks` timed ones (module docstring).
    Out of memory gives {"slots", "held": False, "out_of_memory": True}."""
    from antiphon.streaming.engine import Engine
    from antiphon.streaming.tasks import task_of

    device, task = lm.device, task_of(lm)
    sync = device_sync(device)
    audio = bench_frames(untimed + ticks)
    base = _fresh_peak(device)
    engine = None
    try:
        engine = Engine(lm, codec, slots, task=task, **options)
        for session in range(slots):
            engine.admit(session, lambda event: None)
        seconds = []
        for tick in range(untimed + ticks):
            _feed(engine, task, slots, audio, tick)
            sync()
            start = time.perf_counter()
            engine.tick()
            sync()
            if tick >= untimed:
                seconds.append(time.perf_counter() - start)
        lm_state, codec_state = engine_state_bytes(engine)
        cross = engine.task.runner.generator.cross
        frames_out = engine.frames_out
    except Exception as e:
        if not _out_of_memory(e):
            raise
        return {"slots": slots, "held": False, "out_of_memory": True}
    finally:
        if engine is not None:
            engine.close()
    row = {"slots": slots, "ticks": _ms(seconds), "frames_out": frames_out,
           "slot_length": {"first": untimed + 1, "last": untimed + ticks, "median_tick": untimed + (ticks + 1) // 2},
           "state_bytes_per_session": (lm_state + codec_state) // slots, "codec_state_bytes_per_session": codec_state // slots,
           "cross_positions": cross[0][0].shape[2] if cross else 0}
    row["held"] = row["ticks"]["p99_ms"] <= TICK_MS
    if base is not None:
        row["peak_bytes_above_model"] = torch.cuda.max_memory_allocated(device) - base
    return row


def codec_run(codec, slots: int, ticks: int, warmup: int) -> dict:
    """The codec alone: `slots` streams, one 80 ms frame each encoded then decoded per tick."""
    from antiphon.apps.bench_codec import bench_audio, time_frames

    device = next(codec.parameters()).device
    _fresh_peak(device)
    wav = bench_audio(slots, warmup + ticks, FRAME).to(device)
    try:
        with codec.streaming(slots):
            seconds, _ = time_frames(codec.encode, codec.decode, wav, FRAME, warmup, device_sync(device))
    except torch.OutOfMemoryError:
        return {"slots": slots, "out_of_memory": True}
    row = {"slots": slots, "ticks": _ms(seconds)}
    row["x_real_time"] = round(slots * TICK_MS / row["ticks"]["p50_ms"], 2)
    return row


def sweep(run_one, counts: list[int], search: bool) -> list[dict]:
    """run_one(N) -> row for each N of `counts`; with `search`, stop at the first that does not hold, then
    bisect between the largest N that held and it."""
    rows = {}
    for n in counts:
        rows[n] = run_one(n)
        if search and not rows[n]["held"]:
            break
    if search:
        low = max((n for n, r in rows.items() if r["held"]), default=0)
        high = min((n for n, r in rows.items() if not r["held"]), default=None)
        while high is not None and high - low > 1:
            mid = (low + high) // 2
            rows[mid] = run_one(mid)
            low, high = (mid, high) if rows[mid]["held"] else (low, mid)
    return [rows[n] for n in sorted(rows)]


def slot_counts(args) -> tuple[list[int], bool]:
    """(session counts, whether to search): --slots as given, else 1, 2, 4, ... up to --max-slots."""
    if args.slots:
        counts = sorted({int(x) for x in args.slots.split(",") if x.strip()})
        if not counts or counts[0] < 1:
            raise InputError(f"--slots: positive session counts, e.g. 1,8,16; got {args.slots!r}")
        return counts, False
    top = args.max_slots or DEFAULT_MAX_SLOTS
    return [2 ** k for k in range(top.bit_length()) if 2 ** k <= top], True


# ---------------------------------------------------------------------------------------- the reference
def save_for_reference(lm, codec, task: str, directory: str) -> list[str] | str:
    """The reference's model arguments, its weights saved in `directory` (or why there is no reference)."""
    if task == "tts":
        return "the reference's TTS loop (moshi.models.tts, its padding machine per session) is not wired"
    weights = codec.save_pretrained(directory)
    lm.save_pretrained(directory)
    return ["--checkpoint", directory, "--weights", str(weights), "--dtype", str(lm.dtype).removeprefix("torch.")]


def run_reference(reference, counts: list[int], search: bool) -> list[dict]:
    """The reference's rows: one `session` per N of `counts` (its --slots, in order), stopping, with
    `search`, at the first that does not hold; closes the runner."""
    rows = []
    try:
        for n in counts:
            reply = reference.session()
            if reply.get("error"):
                row = {"slots": n, "held": False, "out_of_memory": True}
            else:
                row = {"slots": n, "ticks": _ms(reply["seconds"])}
                row["held"] = row["ticks"]["p99_ms"] <= TICK_MS
            rows.append(row)
            if search and not row["held"]:
                break
    finally:
        reference.close()
    return rows


# ---------------------------------------------------------------------------------------- the command
def run_dtype(args, device: torch.device) -> torch.dtype:
    """--dtype, else bfloat16 for the real shapes (as served, and a 7B model in float32 would not fit most
    hosts), the device's default (lm.checkpoint) for the tiny one."""
    from antiphon.lm.checkpoint import default_dtype

    if args.dtype:
        return DTYPES[args.dtype]
    return torch.bfloat16 if args.shape in SHAPES else default_dtype(device)


def run(args) -> int:
    from antiphon.streaming.tasks import task_of

    if args.shape in SHAPES and not args.random_weights:
        raise InputError(f"--shape {args.shape}: there is no checkpoint of it here; pass --random-weights to bench "
                         "it with random weights at its real size")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.shape in SHAPES and device.type == "cpu" and torch.cuda.is_available():
        logger.warning("--shape %s on the CPU: pass --device cuda for the GPU's figures", args.shape)
    dtype = run_dtype(args, device)
    counts, search = slot_counts(args)
    ticks = max(1, round(args.seconds * 1000 / TICK_MS))
    lm, codec = build_models(args, device, dtype)
    config, task = lm.config, task_of(lm)
    with tempfile.TemporaryDirectory() as tmp:
        # the reference's weights are saved before quantizing: it serves the model as published
        saved = "--no-reference" if args.no_reference else save_for_reference(lm, codec, task, tmp)
        _fresh_peak(device)
        if args.quantize:
            from antiphon.lm.quantize import quantize_lm

            quantize_lm(lm, args.quantize)
        lm.transformer.kv_dtype = args.kv_dtype
        result = _bench(args, lm, codec, task, counts, search, ticks, device)
        if isinstance(saved, list):
            ran = [r["slots"] for r in result["runs"]]
            del lm, codec
            _fresh_peak(device)  # the reference gets the device to itself
            reference = ReferenceRunner.start("density_bench.py", [
                *saved, "--slots", ",".join(map(str, ran)), "--ticks", str(ticks),
                "--warmup", str(untimed_ticks(config, args.warmup)), "--device", args.device,
                "--threads", str(torch.get_num_threads())])
            result["reference"] = ({"skipped": reference} if isinstance(reference, str) else
                                   _reference_result(reference, run_reference(reference, ran, search), result["runs"]))
        elif saved != "--no-reference":
            result["reference"] = {"skipped": saved}
    print_result(result)
    write_json(result, args.json, "serve-density")
    return 0


def _bench(args, lm, codec, task: str, counts: list[int], search: bool, ticks: int, device: torch.device) -> dict:
    """antiphon's runs, codec alone included, as the result's dict (without the reference)."""
    config = lm.config
    untimed = untimed_ticks(config, args.warmup)
    options = task_options(lm, task)
    bandwidth, bandwidth_source = hbm_bandwidth(device, args.hbm_gbps)
    weights, codec_weights = weights_read(lm), codec_bytes(codec)
    kv_itemsize = kv_value_bytes(config, args.kv_dtype, lm.dtype.itemsize)
    settings = _settings(args, lm, codec, task, weights, ticks, untimed, bandwidth, bandwidth_source)

    def one(n: int) -> dict:
        row = density_run(lm, codec, n, ticks, untimed, options)
        if "ticks" in row:
            def parts(length: int) -> dict:
                return tick_bytes(config, weights, lm.dtype.itemsize, n, length, row["cross_positions"],
                                  codec_weights, row["codec_state_bytes_per_session"], kv_itemsize)

            row["roofline"] = roofline(parts(row["slot_length"]["median_tick"]), row["ticks"]["p50_ms"], bandwidth)
            row["roofline"]["bytes_per_tick_at_full_context"] = parts(config.context or 0)["total"]
        return row

    runs = sweep(one, counts, search)
    return {
        "benchmark": "serve density: N live sessions in one engine, fed in process (no network), 80 ms tick",
        "machine": machine(device), "settings": settings, "runs": runs,
        "sessions_held": max((r["slots"] for r in runs if r["held"]), default=0),
        "memory_per_session": memory_per_session(runs, device),
        "codec_alone": codec_alone(codec, runs, ticks, args.warmup, codec_weights, bandwidth),
    }


def _settings(args, lm, codec, task: str, weights: int, ticks: int, untimed: int, bandwidth: float | None,
              bandwidth_source: str) -> dict:
    return {
        "shape": args.shape, "task": task, "parameters": sum(p.numel() for p in lm.parameters()),
        "weight_bytes_read_per_tick": weights, "dtype": str(lm.dtype).removeprefix("torch."),
        "quantize": args.quantize, "kv_dtype": args.kv_dtype,
        "codec_parameters": sum(p.numel() for p in codec.parameters()), "codec_num_codebooks": codec.num_codebooks,
        "codec_dtype": "float32", "device": str(lm.device), "timed_ticks": ticks, "untimed_ticks": untimed,
        "tick_ms": TICK_MS, "sampling": sampling_for(lm.config), "hbm_bytes_per_s": bandwidth,
        "hbm_source": bandwidth_source,
        "definitions": {
            "tick": "Engine.tick() with N live sessions, each fed one 80 ms frame (TTS: a word) before it; cuda "
                    "synchronized before and after; untimed ticks first",
            "held": "tick p99 <= 80 ms",
            "memory_per_session": "CUDA: slope over the runs of peak memory allocated above the model; state: the "
                                  "streaming state bytes per session (LM rings, depformer cache, cross keys/values, codec)",
            "roofline": "bytes per tick (LM weights once, per session embedding rows + keys and values at the median "
                        "timed tick's length, at most the context + codec state, codec weights once) / tick p50",
            "codec_alone": "N streams batched, encode + decode of one frame each per tick; x real time = N * 80 ms / p50",
        },
    }


def codec_alone(codec, runs: list[dict], ticks: int, warmup: int, codec_weights: int, bandwidth: float | None) -> list[dict]:
    """The codec alone at each N the engine ran (`codec_run`), with its roofline line: its weights once and
    the sessions' codec state."""
    rows = []
    for r in runs:
        if "ticks" not in r:
            continue
        row = codec_run(codec, r["slots"], ticks, warmup)
        if "ticks" in row:
            parts = {"codec_weights": codec_weights, "codec_state": r["slots"] * r["codec_state_bytes_per_session"]}
            row["roofline"] = roofline({**parts, "total": sum(parts.values())}, row["ticks"]["p50_ms"], bandwidth)
        rows.append(row)
    return rows


def memory_per_session(runs: list[dict], device: torch.device) -> dict:
    done = [r for r in runs if "ticks" in r]
    if not done:
        return {}
    out = {"state_bytes": done[-1]["state_bytes_per_session"]}
    if device.type == "cuda":
        slots = [r["slots"] for r in done]
        peaks = [r["peak_bytes_above_model"] for r in done]
        slope = np.polyfit(slots, peaks, 1)[0] if len(set(slots)) > 1 else peaks[0] / slots[0]
        out["cuda_bytes"] = int(slope)
    return out


def _reference_result(reference, rows: list[dict], ours: list[dict]) -> dict:
    p50 = {r["slots"]: r["ticks"]["p50_ms"] for r in ours if "ticks" in r}
    ratios = {str(r["slots"]): round(r["ticks"]["p50_ms"] / p50[r["slots"]], 2)
              for r in rows if "ticks" in r and r["slots"] in p50}
    return {"implementation": reference.implementation, "runs": rows,
            "sessions_held": max((r["slots"] for r in rows if r["held"]), default=0),
            "tick_p50_ratio_reference_over_antiphon": ratios}


# ---------------------------------------------------------------------------------------- printing
def _gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def print_result(result: dict) -> None:
    s = result["settings"]
    print(f"serve density: {s['shape']} ({s['parameters'] / 1e6:.1f} M parameters, {s['dtype']}), {s['task']} task, "
          f"+ codec ({s['codec_parameters'] / 1e6:.1f} M, {s['codec_num_codebooks']} codebooks, float32), "
          f"{result['machine'].get('gpu', s['device'])}; {s['timed_ticks']} timed ticks after {s['untimed_ticks']} untimed")
    fraction = s["hbm_bytes_per_s"] is not None
    print(f"  {'sessions':>8s} {'tick p50':>9s} {'tick p99':>9s} {'held':>5s} {'state MiB':>10s} {'GB/tick':>8s} "
          f"{'GB/s':>7s}{'  of HBM' if fraction else ''}")
    for r in result["runs"]:
        if "ticks" not in r:
            print(f"  {r['slots']:8d}  out of memory")
            continue
        t, line = r["ticks"], r["roofline"]
        print(f"  {r['slots']:8d} {t['p50_ms']:9.2f} {t['p99_ms']:9.2f} {'yes' if r['held'] else 'no':>5s} "
              f"{r['state_bytes_per_session'] / 2**20:10.1f} {_gb(line['bytes_per_tick']['total']):>8s} "
              f"{line['achieved_bytes_per_s'] / 1e9:7.1f}"
              + (f" {100 * line['fraction_of_hbm']:7.1f}%" if fraction else ""))
    ref = result.get("reference", {})
    print(f"  sessions held (tick p99 <= 80 ms): antiphon {result['sessions_held']}"
          + (f", reference {ref['sessions_held']}" if "sessions_held" in ref else ""))
    memory = result["memory_per_session"]
    if memory:
        print(f"  memory per session: streaming state {memory['state_bytes'] / 2**20:.1f} MiB"
              + (f"; CUDA peak allocated {memory['cuda_bytes'] / 2**20:.1f} MiB (slope over the runs)"
                 if "cuda_bytes" in memory else ""))
    done = [r for r in result["runs"] if "ticks" in r]
    if done:
        last = done[-1]
        parts = last["roofline"]["bytes_per_tick"]
        print(f"  roofline at {last['slots']} sessions (length {last['slot_length']['median_tick']}): "
              f"{_gb(parts['total'])} GB per tick = LM weights {_gb(parts['lm_weights'])} + keys and values "
              f"{_gb(parts['kv'])} + embedding rows {_gb(parts['embedding_rows'])} + codec {_gb(parts['codec_weights'])} "
              f"+ codec state {_gb(parts['codec_state'])}, in {last['ticks']['p50_ms']:.2f} ms: "
              f"{last['roofline']['achieved_bytes_per_s'] / 1e9:.1f} GB/s; HBM "
              + (f"{s['hbm_bytes_per_s'] / 1e9:.0f} GB/s ({s['hbm_source']})" if fraction else s["hbm_source"]))
    print(f"  codec alone: {'sessions':>8s} {'tick p50':>9s} {'tick p99':>9s} {'x real time':>12s}")
    for r in result["codec_alone"]:
        if "ticks" not in r:
            print(f"               {r['slots']:8d}  out of memory")
            continue
        print(f"               {r['slots']:8d} {r['ticks']['p50_ms']:9.2f} {r['ticks']['p99_ms']:9.2f} {r['x_real_time']:12.2f}")
    if "runs" in ref:
        print(f"  reference ({ref['implementation']}): {'sessions':>8s} {'tick p50':>9s} {'tick p99':>9s} {'held':>5s} "
              f"{'its p50 / ours':>15s}")
        for r in ref["runs"]:
            if "ticks" not in r:
                print(f"  {'':>24s} {r['slots']:8d}  out of memory")
                continue
            ratio = ref["tick_p50_ratio_reference_over_antiphon"].get(str(r["slots"]), float("nan"))
            print(f"  {'':>24s} {r['slots']:8d} {r['ticks']['p50_ms']:9.2f} {r['ticks']['p99_ms']:9.2f} "
                  f"{'yes' if r['held'] else 'no':>5s} {ratio:15.2f}")
    elif "skipped" in ref:
        print(f"  reference: {ref['skipped']}")
