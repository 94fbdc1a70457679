"""Using imported checkpoints: sentence-transformers embeddings and Hugging Face chat templates."""

from __future__ import annotations

import numpy as np

from jaxlm.data.chat import apply_chat_template  # noqa: F401  (rendering lives in data/, shared with SFT)
from jaxlm.models.base import Loaded


def sentence_embeddings(loaded: Loaded, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Sentence-transformers embeddings of ``texts`` -> [N, D] float32: an encoder's hidden states pooled over
    real tokens as the directory's Pooling module says (mean by default, "cls" supported) and L2-normalised
    when it has a Normalize module."""
    import jax.numpy as jnp

    if loaded.family.KIND != "encoder" or loaded.tokenizer is None:
        raise ValueError("sentence_embeddings needs an encoder checkpoint (e.g. BERT) with its tokenizer (a "
                         "sentence-transformers directory such as all-MiniLM-L6-v2).")
    info = (loaded.extra or {}).get("sentence_transformers") or {"pooling": "mean", "normalize": False}
    if info["pooling"] not in ("mean", "cls"):
        raise ValueError(f"pooling {info['pooling']!r} is not supported; jaxlm implements 'mean' and 'cls'.")
    max_len = min(info.get("max_seq_length") or loaded.config.max_len, loaded.config.max_len)
    cfg = loaded.config
    if getattr(cfg, "heads", ()):  # only the hidden states are needed: skip task heads (an MLM's [B, T, V])
        cfg = cfg.replace(heads=())
    out = []
    for s in range(0, len(texts), batch_size):
        encs = loaded.tokenizer.encode_batch(texts[s:s + batch_size])
        # the attention mask, not the length: a tokenizer.json may carry its own padding settings
        ids = [[t for t, m in zip(e.ids, e.attention_mask) if m][:max_len] for e in encs]
        T = max(map(len, ids))
        tokens = np.full((len(ids), T), cfg.pad_id, np.int32)
        valid = np.zeros((len(ids), T), bool)
        for i, x in enumerate(ids):
            tokens[i, :len(x)], valid[i, :len(x)] = x, True
        res = loaded.family.apply(loaded.params, jnp.asarray(tokens), cfg, valid=jnp.asarray(valid))
        if "hidden" not in res:
            raise ValueError(f"{loaded.family.__name__}.apply returns no 'hidden' states to pool.")
        h = np.asarray(res["hidden"], np.float32)
        if info["pooling"] == "mean":
            e = (h * valid[..., None]).sum(1) / np.maximum(valid.sum(1, keepdims=True), 1)
        else:
            e = h[:, 0]
        if info.get("normalize"):
            e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
        out.append(e)
    return np.concatenate(out)
