"""`antiphon serve`: the engine and the WebSocket server for the model's task (streaming.server).

The model (LM.from_pretrained) brings its codec (`lm.codec`) and, when its repository has one, its text
tokenizer; without one, text goes out as token ids (" 17"). Its config's model_type picks the task and the
routes: dialogue (/api/chat), translation (/api/chat, /api/translate), stt (/api/asr-streaming), tts
(/api/tts_streaming). The engine warms up, then ticks every 80 ms on its own thread; the server runs on the
asyncio loop until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading

from antiphon.apps.devices import parse_device
from antiphon.apps.help import Formatter

from antiphon.errors import CheckpointError, InputError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "embedded:stt"
CPU_SLOTS = 4
MAX_AUTO_SLOTS = 64
MEMORY_USE = 0.8  # the share of the GPU's free memory the slots may take
ACTIVATION_FACTOR = 1.5  # a slot's working memory beyond its streaming state (activations, codec), as a multiple


def register(subparsers, common: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve", parents=common, formatter_class=Formatter, help="serve a model over WebSocket",
        description="Serve a model over WebSocket, with the routes of its task (from its config): dialogue "
                    "(Moshi) on /api/chat; translation (Hibiki) on /api/chat and /api/translate (Control endTurn "
                    "ends the source); speech to text (Kyutai STT) on /api/asr-streaming (also POST an audio file); "
                    "text to speech (Kyutai TTS) on /api/tts_streaming (also POST {\"text\", \"voice\"}). "
                    "Always: /api/health, /api/modules_info, /metrics. One engine steps every session together, "
                    "one 80 ms tick at a time.",
        epilog="examples:\n"
               "  antiphon serve                                     # the embedded STT model on 127.0.0.1:8998\n"
               "  antiphon serve --model embedded:tts                # the embedded TTS model\n"
               "  antiphon serve --model embedded:dialogue           # the embedded dialogue model: antiphon talk\n"
               "  antiphon serve --model kyutai/moshiko-pytorch-bf16 # Moshi, slots sized to the GPU\n"
               "  antiphon serve --model path/to/model --slots 8\n"
               "  antiphon serve --host 0.0.0.0 --api-key SECRET     # other hosts: a key is required\n\n"
               "Clients present a key with the header kyutai-api-key or the query ?auth_id=. Keys are required "
               "when the server listens beyond loopback (the key 'public_token' unless --api-key is given), "
               "or whenever --api-key is given.")
    p.add_argument("--model", metavar="SOURCE", default=DEFAULT_MODEL,
                   help=f"LM: Hugging Face repo id or local directory (default: {DEFAULT_MODEL})")
    p.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--quantize", choices=("int8", "int4"), default=None,
                   help="weight-only quantization of the LM's temporal transformer at load (GPU memory and speed; "
                        "changes the numbers slightly; default: none)")
    p.add_argument("--codec-quantize", choices=("int8",), default=None,
                   help="int8 weights for the codec's latent-rate layers (Codec.quantize: a CPU streams a frame "
                        "~20%% faster at batch 1; codes may differ from the float codec's on near-ties; default: none)")
    p.add_argument("--kv-dtype", choices=("bfloat16", "int8"), default=None,
                   help="how the attention cache stores keys and values: bfloat16, or int8 with a scale per key "
                        "(about half / a quarter of float32's memory per slot; default: the model's dtype)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8998, help="port, 0 for any free one (default: 8998)")
    p.add_argument("--slots", type=int, default=None,
                   help="sessions served at once (default: on a GPU, as many as its free memory holds, at most "
                        f"{MAX_AUTO_SLOTS}; on CPU, {CPU_SLOTS})")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY", help="an accepted API key (repeatable)")
    p.add_argument("--tick-ms", type=float, default=80.0, help="milliseconds between engine ticks (default: 80)")
    p.add_argument("--seed", type=int, default=42424242, help="sampling seed (default: 42424242, as moshi's server)")
    p.add_argument("--idle-timeout", type=float, default=30.0, metavar="S",
                   help="close a session whose client sends nothing for S seconds while its input is open (default: 30)")
    p.add_argument("--queue", type=int, default=0, metavar="N",
                   help="sessions that may wait for a slot when all are busy, first come first served (default: 0, "
                        "refuse at once with 'no free channels')")
    p.add_argument("--queue-timeout", type=float, default=30.0, metavar="S",
                   help="seconds a queued session waits for a slot before it is refused (default: 30)")
    p.add_argument("--voice", metavar="FILE", help="TTS: the default voice (a speaker-embedding .safetensors file)")
    p.add_argument("--voices", metavar="DIR", help="TTS: a directory of voice files that clients name with ?voice=")
    p.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import torch
    from antiphon.lm import LM
    from antiphon.streaming.auth import DEFAULT_KEYS, auth_required_by_default

    if args.slots is not None and args.slots < 1:
        raise InputError(f"--slots must be at least 1, got {args.slots}")
    if not 0 < args.tick_ms <= 1000:
        raise InputError(f"--tick-ms must be in (0, 1000], got {args.tick_ms}")
    device = parse_device(args.device)
    lm = LM.from_pretrained(args.model, device=device, quantize=args.quantize, kv_dtype=args.kv_dtype)
    try:
        tokenizer = lm.tokenizer
    except CheckpointError as e:
        logger.warning("no text tokenizer (%s): text goes out as token ids", e)
        tokenizer = None
    required = bool(args.api_key) or auth_required_by_default(args.host)
    keys = args.api_key or sorted(DEFAULT_KEYS)
    if required and not args.api_key:
        logger.warning("listening beyond loopback without --api-key: clients must send the key %r", keys[0])
    rng = torch.Generator(device=lm.device).manual_seed(args.seed)
    options = {}
    if args.voice is not None:
        options["voice"] = args.voice
    if args.idle_timeout <= 0:
        raise InputError(f"--idle-timeout must be positive, got {args.idle_timeout}")
    if args.queue < 0 or args.queue_timeout <= 0:
        raise InputError(f"--queue must be >= 0 and --queue-timeout positive, got {args.queue} and {args.queue_timeout}")
    codec = lm.codec  # loaded before the slots are sized from the free memory
    if args.codec_quantize:
        codec.quantize(args.codec_quantize)
    slots = args.slots or default_slots(lm, codec)
    server = build_server(lm, codec, slots, tokenizer=tokenizer, api_keys=keys, auth_required=required,
                          interval=args.tick_ms / 1000, rng=rng, voices=args.voices, idle_timeout=args.idle_timeout,
                          queue_size=args.queue, queue_timeout=args.queue_timeout, **options)
    server.engine.warmup()
    try:
        run_beside_engine(server.engine, _serve_forever(server, args.host, args.port))
    finally:
        server.engine.close()
    return 0


def run_beside_engine(engine, network):
    """Run the coroutine `network` on an asyncio loop in a thread of its own while the engine ticks on
    this one (Engine.run: the tick stays on the thread that warmed the model up); the engine stops when
    the coroutine ends. Returns its result, or raises its exception."""
    outcome: dict = {}

    def serve() -> None:
        try:
            outcome["result"] = asyncio.run(network)
        except BaseException as e:  # handed to the engine's thread below
            outcome["error"] = e
        finally:
            engine.stop()

    thread = threading.Thread(target=serve, name="antiphon-network", daemon=True)
    thread.start()
    engine.run()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def state_bytes(state) -> int:
    """Bytes of the tensors of one module's streaming state (a dict or an object of tensors)."""
    import torch

    tensors = state.values() if isinstance(state, dict) else vars(state).values()
    return sum(t.nbytes for t in tensors if isinstance(t, torch.Tensor))


