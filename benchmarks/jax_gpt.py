"""A minimal GPT written directly in ``jax.numpy``: the plain-JAX row of benchmarks/train.py.

What a user would write without jaxlm: weights stacked over layers and run with ``lax.scan``, attention by
``jax.nn.dot_product_attention``, cross-entropy over the full logits with ``optax``, ``optax.adamw`` with no
decay on biases and norms, one ``jax.jit`` with the state donated. Same model as the other rows: GPT-2
architecture (learned positions, pre-LayerNorm, GELU (tanh), tied head), float32, no dropout.

Only benchmarks import this file; it exists so every training table shows what jaxlm's layers cost over
plain JAX and what each jaxlm lever buys over the plain version.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def init(key: jax.Array, vocab: int, seq: int, d: int, heads: int, layers: int, d_ff: int) -> dict:
    """GPT-2 initialisation: N(0, 0.02), output projections scaled by 1/sqrt(2 L), zero biases."""
    ks = jax.random.split(key, 6)
    std, out_std = 0.02, 0.02 / (2 * layers) ** 0.5

    def normal(k, shape, s):
        return s * jax.random.normal(k, shape, jnp.float32)

    L = layers
    return {
        "wte": normal(ks[0], (vocab, d), std),
        "wpe": normal(ks[1], (seq, d), 0.01),
        "blocks": {
            "ln1_g": jnp.ones((L, d)), "ln1_b": jnp.zeros((L, d)),
            "w_qkv": normal(ks[2], (L, d, 3 * d), std), "b_qkv": jnp.zeros((L, 3 * d)),
            "w_o": normal(ks[3], (L, d, d), out_std), "b_o": jnp.zeros((L, d)),
            "ln2_g": jnp.ones((L, d)), "ln2_b": jnp.zeros((L, d)),
            "w_fc": normal(ks[4], (L, d, d_ff), std), "b_fc": jnp.zeros((L, d_ff)),
            "w_proj": normal(ks[5], (L, d_ff, d), out_std), "b_proj": jnp.zeros((L, d)),
        },
        "lnf_g": jnp.ones((d,)), "lnf_b": jnp.zeros((d,)),
    }


def _layer_norm(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * g + b


def forward(params: dict, tokens: jax.Array, heads: int) -> jax.Array:
    """tokens [B, T] -> logits [B, T, V]."""
    B, T = tokens.shape
    x = params["wte"][tokens] + params["wpe"][:T]  # [B, T, D]
    D = x.shape[-1]

    def block(x, p):
        h = _layer_norm(x, p["ln1_g"], p["ln1_b"])
        qkv = h @ p["w_qkv"] + p["b_qkv"]  # [B, T, 3D]
        q, k, v = jnp.split(qkv.reshape(B, T, 3, heads, D // heads), 3, axis=2)
        a = jax.nn.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], is_causal=True)  # [B, T, H, K]
        x = x + a.reshape(B, T, D) @ p["w_o"] + p["b_o"]
        h = _layer_norm(x, p["ln2_g"], p["ln2_b"])
        h = jax.nn.gelu(h @ p["w_fc"] + p["b_fc"], approximate=True)
        return x + h @ p["w_proj"] + p["b_proj"], None

    x, _ = jax.lax.scan(block, x, params["blocks"])
    x = _layer_norm(x, params["lnf_g"], params["lnf_b"])
    return x @ params["wte"].T  # tied head


def make_step(heads: int, lr: float, wd: float):
    """(optimizer, step): ``step(params, opt_state, x, y) -> params, opt_state, loss``, jitted, donated."""

    def decay_mask(params):  # matrices decay, biases and norms do not (as in the PyTorch rows)
        mask = {k: v.ndim >= 2 for k, v in params.items() if k != "blocks"}  # stacked leaves have a layer axis
        mask["blocks"] = {k: k.startswith("w_") for k in params["blocks"]}
        return mask

    opt = optax.adamw(lr, weight_decay=wd, mask=decay_mask)

    def loss_fn(params, x, y):
        logits = forward(params, x, heads)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return opt, jax.jit(step, donate_argnums=(0, 1))
