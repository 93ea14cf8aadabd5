"""Patients as token ids: the tokenizer, the encoded cohort, batching and the grammar
of a visit that every model and the sampler consult."""

from ehrgen.tokens.tokenizer import SPECIAL_TOKENS, CodeTokenizer

__all__ = ["SPECIAL_TOKENS", "CodeTokenizer"]
