"""`antiphon talk`: a spoken conversation with a /api/chat server, through the microphone and the speaker.

The audio I/O sits behind two tiny interfaces, so that `talk` runs with anything that has their shape
(the tests use fakes):

- a `MicSource` is an async iterable of float32 [1920] blocks (80 ms at 24 kHz, mono); its end is the end
  of the voice. `SoundDeviceMic` reads the microphone through sounddevice (PortAudio).
- a `SpeakerSink` has `play(pcm)`, which queues float32 [T] at 24 kHz and returns at once.
  `SoundDeviceSpeaker` plays through sounddevice, out of a `JitterBuffer`.
- `FileMic` and `WavSpeaker` are the same with audio files (--input, --output): no sound card needed.

`talk` streams the mic blocks to the server with `ChatClient`, hands each PcmChunk to the sink and
writes each TextPiece to the terminal as it arrives. It ends when the server closes, or, when the mic
ends, once the server has answered every frame sent (as much audio back as went out, and that last
frame's text), or has sent nothing for `drain_timeout` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol, TextIO

import numpy as np

from antiphon.apps.help import Formatter
from antiphon.errors import AntiphonError, InputError

logger = logging.getLogger(__name__)

DEFAULT_URL = "ws://127.0.0.1:8998"
SAMPLE_RATE = 24000
BLOCK = 1920  # samples per mic block and per speaker callback: one 80 ms frame
JITTER_SECONDS = 0.16  # audio queued before the speaker starts (and restarts after running dry)
MAX_QUEUED_SECONDS = 1.0  # beyond this much queued audio, the oldest is dropped: latency stays bounded
DRAIN_TIMEOUT = 2.0  # seconds to wait for the rest of the answer once the mic has ended
TAIL_SECONDS = 3.0  # --input: silence sent after the file, for the answer to come


class AudioDeviceError(AntiphonError):
    """No sound library, no usable input or output device, or an unknown one."""


class MicSource(Protocol):
    """Where the voice comes from: float32 [1920] blocks at 24 kHz, mono; the iteration ends with the voice."""

    def __aiter__(self) -> AsyncIterator[np.ndarray]: ...


class SpeakerSink(Protocol):
    """Where the model's voice goes: `play` queues float32 [T] at 24 kHz, mono, and returns at once."""

    def play(self, pcm: np.ndarray) -> None: ...


def register(subparsers, common: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "talk", parents=common, formatter_class=Formatter, help="talk with a dialogue server (mic and speaker)",
        description="Talk with a dialogue model served on /api/chat (antiphon serve, or any server speaking "
                    "the Moshi protocol): the microphone streams to the server, its voice plays on the "
                    "speaker and its words print as they come. 24 kHz mono, 80 ms blocks. Ctrl-C ends.",
        epilog="examples:\n"
               "  antiphon serve --model embedded:dialogue &       # the embedded dialogue model, then\n"
               "  antiphon talk                                    # ws://127.0.0.1:8998, default devices\n"
               "  antiphon talk --url wss://example.org --api-key SECRET\n"
               "  antiphon talk --list-devices\n"
               "  antiphon talk --input-device 2 --output-device headphones\n"
               "  antiphon talk --input question.wav --output answer.wav   # no sound card\n\n"
               "A device is an index or a part of a name from --list-devices. The sound goes through "
               "sounddevice, which needs the PortAudio library (libportaudio2 on Debian and Ubuntu).")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the server: ws://host:port or a full URL (default: {DEFAULT_URL})")
    p.add_argument("--api-key", metavar="KEY", help="the server's API key (sent as the kyutai-api-key header)")
    p.add_argument("--input-device", metavar="D", help="microphone: index or part of a name (default: the system's)")
    p.add_argument("--output-device", metavar="D", help="speaker: index or part of a name (default: the system's)")
    p.add_argument("--list-devices", action="store_true", help="print the sound devices and exit")
    p.add_argument("--input", metavar="FILE", help="speak an audio file instead of the microphone (sent at real-time "
                   "pace, then --tail seconds of silence)")
    p.add_argument("--tail", type=float, default=TAIL_SECONDS, metavar="S",
                   help=f"with --input: seconds of silence after the file (default: {TAIL_SECONDS})")
    p.add_argument("--output", metavar="FILE", help="write the model's voice to a WAV file instead of the speaker")
    p.set_defaults(run=run_talk)


