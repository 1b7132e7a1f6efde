"""`antiphon bench serve`: the whole server under load, in this process: the engine ticking every 80 ms,
N clients (streaming.client.ChatClient) talking to /api/chat over real loopback WebSockets, Opus both
ways, each sending 80 ms frames in real time. Reports, for each N, the tick times, the frames lost and the
latency from a frame in to its audio frame out; the largest N held in real time; and the one-session
latency against the reference.

Definitions (also written into the JSON):
- frame latency: the k-th 80 ms frame a client sends (time taken as it is handed to the Opus encoder)
  answers with the k-th 80 ms frame of audio it receives (time taken once its Opus decoder has given that
  frame's last sample): latency_k = received_k - sent_k, per session, every k. The engine answers the
  client's frame k in the tick that takes it (the slot's first tick steps on the engine's own silence), so
  this is: the wait for the next tick (0-80 ms, the tick runs on its own clock) + the tick + Opus and
  loopback both ways. A frame that misses its tick (silence is given in its place) shifts every later
  answer by 80 ms, which the latency shows.
- first audio: latency_0, the first frame sent after the handshake to the first audio frame back.
- held in real time: tick p99 <= the tick interval (80 ms) and no frame lost: every frame sent was taken
  by the engine (none dropped from a backlog, none still queued at the end) and every session received
  as many audio frames as it sent.
- the reference (the `moshi` package, tests/reference/serve_bench.py) serves one session at a time; its
  per-frame work for that session (Mimi encode + LMGen.step + Mimi decode, same weights, same sampling)
  is its latency, without network, Opus or waiting; it holds 1 session if that work's p99 fits in 80 ms,
  else 0.

With --density, and always for the real model shapes (moshi-7b, stt-*, hibiki-2b, tts-1.6b), the bench runs
without the network instead: apps/bench_density.py.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time

import numpy as np
import torch

from antiphon.apps.bench_cmd import (ReferenceRunner, add_common_options, compare, machine, summarize, take_turns,
                                     write_json)
from antiphon.apps.help import Formatter

TICK_MS = 80.0
FRAME = 1920  # samples per 80 ms frame at 24 kHz
GRACE_S = 3.0  # after its last frame, how long a client waits for the audio still due
SAMPLING = dict(temp=0.8, temp_text=0.7, top_k=250, top_k_text=25)  # both sides

# A Moshi-shaped dialogue model with ~10 M parameters doing the work: a 6 x 256 temporal transformer,
# a 2 x 128 depformer with weights per codebook step, 8 + 8 audio streams of 2048 codes, 8000 text tokens.
# Its embedding tables (17 x 2049 x 256 in, 7 x 2049 x 128 in the depformer) add ~13 M more that are
# looked up, not multiplied.
SHAPES = {
    "dialogue-10m": dict(dim=256, num_heads=4, num_layers=6, context=3000, text_card=8000, n_q=16, dep_q=8, card=2048,
                         depformer_dim=128, depformer_num_heads=4, depformer_num_layers=2,
                         depformer_dim_feedforward=int(4.125 * 128)),
}


def register(targets, common) -> None:
    from antiphon.apps import bench_density

    parser = targets.add_parser(
        "serve", parents=common, formatter_class=Formatter,
        help="the server: sessions held in real time, latency frame in -> audio out; density at real model sizes",
        description="Runs the engine (80 ms tick) and the WebSocket server in this process with N clients on "
                    "loopback (/api/chat, Opus both ways) sending speech-like audio in real time, for N = 1, 2, "
                    "3, ... until a run does not hold real time (tick p99 over 80 ms or a frame lost). Reports "
                    "tick times, frames lost, the latency from a frame sent to its audio frame received, and "
                    "the largest N held; the one-session latency is compared with the reference's per-frame "
                    "work (Mimi encode + LMGen.step + Mimi decode, same weights), in turns. "
                    "Density mode (--density, and always for the real model shapes: moshi-7b, stt-1b, stt-2.6b, "
                    "hibiki-2b, tts-1.6b with --random-weights): no network; one engine of N live sessions fed in "
                    "process, its tick timed against N = 1, 2, 4, ... (then bisected); reports the sessions held "
                    "(tick p99 <= 80 ms), memory per session, a roofline line (bytes per tick against the tick, "
                    "as a fraction of the HBM bandwidth), the codec alone, and the reference (LMGen + Mimi, same "
                    "weights, one batch of N) after antiphon (for moshi-7b: 15 GB of weights saved to disk first).",
        epilog="examples:\n"
               "  antiphon bench serve                          # dialogue-10m + full-size codec, N = 1, 2, ...\n"
               "  antiphon bench serve --slots 1,2,4 --seconds 20 --json serve.json\n"
               "  OMP_NUM_THREADS=2 antiphon bench serve --rounds 3 --no-reference\n"
               "  antiphon bench serve --density --seconds 2      # density mode at dialogue-10m, on CPU\n"
               "  antiphon bench serve --shape moshi-7b --random-weights --device cuda --slots 1,8,16,32\n"
               "  antiphon bench serve --shape stt-1b --random-weights --device cuda --no-reference")
    parser.add_argument("--shape", choices=sorted(SHAPES) + sorted(bench_density.SHAPES), default="dialogue-10m",
                        help="LM shape (random weights); the real model shapes run in density mode")
    parser.add_argument("--num-codebooks", type=int, default=8,
                        help="codec codebooks (default 8; density: those the model reads and writes)")
    parser.add_argument("--slots", default=None, metavar="N,N,...",
                        help="session counts to run, all of them (default: 1, 2, 3, ... (density: 1, 2, 4, ...) until "
                             "one does not hold real time, or --max-slots)")
    parser.add_argument("--max-slots", type=int, default=None,
                        help=f"the most sessions tried by default (default 8; density: {bench_density.DEFAULT_MAX_SLOTS})")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="audio each client sends per run (default 10; density: timed ticks = seconds / 80 ms)")
    bench_density.add_options(parser)
    add_common_options(parser, "tick", default_rounds=1, per_session=False)
    parser.set_defaults(run=run)


def make_models(args, directory: str):
    """(lm, codec, reference arguments): the random LM of `args.shape` and the full-size codec, saved in
    `directory` for the reference to load the same weights. (The tests replace this with a tiny pair.)"""
    from antiphon.codec import Codec
    from antiphon.lm import LM, LMConfig

    torch.manual_seed(0)
    lm = LM(LMConfig(**SHAPES[args.shape]))
    lm.save_pretrained(directory)
    torch.manual_seed(0)
    codec = Codec(num_codebooks=args.num_codebooks)
    weights = codec.save_pretrained(directory)
    return lm, codec, ["--checkpoint", directory, "--weights", str(weights)]


def bench_frames(frames: int, seed: int = 0) -> np.ndarray:
    """The bench's speech-like signal (bench_codec.bench_audio), [frames, 1920] float32."""
    from antiphon.apps.bench_codec import bench_audio

    return bench_audio(1, frames, FRAME, seed).reshape(frames, FRAME).numpy()