def slot_bytes(lm, codec=None) -> int:
    """Bytes of one slot's streaming state: the LM's (the KV rings of every stateful layer, CFG rows
    included, in the ring's storage dtype; the depformer's cache) and, given the codec, its state (the
    convolutions' histories, its transformers' rings)."""
    from antiphon.lm.generate import LMGenerator
    from antiphon.stateful import start_streaming, stateful_modules, stop_streaming

    generator = LMGenerator(lm, 1)
    total = sum(state_bytes(state) for state in generator.states.values())
    total += sum(t.nbytes for t in generator.depth_cache or ())
    if codec is not None:
        start_streaming(codec, 1)
        try:
            total += sum(state_bytes(m.state) for m in stateful_modules(codec))
        finally:
            stop_streaming(codec)
    return total


def default_slots(lm, codec=None) -> int:
    """On a GPU: as many slots as MEMORY_USE of its free memory holds (the weights already loaded), each
    costing its streaming state (`slot_bytes`) times ACTIVATION_FACTOR, between 1 and MAX_AUTO_SLOTS. On
    CPU: CPU_SLOTS (compute, not memory, is the limit)."""
    import torch

    if lm.device.type != "cuda":
        return CPU_SLOTS
    free, _ = torch.cuda.mem_get_info(lm.device)
    return slots_for(free, slot_bytes(lm, codec))


