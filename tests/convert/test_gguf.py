"""GGUF import on a tiny llama written here with the `gguf` package (as llama.cpp's converter would: q/k rows
permuted, byte-level BPE tokenizer in the metadata), checked against the transformers model it came from."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf_pkg = pytest.importorskip("gguf")

from jaxlm import pretrained  # noqa: E402
from jaxlm.convert import gguf, hf  # noqa: E402
from jaxlm.convert.tokenizer import _bytes_to_unicode  # noqa: E402

pytestmark = pytest.mark.hf
H, G = 4, 2


def _permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's permute (HF rotate-half rows -> interleaved pairs)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _vocab():
    """A byte-level vocabulary: 256 byte tokens, a few merges, and two control tokens."""
    alphabet = list(_bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i s"]
    tokens = alphabet + ["Ġt", "he", "Ġthe", "Ġa", "is", "<|im_start|>", "<|im_end|>"]
    types = [1] * (len(tokens) - 2) + [3, 3]
    return tokens, merges, types


def _write(path, m, tokens, merges, types, ftype):
    c = m.config
    w = gguf_pkg.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"] if getattr(c, "rope_parameters", None) else c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    w.add_bos_token_id(len(tokens) - 2)
    w.add_eos_token_id(len(tokens) - 1)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
                 "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for k, v in m.state_dict().items():
        a = v.numpy()
        if k.startswith("model.layers."):
            i, rest = k[len("model.layers."):].split(".", 1)
            base = rest.rsplit(".", 1)[0]
            name = f"blk.{i}.{per_layer[base]}.weight"
            if base == "self_attn.q_proj":
                a = _permute(a, H)
            elif base == "self_attn.k_proj":
                a = _permute(a, G)
        else:
            name = names[k]
        w.add_tensor(name, a.astype(ftype if a.ndim == 2 else np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("ftype", [np.float32, np.float16])
def test_tiny_gguf_matches_transformers(tmp_path, ftype):
    tokens, merges, types = _vocab()
    cfg = transformers.LlamaConfig(vocab_size=len(tokens), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=H, num_key_value_heads=G, max_position_embeddings=64,
                                   rope_theta=1000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
            p.copy_(p.to(torch.float16).float())  # representable in float16, so both file types are exact
    f = tmp_path / "tiny.gguf"
    _write(f, m, tokens, merges, types, ftype)

    loaded = pretrained.load(f)
    c = loaded.config
    assert (c.n_heads, c.kv_heads, c.rope_theta, c.tie_embeddings) == (H, G, 1000.0, False)
    assert hf.params_to_hf(loaded.family, c, loaded.params).keys() == m.state_dict().keys()
    x = np.random.default_rng(0).integers(0, len(tokens), (2, 9))
    with torch.no_grad():
        ref = m(torch.tensor(x)).logits.numpy()
    assert np.abs(np.asarray(loaded.family.apply(loaded.params, jnp.asarray(x), c)) - ref).max() < 1e-4

    tok = loaded.tokenizer
    ids = tok.encode("<|im_start|> the a is<|im_end|>").ids
    assert ids == [tokens.index(t) for t in ["<|im_start|>", "Ġthe", "Ġa", "Ġ", "is", "<|im_end|>"]]
    assert tok.decode(tok.encode(" the a is").ids) == " the a is"
    assert loaded.extra["eos_id"] == len(tokens) - 1 and loaded.extra["stop_ids"] == [len(tokens) - 1]
    assert hf.apply_chat_template(loaded.extra["chat_template"], [{"role": "user", "content": "hi"}]) == \
        "<|im_start|>hi<|im_end|>"


def test_gguf_unsupported_architecture(tmp_path):
    f = tmp_path / "x.gguf"
    w = gguf_pkg.GGUFWriter(str(f), "gemma")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(hf.UnsupportedModelError, match=r"architecture 'gemma'.*\['llama', 'mistral'\]"):
        gguf.load(f)
