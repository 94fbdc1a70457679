"""benchmarks/_results.py: a benchmark replaces only its own table in RESULTS.md and appends its run to HISTORY.md."""

import datetime
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_results", ROOT / "benchmarks" / "_results.py")
R = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(R)

WHEN = datetime.datetime(2026, 12, 7, 12, 30, tzinfo=datetime.UTC)
PAGE = """# Benchmark results

## Generation
hand-written intro

<!-- generate.py -->
| batch | tok/s |
|---:|---:|
| 1 | 100.0 |
<!-- /generate.py -->

- a hand-written note under the table

## Quantization
<!-- quant_speed.py -->
| weights | tok/s |
|---|---:|
| int8 | 5.0 |
<!-- /quant_speed.py -->
- note
"""


def _files(tmp_path, page=PAGE, log="# Benchmark history\n\nold entry\n"):
    res, hist = tmp_path / "RESULTS.md", tmp_path / "HISTORY.md"
    res.write_text(page)
    hist.write_text(log)
    return res, hist


def test_replaces_only_its_own_section(tmp_path):
    res, hist = _files(tmp_path)
    R.record("generate.py", "| batch | tok/s |\n|---:|---:|\n| 1 | 200.0 |\n", "full output", when=WHEN,
             results=res, history=hist)
    text = res.read_text()
    assert "| 1 | 200.0 |" in text and "| 1 | 100.0 |" not in text
    # everything outside the section is byte-for-byte what it was
    assert text == PAGE.replace("| 1 | 100.0 |", "| 1 | 200.0 |")


def test_appends_the_dated_run_to_the_log(tmp_path):
    res, hist = _files(tmp_path)
    R.record("quant_speed.py", "| weights | tok/s |\n| int8 | 6.0 |", "table\n- command: `x`", when=WHEN,
             results=res, history=hist)
    R.record("quant_speed.py", "| weights | tok/s |\n| int8 | 7.0 |", "second run", when=WHEN, results=res,
             history=hist)
    log = hist.read_text()
    assert log.startswith("# Benchmark history\n\nold entry\n")  # the old log is kept
    assert log.count("## 2026-12-07 12:30 UTC: benchmarks/quant_speed.py") == 2
    assert log.index("table\n- command: `x`") < log.index("second run")  # newest last
    assert "| int8 | 7.0 |" in res.read_text() and "6.0" not in res.read_text()


def test_other_sections_survive_repeated_writes(tmp_path):
    res, hist = _files(tmp_path)
    for i in range(3):
        R.record("generate.py", f"| g | {i} |", f"g{i}", when=WHEN, results=res, history=hist)
        R.record("quant_speed.py", f"| q | {i} |", f"q{i}", when=WHEN, results=res, history=hist)
    text = res.read_text()
    assert text.count("<!-- generate.py -->") == 1 and text.count("<!-- /quant_speed.py -->") == 1
    assert "| g | 2 |" in text and "| q | 2 |" in text
    assert "hand-written intro" in text and "- a hand-written note under the table" in text and "- note" in text
    assert text.index("## Generation") < text.index("| g | 2 |") < text.index("## Quantization") < text.index("| q | 2 |")


def test_a_missing_section_is_appended(tmp_path):
    res, hist = _files(tmp_path)
    R.record("validation_cost.py:tiny", "| tiny | 1.0 |", "log", when=WHEN, results=res, history=hist)
    text = res.read_text()
    assert text.startswith(PAGE.rstrip("\n"))
    assert text.endswith("<!-- validation_cost.py:tiny -->\n| tiny | 1.0 |\n<!-- /validation_cost.py:tiny -->\n")
    # a name is not a prefix match: the tiny section does not touch a bench one written next
    R.record("validation_cost.py:bench", "| bench | 2.0 |", "log", when=WHEN, results=res, history=hist)
    assert "| tiny | 1.0 |" in res.read_text() and "| bench | 2.0 |" in res.read_text()


def test_markers_only_count_as_whole_lines(tmp_path):
    page = "The scheme: `<!-- generate.py -->` ... `<!-- /generate.py -->`.\n\n" + PAGE
    res, hist = _files(tmp_path, page=page)
    R.record("generate.py", "| 1 | 300.0 |", "log", when=WHEN, results=res, history=hist)
    text = res.read_text()
    assert text.startswith("The scheme: `<!-- generate.py -->` ... `<!-- /generate.py -->`.\n")
    assert "| 1 | 300.0 |" in text and "| 1 | 100.0 |" not in text


def test_a_broken_section_writes_nothing(tmp_path):
    page = PAGE.replace("<!-- /generate.py -->\n", "")
    res, hist = _files(tmp_path, page=page)
    with pytest.raises(ValueError, match="no closing"):
        R.record("generate.py", "| x |", "log", when=WHEN, results=res, history=hist)
    assert res.read_text() == page and hist.read_text() == "# Benchmark history\n\nold entry\n"
    with pytest.raises(ValueError, match="section name"):
        R.markers("bad--name")


def test_new_files_are_created(tmp_path):
    res, hist = tmp_path / "RESULTS.md", tmp_path / "HISTORY.md"
    R.record("data_memory.py", "| a |", "first", when=WHEN, results=res, history=hist)
    assert res.read_text() == "# Benchmark results\n\n<!-- data_memory.py -->\n| a |\n<!-- /data_memory.py -->\n"
    assert re.search(r"^## 2026-12-07 12:30 UTC: benchmarks/data_memory.py\n\nfirst\n\Z", hist.read_text(), re.M)


def test_the_real_results_file_has_well_formed_sections():
    """Every script's section in benchmarks/RESULTS.md opens once and closes after it opens."""
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    names = re.findall(r"^<!-- ([\w.:-]+) -->$", text, re.M)
    assert {"generate.py", "decode_bound.py", "decode_revisions.py", "quant_quality.py", "quant_speed.py",
            "data_memory.py", "validation_cost.py:tiny", "validation_cost.py:bench"} <= set(names)
    for name in names:
        start, end = R.markers(name)
        assert text.count(start) == 1 and text.index(start) < text.index(end), name
        assert R.replace_section(text, name, "| x |").count(end) == 1


def test_default_paths_are_looked_up_at_call_time(tmp_path, monkeypatch):
    """Scripts call record() without paths; pointing the module's RESULTS/HISTORY elsewhere redirects them."""
    res, hist = _files(tmp_path)
    monkeypatch.setattr(R, "RESULTS", res)
    monkeypatch.setattr(R, "HISTORY", hist)
    R.record("generate.py", "| 1 | 9.0 |", "log", when=WHEN)
    assert "| 1 | 9.0 |" in res.read_text() and hist.read_text().endswith("benchmarks/generate.py\n\nlog\n")
