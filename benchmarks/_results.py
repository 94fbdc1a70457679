"""Where the benchmark scripts record a run: benchmarks/RESULTS.md (the current figures) and benchmarks/HISTORY.md
(the dated log).

RESULTS.md holds one table per area; a script's own table sits between two marker lines,

    <!-- generate.py -->
    | batch | jaxlm tok/s | ...
    <!-- /generate.py -->

and :func:`record` replaces only what lies between them (the headings and hand-written notes around the markers,
and every other section, are kept), then appends the run's full dated output to the end of HISTORY.md. A section
the file lacks is appended at its end. A script that writes several tables names them ``NAME.py:KEY``.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
HISTORY = HERE / "HISTORY.md"


def markers(name: str) -> tuple[str, str]:
    """The opening and closing marker lines of section ``name``."""
    if not re.fullmatch(r"[\w.:-]+", name) or "--" in name:
        raise ValueError(f"section name {name!r}: letters, digits, '.', ':', '_' and single '-' only")
    return f"<!-- {name} -->", f"<!-- /{name} -->"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the lines between ``name``'s markers replaced by ``body`` (appended at the end if absent)."""
    start, end = markers(name)
    block = f"{start}\n{body.strip(chr(10))}\n{end}"
    opening = list(re.finditer(rf"^{re.escape(start)}[ \t]*$", text, re.M))
    if not opening:
        return (text.rstrip("\n") + "\n\n" if text.strip() else "") + block + "\n"
    if len(opening) > 1:
        raise ValueError(f"{start} appears {len(opening)} times in the results file")
    closing = re.compile(rf"^{re.escape(end)}[ \t]*$", re.M).search(text, opening[0].end())
    if closing is None:
        raise ValueError(f"{start} has no closing {end}; fix the results file by hand")
    return text[:opening[0].start()] + block + text[closing.end():]


def record(name: str, table: str, log: str, *, when: datetime.datetime | None = None,
           results: Path | None = None, history: Path | None = None) -> None:
    """Replace section ``name`` of RESULTS.md with ``table`` (the latest figures, with their machine, date and
    command) and append ``log`` (the run's full output) to HISTORY.md under a dated heading."""
    when = when or datetime.datetime.now(datetime.UTC)
    results, history = results or RESULTS, history or HISTORY  # looked up now, so a test can point them elsewhere
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    new = replace_section(text, name, table)  # raises before anything is written
    heading = f"## {when:%Y-%m-%d %H:%M} UTC: benchmarks/{name}"
    old = history.read_text() if history.exists() else "# Benchmark history: the dated log\n"
    history.write_text(old.rstrip("\n") + f"\n\n{heading}\n\n{log.strip(chr(10))}\n")
    results.write_text(new)
    print(f"wrote {results} (section {name}) and appended to {history}")


def now() -> str:
    """The date and time a table row carries."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def machine() -> str:
    """The CPU model name and the cores this process sees, e.g. 'AMD EPYC, 2 cores visible'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores visible"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible"
