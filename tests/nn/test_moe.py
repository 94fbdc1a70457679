"""The mixture-of-experts layer: Mixtral's routing, the load-balancing loss against transformers, dropless ==
capacity-factor dispatch when nothing overflows, dropping and counting overflow, gradients into the router,
and the errors for bad settings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import params as P
from jaxlm.config import ConfigError
from jaxlm.nn import moe

CFG = moe.MoEConfig(d_model=16, d_ff=24, n_experts=4, top_k=2, init_std=0.3)
B, T = 2, 7


@pytest.fixture(scope="module")
def layer():
    params = P.init(jax.random.key(0), moe.spec(CFG))
    x = jax.random.normal(jax.random.key(1), (B, T, CFG.d_model))
    return params, x


def _reference(params, x, cfg, capacity=None):
    """Every expert on every token (numpy), combined with Mixtral's weights; with ``capacity``, the pairs past
    each expert's capacity (choice rank first, then token order) are dropped."""
    p = jax.tree.map(np.asarray, params)
    xf = np.asarray(x, np.float64).reshape(-1, cfg.d_model)
    logits = xf @ p["router"]["w"]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :cfg.top_k]
    w = np.take_along_axis(probs, top, -1)
    w /= w.sum(-1, keepdims=True)
    e = p["experts"]
    silu = lambda a: a / (1 + np.exp(-a))  # noqa: E731
    outs = np.stack([(silu(xf @ e["wi_0"]["w"][i]) * (xf @ e["wi_1"]["w"][i])) @ e["wo"]["w"][i]
                     for i in range(cfg.n_experts)])  # [E, N, D]
    y = np.zeros_like(xf)
    used = np.zeros(cfg.n_experts, int)
    dropped = 0
    for j in range(cfg.top_k):
        for n in range(xf.shape[0]):
            ex = top[n, j]
            if capacity is not None and used[ex] >= capacity:
                dropped += 1
                continue
            used[ex] += 1
            y[n] += w[n, j] * outs[ex, n]
    return y.reshape(x.shape), logits, top, dropped


def test_dropless_matches_a_dense_reference(layer):
    params, x = layer
    y, aux = moe.apply(params, x, CFG)
    ref, logits, top, _ = _reference(params, x, CFG)
    np.testing.assert_allclose(y, ref, atol=1e-5)
    assert int(aux["dropped"]) == 0
    load = np.bincount(top.reshape(-1), minlength=4) / (B * T)
    np.testing.assert_allclose(aux["load"], load, atol=1e-6)
    np.testing.assert_allclose(float(jnp.sum(aux["load"])), CFG.top_k, atol=1e-6)
    lse = np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(float(aux["z_loss"]), np.mean(lse**2), rtol=1e-5)


def test_router_softmax_then_renormalise_over_top_k(layer):
    params, x = layer
    logits, w, idx = moe.route(params["router"], x.reshape(-1, CFG.d_model), CFG)
    probs = jax.nn.softmax(logits)
    np.testing.assert_allclose(jnp.sum(w, -1), 1.0, atol=1e-6)
    np.testing.assert_allclose(w, jnp.take_along_axis(probs, idx, -1) / jnp.take_along_axis(probs, idx, -1).sum(
        -1, keepdims=True), atol=1e-6)
    assert np.all(np.asarray(w[:, 0]) >= np.asarray(w[:, 1]))  # ids come in order of preference


def test_unlimited_capacity_equals_dropless(layer):
    params, x = layer
    y, _ = moe.apply(params, x, CFG)
    full = CFG.n_experts / CFG.top_k  # capacity_factor >= E / k: every expert has a slot for every token
    yc, aux = moe.apply(params, x, moe.MoEConfig(**{**CFG.__dict__, "dispatch": "capacity",
                                                    "capacity_factor": full}))
    np.testing.assert_allclose(yc, y, atol=1e-5)
    assert int(aux["dropped"]) == 0


def test_capacity_drops_and_counts_overflow(layer):
    params, x = layer
    cfg = moe.MoEConfig(**{**CFG.__dict__, "dispatch": "capacity", "capacity_factor": 0.5})
    C = cfg.capacity(B * T)
    assert C == 4  # ceil(0.5 * 14 * 2 / 4)
    y, aux = jax.jit(moe.apply, static_argnums=2)(params, x, cfg)
    ref, _, _, dropped = _reference(params, x, cfg, capacity=C)
    assert dropped > 0 and int(aux["dropped"]) == dropped
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_load_balancing_loss_equals_transformers():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    rng = np.random.default_rng(0)
    E, k, N, L = 6, 2, 40, 3
    layers = [rng.normal(size=(N, E)).astype(np.float32) * 2 for _ in range(L)]
    ref = float(load_balancing_loss_func(tuple(torch.tensor(g) for g in layers), E, k))
    stats = [moe.router_stats(jnp.asarray(g), jax.lax.top_k(jax.nn.softmax(jnp.asarray(g)), k)[1], E)
             for g in layers]
    ours = moe.load_balancing_loss(jnp.stack([s["load"] for s in stats]), jnp.stack([s["prob"] for s in stats]))
    assert abs(float(ours) - ref) <= 1e-6


def test_gradients_reach_the_router(layer):
    params, x = layer

    def out_loss(p):
        return jnp.sum(moe.apply(p, x, CFG)[0] ** 2)

    def aux_loss(p):
        _, aux = moe.apply(p, x, CFG)
        return moe.load_balancing_loss(aux["load"], aux["prob"]) + aux["z_loss"]

    for fn in (out_loss, aux_loss):
        g = jax.grad(fn)(params)["router"]["w"]
        assert np.all(np.isfinite(g)) and float(jnp.abs(g).max()) > 1e-4
    g = jax.grad(out_loss)(params)["experts"]
    assert all(float(jnp.abs(a).max()) > 0 for a in jax.tree.leaves(g))


def test_parameter_layout():
    spec = moe.spec(CFG)
    assert spec["router"]["w"].shape == (16, 4) and spec["router"]["w"].axes == ("embed", None)
    assert spec["experts"]["wi_0"]["w"].shape == (4, 16, 24)
    assert spec["experts"]["wo"]["w"].axes == ("experts", "mlp", "embed")


@pytest.mark.parametrize("kw, field", [({"top_k": 5}, "top_k"), ({"top_k": 0}, "top_k"),
                                       ({"capacity_factor": 0.0}, "capacity_factor"),
                                       ({"capacity_factor": -1.0}, "capacity_factor"),
                                       ({"dispatch": "sinkhorn"}, "dispatch")])
def test_bad_settings_name_the_field(kw, field):
    with pytest.raises(ConfigError, match=rf"^{field}=") as e:
        moe.MoEConfig(**{**CFG.__dict__, **kw})
    msg = str(e.value)
    assert ("n_experts=4" in msg) if field == "top_k" else True
    assert ("> 0" in msg) if field == "capacity_factor" else True
    assert ("'dropless'" in msg) if field == "dispatch" else True
