"""Hub dataset ids and the local mirror (jaxlm.data.hub): the mirror gives the hub's columns and splits,
errors name the id, the setting and the folder, and a missing split is named. Offline: no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxlm.data import hub, text
from jaxlm.data.text import DataError

# hub id, config, split -> the columns and row count the hub has (dataset cards; docs/data.md)
HUB_FACTS = [("karpathy/tiny_shakespeare", "", "train", ["text"], 1),
             ("karpathy/tiny_shakespeare", "", "validation", ["text"], 1),
             ("bentrevett/multi30k", "", "train", ["en", "de"], 29000),
             ("bentrevett/multi30k", "", "validation", ["en", "de"], 1014),
             ("nyu-mll/glue", "sst2", "train", ["sentence", "label", "idx"], 67349),
             ("nyu-mll/glue", "sst2", "validation", ["sentence", "label", "idx"], 872),
             ("knkarthick/samsum", "", "validation", ["id", "dialogue", "summary"], 818),
             ("knkarthick/samsum", "", "test", ["id", "dialogue", "summary"], 819),
             ("rajpurkar/squad_v2", "", "train", ["id", "title", "context", "question", "answers"], 500)]


@pytest.mark.parametrize("name,config,split,columns,rows", HUB_FACTS)
def test_mirror_reads_each_id_with_the_hubs_columns(shared_data, name, config, split, columns, rows):
    ds = text.load(name, config=config, split=split, local=str(shared_data))
    assert ds.column_names == columns and len(ds) == rows


def test_shakespeare_splits_are_the_hubs_character_slices(shared_data):
    parts = [text.load("karpathy/tiny_shakespeare", split=s, local=str(shared_data))["text"][0]
             for s in ("train", "validation", "test")]
    assert [len(p) for p in parts] == [1_003_854, 55_770, 55_770]
    assert "".join(parts) == (shared_data / "tinyshakespeare" / "input.txt").read_text()


def test_missing_split_and_unreachable_id_name_the_fix(shared_data, tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"has no 'train' split \(it has \['validation', 'test'\]"):
        text.load("knkarthick/samsum", split="train", local=str(shared_data))
    monkeypatch.delenv(hub.MIRROR_ENV, raising=False)
    with pytest.raises(DataError, match=r"'knkarthick/samsum'.*no local mirror is set.*DIR/samsum.*JAXLM_DATA=DIR"):
        text.load("knkarthick/samsum")
    with pytest.raises(DataError, match=f"mirror folder {tmp_path}/samsum does not exist"):
        text.load("knkarthick/samsum", local=str(tmp_path))


def test_unknown_ids_read_from_a_generic_mirror_folder(tmp_path):
    d = tmp_path / "someone__corpus"
    d.mkdir()
    (d / "train.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(5)))
    assert hub.mirror_splits("someone/corpus", local=str(tmp_path)) == ["train"]
    assert text.load("someone/corpus", local=str(tmp_path))["text"] == [f"doc {i}" for i in range(5)]
    assert hub.has_split("someone/corpus", "train", local=str(tmp_path))
    assert not hub.has_split("someone/corpus", "validation", local=str(tmp_path))


def test_no_repository_file_names_a_path_outside_the_repository():
    repo = Path(__file__).resolve().parents[2]
    bad = []
    for p in repo.rglob("*"):
        if p.is_file() and p.suffix in (".py", ".md", ".ipynb", ".toml", ".yaml") and ".venv" not in p.parts \
                and ".git" not in p.parts and p.name != "test_hub.py":
            if "../shared" in p.read_text(errors="replace"):
                bad.append(str(p.relative_to(repo)))
    assert not bad, bad