def run_talk(args: argparse.Namespace) -> int:
    from antiphon.streaming.client import chat_url

    if args.list_devices:
        print(format_devices(load_sounddevice()))
        return 0
    from antiphon.audio_io import read_audio

    chat_url(args.url)  # a bad URL fails before the sound card opens
    if args.tail < 0:
        raise InputError(f"--tail is a number of seconds >= 0, got {args.tail}")
    mic = FileMic(read_audio(args.input, SAMPLE_RATE, mono=True)[0], args.tail) if args.input else None
    speaker = WavSpeaker(args.output) if args.output else None
    if mic is None and speaker is None:
        mic, speaker = open_audio(args.input_device, args.output_device)
    elif mic is None:
        mic = open_mic(args.input_device)
    elif speaker is None:
        speaker = open_speaker(args.output_device)
    try:
        with contextlib.closing(speaker):
            asyncio.run(talk(args.url, mic, speaker, api_key=args.api_key))
    except KeyboardInterrupt:
        print(file=sys.stderr)  # after the ^C, a clean line
    return 0


@dataclasses.dataclass
class TalkResult:
    frames_sent: int = 0  # mic blocks sent
    samples_played: int = 0  # PCM samples handed to the speaker
    text: str = ""  # the words the server sent, pieces joined


async def talk(url: str, mic: MicSource, speaker: SpeakerSink, api_key: str | None = None,
               out: TextIO | None = None, drain_timeout: float = DRAIN_TIMEOUT, **sampling) -> TalkResult:
    """Converse with the /api/chat server at `url` (ChatClient; `sampling`: its query keys) until it closes or,
    when `mic` ends, until it has answered what was sent. Text goes to `out` (default: stdout) as it comes."""
    from antiphon.streaming.client import ChatClient, ChatClientError, PcmChunk

    out = out if out is not None else sys.stdout
    result = TalkResult()

    def answered() -> bool:  # the mic has ended and as much audio came back as went out
        return sender.done() and result.samples_played >= result.frames_sent * BLOCK

    async with await ChatClient.connect(url, api_key=api_key, **sampling) as chat:
        async def send() -> None:
            blocks = aiter(mic)
            try:
                async for block in blocks:
                    try:
                        await chat.send_pcm(block)
                    except ChatClientError:  # the server closed: the receiving side says how
                        return
                    result.frames_sent += 1
            finally:
                if hasattr(blocks, "aclose"):
                    await blocks.aclose()

        async def receive() -> None:
            async for event in chat:
                if isinstance(event, PcmChunk):
                    if answered():  # audio beyond the answer: the text of its last frame is in, stop here
                        return
                    speaker.play(event.pcm)
                    result.samples_played += event.pcm.size
                else:
                    result.text += event.text
                    out.write(event.text)
                    out.flush()

        sender, receiver = asyncio.create_task(send()), asyncio.create_task(receive())
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if sender.done():
                sender.result()  # the mic's error, if any
                while not receiver.done():  # the rest of the answer, until `drain_timeout` s without any
                    before = (result.samples_played, len(result.text))
                    await asyncio.wait({receiver}, timeout=drain_timeout)
                    if (result.samples_played, len(result.text)) == before:
                        break
            if receiver.done():
                receiver.result()  # the server's error, if any
        finally:
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
    if result.text:
        out.write("\n")
        out.flush()
    return result


# ---------------------------------------------------------------------------------------------------------
# Sound devices (sounddevice, imported on use: the tests replace it)


def load_sounddevice():
    """The sounddevice module, or AudioDeviceError saying what to install."""
    try:
        import sounddevice
    except OSError as e:  # sounddevice is there, PortAudio is not
        raise AudioDeviceError(f"cannot use the sound card: {e}; install the PortAudio library "
                               "(Debian/Ubuntu: apt-get install libportaudio2; macOS: brew install portaudio)") from None
    except ImportError:
        raise AudioDeviceError("cannot use the sound card: the sounddevice package is not installed "
                               "(pip install sounddevice)") from None
    return sounddevice


def format_devices(sd) -> str:
    """One line per device: index, name, channels in and out; `>` marks the default input, `<` the default output."""
    default_in, default_out = _defaults(sd)
    lines = []
    for i, d in enumerate(sd.query_devices()):
        mark = (">" if i == default_in else " ") + ("<" if i == default_out else " ")
        lines.append(f"{mark} {i:3d} {d['name']} ({d['max_input_channels']} in, {d['max_output_channels']} out)")
    return "\n".join(lines) if lines else "no sound devices"


