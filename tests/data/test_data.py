"""Data: loading through datasets, tokenizers, packing with segment ids, the seekable order, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxlm.data import packing, text
from jaxlm.data.text import DataError


def test_pack_segments_positions_and_weights():
    docs = [np.arange(10, 15), np.arange(20, 23), np.arange(30, 40)]  # 5 + 3 + 10 tokens, +eos each
    out = packing.pack(docs, 6, eos_id=2)
    stream = np.concatenate([np.append(d, 2) for d in docs])  # 21 tokens
    n = (len(stream) - 1) // 6
    assert out["inputs"].shape == (n, 6)
    for i in range(n):  # consecutive blocks overlap by one token: every token predicted once
        np.testing.assert_array_equal(out["inputs"][i], stream[i * 6:i * 6 + 6])
        np.testing.assert_array_equal(out["targets"][i], stream[i * 6 + 1:i * 6 + 7])
    # block 0 = [10 11 12 13 14 2] -> targets [11 12 13 14 2 20]: the last target crosses into doc 2
    np.testing.assert_array_equal(out["weights"][0], [1, 1, 1, 1, 1, 0])
    # block 1 = [20 21 22 2 30 31]: doc 2 then doc 3; segment ids restart per row, positions per doc
    np.testing.assert_array_equal(out["segment_ids"][1], [1, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(out["positions"][1], [0, 1, 2, 3, 0, 1])
    np.testing.assert_array_equal(out["weights"][1], [1, 1, 1, 0, 1, 1])
    mlm = packing.pack(docs, 6, bos_id=1, eos_id=2, shift=False)
    assert mlm["tokens"].shape == (4, 6) and mlm["tokens"][0, 0] == 1


def test_order_is_deterministic_seekable_and_a_permutation_per_epoch():
    data = packing.ArrayData({"x": np.arange(10)[:, None]}, seed=7)
    b = 3  # 3 batches per epoch, 1 example dropped
    seq = [data.batch(s, b)["x"][:, 0].tolist() for s in range(9)]
    again = packing.ArrayData({"x": np.arange(10)[:, None]}, seed=7)
    for s in (8, 2, 5, 0):  # any order, fresh object: same batches
        assert again.batch(s, b)["x"][:, 0].tolist() == seq[s]
    for e in range(3):
        seen = sum(seq[3 * e:3 * e + 3], [])
        assert len(set(seen)) == 9  # no repeats within an epoch
    assert seq[0:3] != seq[3:6]  # a new order each epoch
    other = packing.ArrayData({"x": np.arange(10)[:, None]}, seed=8)
    assert [other.batch(s, b)["x"][:, 0].tolist() for s in range(3)] != seq[:3]
    assert data.position(7, b) == (2, 1)


def test_pad_pairs_and_single():
    out = packing.pad_pairs([np.array([5, 6])], [np.array([7, 8, 9])], 4, 5, bos_id=1, eos_id=2, pad_id=0)
    np.testing.assert_array_equal(out["src"][0], [5, 6, 2, 0])
    np.testing.assert_array_equal(out["tgt_in"][0], [1, 7, 8, 9, 0])
    np.testing.assert_array_equal(out["tgt_out"][0], [7, 8, 9, 2, 0])
    np.testing.assert_array_equal(out["weights"][0], [1, 1, 1, 1, 0])
    s = packing.pad_single([np.arange(10, 20)], 6, bos_id=1, eos_id=2, pad_id=0)
    np.testing.assert_array_equal(s["tokens"][0], [1, 10, 11, 12, 13, 2])


def test_tokenizers_round_trip_and_specials():
    code = "def f(x):\n    return x + 1  # ünïcode\n" * 50
    char = text.char_tokenizer([code])
    assert char.decode(char.encode(code).ids) == code
    assert [char.token_to_id(s) for s in text.SPECIALS] == [0, 1, 2, 3, 4]
    bpe = text.bpe_tokenizer([code], 300)
    assert bpe.get_vocab_size() <= 300
    assert bpe.decode(bpe.encode(code).ids) == code
    assert text.special_ids(bpe) == {"pad": 0, "bos": 1, "eos": 2, "unk": 3, "mask": 4}
    with pytest.raises(DataError, match="vocab_size >= 261"):
        text.bpe_tokenizer([code], 100)


def test_gpt2_tokenizer_from_shared_files(shared_data):
    tok = text.load_tokenizer(shared_data / "gpt2_bpe")
    assert tok.encode("Hello world").ids == [15496, 995]
    assert text.special_ids(tok)["eos"] == 50256


def test_formats_through_datasets(tmp_path: Path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": f"row {i}", "label": i % 2}) for i in range(5)))
    (tmp_path / "b.csv").write_text("text,label\nhello,1\nworld,0\n")
    (tmp_path / "c.tsv").write_text('sentence\tlabel\nit \'s "great"\t1\n')
    (tmp_path / "d.txt").write_text("line one\nline two\n")
    assert text.load(str(tmp_path / "a.jsonl"))["label"] == [0, 1, 0, 1, 0]
    assert text.load(str(tmp_path / "b.csv"))["text"] == ["hello", "world"]
    assert text.load(str(tmp_path / "c.tsv"))["sentence"] == ['it \'s "great"']
    assert text.load(str(tmp_path / "d.txt"))["text"] == ["line one\nline two\n"]
    assert text.load(str(tmp_path / "d.txt"), sample_by="line")["text"] == ["line one", "line two"]
    assert len(text.load(str(tmp_path), pattern="*.jsonl", max_examples=2)) == 2


def test_bad_input_errors(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        text.load(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        text.load(str(tmp_path / "empty.txt"))
    with pytest.raises(DataError, match="no files matching"):
        text.load(str(tmp_path), pattern="*.parquet")
    (tmp_path / "x.jsonl").write_text(json.dumps({"sentence": "a", "label": 1}) + "\n")
    ds = text.load(str(tmp_path / "x.jsonl"))
    with pytest.raises(DataError, match="no column 'sentense' \\(did you mean 'sentence'\\?\\)"):
        text.column(ds, "sentense")
    tok = text.char_tokenizer(["abcdefghijklmnopqrstuvwxyz"])
    with pytest.raises(DataError, match="model.vocab_size=16"):
        text.check_vocab(tok, 16)
