"""PromptEHR: prompt-conditioned BART for longitudinal, multimodal EHR generation."""

from ehrgen.models.promptehr.config import PromptEHRConfig
from ehrgen.models.promptehr.promptehr import PromptEHR

__all__ = ["PromptEHR", "PromptEHRConfig"]
