"""`antiphon serve` as a process: loads a model directory (LM + its codec), answers /api/health and a chat."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import re
import sys
import urllib.request

import pytest
from antiphon.streaming.moshi_protocol import Handshake, build
from websockets.asyncio.client import connect

from tests.streaming.tiny_pair import save_pair


def _default_sigint() -> None:
    """In the child: Ctrl-C's default, whatever the test runner's (a shell's background job ignores
    SIGINT, and an ignored signal is inherited across exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("options", [[], ["--codec-quantize", "int8"]], ids=["float", "int8-codec"])
def test_serve_a_model_directory(tmp_path, options):
    save_pair(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "antiphon", "serve", "--model", str(tmp_path), "--port", "0",
                             "--slots", "2", "--device", "cpu", *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=_default_sigint)
    try:
        line = proc.stdout.readline()
        assert line.startswith("antiphon: serving dialogue on ws://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        url = re.search(r"ws://\S+/api/chat", line).group(0)
        port = int(url.split(":")[2].split("/")[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as response:
            assert json.load(response)["free_slots"] == 2

        async def chat():
            async with connect(url) as ws:
                assert await asyncio.wait_for(ws.recv(), 5) == build(Handshake())
        asyncio.run(chat())
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130


def test_slots_follow_free_memory_and_state_size():
    from antiphon.apps.serve_cmd import ACTIVATION_FACTOR, MAX_AUTO_SLOTS, MEMORY_USE, default_slots, slot_bytes, slots_for
    from antiphon.errors import InputError

    from antiphon.stateful import stateful_modules

    from tests.codec.tiny import make_tiny_codec
    from tests.lm.tiny import MOSHI, make_tiny_lm

    lm = make_tiny_lm(MOSHI)
    per_slot = slot_bytes(lm)
    cfg = lm.config
    ring = cfg.context + 7  # the KV ring: context + PIECE - 1 steps
    assert per_slot >= 2 * cfg.num_layers * cfg.dim * ring * 4  # keys and values of every layer, fp32
    lm.transformer.kv_dtype = "int8"  # a byte per value and a float32 scale per head vector
    head_dim = cfg.dim // cfg.num_heads
    assert slot_bytes(lm) == per_slot - 2 * cfg.num_layers * cfg.dim * ring * (3 - 4 / head_dim)
    lm.transformer.kv_dtype = None
    codec = make_tiny_codec()
    with_codec = slot_bytes(lm, codec)
    assert with_codec > per_slot  # the codec's state is counted, then released:
    assert all(m.state is None for m in stateful_modules(codec))
    assert default_slots(lm) == 4  # CPU: compute-bound, a fixed default
    assert slots_for(int(10 * per_slot * ACTIVATION_FACTOR / MEMORY_USE) + 1, per_slot) == 10
    assert slots_for(2**50, per_slot) == MAX_AUTO_SLOTS
    with pytest.raises(InputError, match="not enough free GPU memory"):
        slots_for(per_slot // 2, per_slot)


def _engine():
    import torch
    from antiphon.streaming.engine import Engine

    from tests.streaming.tiny_pair import make_pair

    return Engine(*make_pair(), 1, interval=0.01, rng=torch.Generator().manual_seed(0))


def test_the_engine_ticks_on_the_calling_thread_beside_the_network():
    import threading

    from antiphon.apps.serve_cmd import run_beside_engine

    engine = _engine()
    threads, tick = [], engine.tick
    engine.tick = lambda: (threads.append(threading.current_thread()), tick())[1]

    async def network():
        await asyncio.sleep(0.1)
        return threading.current_thread()

    try:
        network_thread = run_beside_engine(engine, network())
    finally:
        engine.close()
    assert len(threads) >= 3 and set(threads) == {threading.current_thread()}
    assert network_thread is not threading.current_thread()


def test_a_failing_network_stops_the_engine_and_raises():
    from antiphon.apps.serve_cmd import run_beside_engine

    engine = _engine()

    async def network():
        raise OSError("address already in use")

    try:
        with pytest.raises(OSError, match="address already in use"):
            run_beside_engine(engine, network())
    finally:
        engine.close()
