"""PEFT interop: jaxlm's LoRA adapters exported as a PEFT directory load onto the transformers model with
the same logits, and a PEFT adapter directory loads into jaxlm with the same logits (random-init tiny Llama,
no download)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from jaxlm import params as P  # noqa: E402
from jaxlm import pretrained  # noqa: E402
from jaxlm.config import ConfigError  # noqa: E402
from jaxlm.finetune import lora  # noqa: E402
from jaxlm.finetune import peft as jpeft  # noqa: E402
from jaxlm.models import llama  # noqa: E402

pytestmark = pytest.mark.hf
TOL = 1e-4


def _llama(path):
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                   num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                   rms_norm_eps=1e-6, rope_theta=5000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(cfg).eval()
    m.save_pretrained(path)
    return m


def _logits(model, x):
    with torch.no_grad():
        return model(torch.tensor(x, dtype=torch.long)).logits.numpy()


X = np.random.default_rng(1).integers(0, 300, (2, 11)).astype(np.int32)


def test_export_loads_in_peft_with_equal_logits(tmp_path):
    m = _llama(tmp_path / "hf")
    loaded = pretrained.load(tmp_path / "hf")
    lc = lora.LoRAConfig(targets=("attn/(q|k|v|o)", "mlp/wo"), rank=4, alpha=8.0)
    ad = lora.init(jax.random.key(0), loaded.config, lc)
    ad = P.unflatten({k: (jax.random.normal(jax.random.key(i), v.shape) * 0.3 if k.endswith("lora_b") else v)
                      for i, (k, v) in enumerate(sorted(P.flatten(ad).items()))})
    ours = np.asarray(llama.apply(lora.combine(loaded.params, ad, lc), jnp.asarray(X), loaded.config))
    base = np.asarray(llama.apply(loaded.params, jnp.asarray(X), loaded.config))
    assert np.abs(ours - base).max() > 1e-2  # the adapters matter

    out = jpeft.export(ad, loaded.config, lc, tmp_path / "adapter")
    conf = json.loads((out / "adapter_config.json").read_text())
    assert conf["r"] == 4 and conf["lora_alpha"] == 8.0 and conf["peft_type"] == "LORA"
    pm = peft.PeftModel.from_pretrained(m, str(out)).eval()
    n_lora = sum(1 for n, _ in pm.named_modules() if n.endswith("lora_A"))
    assert n_lora == 2 * 5  # 2 layers x (q, k, v, o, down_proj)
    assert np.abs(_logits(pm, X) - ours).max() <= TOL

    # and back: the exported directory imports to the same adapters
    lc2, ad2 = jpeft.load(out, loaded.config)
    assert (lc2.rank, lc2.alpha) == (4, 8.0)
    for k, v in P.flatten(ad).items():
        np.testing.assert_allclose(P.flatten(ad2)[k], np.asarray(v), rtol=0, atol=0)


def test_peft_adapter_imports_with_equal_logits(tmp_path):
    m = _llama(tmp_path / "hf")
    conf = peft.LoraConfig(r=3, lora_alpha=5, target_modules=["q_proj", "v_proj", "up_proj"],
                           init_lora_weights=False)  # random A and B, so the adapter changes the logits
    torch.manual_seed(3)
    pm = peft.get_peft_model(m, conf).eval()
    pm.save_pretrained(tmp_path / "adapter")
    ref = _logits(pm, X)

    loaded = pretrained.load(tmp_path / "hf")
    lc, ad = jpeft.load(tmp_path / "adapter", loaded.config)
    assert lora.targets(loaded.config, lc) == ["layers/attn/q", "layers/attn/v", "layers/mlp/wi_1"]  # up_proj
    ours = np.asarray(llama.apply(lora.combine(loaded.params, ad, lc), jnp.asarray(X), loaded.config))
    assert np.abs(ours - ref).max() <= TOL
    merged = np.asarray(llama.apply(lora.merge(loaded.params, ad, lc), jnp.asarray(X), loaded.config))
    assert np.abs(merged - ref).max() <= TOL


def test_bad_adapter_directories(tmp_path):
    _llama(tmp_path / "hf")
    loaded = pretrained.load(tmp_path / "hf")
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter directory"):
        jpeft.load(tmp_path, loaded.config)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "use_dora": True}))
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"LoRA variants \['use_dora'\] are not supported"):
        jpeft.load(tmp_path / "a", loaded.config)
