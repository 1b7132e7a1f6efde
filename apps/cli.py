"""The `antiphon` command: one entry point, one small module per subcommand.

A subcommand module has `register(subparsers, common)`: it adds its parser (with `common` among the
parents, for -v) and sets `run`, a function of the parsed arguments that returns an exit status.
Adding a subcommand is adding its module to `COMMANDS`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from antiphon import __version__
from antiphon.apps import bench_cmd, codec_cmd, serve_cmd, speak_cmd, talk_cmd, transcribe_cmd, translate_cmd
from antiphon.apps import data_cmd, train_cmd
from antiphon.apps.help import Formatter
from antiphon.errors import AntiphonError

COMMANDS = (codec_cmd, bench_cmd, serve_cmd, talk_cmd, transcribe_cmd, speak_cmd, translate_cmd, data_cmd, train_cmd)

DESCRIPTION = "antiphon: a full-duplex realtime speech model service (Mimi-compatible codec, multistream LM)."
EPILOG = """\
examples:
  antiphon codec roundtrip speech.wav roundtrip.wav      # encode + decode, print bitrate, speed, SNR
  antiphon codec encode speech.wav speech.codes          # 24 kHz audio -> 12.5 Hz codes
  antiphon codec decode speech.codes speech-decoded.wav  # codes -> audio
  antiphon -v codec encode speech.wav speech.codes --model path/to/codec
  antiphon bench codec                                   # streaming speed, against the reference
  antiphon serve --slots 4                               # WebSocket /api/chat on 127.0.0.1:8998
  antiphon talk                                          # talk with it: microphone and speaker
  antiphon transcribe speech.wav --json                  # speech to text, words with times
  antiphon speak "Hello there." -o hello.wav             # text to speech
  antiphon translate question.wav -o question-fr.wav     # speech translation, English <-> French

Run `antiphon COMMAND --help` for the options of a command.
Errors print `antiphon: error: ...` and exit with status 2; Ctrl-C exits with 130."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="log progress: -v for info, -vv for debug")
    parser = argparse.ArgumentParser(prog="antiphon", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=Formatter, parents=[common])
    parser.add_argument("--version", action="version", version=f"antiphon {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)
    for module in COMMANDS:
        module.register(subparsers, [common])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]) and return the exit status."""
    try:
        args = build_parser().parse_args(argv)
        _setup_logging(getattr(args, "verbose", 0))
        return int(args.run(args) or 0)
    except SystemExit as e:  # argparse: --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except AntiphonError as e:
        print(f"antiphon: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("antiphon: interrupted", file=sys.stderr)
        return 130


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(verbosity: int) -> None:
    """antiphon's own loggers at WARNING, INFO (-v) or DEBUG (-vv); other libraries log as they do."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logger = logging.getLogger("antiphon")
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
