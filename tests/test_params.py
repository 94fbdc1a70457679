"""jaxlm.params: path-keyed init, exact counts without allocating, abstract trees, spec/param checks."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import params as P
from jaxlm import sharding
from jaxlm.models import llama
from jaxlm.params import Param


def _spec():
    return {
        "embed": {"tokens": Param((11, 4), ("vocab", "embed"))},
        "mlp": {"wi": Param((4, 8), ("embed", "mlp")), "bi": Param((8,), ("mlp",), P.zeros)},
        "norm": {"scale": Param((4,), ("embed",), P.ones)},
    }


def test_adding_a_parameter_changes_no_other_value():
    key = jax.random.key(0)
    before = P.flatten(P.init(key, _spec()))
    bigger = _spec()
    bigger["mlp"]["wo"] = Param((8, 4), ("mlp", "embed"))  # new sibling
    bigger["aaa_first"] = {"w": Param((3, 3), (None, None))}  # sorts before everything else
    after = P.flatten(P.init(key, bigger))
    assert set(after) == set(before) | {"mlp/wo", "aaa_first/w"}
    for path, value in before.items():
        np.testing.assert_array_equal(np.asarray(after[path]), np.asarray(value), err_msg=path)
    # and removing one changes nothing either
    smaller = _spec()
    del smaller["mlp"]["wi"]
    for path, value in P.flatten(P.init(key, smaller)).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(before[path]), err_msg=path)


def test_init_values_depend_on_key_and_path():
    spec = {"a": Param((16,), (None,)), "b": Param((16,), (None,))}
    p0, p1 = P.init(jax.random.key(0), spec), P.init(jax.random.key(1), spec)
    assert not np.allclose(p0["a"], p0["b"])  # different paths, different draws
    assert not np.allclose(p0["a"], p1["a"])  # different keys, different draws
    np.testing.assert_array_equal(p0["a"], P.init(jax.random.key(0), spec)["a"])  # deterministic


def test_init_shapes_dtypes_and_initialisers():
    spec = {"w": Param((64, 32), ("embed", "mlp"), P.normal(0.5), jnp.bfloat16),
            "z": Param((5,), (None,), P.zeros), "o": Param((5,), (None,), P.ones)}
    p = P.init(jax.random.key(3), spec)
    assert p["w"].shape == (64, 32) and p["w"].dtype == jnp.bfloat16
    assert 0.4 < float(jnp.std(p["w"].astype(jnp.float32))) < 0.6
    np.testing.assert_array_equal(p["z"], 0.0)
    np.testing.assert_array_equal(p["o"], 1.0)
    t = P.truncated_normal(1.0)(jax.random.key(0), (4000,), jnp.float32)
    assert float(jnp.max(jnp.abs(t))) <= 2.0
    x = P.xavier_uniform()(jax.random.key(0), (30, 70), jnp.float32)
    assert float(jnp.max(jnp.abs(x))) <= np.sqrt(6 / 100) + 1e-6


def test_count_is_exact_and_allocates_nothing():
    assert P.count(_spec()) == 11 * 4 + 4 * 8 + 8 + 4
    live = len(jax.live_arrays())
    t0 = time.perf_counter()
    n = P.count(llama.spec(llama.PRESETS["llama2-7b"].config))
    assert len(jax.live_arrays()) == live  # no device array was created
    assert time.perf_counter() - t0 < 2.0  # 6.7 billion floats would take far longer (and 27 GB)
    assert n == 6_738_415_616
    # the same count from a params tree
    assert P.count(P.init(jax.random.key(0), _spec())) == P.count(_spec())


def test_abstract_gives_shape_dtype_structs_with_shardings():
    spec = _spec()
    spec["mlp"]["wi"] = spec["mlp"]["wi"].with_dtype(jnp.bfloat16)
    a = P.abstract(spec)
    assert isinstance(a["mlp"]["wi"], jax.ShapeDtypeStruct)
    assert a["mlp"]["wi"].shape == (4, 8) and a["mlp"]["wi"].dtype == jnp.bfloat16
    mesh = sharding.make_mesh()
    sh = sharding.param_shardings(spec, mesh)
    a = P.abstract(spec, sh)
    for path, leaf in P.flatten(a).items():
        assert isinstance(leaf, jax.ShapeDtypeStruct)
        assert leaf.sharding == P.flatten(sh)[path], path
        assert isinstance(leaf.sharding, jax.sharding.NamedSharding)
    assert jax.tree.structure(a) == jax.tree.structure(P.init(jax.random.key(0), spec))


def test_init_on_a_mesh_equals_init_without_one():
    mesh = sharding.make_mesh()
    spec = _spec()
    on_mesh = sharding.init(jax.random.key(5), spec, mesh)
    plain = P.init(jax.random.key(5), spec)
    flat_plain = P.flatten(plain)
    assert set(P.flatten(on_mesh)) == set(flat_plain)
    for path, a in P.flatten(on_mesh).items():
        # jit (mesh) vs eager draws agree to float32 rounding (XLA fuses std * normal differently)
        np.testing.assert_allclose(np.asarray(a), np.asarray(flat_plain[path]), rtol=1e-6, atol=1e-9, err_msg=path)
        assert isinstance(a.sharding, jax.sharding.NamedSharding)


def test_stacked_init_draws_independent_layers():
    p = Param((6, 5), ("embed", "mlp"), P.normal(1.0))
    s = p.stacked(3)
    assert s.shape == (3, 6, 5) and s.axes == ("layers", "embed", "mlp")
    w = P.init(jax.random.key(0), {"w": s})["w"]
    assert w.shape == (3, 6, 5)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.allclose(w[i], w[j]), (i, j)
    ones = P.init(jax.random.key(0), {"s": Param((4,), ("embed",), P.ones).stacked(2)})["s"]
    np.testing.assert_array_equal(ones, np.ones((2, 4)))


def test_param_shape_axes_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"has 2 dims but axes \('embed',\) name 1"):
        Param((3, 4), ("embed",))
    with pytest.raises(ValueError, match="non-positive"):
        Param((0, 4), ("embed", "mlp"))


def test_spec_leaves_must_be_params():
    with pytest.raises(TypeError, match="a/b"):
        P.init(jax.random.key(0), {"a": {"b": np.zeros(3)}})


def test_check_params_names_every_problem():
    spec = _spec()
    good = P.init(jax.random.key(0), spec)
    P.check_params(good, spec)  # passes silently
    bad = P.flatten(good)
    del bad["norm/scale"]
    bad["mlp/wi"] = jnp.zeros((4, 9))
    bad["extra/w"] = jnp.zeros(2)
    with pytest.raises(ValueError) as e:
        P.check_params(P.unflatten(bad), spec, what="checkpoint params")
    msg = str(e.value)
    assert msg.startswith("checkpoint params do not match the model config")
    assert "missing ['norm/scale']" in msg
    assert "unexpected ['extra/w']" in msg
    assert "mlp/wi: got (4, 9), expected (4, 8)" in msg


def test_flatten_unflatten_logical_axes_cast_summary():
    spec = _spec()
    flat = P.flatten(spec)
    assert sorted(flat) == ["embed/tokens", "mlp/bi", "mlp/wi", "norm/scale"]
    assert P.unflatten(flat) == spec
    assert P.logical_axes(spec)["mlp"]["wi"] == ("embed", "mlp")
    assert all(p.dtype == jnp.bfloat16 for p in P.flatten(P.cast(spec, jnp.bfloat16)).values())
    s = P.summary(spec)
    assert "mlp/wi" in s and s.strip().endswith(f"total: {P.count(spec):,}")
