"""``jaxlm convert``: HF -> jaxlm params directory -> HF, through the command line."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxlm import cli, pretrained  # noqa: E402
from jaxlm.models import llama  # noqa: E402

pytestmark = pytest.mark.hf


def _tiny_llama(path):
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    m.save_pretrained(path)
    return m


def test_convert_roundtrip_cli(tmp_path, capsys):
    m = _tiny_llama(tmp_path / "hf")
    x = np.random.default_rng(0).integers(0, 128, (2, 7))
    with torch.no_grad():
        ref = m(torch.tensor(x)).logits.numpy()

    assert cli.main(["convert", "--from-hf", str(tmp_path / "hf"), "--to", str(tmp_path / "jx")]) == 0
    assert "llama" in capsys.readouterr().out
    head = json.loads((tmp_path / "jx" / "config.json").read_text())
    assert head["jaxlm_format"] == "params/1" and head["family"] == "llama"
    loaded = pretrained.load(tmp_path / "jx")
    assert loaded.family is llama and loaded.config.kv_heads == 2 and loaded.extra["eos_id"] == 2
    assert np.abs(np.asarray(llama.apply(loaded.params, jnp.asarray(x), loaded.config)) - ref).max() < 1e-4

    assert cli.main(["convert", "--to-hf", str(tmp_path / "jx"), "--out", str(tmp_path / "hf2")]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf2").eval()
    with torch.no_grad():
        assert np.abs(back(torch.tensor(x)).logits.numpy() - ref).max() < 1e-4
    assert back.config.eos_token_id == 2

    # a non-empty output directory is refused unless --force
    with pytest.raises(SystemExit, match="not empty"):
        cli.main(["convert", "--from-hf", str(tmp_path / "hf"), "--to", str(tmp_path / "jx")])


def test_convert_bad_input(tmp_path, capsys):
    assert cli.main(["convert", "--from-hf", str(tmp_path / "missing"), "--to", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(json.dumps({"model_type": "bart"}))
    (tmp_path / "t5" / "model.safetensors").write_bytes(b"")
    assert cli.main(["convert", "--from-hf", str(tmp_path / "t5"), "--to", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "model_type 'bart'" in err and "'llama'" in err
    assert cli.main(["convert", "--from-gguf", str(tmp_path / "t5" / "config.json"), "--to", str(tmp_path / "o")]) == 1
