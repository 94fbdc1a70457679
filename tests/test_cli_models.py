"""``jaxlm models``: every preset with its exact integer parameter count, in-process and as the console
script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from jaxlm.commands import models as cmd
from jaxlm.models import REGISTRY


def _check_table(text: str) -> None:
    lines = text.strip().splitlines()
    assert lines[0].split() == ["preset", "family", "layers", "d_model", "heads", "kv_heads", "params"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == set(REGISTRY)
    for name, (_, preset) in REGISTRY.items():
        row = rows[name]
        c = preset.config
        assert row[-1] == str(preset.n_params), name  # a plain integer, no separators
        assert row[1] == type(c).family
        assert row[3] == str(c.d_model) and row[4] == str(c.n_heads) and row[5] == str(c.kv_heads)
    assert rows["gpt2-124m"][-1] == "124439808"
    assert rows["bert-base"][-1] == "109482240"
    assert rows["llama2-7b"][-1] == "6738415616"
    assert rows["transformer-base"][2] == "6+6"


def test_models_command_in_process(capsys):
    assert cmd.main([]) == 0
    _check_table(capsys.readouterr().out)


def test_models_console_script():
    exe = Path(sys.executable).parent / "jaxlm"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([str(exe), "models"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    _check_table(out.stdout)
