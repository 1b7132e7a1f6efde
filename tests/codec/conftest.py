from __future__ import annotations

import pytest

from antiphon.codec import Codec

from .tiny import make_tiny_codec


@pytest.fixture(scope="module")
def tiny_codec() -> Codec:
    return make_tiny_codec()
