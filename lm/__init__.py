"""The multistream audio language model (temporal + depth transformer), its configs and loading."""

from antiphon.lm.conditioners import Condition
from antiphon.lm.config import LMConfig
from antiphon.lm.generate import LMGenerator
from antiphon.lm.model import LM, LMOutput

__all__ = ["Condition", "LM", "LMConfig", "LMGenerator", "LMOutput"]
