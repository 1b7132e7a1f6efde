"""antiphon: a full-duplex realtime speech model service.

Subpackages: `antiphon.codec` (the Mimi-compatible codec), `antiphon.lm` (the multistream LM),
`antiphon.kernels` (Triton kernels beside their torch references), `antiphon.streaming` (the engine
and wire protocols), `antiphon.apps` (the `antiphon` command line).
"""

__version__ = "0.1.0"