def slots_for(free_bytes: int, per_slot_bytes: int) -> int:
    slots = int(free_bytes * MEMORY_USE // max(1, per_slot_bytes * ACTIVATION_FACTOR))
    if slots < 1:
        raise InputError(f"not enough free GPU memory for one session: {free_bytes / 2**30:.2f} GiB free, a slot "
                         f"needs about {per_slot_bytes * ACTIVATION_FACTOR / 2**30:.2f} GiB")
    logger.info("%d slots fit in %.1f GiB free (%.1f MiB of state each)", min(slots, MAX_AUTO_SLOTS), free_bytes / 2**30,
                per_slot_bytes / 2**20)
    return min(slots, MAX_AUTO_SLOTS)


def build_server(lm, codec, slots: int, tokenizer=None, api_keys=None, auth_required: bool = False,
                 interval: float = 0.08, max_message_bytes: int | None = None, voices=None, idle_timeout: float = 30.0,
                 queue_size: int = 0, queue_timeout: float = 30.0, **options):
    """A Server over a new Engine(lm, codec, slots) (not started: call server.engine.start()). `options` go to
    the engine's task (sampling; TTS voice, cfg; translation quality, cfg_coef)."""
    from antiphon.streaming.auth import DEFAULT_KEYS
    from antiphon.streaming.engine import Engine
    from antiphon.streaming.errors import MAX_MESSAGE_BYTES
    from antiphon.streaming.server import Server
    from antiphon.streaming.session import id_pieces, tokenizer_pieces
    from antiphon.streaming.tasks import task_of

    if task_of(lm) == "tts":
        options.setdefault("tokenizer", tokenizer)
    engine = Engine(lm, codec, slots, interval=interval, **options)
    piece = tokenizer_pieces(tokenizer) if tokenizer is not None else id_pieces
    text = (lambda ids: tokenizer.decode(list(ids)).strip()) if tokenizer is not None else None
    return Server(engine, piece=piece, text=text, api_keys=api_keys or DEFAULT_KEYS, auth_required=auth_required,
                  max_message_bytes=max_message_bytes or MAX_MESSAGE_BYTES, voices=voices, idle_timeout=idle_timeout,
                  queue_size=queue_size, queue_timeout=queue_timeout)


async def _serve_forever(server, host: str, port: int) -> None:
    async with server.serve(host, port) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]  # the one the system chose for --port 0
        routes = ", ".join(f"ws://{host}:{port}{route}" for route in server.routes)
        print(f"antiphon: serving {server.engine.kind} on {routes} ({server.engine.slots} slots); Ctrl-C stops",
              flush=True)
        await asyncio.Future()
