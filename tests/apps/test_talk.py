"""`antiphon talk`: end to end against the real /api/chat server (tiny LM + codec) with a fake microphone and
speaker; the sound-device layer against a fake sounddevice module; the CLI's errors."""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import types

import numpy as np
import pytest
from antiphon.apps import talk_cmd
from antiphon.apps.cli import main
from antiphon.apps.talk_cmd import BLOCK, FileMic, JitterBuffer, SoundDeviceMic, SoundDeviceSpeaker, talk
from antiphon.audio_io import read_audio, write_wav

from tests.streaming.server_thread import server_thread
from tests.streaming.test_server_chat import TICK, running
from tests.streaming.tiny_pair import make_pair

SAMPLE = "demos/sample.wav"


class FakeMic:
    """`frames` blocks of a tone a little faster than the tick pace (a tick that found no frame would answer
    silence with an extra frame: the scheduler's rule); `closed` once the iteration is over."""

    def __init__(self, frames: int):
        self.frames, self.closed = frames, False

    async def __aiter__(self):
        t = np.arange(BLOCK) / 24000
        try:
            for i in range(self.frames):
                yield (0.3 * np.sin(2 * np.pi * 220 * (t + i * 0.08))).astype(np.float32)
                await asyncio.sleep(0.8 * TICK)
        finally:
            self.closed = True


class FakeSpeaker:
    def __init__(self):
        self.chunks: list[np.ndarray] = []
        self.closed = False

    def play(self, pcm: np.ndarray) -> None:
        self.chunks.append(pcm)

    def close(self) -> None:
        self.closed = True


class FakeStream:
    """A sounddevice stream that records its settings (the callback among them) and its state."""

    def __init__(self, **settings):
        self.settings, self.started, self.closed = settings, False, False

    def start(self):
        self.started = True

    def stop(self):
        self.started = False

    def close(self):
        self.closed = True

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        self.close()


def fake_sounddevice(devices: list[tuple[str, int, int]], default=(0, 1), streams: dict | None = None):
    """A stand-in for the sounddevice module: (name, inputs, outputs) per device; `streams` gets the last
    "input" and "output" FakeStream opened."""
    def opener(kind):
        def open_stream(**settings):
            stream = FakeStream(**settings)
            if streams is not None:
                streams[kind] = stream
            return stream
        return open_stream

    return types.SimpleNamespace(
        query_devices=lambda: [{"name": n, "max_input_channels": i, "max_output_channels": o} for n, i, o in devices],
        default=types.SimpleNamespace(device=list(default)),
        InputStream=opener("input"), OutputStream=opener("output"))


DEVICES = [("Built-in Microphone", 2, 0), ("Built-in Output", 0, 2), ("USB Headset", 1, 2)]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("antiphon: error: "), err
    return err


# ---------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def pair():
    return make_pair()


def test_talk_streams_the_mic_plays_the_answer_and_prints_the_text(pair):
    frames = 8
    mic, speaker, out = FakeMic(frames), FakeSpeaker(), io.StringIO()

    async def main():
        async with running(pair) as (server, url):
            result = await talk(url, mic, speaker, out=out, text_topk=10)
            return result, server.engine.frames_in

    result, frames_in = asyncio.run(asyncio.wait_for(main(), 60))
    assert mic.closed and result.frames_sent == frames and frames_in >= frames
    played = sum(c.size for c in speaker.chunks)
    assert played == result.samples_played == frames * BLOCK  # one 80 ms frame of answer per frame sent
    assert all(c.dtype == np.float32 and np.isfinite(c).all() for c in speaker.chunks)
    assert result.text.startswith(" ")  # the tiny random LM says something on most frames: token ids, " 17"
    assert out.getvalue() == result.text + "\n"  # printed as it came, then a newline


def test_talk_ends_when_the_server_closes(pair):
    mic, speaker = FakeMic(1000), FakeSpeaker()

    async def main():
        async with running(pair) as (_, url):
            return await talk(url, mic, speaker, out=io.StringIO(), max_steps=3)

    result = asyncio.run(asyncio.wait_for(main(), 60))
    assert result.frames_sent < 1000 and mic.closed  # the mic stopped when the server closed
    assert 0 < result.samples_played <= 3 * BLOCK


# ---------------------------------------------------------------------------------------- the CLI
@pytest.fixture
def fake_audio(monkeypatch):
    """`open_audio` gives a fake mic and speaker (kept in the returned dict)."""
    made = {}

    def open_audio(input_device, output_device):
        made.update(mic=FakeMic(3), speaker=FakeSpeaker(), devices=(input_device, output_device))
        return made["mic"], made["speaker"]

    monkeypatch.setattr(talk_cmd, "open_audio", open_audio)
    return made


