"""Attention variants of today's checkpoints (issue 16): sliding-window masks, score scale, logit soft-cap,
q/k/v-only biases, RoPE scaling; every implementation against an independent float64 numpy attention,
the flash VJP through the soft-cap against autodiff of the reference path, RoPE scaling against
transformers' own rope init functions, and per-layer windows in the decoder (scan, loop, KV cache)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import ConfigError
from jaxlm.models import bert, decoder, llama
from jaxlm.nn import attention, masks, positions
from jaxlm.params import init

B, T, K = 2, 9, 8
RNG = np.random.default_rng(16)


def _np_attention(q, k, v, mask, scale=None, softcap=None):
    """float64 softmax(cap(q k^T * scale), masked) v with key/value heads repeated over their groups."""
    H, G = q.shape[2], k.shape[2]
    k = np.repeat(k, H // G, axis=2).astype(np.float64)
    v = np.repeat(v, H // G, axis=2).astype(np.float64)
    s = np.einsum("bthk,bshk->bhts", q.astype(np.float64), k) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if softcap is not None:
        s = softcap * np.tanh(s / softcap)
    s = np.where(np.broadcast_to(mask, s.shape), s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhts,bshk->bthk", w / w.sum(-1, keepdims=True), v)


def _np_window(qp, kp, W):
    """Brute force: key j visible from query i when j <= i and i - j < W."""
    out = np.zeros((qp.shape[0], 1, qp.shape[1], kp.shape[1]), bool)
    for b in range(qp.shape[0]):
        for t in range(qp.shape[1]):
            for s in range(kp.shape[1]):
                out[b, 0, t, s] = kp[min(b, kp.shape[0] - 1), s] <= qp[b, t] and qp[b, t] - kp[min(b, kp.shape[0] - 1), s] < W
    return out


def test_window_mask_is_the_brute_force_band_and_composes_with_segments_padding_and_cache_slots():
    for W in (1, 3, T, T + 5):
        got = np.asarray(masks.make_mask(T, causal=True, window=W))
        want = _np_window(np.arange(T)[None], np.arange(T)[None], W)
        np.testing.assert_array_equal(got, want, err_msg=f"W={W}")
    # W = 1: each token sees only itself; W >= T: plain causal
    np.testing.assert_array_equal(np.asarray(masks.make_mask(4, causal=True, window=1))[0, 0], np.eye(4, dtype=bool))
    np.testing.assert_array_equal(np.asarray(masks.make_mask(T, causal=True, window=T)),
                                  np.asarray(masks.make_mask(T, causal=True)))
    # cache slots 5, 6 over 8 slots, W = 3: keys 3..5 and 4..6
    mc = np.asarray(masks.make_mask(2, 8, causal=True, q_positions=jnp.array([[5, 6]]),
                                    kv_positions=jnp.arange(8)[None], window=3))[0, 0]
    np.testing.assert_array_equal(mc, [[0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1, 0]])
    seg = jnp.array([[1] * 5 + [2] * 4, [1] * 2 + [2] * 7])
    valid = jnp.array([[True] * T, [False] + [True] * (T - 1)])
    got = np.asarray(masks.make_mask(T, causal=True, window=3, q_segment_ids=seg, kv_valid=valid))
    band = _np_window(np.arange(T)[None], np.arange(T)[None], 3)
    want = band & (np.asarray(seg)[:, None, :, None] == np.asarray(seg)[:, None, None, :]) & np.asarray(valid)[:, None, None, :]
    np.testing.assert_array_equal(got, want)
    # bidirectional window: |i - j| < W
    bi = np.asarray(masks.make_mask(5, window=2))[0, 0]
    np.testing.assert_array_equal(bi, np.abs(np.arange(5)[:, None] - np.arange(5)[None]) < 2)
    with pytest.raises(ValueError, match="window=0 must be a positive number of keys"):
        masks.window_mask(jnp.arange(3)[None], jnp.arange(3)[None], 0)


def _window_seg_pad_mask(W):
    seg = jnp.array([[1] * 5 + [2] * 4, [1] * 3 + [2] * 6])
    # a padded key 1 in row 1; with W = 1 query 1 would see nothing, so no padding there
    valid = jnp.array([[True] * T, [True, W == 1] + [True] * (T - 2)])  # no query row fully masked
    return masks.make_mask(T, causal=True, window=W, q_segment_ids=seg, kv_valid=valid)


IMPLS = ["reference", "xla", "flash"]
VARIANTS = {"window3": dict(W=3), "window1": dict(W=1), "scale1": dict(W=4, scale=1.0),
            "softcap": dict(W=3, softcap=2.0), "gemma2-like": dict(W=2, scale=0.3, softcap=1.5)}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_implementation_matches_numpy_with_window_padding_segments_scale_softcap(impl, variant):
    v = VARIANTS[variant]
    H, G = 4, 2
    q = RNG.standard_normal((B, T, H, K)).astype(np.float32) * 2
    k = RNG.standard_normal((B, T, G, K)).astype(np.float32) * 2
    val = RNG.standard_normal((B, T, G, K)).astype(np.float32)
    m = _window_seg_pad_mask(v["W"])
    out, _ = attention.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(val), mask=m, impl=impl,
                                             scale=v.get("scale"), softcap=v.get("softcap"))
    want = _np_attention(q, k, val, np.asarray(m), v.get("scale"), v.get("softcap"))
    np.testing.assert_allclose(out, want, atol=2e-5)


@pytest.mark.parametrize("impl", ["xla", "flash"])
def test_gradients_through_softcap_and_scale_equal_the_reference_autodiff(impl):
    H, G = 4, 2
    q, k, v = (jnp.asarray(RNG.standard_normal(s).astype(np.float32) * 2)
               for s in ((B, T, H, K), (B, T, G, K), (B, T, G, K)))
    m = _window_seg_pad_mask(3)
    ct = jnp.asarray(RNG.standard_normal((B, T, H, K)).astype(np.float32))

    def loss(impl_, q, k, v):
        out, _ = attention.dot_product_attention(q, k, v, mask=m, impl=impl_, scale=0.4, softcap=1.5)
        return jnp.sum(out * ct)

    want = jax.grad(lambda *a: loss("reference", *a), argnums=(0, 1, 2))(q, k, v)
    got = jax.grad(lambda *a: loss(impl, *a), argnums=(0, 1, 2))(q, k, v)
    for g, w, name in zip(got, want, "qkv", strict=True):
        np.testing.assert_allclose(g, w, atol=2e-5, err_msg=name)
        assert np.abs(np.asarray(w)).max() > 1e-3


def test_qkv_bias_only_puts_biases_on_q_k_v():
    cfg = attention.AttentionConfig(d_model=32, n_heads=4, n_kv_heads=2, use_bias=False, qkv_bias=True)
    s = attention.spec(cfg)
    assert all("b" in s[n] for n in "qkv") and "b" not in s["o"]
    assert s["k"]["b"].shape == (2, 8)
    off = attention.spec(attention.AttentionConfig(d_model=32, n_heads=4, use_bias=True, qkv_bias=False))
    assert all("b" not in off[n] for n in "qkv") and "b" in off["o"]
    # and the biases are applied: q = x W + b
    p = init(jax.random.key(0), s)
    p["q"]["b"] = jnp.ones_like(p["q"]["b"])
    x = jnp.asarray(RNG.standard_normal((1, 3, 32)), jnp.float32)
    q = attention.project_q(p, x, cfg)
    np.testing.assert_allclose(q, np.einsum("btd,dhk->bthk", x, p["q"]["w"]) + 1.0, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# RoPE scaling against transformers' rope init functions
@pytest.mark.parametrize("rope", [
    dict(rope_type="linear", factor=4.0),
    dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_len=8192),
    dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_len=64),
])
def test_rope_scaling_equals_transformers_rope_init_functions(rope):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    head_dim, theta = 64, 500000.0
    params = {"rope_type": rope["rope_type"], "rope_theta": theta, "factor": rope["factor"]}
    if rope["rope_type"] == "llama3":
        params.update(low_freq_factor=rope["low_freq_factor"], high_freq_factor=rope["high_freq_factor"],
                      original_max_position_embeddings=rope["original_max_len"])
    hc = transformers.LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                                  max_position_embeddings=8 * rope.get("original_max_len", 2048),
                                  rope_parameters=params)
    want, factor = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hc, "cpu")
    assert factor == 1.0  # neither variant rescales cos/sin
    got = positions.rope_frequencies(head_dim, theta, **{k: v for k, v in rope.items()})
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-6)
    plain = positions.rope_frequencies(head_dim, theta)
    assert not np.allclose(np.asarray(got), np.asarray(plain))  # the scaling did something
    if rope["rope_type"] == "llama3":  # high frequencies untouched, the lowest divided by the factor
        assert float(got[0]) == float(plain[0])
        np.testing.assert_allclose(float(got[-1]), float(plain[-1]) / rope["factor"], rtol=1e-6)


def test_unknown_rope_type_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match=r"rope_type='yarn' is not implemented; choose one of \('default', 'linear', 'llama3'\)"):
        positions.rope_frequencies(8, rope_type="yarn")
    with pytest.raises(ConfigError, match="rope_type"):
        llama.Config(rope_type="yarn")


# ------------------------------------------------------------------------------------------------------------
# per-layer windows in the decoder stack
def _tiny(**kw):
    base = dict(vocab_size=97, max_len=32, d_model=32, n_heads=4, n_kv_heads=2, n_layers=4, d_ff=64)
    return llama.Config(**{**base, **kw})


def _manual_forward(params, tokens, cfg):
    """The decoder written out by hand with each layer's own explicit mask (a Python loop, no scan)."""
    Bt, Tt = tokens.shape
    glob = masks.make_mask(Tt, causal=True)
    loc = masks.make_mask(Tt, causal=True, window=cfg.sliding_window)
    x = decoder.embed(params["embed"], tokens, cfg, jnp.broadcast_to(jnp.arange(Tt)[None], (Bt, Tt)))
    from jaxlm.nn import blocks, norms
    for i, is_local in enumerate(cfg.local_layers):
        x, _ = blocks.apply(jax.tree.map(lambda a, i=i: a[i], params["layers"]), x, cfg, mask=loc if is_local else glob)
    return decoder.logits(params, norms.apply(params["final_norm"], x, cfg), cfg)


