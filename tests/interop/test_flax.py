"""Flax NNX interop: wrap a jaxlm model as an nnx.Module, unwrap it, train it with nnx.Optimizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxlm.interop import flax as jflax
from jaxlm.models import get

TOKENS = np.random.default_rng(0).integers(0, 512, (2, 12)).astype(np.int32)


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny", "bert-tiny"])
def test_wrap_unwrap_same_outputs(name):
    fam, cfg = get(name)
    params = fam.init(jax.random.key(0), cfg)
    model = jflax.wrap(fam, cfg, params)
    ours, theirs = model(jnp.asarray(TOKENS)), fam.apply(params, jnp.asarray(TOKENS), cfg)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    back = jflax.unwrap(model)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # every parameter is an nnx.Param carrying its logical axes
    q = model.params["layers"]["attn"]["q"]["w"]
    assert isinstance(q, nnx.Param) and q.get_metadata()["out_sharding"] == ("layers", "embed", "heads", "head_dim")
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n_params == sum(x.size for x in jax.tree.leaves(params))


def test_encoder_decoder_call_and_method():
    fam, cfg = get("transformer-tiny")
    params = fam.init(jax.random.key(1), cfg)
    model = jflax.Model(fam, cfg, params)
    src = jnp.asarray(TOKENS[:, :8] % cfg.vocab_size)
    tgt = jnp.asarray(TOKENS[:, 2:9] % cfg.vocab_size)
    np.testing.assert_array_equal(np.asarray(model(src, tgt)), np.asarray(fam.apply(params, src, tgt, cfg)))
    np.testing.assert_array_equal(np.asarray(model.call("encode", src)), np.asarray(fam.encode(params, src, cfg)))


def _xent(logits, tokens):
    lp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.take_along_axis(lp, tokens[:, 1:, None], -1).mean()


def test_nnx_optimizer_step_equals_optax_step():
    fam, cfg = get("llama-tiny")
    params = fam.init(jax.random.key(2), cfg)
    tokens = jnp.asarray(TOKENS)
    tx = optax.adamw(1e-2, weight_decay=0.1)

    # jaxlm / optax on the raw tree
    loss_raw, grads = jax.value_and_grad(lambda p: _xent(fam.apply(p, tokens, cfg), tokens))(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    expected = optax.apply_updates(params, updates)

    # Flax NNX
    model = jflax.wrap(fam, cfg, params)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        loss, g = nnx.value_and_grad(lambda m: _xent(m(tokens), tokens))(model)
        opt.update(model, g)
        return loss

    loss_nnx = step(model, opt)
    np.testing.assert_allclose(float(loss_nnx), float(loss_raw), rtol=1e-6)
    got = jflax.unwrap(model)
    moved = 0.0
    for a, b, p0 in zip(jax.tree.leaves(got), jax.tree.leaves(expected), jax.tree.leaves(params)):
        # Adam's first step is ~lr * g / |g|: for gradients near zero, float32 differences between the
        # jitted and eager gradient are amplified, so compare to within 0.1 % of the step size lr
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
        moved = max(moved, float(jnp.abs(a - p0).max()))
    assert moved > 1e-3  # the step really changed the parameters


def test_compose_inside_user_module():
    """A user nnx.Module holding a jaxlm BERT encoder plus its own nnx.Linear head."""
    fam, cfg = get("bert-tiny")

    class Classifier(nnx.Module):
        def __init__(self, rngs):
            self.encoder = jflax.Model(fam, cfg, rngs=rngs)
            self.head = nnx.Linear(cfg.d_model, 3, rngs=rngs)

        def __call__(self, tokens):
            return self.head(self.encoder(tokens)["pooled"])

    m = Classifier(nnx.Rngs(0))
    out = m(jnp.asarray(TOKENS))
    assert out.shape == (2, 3)
    enc = fam.apply(jflax.unwrap(m.encoder), jnp.asarray(TOKENS), cfg)["pooled"]
    np.testing.assert_allclose(np.asarray(out), np.asarray(m.head(enc)), rtol=1e-6)


def test_errors():
    fam, cfg = get("gpt2-tiny")
    with pytest.raises(ValueError, match="rngs"):
        jflax.Model(fam, cfg)
    bad = fam.init(jax.random.key(0), cfg.replace(d_ff=128))
    with pytest.raises(ValueError, match="mlp/wi/w"):
        jflax.wrap(fam, cfg, bad)
    with pytest.raises(TypeError, match="Model"):
        jflax.unwrap({"a": 1})


def test_mesh_placement_uses_jaxlm_rules():
    from jaxlm import sharding

    fam, cfg = get("gpt2-tiny")
    mesh = sharding.make_mesh()
    model = jflax.Model(fam, cfg, rngs=nnx.Rngs(0), mesh=mesh)
    want = model.shardings(mesh)
    got = jax.tree.map(lambda a: a.sharding, jflax.unwrap(model))
    assert jax.tree.leaves(got) == jax.tree.leaves(want)
    assert model.logical_axes()["embed"]["tokens"] == ("vocab", "embed")