def _ms(seconds: list[float]) -> dict:
    if not seconds:
        return {"count": 0}
    ms = np.asarray(seconds) * 1000
    return {"count": int(ms.size), "p50": round(float(np.percentile(ms, 50)), 2),
            "p99": round(float(np.percentile(ms, 99)), 2), "max": round(float(ms.max()), 2)}


async def _client(url: str, audio: np.ndarray, grace: float) -> tuple[list[float], list[float]]:
    """One session: send `audio` frame by frame in real time; (send times, times the k-th audio frame came)."""
    from antiphon.streaming.client import ChatClient, PcmChunk

    chat = await ChatClient.connect(url, open_timeout=30.0)
    frames = len(audio)
    sent: list[float] = []
    got: list[float] = []

    async def send() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for k in range(frames):
            delay = start + k * TICK_MS / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent.append(time.perf_counter())
            await chat.send_pcm(audio[k])

    async def receive() -> None:
        samples = 0
        async for event in chat:
            if isinstance(event, PcmChunk):
                samples += event.pcm.size
                now = time.perf_counter()
                while len(got) < min(samples // FRAME, frames):
                    got.append(now)
                if len(got) >= frames:
                    return

    receiver = asyncio.create_task(receive())
    try:
        await send()
        await asyncio.wait_for(receiver, grace)
    except (asyncio.TimeoutError, TimeoutError):
        pass
    finally:
        receiver.cancel()
        await chat.close()
    return sent, got


def serve_run(lm, codec, slots: int, seconds: float, warmup: int, tick_ms: float = TICK_MS,
              grace: float = GRACE_S) -> dict:
    """One run: an engine of `slots` slots and as many clients for `seconds`; its figures (see the module)."""
    from antiphon.apps.serve_cmd import build_server, run_beside_engine

    server = build_server(lm, codec, slots, interval=tick_ms / 1000,
                          rng=torch.Generator(lm.device).manual_seed(0), **SAMPLING)
    engine = server.engine
    taken = [0]
    step = engine.task.step

    def counting_step(plan):  # frames the engine took from the clients (not its own silence)
        taken[0] += int(plan.has_frame.sum())
        return step(plan)

    engine.task.step = counting_step
    frames = max(1, round(seconds * 1000 / TICK_MS))
    audio = bench_frames(frames)

    async def clients():
        async with server.serve("127.0.0.1", 0) as ws_server:
            url = f"ws://127.0.0.1:{ws_server.sockets[0].getsockname()[1]}"
            return await asyncio.gather(*(_client(url, audio, grace) for _ in range(slots)))

    if warmup > 0:
        engine.warmup(warmup)
    try:
        sessions = run_beside_engine(engine, clients())  # the tick on this thread, as `antiphon serve`
    finally:
        engine.close()
    ticks = engine.stats.summary()
    latency, first = [], []
    for sent, got in sessions:
        latency += [got[k] - sent[k] for k in range(min(len(sent), len(got)))]
        if got and sent:
            first.append(got[0] - sent[0])
    frames_sent = sum(len(sent) for sent, _ in sessions)
    frames_out = sum(len(got) for _, got in sessions)
    lost_in, lost_out = frames_sent - taken[0], slots * frames - frames_out
    tick_p99_ms = 1000 * ticks["p99_s"]
    return {
        "slots": slots,
        "held_real_time": tick_p99_ms <= tick_ms and lost_in == 0 and lost_out == 0,
        "ticks": {"count": ticks["count"], "p50_ms": round(1000 * ticks["p50_s"], 2), "p99_ms": round(tick_p99_ms, 2),
                  "max_ms": round(1000 * ticks["max_s"], 2), "mean_ms": round(1000 * ticks["mean_s"], 2),
                  "overruns": ticks["overruns"]},
        "frames": {"sent": frames_sent, "taken_by_engine": taken[0], "dropped_from_backlog": engine.scheduler.dropped_frames,
                   "lost_in": lost_in, "out_expected": slots * frames, "out_received": frames_out, "lost_out": lost_out,
                   "engine_silence": engine.silence_frames},
        "latency_ms": _ms(latency),
        "first_audio_ms": _ms(first),
        "_latency_s": latency,  # for the rounds' summary; removed before the JSON
    }


def _slot_list(args) -> tuple[list[int], bool]:
    """(session counts after 1, whether to stop at the first that does not hold)."""
    if args.slots:
        counts = sorted({int(x) for x in args.slots.split(",") if x.strip()})
        if not counts or counts[0] < 1:
            raise SystemExit(f"--slots: positive session counts, e.g. 1,2,4; got {args.slots!r}")
        return [n for n in counts if n > 1], False
    return list(range(2, (args.max_slots or 8) + 1)), True


def run(args) -> int:
    from antiphon.apps import bench_density

    if args.density or args.shape in bench_density.SHAPES:
        return bench_density.run(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    more, stop_early = _slot_list(args)
    frames = max(1, round(args.seconds * 1000 / TICK_MS))
    with tempfile.TemporaryDirectory() as tmp:
        lm, codec, reference_args = make_models(args, tmp)
        lm, codec = lm.to(device), codec.to(device)
        params = sum(p.numel() for p in lm.parameters())
        embedded = sum(p.numel() for name, p in lm.named_parameters() if "emb" in name)
        codec_params = sum(p.numel() for p in codec.parameters())
        reference = None
        if not args.no_reference:
            reference = ReferenceRunner.start("serve_bench.py", [
                *reference_args, "--frames", str(frames), "--warmup", str(args.warmup), "--device", args.device,
                "--threads", str(torch.get_num_threads())]) if reference_args else "no reference weights for these models"
        one: list[dict] = []

        def session():  # one session, taking turns with the reference's
            record = serve_run(lm, codec, 1, args.seconds, args.warmup)
            one.append(record)
            return record["_latency_s"], None

        turns = take_turns(args.rounds, session, reference)
        runs = [_one_session_record(one)]
        for n in more:
            if stop_early and not runs[-1]["held_real_time"]:
                break
            runs.append(serve_run(lm, codec, n, args.seconds, args.warmup))
    for record in [*runs, *one]:
        record.pop("_latency_s", None)
    held = max((r["slots"] for r in runs if r["held_real_time"]), default=0)
    result = {
        "benchmark": "serve: dialogue sessions over loopback WebSockets (Opus both ways), 80 ms engine tick",
        "machine": machine(device),
        "settings": {"shape": args.shape, "parameters": params, "parameters_outside_embeddings": params - embedded,
                     "codec": "random, full Mimi size", "codec_parameters": codec_params,
                     "num_codebooks": args.num_codebooks, "seconds": args.seconds, "frames_per_session": frames,
                     "tick_ms": TICK_MS, "warmup_ticks": args.warmup, "rounds": args.rounds, "device": str(device),
                     "sampling": "temp 0.8 / top-k 250 audio, temp 0.7 / top-k 25 text",
                     "latency": "k-th audio frame received - k-th frame sent, per session (Opus, loopback, tick wait "
                                "and tick included); first audio: k = 0",
                     "held_real_time": "tick p99 <= 80 ms, every frame sent taken by the engine, every audio frame "
                                       "due received"},
        "antiphon": {**summarize(turns.ours, TICK_MS), "sessions_held": held,
                     "first_audio_ms": [r["first_audio_ms"].get("p50") for r in one]},
        "runs": runs,
        "one_session_rounds": one,
    }
    result["antiphon"].pop("real_time_factor")  # a latency, not a per-step time
    ref_held = None
    if turns.theirs:
        ref_p99 = float(np.percentile(np.asarray(turns.theirs) * 1000, 99))
        ref_held = int(ref_p99 <= TICK_MS)
        compare(result, turns.ours, turns.theirs, turns.ratios, TICK_MS, reference,
                {"ms_p99": round(ref_p99, 3), "sessions_held": ref_held,
                 "what": "per-frame Mimi encode + LMGen.step + Mimi decode, one session, no network"})
    else:
        compare(result, [], [], [], TICK_MS, reference)
    _print(result, args, params, embedded, held, ref_held)
    write_json(result, args.json, "serve")
    return 0


def _one_session_record(rounds: list[dict]) -> dict:
    """The rounds' one-session runs as one row: held only if every round held; worst ticks, pooled latency."""
    latency = [x for r in rounds for x in r["_latency_s"]]
    first = [r["first_audio_ms"]["p50"] for r in rounds if r["first_audio_ms"]["count"]]
    worst = max(rounds, key=lambda r: r["ticks"]["p99_ms"])
    frames = {k: sum(r["frames"][k] for r in rounds) for k in rounds[0]["frames"]}
    return {"slots": 1, "held_real_time": all(r["held_real_time"] for r in rounds), "rounds": len(rounds),
            "ticks": worst["ticks"], "frames": frames, "latency_ms": _ms(latency),
            "first_audio_ms": {"median": round(statistics.median(first), 2) if first else None,
                               "per_round": first}}


def _print(result: dict, args, params: int, embedded: int, held: int, ref_held: int | None) -> None:
    s = result["settings"]
    print(f"serve: {args.shape} ({params / 1e6:.1f} M parameters, {(params - embedded) / 1e6:.1f} M outside embedding "
          f"tables) + full-size codec ({s['codec_parameters'] / 1e6:.1f} M, {args.num_codebooks} codebooks), "
          f"{s['device']} ({torch.get_num_threads()} threads), {args.seconds:g} s per run, 80 ms tick")
    print(f"  {'sessions':>8s} {'tick p50':>9s} {'tick p99':>9s} {'overruns':>9s} {'in lost':>8s} {'out lost':>9s} "
          f"{'latency p50':>12s} {'p99 ms':>8s} {'held':>5s}")
    for r in result["runs"]:
        t, f, lat = r["ticks"], r["frames"], r["latency_ms"]
        print(f"  {r['slots']:8d} {t['p50_ms']:9.1f} {t['p99_ms']:9.1f} {t['overruns']:9d} {f['lost_in']:8d} "
              f"{f['lost_out']:9d} {lat.get('p50', float('nan')):12.1f} {lat.get('p99', float('nan')):8.1f} "
              f"{'yes' if r['held_real_time'] else 'no':>5s}")
    ours = result["antiphon"]
    first = result["runs"][0]["first_audio_ms"]["median"]
    print(f"  sessions held in real time: antiphon {held}" + ("" if ref_held is None else f", reference {ref_held}"))
    print(f"  one session, frame in -> audio frame out: median {ours['ms_median']:.1f} ms (p90 {ours['ms_p90']:.1f}); "
          f"first audio after the handshake {first} ms")
    ref = result.get("reference", {})
    if "ms_median" in ref:
        print(f"  reference per-frame encode + step + decode: median {ref['ms_median']:.1f} ms (p99 {ref['ms_p99']:.1f}); "
              f"its latency / ours: {result['speedup_vs_reference']:.2f} (rounds "
              f"{', '.join(f'{x:.2f}' for x in result['speedup_per_round'])})")
    elif "skipped" in ref:
        print(f"  reference: {ref['skipped']}")
