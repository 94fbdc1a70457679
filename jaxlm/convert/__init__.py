"""Checkpoint conversion.

- :mod:`jaxlm.convert.hf`: Hugging Face <-> jaxlm (GPT-2, BERT incl. sentence-transformers, LLaMA/Mistral):
  config and parameter-name maps, ``load`` and ``save``;
- :mod:`jaxlm.convert.gguf`: llama-family GGUF files (llama.cpp) -> jaxlm, dequantised;
- :mod:`jaxlm.convert.native`: the jaxlm params directory ``jaxlm convert --to DIR`` writes;
- :mod:`jaxlm.convert.tokenizer`: tokenizers for imported checkpoints (GPT-2 BPE, WordPiece, GGUF BPE);
- :mod:`jaxlm.convert.text`: sentence-transformers embeddings and chat templates.
"""