def _defaults(sd) -> tuple[int, int]:
    """The default (input, output) device indices; -1 where there is none (or it is not given as an index).
    sd.default.device is a pair-like object indexed 0 and 1, or a single value for both."""
    device = sd.default.device
    try:
        pair = (device[0], device[1])
    except (TypeError, IndexError, KeyError):
        pair = (device, device)
    return tuple(int(d) if isinstance(d, int) and d >= 0 else -1 for d in pair)


def pick_device(sd, spec: str | None, kind: str) -> int:
    """The index of the `kind` ("input" or "output") device named by `spec`: an index, or a part of a name
    (case-insensitive; the first match), or None for the system's default. Raises AudioDeviceError."""
    what = "input device (microphone)" if kind == "input" else "output device (speaker)"
    option = f"--{kind}-device"
    try:
        devices = list(sd.query_devices())
    except Exception as e:  # PortAudio errors are plain Exceptions
        raise AudioDeviceError(f"cannot list the sound devices: {e}") from None
    usable = [i for i, d in enumerate(devices) if d[f"max_{kind}_channels"] > 0]
    if not usable:
        raise AudioDeviceError(f"no {what} found; `antiphon talk --list-devices` shows the devices")
    if spec is None:
        default = _defaults(sd)[0 if kind == "input" else 1]
        return default if default in usable else usable[0]
    if spec.strip().isdigit():
        index = int(spec)
        if index not in usable:
            why = "no such device" if index >= len(devices) else f"{devices[index]['name']!r} has no {kind} channels"
            raise AudioDeviceError(f"{option} {index}: {why}; `antiphon talk --list-devices` shows the devices")
        return index
    matches = [i for i in usable if spec.lower() in str(devices[i]["name"]).lower()]
    if not matches:
        raise AudioDeviceError(f"unknown {kind} device {spec!r}; `antiphon talk --list-devices` shows the devices")
    return matches[0]


def open_audio(input_device: str | None, output_device: str | None) -> tuple[SoundDeviceMic, SoundDeviceSpeaker]:
    """The microphone source and the speaker sink on the chosen devices (the speaker starts playing silence)."""
    return open_mic(input_device), open_speaker(output_device)


def open_mic(device: str | None) -> SoundDeviceMic:
    sd = load_sounddevice()
    index = pick_device(sd, device, "input")
    logger.info("microphone: %s", sd.query_devices()[index]["name"])
    return SoundDeviceMic(sd, index)


def open_speaker(device: str | None) -> SoundDeviceSpeaker:
    sd = load_sounddevice()
    index = pick_device(sd, device, "output")
    logger.info("speaker: %s", sd.query_devices()[index]["name"])
    return SoundDeviceSpeaker(sd, index)


