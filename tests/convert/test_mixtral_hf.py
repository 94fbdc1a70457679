"""Mixtral (routed experts) Hugging Face parity: a random-init ``MixtralForCausalLM`` built from a config (no
network) imports with logits within 1e-4, exports back, generates the same greedy tokens, and the MoE
load-balancing loss equals transformers' ``load_balancing_loss_func``."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxlm import pretrained  # noqa: E402
from jaxlm.convert import hf  # noqa: E402
from jaxlm.generate import generate  # noqa: E402
from jaxlm.models import mixtral  # noqa: E402
from jaxlm.models.hfmap import UnsupportedModelError  # noqa: E402
from tests.convert._hf_checks import torch_logits as _torch_logits  # noqa: E402

pytestmark = pytest.mark.hf
TOL = 1e-4


def _config(**kw):
    base = dict(vocab_size=300, hidden_size=48, intermediate_size=40, num_hidden_layers=2, num_attention_heads=6,
                num_key_value_heads=2, max_position_embeddings=64, num_local_experts=4, num_experts_per_tok=2,
                rms_norm_eps=1e-6, rope_theta=5000.0, router_aux_loss_coef=0.02, sliding_window=None)
    return transformers.MixtralConfig(**(base | kw))


def _model(**kw):
    torch.manual_seed(0)
    m = transformers.MixtralForCausalLM(_config(**kw))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # perturb every parameter so that a wrong name map cannot pass
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return m.eval()


def _tokens(shape=(2, 11), seed=1):
    return np.random.default_rng(seed).integers(0, 300, shape).astype(np.int32)



@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    m = _model()
    path = tmp_path_factory.mktemp("mixtral") / "hf"
    m.save_pretrained(path)
    return m, path


def test_mixtral_import_export_logits(hf_dir, tmp_path):
    m, path = hf_dir
    loaded = pretrained.load(path)
    c = loaded.config
    assert loaded.family is mixtral
    assert (c.n_experts, c.top_k, c.kv_heads, c.d_ff, c.aux_loss_weight) == (4, 2, 2, 40, 0.02)
    x = _tokens()
    ref = _torch_logits(m, x)
    ours = np.asarray(mixtral.apply(loaded.params, jnp.asarray(x), c))
    assert np.abs(ours - ref).max() < TOL
    # the capacity-factor dispatch with room for every token computes the same model
    cap = np.asarray(mixtral.apply(loaded.params, jnp.asarray(x), c.replace(dispatch="capacity",
                                                                             capacity_factor=2.0)))
    assert np.abs(cap - ref).max() < TOL
    out = hf.save(loaded, tmp_path / "out")
    hc = json.loads((out / "config.json").read_text())
    assert hc["model_type"] == "mixtral" and hc["num_local_experts"] == 4 and hc["sliding_window"] is None
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(back).__name__ == "MixtralForCausalLM"
    assert np.abs(_torch_logits(back, x) - ref).max() < TOL


def test_mixtral_export_of_a_jaxlm_model_loads_in_transformers(tmp_path):
    cfg = mixtral.PRESETS["mixtral-tiny"].config
    params = mixtral.init(jax.random.key(3), cfg)
    out = hf.save((mixtral, cfg, params), tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9)).astype(np.int32)
    ours = np.asarray(mixtral.apply(params, jnp.asarray(x), cfg))
    assert np.abs(_torch_logits(back, x) - ours).max() < TOL


def test_mixtral_greedy_tokens_equal_transformers(hf_dir):
    m, path = hf_dir
    loaded = pretrained.load(path)
    prompt = _tokens((1, 7), seed=4)
    with torch.no_grad():
        ref = m.generate(torch.tensor(prompt, dtype=torch.long), max_new_tokens=8, do_sample=False,
                         pad_token_id=0).numpy()[0, 7:]
    ours = generate(loaded.params, loaded.config, prompt.tolist(), max_new_tokens=8, greedy=True)
    assert list(ours.tokens[0]) == list(ref)


def test_mixtral_load_balancing_loss_equals_transformers(hf_dir):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    m, path = hf_dir
    x = _tokens((2, 9), seed=7)
    with torch.no_grad():
        out = m(torch.tensor(x, dtype=torch.long), output_router_logits=True)
    ref = float(load_balancing_loss_func(out.router_logits, 4, 2))
    loaded = pretrained.load(path)
    _, aux = mixtral.apply(loaded.params, jnp.asarray(x), loaded.config, return_aux=True)
    assert abs(float(aux["moe"]["aux_loss"]) - ref) <= 1e-6
    assert abs(float(out.aux_loss) - ref) <= 1e-6  # transformers' own call on the same logits
    # the weighted term the training task adds: the checkpoint's router_aux_loss_coef made the trip
    np.testing.assert_allclose(float(aux["moe"]["loss"]), 0.02 * ref, atol=1e-6)


def test_mixtral_sliding_window_checkpoint_is_refused(tmp_path):
    m = transformers.MixtralForCausalLM(_config(sliding_window=16))
    m.save_pretrained(tmp_path / "hf")
    with pytest.raises(UnsupportedModelError, match="sliding_window=16"):
        pretrained.load(tmp_path / "hf")