def test_cli_device_errors(capsys, monkeypatch):
    def use(devices, default=(0, 1)):
        monkeypatch.setattr(talk_cmd, "load_sounddevice", lambda: fake_sounddevice(devices, default))

    use([("Built-in Output", 0, 2)], default=(-1, 0))
    assert main(["talk"]) == 2
    assert "no input device (microphone) found" in _error(capsys)
    use([("Built-in Microphone", 2, 0)], default=(0, -1))
    assert main(["talk"]) == 2
    assert "no output device (speaker) found" in _error(capsys)
    use([])
    assert main(["talk", "--list-devices"]) == 0
    assert capsys.readouterr().out.strip() == "no sound devices"
    use(DEVICES)
    assert main(["talk", "--input-device", "bluetooth"]) == 2
    assert "unknown input device 'bluetooth'" in _error(capsys)
    assert main(["talk", "--output-device", "0"]) == 2
    assert "--output-device 0: 'Built-in Microphone' has no output channels" in _error(capsys)
    assert main(["talk", "--input-device", "7"]) == 2
    assert "--input-device 7: no such device" in _error(capsys)
    assert main(["talk", "--list-devices"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(DEVICES) and lines[0].startswith(">") and lines[1].startswith(" <")
    assert all(name in line for (name, _, _), line in zip(DEVICES, lines))


def test_pick_device():
    sd = fake_sounddevice(DEVICES, default=(2, 1))
    assert talk_cmd.pick_device(sd, None, "input") == 2 and talk_cmd.pick_device(sd, None, "output") == 1
    assert talk_cmd.pick_device(sd, "usb", "output") == 2 and talk_cmd.pick_device(sd, "built-in", "input") == 0
    assert talk_cmd.pick_device(sd, "2", "input") == 2
    sd = fake_sounddevice(DEVICES, default=(-1, -1))  # no default: the first usable
    assert talk_cmd.pick_device(sd, None, "input") == 0 and talk_cmd.pick_device(sd, None, "output") == 1

    class Pair:  # what sounddevice's default.device is: indexable, no len()
        def __getitem__(self, index):
            return [2, 2][index]

    sd.default.device = Pair()
    assert talk_cmd.pick_device(sd, None, "input") == 2 and talk_cmd.pick_device(sd, None, "output") == 2
    sd.default.device = 1  # one value for both: not an input device, so the first usable one
    assert talk_cmd.pick_device(sd, None, "input") == 0 and talk_cmd.pick_device(sd, None, "output") == 1


def test_cli_without_portaudio(capsys, monkeypatch):
    class NoPortAudio:
        def find_spec(self, name, path=None, target=None):
            if name == "sounddevice":
                raise OSError("PortAudio library not found")

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoPortAudio(), *sys.meta_path])
    assert main(["talk", "--list-devices"]) == 2
    err = _error(capsys)
    assert "PortAudio library not found" in err and "libportaudio2" in err


def test_cli_server_errors_and_ctrl_c(capsys, monkeypatch, fake_audio):
    assert main(["talk", "--url", "http://127.0.0.1:1"]) == 2
    assert "ws://host:port" in _error(capsys) and not fake_audio  # before any device opens
    assert main(["talk", "--url", "ws://127.0.0.1:9", "--input-device", "usb"]) == 2
    assert "cannot connect to ws://127.0.0.1:9/api/chat" in _error(capsys)
    assert fake_audio["speaker"].closed and fake_audio["devices"] == ("usb", None)

    async def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(talk_cmd, "talk", interrupted)
    assert main(["talk"]) == 0  # Ctrl-C: a clean end
    assert fake_audio["speaker"].closed


# ---------------------------------------------------------------------------------------- audio files
def test_file_mic_sends_the_file_in_blocks_then_the_tail_of_silence():
    pcm = np.linspace(-0.5, 0.5, 2 * BLOCK + 100, dtype=np.float32)

    async def blocks():
        return [b async for b in FileMic(pcm, tail_s=0.16, pace_s=0)]

    got = asyncio.run(blocks())
    assert len(got) == 3 + 2 and all(b.shape == (BLOCK,) and b.dtype == np.float32 for b in got)
    sent = np.concatenate(got)
    assert np.array_equal(sent[:pcm.size], pcm) and not sent[pcm.size:].any()  # padded, then silence


