"""Hugging Face hub datasets, and a local mirror of them one setting away.

Experiments name hub dataset ids (``karpathy/tiny_shakespeare``, ``nyu-mll/glue`` config ``sst2`` ...), so
they run on any machine that is online. A machine that is offline (CI, an air-gapped cluster) points
``JAXLM_DATA=DIR`` (or ``data.local=DIR``) at a folder of copies: :func:`load` then reads the id's folder
of that mirror instead of the hub, with the hub's column names, so an experiment does not change.

The ids below have a reader that turns the files of a known mirror layout (:data:`MIRRORS`: folder, files,
and how the copy differs from the hub) into the hub's columns. Any other id is looked for in
``DIR/<owner>__<name>/`` or ``DIR/<owner>/<name>/`` holding ``<split>.{jsonl,json,parquet,csv,tsv,txt}``
(or ``<split>-*.parquet``, as the hub's parquet export names them).

Errors name the fix: an id that is neither in the mirror nor reachable on the hub names the id, the mirror
setting and the folder looked in; a mirror without the asked split names the split and the ones it has.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxlm.data.errors import DataError

MIRROR_ENV = "JAXLM_DATA"
SETTING = f"{MIRROR_ENV}=DIR (or data.local=DIR)"
_EXTS = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".txt")


@dataclass(frozen=True)
class Mirror:
    """How one hub id is laid out in the mirror: ``folder`` under the mirror directory, ``splits`` (split ->
    the files it is read from), ``read(folder, split) -> {column: values}`` in the hub's columns, and
    ``differs``: what the copy lacks or changes compared with the hub."""

    folder: str
    splits: dict[str, tuple[str, ...]]
    read: Callable[[Path, str], dict[str, list]]
    differs: str


# ---------------------------------------------------------------------------------------------------------
# readers of the known mirror layouts (hub columns out)
# Tiny Shakespeare's hub splits are consecutive slices of char-rnn's input.txt: 1,003,854 / 55,770 / 55,770
# characters (the dataset card's num_bytes less each string's 4-byte offset; together the file's 1,115,394)
_SHAKESPEARE_CUTS = {"train": (0, 1_003_854), "validation": (1_003_854, 1_059_624), "test": (1_059_624, None)}


def _shakespeare(folder: Path, split: str) -> dict[str, list]:
    text = (folder / "input.txt").read_text(encoding="utf-8")
    a, b = _SHAKESPEARE_CUTS[split]
    if len(text) != 1_115_394:  # another copy: the same 90 / 5 / 5 proportions
        n = len(text)
        a, b = {"train": (0, int(0.9 * n)), "validation": (int(0.9 * n), int(0.95 * n)),
                "test": (int(0.95 * n), None)}[split]
    return {"text": [text[a:b]]}


def _multi30k(folder: Path, split: str) -> dict[str, list]:
    stem = {"train": "train", "validation": "val"}[split]
    cols = {}
    for lang in ("en", "de"):
        lines = (folder / f"{stem}.{lang}").read_text(encoding="utf-8").split("\n")
        cols[lang] = lines
    pairs = [(e, d) for e, d in zip(cols["en"], cols["de"]) if e.strip() or d.strip()]  # the files end "\n\n"
    return {"en": [e for e, _ in pairs], "de": [d for _, d in pairs]}


def _sst2(folder: Path, split: str) -> dict[str, list]:
    name = {"train": "train.tsv", "validation": "dev.tsv"}[split]
    with open(folder / name, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return {"sentence": [r["sentence"] for r in rows], "label": [int(r["label"]) for r in rows],
            "idx": list(range(len(rows)))}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _samsum(folder: Path, split: str) -> dict[str, list]:
    rows = _jsonl(folder / f"{split}.jsonl")
    return {"id": [f"mirror-{split}-{i}" for i in range(len(rows))], "dialogue": [r["context"] for r in rows],
            "summary": [r["response"] for r in rows]}


def _squad(folder: Path, split: str) -> dict[str, list]:
    rows = _jsonl(folder / "train.jsonl")
    # no character offsets in this copy: answer_start is empty and the span task finds the answer's first
    # occurrence in the passage instead
    return {"id": [f"mirror-{i}" for i in range(len(rows))], "title": [""] * len(rows),
            "context": [r["passage"] for r in rows], "question": [r["query"] for r in rows],
            "answers": [{"text": [r["answer"]], "answer_start": []} for r in rows]}


MIRRORS: dict[str, Mirror] = {
    "karpathy/tiny_shakespeare": Mirror(
        "tinyshakespeare", {s: ("input.txt",) for s in ("train", "validation", "test")}, _shakespeare,
        "one file, input.txt; the train / validation / test rows are cut from it at the hub's character "
        "offsets"),
    "bentrevett/multi30k": Mirror(
        "multi30k", {"train": ("train.en", "train.de"), "validation": ("val.en", "val.de")}, _multi30k,
        "no test split; line-aligned text files train.{en,de} / val.{en,de}"),
    "nyu-mll/glue:sst2": Mirror(
        "sst2", {"train": ("train.tsv",), "validation": ("dev.tsv",)}, _sst2,
        "no (unlabelled) test split; dev.tsv is the validation split; idx is the row number"),
    "knkarthick/samsum": Mirror(
        "samsum", {"validation": ("validation.jsonl",), "test": ("test.jsonl",)}, _samsum,
        "no train split (only validation 818 / test 819); the files' context / response are dialogue / "
        "summary; ids are made up"),
    "rajpurkar/squad_v2": Mirror(
        "squad_v2_subset", {"train": ("train.jsonl",)}, _squad,
        "a 500-question subset of the train split with short passages, every question answerable; no "
        "validation split and no character offsets (answers.answer_start is empty)"),
}


# ---------------------------------------------------------------------------------------------------------
def key(name: str, config: str = "") -> str:
    """The :data:`MIRRORS` key of a hub id and config (``nyu-mll/glue`` + ``sst2`` -> ``nyu-mll/glue:sst2``)."""
    return f"{name}:{config}" if config else name


def mirror_root(local: str = "") -> Path | None:
    """The mirror directory: ``local`` (``data.local``) if given, else ``$JAXLM_DATA``, else None."""
    d = local or os.environ.get(MIRROR_ENV, "")
    return Path(d).expanduser() if d else None


def mirror_folder(name: str, config: str = "", local: str = "") -> Path | None:
    """The folder of the mirror that holds ``name`` (it may not exist), or None when no mirror is set."""
    root = mirror_root(local)
    if root is None:
        return None
    m = MIRRORS.get(key(name, config))
    if m is not None:
        return root / m.folder
    flat = key(name, config).replace("/", "__").replace(":", "__")
    nested = root.joinpath(*name.split("/"), *([config] if config else []))
    return nested if nested.is_dir() and not (root / flat).is_dir() else root / flat


def _generic_files(folder: Path, split: str) -> list[Path]:
    found = [folder / f"{split}{e}" for e in _EXTS if (folder / f"{split}{e}").is_file()]
    if not found:
        found = sorted(folder.glob(f"{split}-*.parquet")) or sorted(folder.glob(f"*/{split}-*.parquet"))
    return found


def mirror_splits(name: str, config: str = "", local: str = "") -> list[str] | None:
    """The splits the mirror holds of ``name`` (None when no mirror is set or it has no folder for it)."""
    folder = mirror_folder(name, config, local)
    if folder is None or not folder.is_dir():
        return None
    m = MIRRORS.get(key(name, config))
    if m is not None:
        return [s for s, files in m.splits.items() if all((folder / f).is_file() for f in files)]
    return mirror_splits_at(folder)


def has_split(name: str, split: str, config: str = "", local: str = "") -> bool:
    """Whether ``split`` of ``name`` can be read: the mirror has it, or (no mirror of it) the hub is assumed
    to (experiments use this to pick splits that exist in the source they will read)."""
    splits = mirror_splits(name, config, local)
    return True if splits is None else split in splits


def differs(name: str, config: str = "") -> str:
    """How the known mirror layout of ``name`` differs from the hub ("" for unknown ids)."""
    m = MIRRORS.get(key(name, config))
    return "" if m is None else m.differs


def _from_mirror(name: str, config: str, split: str, local: str, folder: Path, what: str):
    import datasets

    m = MIRRORS.get(key(name, config))
    have = mirror_splits(name, config, local)
    if split not in (have or []):
        raise DataError(f"{what}={name!r}: the local mirror {folder} has no {split!r} split (it has "
                        f"{have}{'; ' + m.differs if m else ''}): pick one of those splits (data.split / "
                        f"data.eval_split){'' if m else f' or add {split}.jsonl there'}.")
    if m is not None:
        return datasets.Dataset.from_dict(m.read(folder, split))
    files = [str(f) for f in _generic_files(folder, split)]
    builder = {".jsonl": "json", ".json": "json", ".txt": "text", ".tsv": "csv"}.get(Path(files[0]).suffix,
                                                                                 Path(files[0]).suffix[1:])
    kwargs = {"sep": "\t"} if files[0].endswith(".tsv") else {}
    return datasets.load_dataset(builder, data_files=files, split="train", **kwargs)


def mirror_splits_at(folder: Path) -> list[str]:
    """The split names of a generic mirror folder (``train.jsonl`` -> train, ``test-00000-of-00001.parquet``
    -> test)."""
    names = set()
    for p in list(folder.iterdir()) + list(folder.glob("*/*.parquet")):
        if p.is_file() and p.suffix in _EXTS:
            names.add(p.name.split("-")[0] if p.suffix == ".parquet" and "-" in p.name else p.stem)
    return sorted(names)


def load(name: str, *, config: str = "", split: str = "train", local: str = "", streaming: bool = False,
         what: str = "data.path") -> Any:
    """Split ``split`` of hub dataset ``name`` (config ``config``): from the local mirror when one is set
    and holds the id (a ``datasets.Dataset``, or with ``streaming`` an ``IterableDataset`` over it), else
    from the hub (``datasets.load_dataset``, streamed when ``streaming``)."""
    import datasets

    folder = mirror_folder(name, config, local)
    if folder is not None and folder.is_dir():
        ds = _from_mirror(name, config, split, local, folder, what)
        return ds.to_iterable_dataset() if streaming else ds
    try:
        return datasets.load_dataset(name, config or None, split=split, streaming=streaming)
    except Exception as e:  # noqa: BLE001 - any hub failure (offline, unknown id, missing split) -> one error
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        where = (f"the mirror folder {folder} does not exist" if folder is not None else
                 f"no local mirror is set (it would be read from DIR/"
                 f"{MIRRORS[key(name, config)].folder if key(name, config) in MIRRORS else name.replace('/', '__')})")
        raise DataError(f"{what}={name!r}{f' (config {config!r})' if config else ''}, split {split!r}, cannot "
                        f"be loaded from the Hugging Face hub ({type(e).__name__}: {why}) and {where}. Go online, "
                        f"or set {SETTING} to a folder holding a copy.") from e


__all__ = ["MIRRORS", "MIRROR_ENV", "Mirror", "differs", "has_split", "key", "load", "mirror_folder",
           "mirror_root", "mirror_splits"]
