"""Patients as token ids: the tokenizer (``tokenizer``), the encoded cohort
(``encoded``), the grammar of a visit that every model and the sampler consult
(``grammar``, which imports torch) and length-grouped batching (``batching``)."""

from ehrgen.tokens.tokenizer import SPECIAL_TOKENS, CodeTokenizer

__all__ = ["SPECIAL_TOKENS", "CodeTokenizer"]
