"""GPT-2: shapes, causality, packing, KV cache, jit/scan parity, gradients, input errors (see _lm_checks)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _lm_checks import *  # noqa: F403  (the shared decoder-LM tests)
from _lm_checks import FWD, LM, make_lm

from jaxlm import count
from jaxlm.models import gpt2


@pytest.fixture(scope="module")
def lm() -> LM:
    return make_lm(gpt2, gpt2.PRESETS["gpt2-tiny"].config)


def test_gpt2_parameter_layout_and_init():
    cfg = gpt2.PRESETS["gpt2-124m"].config
    spec = gpt2.spec(cfg)
    assert "lm_head" not in spec  # tied embeddings
    assert spec["embed"]["positions"].shape == (1024, 768)
    assert spec["layers"]["attn"]["q"]["w"].shape == (12, 768, 12, 64)
    assert count(spec["layers"]) == 12 * 7_087_872  # one GPT-2 small block
    tiny = gpt2.PRESETS["gpt2-tiny"].config
    p = gpt2.init(jax.random.key(0), tiny)
    # residual projections start at std 0.02 / sqrt(2 * n_layers)
    std_o = float(np.std(p["layers"]["attn"]["o"]["w"]))
    std_q = float(np.std(p["layers"]["attn"]["q"]["w"]))
    assert std_q == pytest.approx(0.02, rel=0.1)
    assert std_o == pytest.approx(0.02 / np.sqrt(2 * tiny.n_layers), rel=0.1)


def test_alibi_variant_left_padded_cache_decoding_equals_unpadded_full_forward():
    """ALiBi (Press et al.) in place of learned positions: decoding a left-padded prompt through the KV cache
    (``kv_valid`` + ``positions``) gives the logits of the unpadded full forward pass."""
    cfg = gpt2.PRESETS["gpt2-tiny"].config.replace(pos_emb="alibi")
    params = gpt2.init(jax.random.key(0), cfg)
    assert "positions" not in params["embed"]
    toks = jax.random.randint(jax.random.key(1), (1, 6), 0, cfg.vocab_size)
    full = FWD(params, toks, cfg)[0]
    pad = 2
    padded = jnp.concatenate([jnp.zeros((1, pad), jnp.int32), toks], 1)  # [1, 8]
    valid = jnp.arange(10)[None] >= pad  # 10 cache slots
    pos = jnp.maximum(jnp.arange(8)[None] - pad, 0)
    cache = gpt2.init_cache(cfg, 1, 10)
    out, aux = FWD(params, padded[:, :5], cfg, positions=pos[:, :5], kv_valid=valid, cache=cache, cache_index=0)
    outs = [out[0, pad:]]
    for t in range(5, 8):
        out, aux = FWD(params, padded[:, t:t + 1], cfg, positions=pos[:, t:t + 1], kv_valid=valid,
                       cache=aux["cache"], cache_index=t)
        outs.append(out[0])
    np.testing.assert_allclose(jnp.concatenate(outs, 0), full, atol=1e-5)
