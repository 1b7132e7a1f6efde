"""Skip markers for tests that need a synthesizer other than espeak-ng (which must be installed:
its tests always run)."""

from __future__ import annotations

import pytest

from antiphon.train.synth import installed


def _needs(name: str):
    return pytest.mark.skipif(not installed(name),
                              reason=f"{name} is not installed (Debian packages in train/apt-packages.txt)")


needs_flite = _needs("flite")
needs_festival = _needs("festival")