PATTERNS = {"all-local": ("local",), "local/global": ("local", "global"), "global/local": ("global", "local"),
            "explicit": ("global", "local", "local", "global")}


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_per_layer_windows_scan_loop_and_kv_cache_past_the_window(pattern):
    cfg = _tiny(sliding_window=3, attn_pattern=PATTERNS[pattern])
    assert cfg.local_layers == tuple((PATTERNS[pattern] * 4)[i] == "local" for i in range(4))
    params = llama.init(jax.random.key(1), cfg)
    tokens = jax.random.randint(jax.random.key(2), (B, T), 0, cfg.vocab_size)
    fwd = jax.jit(llama.apply, static_argnums=2)
    full = fwd(params, tokens, cfg)
    np.testing.assert_allclose(full, _manual_forward(params, tokens, cfg), atol=1e-5)
    np.testing.assert_allclose(fwd(params, tokens, cfg.replace(scan_layers=False)), full, atol=1e-5)
    for impl in ("xla", "flash") if pattern == "local/global" else ():  # the masks are the same for any pattern
        np.testing.assert_allclose(fwd(params, tokens, cfg.replace(attn_impl=impl)), full, atol=1e-5, err_msg=impl)
    # the window matters: a full-attention model differs from position 3 on (the first token past the window)
    nowin = fwd(params, tokens, cfg.replace(sliding_window=None))
    np.testing.assert_allclose(nowin[:, :3], full[:, :3], atol=1e-5)
    assert np.abs(np.asarray(nowin[:, 3:] - full[:, 3:])).max() > 1e-3
    # KV cache: 2-token prefill then one token at a time, far past the window, equals the full recompute
    cache = llama.init_cache(cfg, B, T + 2)
    step = jax.jit(lambda p, t, c, i: llama.apply(p, t, cfg, cache=c, cache_index=i))
    logits, aux = step(params, tokens[:, :2], cache, 0)
    outs = [logits]
    for t in range(2, T):
        logits, aux = step(params, tokens[:, t:t + 1], aux["cache"], t)
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)


