"""W&B logging (train.wandb.project) in WANDB_MODE=offline: the run directory W&B writes holds the logged
steps and the resolved config, and a resumed run continues the same W&B run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

wandb = pytest.importorskip("wandb")


def _records(path: Path) -> list[bytes]:
    """The protobuf records of a W&B transaction log (.wandb): a 7-byte ":W&B" header, then LevelDB's log
    format (32 KiB blocks of records: crc32 (4), length (2), type (1: full, 2/3/4: first/middle/last))."""
    import struct

    data, pos, block, out, buf = path.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind == 1:
            out.append(payload)
        elif kind == 2:
            buf = payload
        elif kind == 3:
            buf += payload
        elif kind == 4:
            out.append(buf + payload)
    return out


def _history(run_dir: Path) -> tuple[str, list[int], dict]:
    """(run id, logged train steps, config) read back from the offline .wandb file(s) of ``run_dir``."""
    from wandb.proto import wandb_internal_pb2

    steps, config, ids = [], {}, set()
    for f in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        ids.add(f.stem.removeprefix("run-"))
        for rec in _records(f):
            pb = wandb_internal_pb2.Record()
            pb.ParseFromString(rec)
            kind = pb.WhichOneof("record_type")
            if kind == "history":
                items = {i.key or "/".join(i.nested_key): i.value_json for i in pb.history.item}
                if "loss" in items:
                    steps.append(int(json.loads(items["_step"])))
            elif kind in ("config", "run"):
                upd = pb.config.update if kind == "config" else pb.run.config.update
                for i in upd:
                    config[i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
    assert len(ids) == 1, ids
    return ids.pop(), steps, config


def test_wandb_offline_logs_the_metrics_rows_and_resumes_the_same_run(tiny_experiment, tmp_path, monkeypatch,
                                                                       step_cache):
    from jaxlm.train import config as C
    from jaxlm.train.loop import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    cfg = C.apply_overrides(C.load_experiment(tiny_experiment),
                            ["train.steps=10", "train.wandb.project=jaxlm-test", "train.log_every=2"])
    train(cfg, run_dir, quiet=True, cache=step_cache)
    run_id, steps, config = _history(run_dir)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [r["step"] for r in rows if "loss" in r] == [2, 4, 6, 8, 10]
    assert config["train"]["steps"] == 10 and config["model"]["d_model"] == 32  # the resolved config
    assert (run_dir / "wandb_id.txt").read_text().strip() == run_id

    more = C.apply_overrides(cfg, ["train.steps=14"])
    out = train(more, run_dir, quiet=True, cache=step_cache)
    assert out["resumed_from"] == 10
    run_id2, steps2, _ = _history(run_dir)
    assert run_id2 == run_id and steps2 == [2, 4, 6, 8, 10, 12, 14]
