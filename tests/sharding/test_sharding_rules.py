"""The rules table, divisibility fallbacks, the sharding report, and the errors for bad meshes, batches and
tensor sizes. In-process: rules only need a mesh's shape (``AbstractMesh``), errors need no devices."""

from __future__ import annotations

import logging

import jax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from jaxlm import distributed, models, parallel, sharding
from jaxlm.config import ConfigError


def mesh(d, f, t):
    return AbstractMesh((d, f, 1, t), sharding.MESH_AXES)  # context = 1


def test_rules_map_logical_axes_onto_the_mesh():
    m = mesh(2, 2, 2)
    L = sharding.logical_to_pspec
    assert L(("vocab", "embed"), m, shape=(512, 64)) == PartitionSpec("tensor", "fsdp")
    assert L(("layers", "embed", "heads", "head_dim"), m, shape=(2, 64, 4, 16)) == PartitionSpec(
        None, "fsdp", "tensor", None)
    assert L(("batch", "seq", "act_embed"), m, shape=(8, 16, 64)) == PartitionSpec(("data", "fsdp"), None, None)
    # a mesh axis is used once per tensor: the first dimension asking for it wins
    assert L(("mlp", "vocab"), m, shape=(8, 8)) == PartitionSpec("tensor", None)
    # size-1 mesh axes are dropped, so a (1,1,1) mesh gives fully replicated specs
    assert L(("batch", "embed"), mesh(4, 1, 1), shape=(8, 64)) == PartitionSpec("data", None)
    assert L(("vocab", "embed"), mesh(1, 1, 1), shape=(512, 64)) == PartitionSpec(None, None)


def test_indivisible_dimension_is_replicated_with_one_log_line(caplog):
    sharding._LOGGED.clear()
    with caplog.at_level(logging.WARNING, logger="jaxlm.sharding"):
        ps = sharding.logical_to_pspec(("vocab", "embed"), mesh(1, 2, 4), shape=(511, 64), what="embed/tokens")
        sharding.logical_to_pspec(("vocab", "embed"), mesh(1, 2, 4), shape=(511, 64), what="embed/tokens")
    assert ps == PartitionSpec(None, "fsdp")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["embed/tokens: logical axis 'vocab' (dim 0, size 511) does not divide mesh tensor=4: "
                     "replicated"]
    # a batch of 4 on data=2 x fsdp=4 keeps the part it divides
    assert sharding.logical_to_pspec(("batch",), mesh(2, 4, 1), shape=(4,)) == PartitionSpec("data")


def test_report_shows_specs_and_warns_when_mostly_replicated():
    spec = models.gpt2.spec(models.get("gpt2-tiny")[1])
    rep = sharding.sharding_report(spec, mesh(1, 8, 1))
    assert "embed/tokens" in rep and "(None, 'fsdp')" in rep and "WARNING" not in rep
    assert "replicated: " in rep
    rep8 = sharding.sharding_report(spec, mesh(8, 1, 1))
    assert "replicated: 100.0% of bytes" in rep8 and "WARNING: most parameter bytes (100%)" in rep8


def test_mesh_size_must_match_the_devices():
    n = jax.device_count()
    # ConfigError (a ValueError): `jaxlm train` prints it as one line, no traceback
    with pytest.raises(ConfigError, match=rf"= {2 * n} devices, but {n} devices are available.*-1"):
        sharding.make_mesh(2 * n, 1, 1)
    with pytest.raises(ValueError, match="at most one mesh size may be -1"):
        sharding.make_mesh(-1, -1, 1)
    with pytest.raises(ValueError, match="cannot fill"):
        sharding.make_mesh(-1, 1, n + 1)
    m = parallel.mesh_from_config({"data": -1})
    assert dict(m.shape) == {"data": n, "fsdp": 1, "context": 1, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in m.axis_types)
    with pytest.raises(ValueError, match="devices are available"):
        parallel.Parallel({"data": n, "fsdp": 2})


def test_batch_must_divide_the_data_parallel_size():
    with pytest.raises(ConfigError, match=r"train.batch_size=12 .* mesh.data x mesh.fsdp = 4 x 2 = 8: use a "
                                          r"multiple of 8 \(e.g. train.batch_size=16\)"):
        parallel.validate(mesh(4, 2, 1), batch_size=12)
    parallel.validate(mesh(4, 2, 1), batch_size=16)
    parallel.validate(mesh(1, 1, 8), batch_size=3)  # tensor parallelism does not split the batch


def test_tensor_size_must_divide_the_heads(caplog):
    cfg = models.get("gpt2-tiny")[1]  # 4 heads
    with pytest.raises(ConfigError, match=r"mesh.tensor=8 does not divide model.n_heads=4.*mesh.tensor in "
                                          r"\[1, 2, 4\]"):
        parallel.validate(mesh(1, 1, 8), model_cfg=cfg)
    parallel.validate(mesh(4, 1, 2), model_cfg=cfg)
    with caplog.at_level(logging.WARNING, logger="jaxlm.parallel"):
        parallel.validate(mesh(2, 1, 4), model_cfg=cfg.replace(n_kv_heads=2))
    assert "does not divide the 2 key/value heads" in caplog.text


def test_pmap_is_data_parallel_only():
    with pytest.raises(ConfigError, match="data parallel only.*mesh.parallel=jit"):
        parallel.validate(mesh(2, 1, 2), mode="pmap")
    with pytest.raises(ConfigError, match="not one of"):
        parallel.validate(mesh(1, 1, 1), mode="pjit")


def test_tree_shardings_follow_param_paths_through_optimizer_state():
    import optax

    cfg = models.get("gpt2-tiny")[1]
    spec = models.gpt2.spec(cfg)
    m = sharding.make_mesh(1, 1, 1)
    opt = optax.adamw(1e-3)
    state = jax.eval_shape(lambda k: {"params": (p := models.gpt2.init(k, cfg)), "opt": opt.init(p),
                                      "step": 0}, jax.random.key(0))
    sh = parallel.tree_shardings(state, spec, m)
    assert jax.tree.structure(sh) == jax.tree.structure(state)
    assert sh["opt"][0].mu["embed"]["tokens"].spec == PartitionSpec(None, None)
    assert sh["step"].spec == PartitionSpec()


def test_distributed_flags_env_and_detection(monkeypatch):
    rest, s = distributed.pop_flags(["x.py", "--coordinator", "10.0.0.1:1234", "train.lr=1e-3",
                                     "--num-processes=4", "--process-id", "3"])
    assert rest == ["x.py", "train.lr=1e-3"]
    assert s == distributed.Settings("10.0.0.1:1234", 4, 3)
    for k in ("SLURM_NTASKS", "SLURM_PROCID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
              "MEGASCALE_COORDINATOR_ADDRESS", "JAXLM_COORDINATOR", "JAXLM_NUM_PROCESSES", "JAXLM_PROCESS_ID",
              "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.detected_cluster() is None
    assert distributed.initialize() is False  # nothing to join: single process, nothing touched
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert distributed.detected_cluster() == "slurm"
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t0,t1,t2,t3")
    assert distributed.detected_cluster() == "tpu"
    monkeypatch.setenv("JAXLM_COORDINATOR", "127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"needs all of .*missing \['--num-processes', '--process-id'\]"):
        distributed.initialize()
    with pytest.raises(ConfigError, match="must be in"):
        distributed.initialize(distributed.Settings("127.0.0.1:1", 2, 2))
