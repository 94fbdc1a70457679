"""Checkpoint conversion, generic over the families: each family module declares its Hugging Face (and GGUF)
correspondence as data (``HF``, see :mod:`jaxlm.models.hfmap`) and these modules carry it out.

- :mod:`jaxlm.convert.hf`: Hugging Face <-> jaxlm: config and parameter names, ``load`` and ``save``;
- :mod:`jaxlm.convert.gguf`: GGUF files (llama.cpp) -> jaxlm, dequantised;
- :mod:`jaxlm.convert.native`: the jaxlm params directory ``jaxlm convert --to DIR`` writes;
- :mod:`jaxlm.convert.tokenizer`: tokenizers for imported checkpoints (GPT-2 BPE, WordPiece, GGUF BPE);
- :mod:`jaxlm.convert.text`: sentence-transformers embeddings and chat templates.
"""