def test_generate_decode_loop_past_the_window_equals_full_recompute():
    from jaxlm import generate

    cfg = _tiny(sliding_window=3, attn_pattern=("local", "global"))
    params = llama.init(jax.random.key(3), cfg)
    prompts = [[5, 6, 7, 8], [9, 10]]  # left padding in the batch
    out = generate.generate(params, cfg, prompts, max_new_tokens=8, greedy=True, return_logits=True)
    for b, prompt in enumerate(prompts):
        seq = list(prompt)
        for n in range(8):  # greedy by full recompute, no cache
            full = llama.apply(params, jnp.asarray([seq]), cfg)[0, -1]
            np.testing.assert_allclose(out.logits[b, n], full, atol=1e-5)
            seq.append(int(jnp.argmax(full)))
        assert out.tokens[b] == seq[len(prompt):], (out.tokens[b], seq)


def test_window_and_pattern_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"sliding_window=0 must be an integer in \[1, max_len=32\]"):
        _tiny(sliding_window=0)
    with pytest.raises(ConfigError, match=r"sliding_window=33 must be an integer in \[1, max_len=32\]"):
        _tiny(sliding_window=33)
    with pytest.raises(ConfigError, match="attn_pattern=.*'local'/'global'"):
        _tiny(sliding_window=3, attn_pattern=("local", "sliding"))
    with pytest.raises(ConfigError, match="attn_pattern"):
        _tiny(sliding_window=3, attn_pattern=("local",) * 5)
    with pytest.raises(ConfigError, match="attn_softcap=0.0 must be positive"):
        _tiny(attn_softcap=0.0)
    with pytest.raises(ConfigError, match="attn_scale"):
        _tiny(attn_scale=-1.0)
    # an encoder cannot silently ignore a window
    cfg = bert.PRESETS["bert-tiny"].config.replace(sliding_window=4) if "bert-tiny" in bert.PRESETS else None
    if cfg is not None:
        p = bert.init(jax.random.key(0), cfg)
        with pytest.raises(ValueError, match="sliding windows are only supported in causal decoders"):
            bert.apply(p, jnp.ones((1, 6), jnp.int32), cfg)
