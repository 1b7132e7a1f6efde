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

from antiphon.streaming.moshi_protocol import Handshake, build
from websockets.asyncio.client import connect

from tests.streaming.tiny_pair import save_pair


def test_serve_a_model_directory(tmp_path):
    save_pair(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "antiphon", "serve", "--model", str(tmp_path), "--port", "0",
                             "--slots", "2", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
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
