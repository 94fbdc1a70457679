"""Checkpoint conversion: Hugging Face (:mod:`jaxlm.convert.hf`) and GGUF (:mod:`jaxlm.convert.gguf`) to and
from jaxlm; tokenizers for imported checkpoints (:mod:`jaxlm.convert.tokenizer`)."""
