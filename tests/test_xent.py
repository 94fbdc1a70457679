"""The fused projection + cross-entropy (own VJP, no stored logits) equals the plain path
(``logits = h @ E^T`` -> :func:`jaxlm.losses.cross_entropy`): sums and gradients, with weights, several
token blocks, and as the causal-LM task (:func:`jaxlm.train.tasks.fused_causal_lm`) inside the real train
step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import losses
from jaxlm.models import gpt2
from jaxlm.nn import xent


def test_fused_equals_plain_sums_and_grads():
    B, T, D, V = 2, 10, 16, 50
    kh, ke, kt, kw = jax.random.split(jax.random.key(0), 4)
    h = jax.random.normal(kh, (B, T, D))
    table = jax.random.normal(ke, (V, D)) * 0.5
    t = jax.random.randint(kt, (B, T), 0, V)
    w = (jax.random.uniform(kw, (B, T)) > 0.3).astype(jnp.float32)

    def plain(h, table):
        return losses.cross_entropy(jnp.einsum("BTD,VD->BTV", h, table), t, w)

    def fused(h, table):  # one block
        return xent.cross_entropy(h, table, t, w)

    def fused_blocks(h, table):  # 20 tokens in blocks of 7, 7, 6
        return xent.cross_entropy(h, table, t, w, block=7)

    @jax.jit
    def both(h, table):
        out = []
        for fn in (plain, fused, fused_blocks):
            sums = fn(h, table)
            g = jax.grad(lambda a, b, fn=fn: fn(a, b)["loss"] * 0.7, argnums=(0, 1))(h, table)
            out.append((sums, g))
        return out

    (s_p, g_p), *fused_out = both(h, table)
    for s_f, g_f in fused_out:
        for k in ("loss", "nll", "correct", "weight"):
            np.testing.assert_allclose(s_f[k], s_p[k], rtol=1e-5, err_msg=k)
        for a, b in zip(g_f, g_p, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_fused_errors():
    h, table, t = jnp.zeros((2, 3, 4)), jnp.zeros((5, 4)), jnp.zeros((2, 3), jnp.int32)
    with pytest.raises(ValueError, match="disagree"):
        xent.cross_entropy(h, table, t[:, :2])
    with pytest.raises(ValueError, match="vocab"):
        xent.cross_entropy(h, table.T, t)
    with pytest.raises(ValueError, match="block"):
        xent.cross_entropy(h, table, t, block=0)


@pytest.mark.slow
def test_fused_task_in_train_step_matches_plain_task():
    """A real train step (jaxlm.train.step) with the fused task fn == with the plain causal_lm task (SGD, so
    parameter differences are gradient differences; Adam would amplify rounding in near-zero gradients)."""
    import optax

    from jaxlm.train import tasks
    from jaxlm.train.state import create_state
    from jaxlm.train.step import make_train_step

    cfg = gpt2.PRESETS["gpt2-tiny"].config.replace(dropout=0.0, attn_dropout=0.0)
    opt = optax.sgd(0.5)
    B, T = 2, 16
    toks = jax.random.randint(jax.random.key(1), (B, T + 1), 0, cfg.vocab_size)
    batch = {"inputs": toks[:, :-1], "targets": toks[:, 1:], "weights": jnp.ones((B, T)).at[1, :4].set(0.0),
             "positions": jnp.broadcast_to(jnp.arange(T), (B, T)), "segment_ids": jnp.ones((B, T), jnp.int32)}
    out = {}
    for name, task in (("plain", tasks.make_task("causal_lm")),
                       ("fused", tasks.make_task("causal_lm", fused=True))):
        step = jax.jit(make_train_step(task, cfg, opt))
        state = create_state(jax.random.key(0), cfg, opt)
        state, m = step(state, batch)
        out[name] = (state.params, m)
    np.testing.assert_allclose(out["fused"][1]["loss"], out["plain"][1]["loss"], rtol=1e-5)
    np.testing.assert_allclose(out["fused"][1]["accuracy"], out["plain"][1]["accuracy"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(out["fused"][0]), jax.tree.leaves(out["plain"][0]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
