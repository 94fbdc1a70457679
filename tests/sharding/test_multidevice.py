"""Sharded training on 8 CPU devices equals one device; checkpoints move between meshes; 2 processes.

Each multi-device test drives a worker script in its own process (``XLA_FLAGS`` must be set before jax is
imported); several layouts share one process to pay the start-up once.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sharding_common import CONFIGS, REPO, run_worker, same_fingerprint  # noqa: E402

pytestmark = pytest.mark.multidevice

RTOL = 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gpt2-tiny", "transformer-tiny"])
def test_every_layout_trains_the_same_losses(model):
    res = run_worker("worker_parity.py", model, ",".join(CONFIGS))
    ref = np.array(res["single"]["losses"])
    assert ref.shape == (5,) and np.all(np.isfinite(ref))
    assert ref[-1] < ref[0] or not np.allclose(ref, ref[0])  # the steps really update the model
    for name, r in res.items():
        np.testing.assert_allclose(r["losses"], ref, rtol=RTOL, err_msg=f"{model} {name} {r['mesh']}")

    # evaluation after training: the pmap run's unreplicated params evaluate like the 2x2x2 run's
    np.testing.assert_allclose(res["pmap8"]["eval_loss"], res["data2_fsdp2_tensor2"]["eval_loss"], rtol=RTOL)

    # parameters and Adam moments are sharded as the rules say: vocab/heads/mlp -> tensor, embed -> fsdp
    enc = "decoder/" if model.startswith("transformer") else ""
    expect = {
        "data8": {"embed/tokens": [None, None], f"{enc}layers/attn/q/w": [None] * 4},
        "fsdp8": {"embed/tokens": [None, "fsdp"], f"{enc}layers/attn/q/w": [None, "fsdp", None, None],
                  f"{enc}layers/mlp/wo/w": [None, None, "fsdp"]},
        "data4_tensor2": {"embed/tokens": ["tensor", None], f"{enc}layers/attn/q/w": [None, None, "tensor", None],
                          f"{enc}layers/attn/o/w": [None, "tensor", None, None],
                          f"{enc}layers/mlp/wi/w": [None, None, "tensor"]},
        "data2_fsdp2_tensor2": {"embed/tokens": ["tensor", "fsdp"],
                                f"{enc}layers/attn/q/w": [None, "fsdp", "tensor", None],
                                f"{enc}layers/mlp/wi/w": [None, "fsdp", "tensor"],
                                f"{enc}layers/mlp/wo/w": [None, "tensor", "fsdp"]},
    }
    for name, want in expect.items():
        specs = res[name]["specs"]
        for path, spec in want.items():
            leaves = {k: v for k, v in specs.items() if k.endswith("/" + path)}
            # the parameter and Adam's two moments (mu, nu) inside the optax chain
            assert f"params/{path}" in leaves and len(leaves) == 3, (name, path, sorted(leaves))
            for k, v in leaves.items():
                assert v == spec, (name, k, v, spec)
    assert res["data2_fsdp2_tensor2"]["shard_shape"] == [512 // 2, 64 // 2]
    # the models' block-boundary activation constraints are in the compiled multi-device steps
    n_layers = 2 * (2 if model.startswith("transformer") else 1)
    for name in expect:
        assert res[name]["constraints"] >= n_layers, (name, res[name]["constraints"])


@pytest.mark.slow
def test_indivisible_dimensions_stay_replicated_and_still_train():
    # vocab 511 and 2 key/value heads on tensor=4: both replicated (with a log line), heads still split
    res = run_worker("worker_parity.py", "gpt2-tiny:odd", "single,data2_tensor4")
    np.testing.assert_allclose(res["data2_tensor4"]["losses"], res["single"]["losses"], rtol=RTOL)
    specs = res["data2_tensor4"]["specs"]
    assert specs["params/embed/tokens"] == [None, None]
    assert specs["params/layers/attn/k/w"] == [None, None, None, None]
    assert specs["params/layers/attn/q/w"] == [None, None, "tensor", None]
    log = res["data2_tensor4"]["log"]
    assert "logical axis 'vocab' (dim 0, size 511) does not divide mesh tensor=4: replicated" in log
    assert "does not divide the 2 key/value heads" in log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gpt2-tiny", "llama-tiny", "transformer-tiny"])
def test_generation_with_sharded_params_equals_one_device(model):
    """generate / stream / beam_search over parameters sharded tensor-parallel (and FSDP x data) give the
    tokens, logits and beam scores of the same parameters on one device."""
    layouts = ("tensor2", "data2_fsdp2_tensor2")
    res = run_worker("worker_generate.py", model, ",".join(layouts))
    ref = res["single"]
    assert len(ref["greedy"]) == 4 and all(len(t) == 6 for t in ref["greedy"])
    assert ref["stream"] == ref["greedy"][1]
    dec = "decoder/" if model.startswith("transformer") else ""
    for lay in layouts:
        r = res[lay]
        # the parameters really were split: heads over tensor, and FSDP on the embed axis where asked
        q = r["specs"][f"{dec}layers/attn/q/w"]
        assert q[2] == "tensor" and q[1] == ("fsdp" if "fsdp" in lay else None), (lay, q)
        for key in ("greedy", "sampled", "beams", "stream"):
            assert r[key] == ref[key], (lay, key)
        np.testing.assert_allclose(r["logits"], ref["logits"], atol=1e-5, err_msg=lay)
        np.testing.assert_allclose(r["beam_scores"], ref["beam_scores"], atol=1e-5, err_msg=lay)


@pytest.mark.slow
def test_checkpoint_moves_between_meshes_and_two_processes_match_one(tmp_path):
    """2 processes x 4 CPU devices (gloo) on 127.0.0.1 train the same losses as 1 process x 8 devices, and
    both processes save one Orbax checkpoint; a 2x2x2 checkpoint restores onto 8x1x1 and onto one device."""
    import os

    mp_dir = tmp_path / "multiproc"
    mp_dir.mkdir()
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    confs = "data2_fsdp2_tensor2,pmap8"  # jit and pmap, across processes
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests/sharding/worker_multiproc.py"), str(i), "2",
                               str(port), str(mp_dir), confs], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=REPO) for i in range(2)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, f"process failed (rc={p.returncode}):\n{err[-5000:]}"
            outs.append(__import__("json").loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:  # time out cleanly: never leave a process waiting for its peer
            if p.poll() is None:
                p.kill()
                p.wait()
    for o in outs:
        assert (o["local_devices"], o["global_devices"]) == (4, 8)
    for conf in confs.split(","):  # each process loads its half of every batch
        assert outs[0][conf]["rows"] == [0, 8] and outs[1][conf]["rows"] == [8, 16]

    res = run_worker("worker_checkpoint.py", str(tmp_path / "ckpt"), str(mp_dir))
    # save on 2x2x2, restore on 8x1x1 and on one device: every leaf identical, the next loss too
    assert res["saved_spec_q"] == "P(None, 'fsdp', 'tensor', None)"
    for name, devices in (("data8", 8), ("single", 1)):
        r = res[name]
        assert r["identical"] and r["n_leaves"] > 20, r
        assert r["q_devices"] == devices
        np.testing.assert_allclose(r["next_loss"], res["reference_next_loss"], rtol=1e-6)
    # two processes == one process with 8 devices: losses, and the checkpoint both processes wrote
    for conf in confs.split(","):
        for o in outs:
            np.testing.assert_allclose(o[conf]["losses"], res["losses"], rtol=RTOL, err_msg=conf)
        # the checkpoint both processes wrote holds the state they had (fingerprints of every leaf) and,
        # restored in one 8-device process, takes the same next step
        here = res["multiproc_" + conf]
        assert not same_fingerprint(outs[0][conf]["fingerprint"], here["fingerprint"]), conf
        np.testing.assert_allclose(here["next_loss"], outs[0][conf]["next_loss"], rtol=RTOL, err_msg=conf)


@pytest.mark.slow
def test_jaxlm_train_on_two_processes_equals_one_process(tmp_path, shared_data):
    """The multi-process command of docs/parallelism.md ("One host, a pod slice, a cluster"): ``jaxlm train ... --coordinator --num-processes --process-id`` on
    2 processes x 4 CPU devices sharing one run directory logs the losses of ``jaxlm train`` on 1 process x
    8 devices, writes each file once (process 0) and saves one Orbax checkpoint from both processes."""
    import json
    import os

    args = [str(REPO / "experiments/gpt2_shakespeare.py"), "model.preset=gpt2-tiny", "data.seq_len=32",
            f"data.path={shared_data / 'tinyshakespeare/input.txt'}", "train.steps=4", "train.batch_size=16",
            "train.log_every=1", "train.eval_every=0", "train.eval_batches=2", "train.checkpoint_every=0",
            "model.dropout=0.0", "model.attn_dropout=0.0", "train.tensorboard=false", "train.plot=false",
            "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "--quiet"]
    jaxlm = [sys.executable, "-m", "jaxlm.cli", "train"]
    base = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    port = _free_port()
    mp_env = dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    procs = [subprocess.Popen([*jaxlm, *args, "--run-dir", str(tmp_path / "two"), "--coordinator",
                               f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=mp_env, cwd=REPO)
             for i in range(2)]
    try:
        for p in procs:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-4000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    one = subprocess.run([*jaxlm, *args, "--run-dir", str(tmp_path / "one")], capture_output=True, text=True,
                         env=dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=8"), cwd=REPO,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-4000:]

    def losses(d):
        rows = [json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if "loss" in r]

    two, ref = losses("two"), losses("one")
    assert [s for s, _ in two] == [1, 2, 3, 4] == [s for s, _ in ref]  # each step logged once
    np.testing.assert_allclose([v for _, v in two], [v for _, v in ref], rtol=RTOL)
    assert (tmp_path / "two" / "checkpoints" / "4").is_dir()
    report = (tmp_path / "two" / "sharding.txt").read_text()
    assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2} (8 devices)" in report
    assert "(None, 'fsdp', 'tensor', None)" in report  # the q projection: embed -> fsdp, heads -> tensor


@pytest.mark.slow
def test_lora_adapters_shard_by_the_rules_and_train_the_same_on_8_devices():
    """LoRA adapters carry logical axes: on 8 CPU devices they are born sharded by the same rules as the
    weights they adapt (A's input axis and B's output axes; the rank axis replicated), and two adapter-only
    train steps give the one-device losses and logits."""
    layouts = ("data2_fsdp2_tensor2",)
    res = run_worker("worker_lora.py", "llama-tiny", ",".join(layouts), timeout=1200)
    ref = res["single"]
    assert ref["losses"][-1] < ref["losses"][0]
    for lay in layouts:
        r = res[lay]
        np.testing.assert_allclose(r["losses"], ref["losses"], rtol=1e-5, err_msg=lay)
        np.testing.assert_allclose(r["logits"], ref["logits"], atol=1e-4, err_msg=lay)
        # PartitionSpecs as jax reports them: trailing unsharded dims are dropped
        s = {k: v[:max([i + 1 for i, a in enumerate(v) if a is not None], default=0)] for k, v in r["specs"].items()}
        assert s["layers/attn/q/lora_a"] == [None, "fsdp"], s["layers/attn/q/lora_a"]
        assert s["layers/attn/q/lora_b"] == [None, None, "tensor"]  # [layers, r, heads, head_dim]
        assert s["layers/attn/o/lora_a"] == [None, "tensor"]  # [layers, heads, head_dim, r]
        assert s["layers/mlp/wi_0/lora_b"] == [None, None, "tensor"]
        assert s["layers/mlp/wo/lora_b"] == [None, None, "fsdp"]


@pytest.mark.slow
def test_jaxlm_train_lora_run_on_8_devices_equals_one_device(tmp_path):
    """finetune.lora through `jaxlm train`: on a 2 x 2 x 2 mesh the adapters are sharded by the rules (the
    frozen base as without LoRA, also when it is int8: QLoRA), and under pmap they are replicated; every
    layout gives the one-device losses."""
    res = run_worker("worker_lora_train.py", str(tmp_path / "8"), "data2_fsdp2_tensor2,pmap8,data2_fsdp2_tensor2_int8",
                     timeout=1200)
    one = run_worker("worker_lora_train.py", str(tmp_path / "1"), "single,single_int8", devices=1)
    ref = one["single"]["losses"]
    assert len(ref) == 4 and ref[-1] < ref[0]
    for name in ("data2_fsdp2_tensor2", "pmap8"):
        np.testing.assert_allclose(res[name]["losses"], ref, rtol=RTOL, err_msg=name)
    # QLoRA: the int8 base's integers and scales are sharded by the weight's axes; same losses as one device
    np.testing.assert_allclose(res["data2_fsdp2_tensor2_int8"]["losses"], one["single_int8"]["losses"], rtol=RTOL)
    fz = res["data2_fsdp2_tensor2_int8"]["frozen"]
    assert fz["layers/attn/q/w/q"][:3] == [None, "fsdp", "tensor"], fz["layers/attn/q/w/q"]
    assert fz["layers/mlp/wo/w/q"][:3] == [None, "tensor", "fsdp"], fz["layers/mlp/wo/w/q"]
    s = {k: v[:max([i + 1 for i, a in enumerate(v) if a is not None], default=0)]
         for k, v in res["data2_fsdp2_tensor2"]["specs"].items()}
    assert set(s) == {f"{p}/{k}" for p in ("layers/attn/q", "layers/attn/o", "layers/mlp/wo")
                      for k in ("lora_a", "lora_b")}
    assert s["layers/attn/q/lora_a"] == [None, "fsdp"] and s["layers/attn/q/lora_b"] == [None, None, "tensor"]
    assert s["layers/mlp/wo/lora_b"] == [None, None, "fsdp"]
