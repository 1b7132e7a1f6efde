"""The embedded default models, shipped inside the package (antiphon/models/, MODELS.md): trained by
this project's recipes (`antiphon train`) on its synthetic speech, so that every command works on a
machine with no network. Commands default to them; `embedded:NAME` names one wherever a model source
is taken (`Codec.from_pretrained`, `LM.from_pretrained`, --model)."""

from __future__ import annotations

from pathlib import Path

from antiphon.errors import CheckpointError

MODELS = Path(__file__).parent / "models"
NAMES = ("codec", "stt", "tts", "translation", "dialogue")
PREFIX = "embedded:"


def embedded(name: str) -> str:
    """The directory of embedded model `name` (one of NAMES)."""
    if name not in NAMES:
        raise CheckpointError(f"no embedded model {name!r}: there are {', '.join(NAMES)}")
    path = MODELS / name
    if not path.is_dir():
        raise CheckpointError(f"the embedded {name} model is missing from this installation ({path}); "
                              "reinstall antiphon or give --model")
    return str(path)


def resolve(source):
    """`embedded:NAME` -> that model's directory; any other source unchanged."""
    if isinstance(source, str) and source.startswith(PREFIX):
        return embedded(source[len(PREFIX):])
    return source
