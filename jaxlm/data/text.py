"""Reading text through Hugging Face ``datasets`` and turning it into ids with ``tokenizers``.

Sources: local text / jsonl / json / csv / tsv / parquet files (a file, a directory with a glob, or a
comma-separated list) and, for users who are online, hub dataset names. Tokenizers: character-level,
byte-level BPE trained on the training split, or a pretrained tokenizer (a ``tokenizer.json`` file, a
directory holding one, or GPT-2 style ``vocab.json``/``merges.txt`` or ``encoder.json``/``vocab.bpe``).
Every tokenizer we build reserves the same special tokens at the same ids (:data:`SPECIALS`), which match
the model configs' defaults (``pad_id=0``, the Transformer's ``bos_id=1``, ``eos_id=2``).
"""

from __future__ import annotations

import glob as globlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.data.errors import DataError  # re-exported: jaxlm.data.text.DataError

SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>", "<mask>")
FORMATS = ("auto", "text", "json", "csv", "tsv", "parquet", "hub")
_SUFFIX = {".txt": "text", ".py": "text", ".md": "text", ".de": "text", ".en": "text", ".fr": "text",
           ".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


# ---------------------------------------------------------------------------------------------------------
# files -> datasets.Dataset
def resolve_files(path: str, pattern: str = "*", what: str = "data.path") -> list[str]:
    """The sorted list of files named by ``path``: one file, a directory searched with ``pattern`` (``**``
    recurses), a glob, or several of these separated by commas. Missing or empty files raise DataError."""
    if not path:
        raise DataError(f"{what} is empty: set it to a data file or directory, e.g. {what}=data/train.txt.")
    files: list[str] = []
    for part in [p.strip() for p in str(path).split(",") if p.strip()]:
        p = Path(part).expanduser()
        if p.is_dir():
            found = sorted(str(f) for f in p.glob(pattern) if f.is_file())
            if not found:
                raise DataError(f"{what}: directory {p} has no files matching {pattern!r}; set data.glob.")
            files += found
        elif any(c in part for c in "*?["):
            found = sorted(f for f in globlib.glob(part, recursive=True) if os.path.isfile(f))
            if not found:
                raise DataError(f"{what}: no files match {part!r}.")
            files += found
        elif p.is_file():
            files.append(str(p))
        else:
            raise DataError(f"{what}: {p} does not exist (working directory {os.getcwd()}); check the path.")
    empty = [f for f in files if os.path.getsize(f) == 0]
    if empty and len(empty) == len(files):
        raise DataError(f"{what}: {empty[0]} is empty; give a file that holds data.")
    return [f for f in files if f not in empty]


def infer_format(files: Sequence[str]) -> str:
    kinds = {_SUFFIX.get(Path(f).suffix.lower(), "text") for f in files}
    if len(kinds) > 1:
        raise DataError(f"files of mixed formats {sorted(kinds)}; set data.format or split them.")
    return kinds.pop()


def looks_like_hub_name(path: str) -> bool:
    return bool(path) and not Path(path).expanduser().exists() and not path.startswith((".", "/", "~")) \
        and "," not in path and not any(c in path for c in "*?[") and Path(path).suffix == ""


def load(path: str, *, fmt: str = "auto", pattern: str = "*", sample_by: str = "document",
         split: str = "train", max_examples: int | None = None, what: str = "data.path", config: str = "",
         local: str = "", streaming: bool = False):
    """Load ``path`` as a ``datasets.Dataset`` (one split), or with ``streaming`` an ``IterableDataset``
    that reads the files (or the hub) as it is iterated and never holds the corpus in memory.

    Text files become one row per document / paragraph / line (``sample_by``) in a ``"text"`` column; other
    formats keep their columns. A name that is not a local path is a Hugging Face hub dataset id (with
    ``config`` and ``split``), read from the local mirror when one is set (``local`` / ``$JAXLM_DATA``, see
    :mod:`jaxlm.data.hub`) and from the hub otherwise. ``max_examples`` keeps the first rows only (quick
    runs and tests). Local files have one split: ``split`` applies to hub ids only.
    """
    import datasets

    datasets.disable_progress_bars()
    if fmt == "hub" or (fmt == "auto" and looks_like_hub_name(path)):
        from jaxlm.data import hub

        ds = hub.load(path, config=config, split=split, local=local, streaming=streaming, what=what)
    else:
        files = resolve_files(path, pattern, what)
        kind = infer_format(files) if fmt == "auto" else fmt
        if kind not in FORMATS:
            raise DataError(f"data.format={fmt!r} is not one of {FORMATS}.")
        kwargs: dict[str, Any] = {}
        builder = kind
        if kind == "text":
            kwargs = {"sample_by": sample_by, "keep_linebreaks": sample_by != "line"}
        elif kind == "tsv":
            builder, kwargs = "csv", {"sep": "\t", "quoting": 3}  # 3 = csv.QUOTE_NONE: quotes are text
        try:
            ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=streaming, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{what}: could not read {files[:3]} as {kind}: {e}") from e
    if streaming:
        return ds.take(max_examples) if max_examples is not None else ds
    if len(ds) == 0:
        raise DataError(f"{what}={path!r} holds no rows; give a file with data.")
    if max_examples is not None and len(ds) > max_examples:
        ds = ds.select(range(max_examples))
    return ds


def column(ds, name: str, what: str = "data.text_column") -> list:
    """The values of column ``name``; a missing column raises DataError listing the ones present."""
    if name not in ds.column_names:
        from jaxlm.config import closest

        raise DataError(f"the dataset has no column {name!r}{closest(name, ds.column_names)}; its columns are "
                        f"{ds.column_names}: set {what}.")
    return ds[name]


def split_for_eval(n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train / eval row indices: every k-th row (k = round(1/fraction)) goes to eval, so the
    held-out rows are spread over the whole corpus rather than being its alphabetical tail."""
    if fraction <= 0 or n < 2:
        return np.arange(n), np.arange(0)
    k = max(2, round(1 / fraction))
    idx = np.arange(n)
    is_eval = (idx % k) == (k // 2)
    if not is_eval.any():
        is_eval[-1] = True
    return idx[~is_eval], idx[is_eval]


def split_text(text: str, fraction: float) -> tuple[str, str]:
    """Cut one document at ``1 - fraction`` of its length (at a line break when one is near): the tail is
    the validation text, as in nanoGPT's Tiny Shakespeare split."""
    cut = int(len(text) * (1 - fraction))
    nl = text.rfind("\n", 0, cut)
    if nl > cut - 1000 and nl > 0:
        cut = nl + 1
    return text[:cut], text[cut:]


# ---------------------------------------------------------------------------------------------------------
# tokenizers
def char_tokenizer(texts: Iterable[str]):
    """A character-level tokenizer over every character in ``texts`` (sorted), after :data:`SPECIALS`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars: set[str] = set()
    for t in texts:
        chars.update(t)
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for c in sorted(chars):
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIALS))
    return tok


def bpe_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on ``texts`` with ``vocab_size`` tokens
    including :data:`SPECIALS` and the 256 byte symbols."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < len(SPECIALS) + 256:
        raise DataError(f"byte-level BPE needs vocab_size >= {len(SPECIALS) + 256} (specials + 256 bytes), "
                        f"got {vocab_size}; raise data.vocab_size or use data.tokenizer=char.")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path):
    """A pretrained tokenizer: ``tokenizer.json`` (file or directory holding one), or a directory with
    GPT-2's ``vocab.json``+``merges.txt`` / ``encoder.json``+``vocab.bpe``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    p = Path(path).expanduser()
    if p.is_file():
        return Tokenizer.from_file(str(p))
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(p / "tokenizer.json"))
        for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
            if (p / vocab).is_file() and (p / merges).is_file():
                tok = Tokenizer(models.BPE.from_file(str(p / vocab), str(p / merges)))
                tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
                tok.decoder = decoders.ByteLevel()
                return tok
    raise DataError(f"data.tokenizer={str(path)!r}: not 'char', 'bpe', a tokenizer.json file or a directory "
                    f"holding tokenizer.json or vocab.json+merges.txt.")


def build_tokenizer(kind: str, texts: Sequence[str], vocab_size: int):
    """``kind`` = ``"char"``, ``"bpe"`` (trained on ``texts``) or a pretrained tokenizer path."""
    if kind == "char":
        return char_tokenizer(texts)
    if kind == "bpe":
        return bpe_tokenizer(texts, vocab_size)
    return load_tokenizer(kind)


def special_ids(tok) -> dict[str, int | None]:
    """Ids of pad / bos / eos / unk / mask for ``tok`` (None where it has none). Pretrained tokenizers use
    their own names ([PAD], [CLS], <|endoftext|>, <s> ...); GPT-2's single <|endoftext|> serves as bos and eos."""
    names = {"pad": ("<pad>", "[PAD]", "<|pad|>"), "bos": ("<bos>", "[CLS]", "<s>", "<|endoftext|>"),
             "eos": ("<eos>", "[SEP]", "</s>", "<|endoftext|>"), "unk": ("<unk>", "[UNK]"),
             "mask": ("<mask>", "[MASK]")}
    out: dict[str, int | None] = {}
    for k, cands in names.items():
        out[k] = next((i for c in cands if (i := tok.token_to_id(c)) is not None), None)
    if out["pad"] is None:
        out["pad"] = out["eos"] if out["eos"] is not None else 0
    return out


def encode(tok, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each text (int32 arrays), encoded in parallel by ``tokenizers``."""
    return [np.asarray(e.ids, np.int32) for e in tok.encode_batch(list(texts), add_special_tokens=False)]


def check_vocab(tok, vocab_size: int, where: str = "model.vocab_size") -> None:
    """Raise DataError when the tokenizer has more ids than the model's embedding table."""
    n = tok.get_vocab_size(with_added_tokens=True)
    if n > vocab_size:
        raise DataError(f"the tokenizer has {n} tokens but {where}={vocab_size}: ids would fall outside the "
                        f"embedding table; set {where}={n} (or larger) or use a smaller tokenizer.")


def id_bound(tok) -> int:
    """One past the largest id ``tok`` produces or decodes (added tokens included): a model whose
    vocab_size is larger has ids this tokenizer cannot turn into text."""
    return max(tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1


def unknown_chars(tok, text: str) -> list[str]:
    """The distinct pieces of ``text`` that ``tok`` encodes as its unknown token, in order of appearance
    (e.g. characters a char-level tokenizer never saw in training); empty for tokenizers without an unknown
    token (byte-level BPE encodes everything)."""
    unk = special_ids(tok)["unk"]
    if unk is None:
        return []
    enc = tok.encode(text, add_special_tokens=False)
    out: list[str] = []
    for i, (a, b) in zip(enc.ids, enc.offsets):
        piece = text[a:b]
        if i == unk and piece != tok.id_to_token(unk) and piece not in out:
            out.append(piece)
    return out