def test_cli_talks_from_a_file_into_a_file_without_a_sound_card(capsys, tmp_path, monkeypatch, pair):
    def no_sound_card(*args):
        raise AssertionError("a sound device was opened")

    for opener in ("open_audio", "open_mic", "open_speaker"):
        monkeypatch.setattr(talk_cmd, opener, no_sound_card)
    question, answer = tmp_path / "question.wav", tmp_path / "answer.wav"
    write_wav(question, (0.3 * np.sin(np.arange(12000) / 10)).astype(np.float32), 24000)  # 0.5 s
    with server_thread(running(pair)) as url:
        assert main(["talk", "--url", url, "--input", str(question), "--output", str(answer), "--tail", "0.24"]) == 0
    sent = 7 + 3  # ceil(12000 / 1920) blocks of the file, 0.24 s of silence
    # an 80 ms frame of answer for each frame sent, and for each tick that found none (this test server
    # ticks every 40 ms, the file goes at real-time pace: 80 ms a block)
    played = read_audio(answer).shape[-1]
    assert played >= sent * BLOCK and played % BLOCK == 0
    assert capsys.readouterr().out.strip()  # its words, printed


def test_cli_file_errors(capsys, tmp_path, fake_audio):
    assert main(["talk", "--input", str(tmp_path / "missing.wav"), "--output", str(tmp_path / "a.wav")]) == 2
    assert "audio file not found" in _error(capsys)
    assert main(["talk", "--input", SAMPLE, "--output", str(tmp_path / "no" / "a.wav")]) == 2
    assert "no such folder" in _error(capsys)
    assert main(["talk", "--input", SAMPLE, "--tail", "-1"]) == 2
    assert "--tail" in _error(capsys) and not fake_audio  # before any device opens


# ---------------------------------------------------------------------------------------- sound-device layer
def test_jitter_buffer_prefills_rebuffers_and_bounds_the_delay():
    buffer = JitterBuffer(prefill=300, max_samples=1000)
    buffer.push(np.arange(200, dtype=np.float32))
    assert not buffer.pull(100).any() and buffer.queued == 200  # still prefilling
    buffer.push(np.arange(200, 400, dtype=np.float32))
    assert np.array_equal(buffer.pull(250), np.arange(250))
    out = buffer.pull(250)  # runs dry: the rest, then silence, and prefilling again
    assert np.array_equal(out[:150], np.arange(250, 400)) and not out[150:].any() and buffer.underruns == 1
    buffer.push(np.ones(100, np.float32))
    assert not buffer.pull(50).any()
    buffer.push(np.arange(2000, dtype=np.float32))  # over max_samples: the oldest go
    assert buffer.queued == 1000 and buffer.dropped == 1100
    assert np.array_equal(buffer.pull(1000), np.arange(1000, 2000))


def test_sounddevice_speaker_and_mic():
    streams: dict = {}
    sd = fake_sounddevice(DEVICES, streams=streams)
    speaker = SoundDeviceSpeaker(sd, 1, JitterBuffer(prefill=2 * BLOCK))
    output = streams["output"]
    assert output.started and output.settings["device"] == 1 and output.settings["samplerate"] == 24000
    assert output.settings["blocksize"] == BLOCK and output.settings["channels"] == 1
    pcm = np.random.default_rng(0).standard_normal(3 * BLOCK).astype(np.float32)
    speaker.play(pcm)
    outdata = np.zeros((BLOCK, 1), np.float32)
    played = []
    for _ in range(3):
        output.settings["callback"](outdata, BLOCK, None, None)
        played.append(outdata[:, 0].copy())
    assert np.array_equal(np.concatenate(played), pcm)
    speaker.close()
    assert output.closed

    async def read_mic(frames: int):
        mic = SoundDeviceMic(sd, 0)
        blocks, it = [], aiter(mic)
        first = asyncio.create_task(anext(it))
        await asyncio.sleep(0)
        stream = streams["input"]
        assert stream.settings["device"] == 0 and stream.settings["blocksize"] == BLOCK
        feeder = threading.Thread(target=lambda: [
            stream.settings["callback"](np.full((BLOCK, 1), i, np.float32), BLOCK, None, None) for i in range(frames)])
        feeder.start()  # the sound card's thread
        blocks.append(await first)
        while len(blocks) < frames:
            blocks.append(await anext(it))
        await it.aclose()
        feeder.join()
        return blocks, stream

    blocks, stream = asyncio.run(asyncio.wait_for(read_mic(4), 10))
    assert [float(b[0]) for b in blocks] == [0, 1, 2, 3] and all(b.shape == (BLOCK,) for b in blocks)
    assert stream.closed  # the iteration's end closed the microphone