class FileMic:
    """An audio file as a MicSource: its 80 ms blocks at real-time pace (the last one padded with zeros), then
    `tail_s` of silence, in which the model answers what it heard last."""

    def __init__(self, pcm: np.ndarray, tail_s: float = TAIL_SECONDS, pace_s: float = BLOCK / SAMPLE_RATE):
        blocks = -(-pcm.size // BLOCK) + round(tail_s * SAMPLE_RATE / BLOCK)
        self.pcm = np.zeros(blocks * BLOCK, np.float32)
        self.pcm[:pcm.size] = pcm
        self.pace_s = pace_s

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        for start in range(0, self.pcm.size, BLOCK):
            yield self.pcm[start:start + BLOCK]
            await asyncio.sleep(self.pace_s)


class WavSpeaker:
    """A SpeakerSink that keeps what it is given and writes it to a WAV file (24 kHz) when closed."""

    def __init__(self, path: str):
        if not Path(path).parent.is_dir():
            raise InputError(f"cannot write {path}: no such folder {Path(path).parent}")
        self.path, self.chunks = path, []

    def play(self, pcm: np.ndarray) -> None:
        self.chunks.append(pcm)

    def close(self) -> None:
        from antiphon.audio_io import write_wav

        write_wav(self.path, np.concatenate(self.chunks or [np.zeros(0, np.float32)])[None], SAMPLE_RATE)


class JitterBuffer:
    """A thread-safe FIFO of samples between the network (`push`) and the sound card's callback (`pull`).

    It gives silence until `prefill` samples are queued, and again after running dry (until `prefill`
    again): network jitter becomes a steady delay instead of clicks. Over `max_samples` queued (the sound
    card's clock slower than the server's), the oldest samples are dropped, so the delay stays bounded.
    """

    def __init__(self, prefill: int = int(JITTER_SECONDS * SAMPLE_RATE),
                 max_samples: int = int(MAX_QUEUED_SECONDS * SAMPLE_RATE)):
        self.prefill, self.max_samples = prefill, max(max_samples, prefill)
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._lock = threading.Lock()
        self.queued = 0
        self.playing = False
        self.underruns = 0  # times the buffer ran dry while playing
        self.dropped = 0  # samples dropped for being over max_samples

    def push(self, pcm: np.ndarray) -> None:
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        with self._lock:
            self._chunks.append(pcm)
            self.queued += pcm.size
            while self.queued > self.max_samples:
                excess = self.queued - self.max_samples
                head = self._chunks[0]
                if head.size <= excess:
                    self._chunks.popleft()
                    cut = head.size
                else:
                    self._chunks[0], cut = head[excess:], excess
                self.queued -= cut
                self.dropped += cut

    def pull(self, n: int) -> np.ndarray:
        """`n` samples to play now: queued audio, zero-padded when there is not enough (or while prefilling)."""
        out = np.zeros(n, np.float32)
        with self._lock:
            if not self.playing:
                if self.queued < self.prefill:
                    return out
                self.playing = True
            filled = 0
            while filled < n and self._chunks:
                head = self._chunks[0]
                take = min(n - filled, head.size)
                out[filled:filled + take] = head[:take]
                if take == head.size:
                    self._chunks.popleft()
                else:
                    self._chunks[0] = head[take:]
                filled += take
            self.queued -= filled
            if filled < n:
                self.playing = False
                self.underruns += 1
        return out


class SoundDeviceMic:
    """The microphone as a MicSource: a sounddevice InputStream of 1920-sample float32 blocks, opened when
    the iteration starts and closed when it ends."""

    def __init__(self, sd, device: int):
        self.sd, self.device = sd, device

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        loop = asyncio.get_running_loop()
        blocks: asyncio.Queue[np.ndarray] = asyncio.Queue()

        def callback(indata, frames, time_info, status) -> None:
            if status:
                logger.debug("microphone: %s", status)
            loop.call_soon_threadsafe(blocks.put_nowait, np.array(indata[:, 0], dtype=np.float32))

        try:
            stream = self.sd.InputStream(samplerate=SAMPLE_RATE, blocksize=BLOCK, device=self.device, channels=1,
                                         dtype="float32", callback=callback)
        except Exception as e:  # PortAudioError, ValueError for unsupported settings
            raise AudioDeviceError(f"cannot open the microphone: {e}") from None
        with stream:
            while True:
                yield await blocks.get()


class SoundDeviceSpeaker:
    """The speaker as a SpeakerSink: a sounddevice OutputStream whose callback plays out of a JitterBuffer."""

    def __init__(self, sd, device: int, buffer: JitterBuffer | None = None):
        self.buffer = buffer or JitterBuffer()

        def callback(outdata, frames, time_info, status) -> None:
            if status:
                logger.debug("speaker: %s", status)
            outdata[:, 0] = self.buffer.pull(frames)

        try:
            self.stream = sd.OutputStream(samplerate=SAMPLE_RATE, blocksize=BLOCK, device=device, channels=1,
                                          dtype="float32", callback=callback)
            self.stream.start()
        except Exception as e:
            raise AudioDeviceError(f"cannot open the speaker: {e}") from None

    def play(self, pcm: np.ndarray) -> None:
        self.buffer.push(pcm)

    def close(self, drain: bool = True) -> None:
        """Stop the stream, first letting the queued audio play out (at most its length plus 0.5 s)."""
        if drain and self.buffer.queued:
            self.buffer.playing = True  # the prefill would never come: play what is there
            deadline = time.monotonic() + self.buffer.queued / SAMPLE_RATE + 0.5
            while self.buffer.queued and time.monotonic() < deadline:
                time.sleep(0.02)
        self.stream.stop()
        self.stream.close()
