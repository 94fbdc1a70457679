"""README.md and docs/*.md: every relative link points at a file that exists (and, with ``#anchor``, at a
heading of it), README.md stays a short newcomer's page (<= 300 lines, no paragraph or run of words said
twice, no paragraph of it copied into a docs page) and its model table is what ``jaxlm models`` prints.

Fast: reads markdown files and counts parameters from the specs (nothing allocated)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
MAX_README_LINES = 300
RUN = 7  # words: README's Hugging Face paragraph once began the same 7-word sentence twice

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")  # [text](target); images excluded


def prose(text: str) -> str:
    """``text`` without code blocks, inline code and table rows (kept as blank lines)."""
    out, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
            out.append("")
            continue
        out.append("" if fence or line.lstrip().startswith("|") else line)
    return "\n".join(out)


def links(text: str) -> list[str]:
    """Link targets outside code blocks."""
    out, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence:
            out += LINK.findall(re.sub(r"`[^`]*`", "", line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (but ``-`` and ``_``), spaces -> ``-``."""
    h = re.sub(r"`", "", heading.strip().lower())
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    heads = re.findall(r"^#{1,6}\s+(.+?)\s*#*$", prose(path.read_text()), re.M)
    seen: Counter = Counter()
    out = set()
    for h in heads:
        s = slug(h)
        out.add(s if not seen[s] else f"{s}-{seen[s]}")
        seen[s] += 1
    return out


def paragraphs(text: str) -> list[str]:
    return [p for p in (" ".join(b.split()) for b in re.split(r"\n\s*\n", text)) if len(p) >= 40]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    bad = []
    for target in links(page.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            bad.append(f"{target}: no file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not bad, f"{page.relative_to(REPO)}: broken links:\n" + "\n".join(bad)


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}): move detail to docs/"


def test_readme_says_nothing_twice():
    text = README.read_text()
    twice = [p[:80] for p, k in Counter(paragraphs(text)).items() if k > 1]
    assert not twice, f"README.md repeats paragraphs: {twice}"
    words = prose(text).split()
    runs = Counter(" ".join(words[i:i + RUN]) for i in range(len(words) - RUN + 1))
    twice = [r for r, k in runs.items() if k > 1]
    assert not twice, f"README.md says the same {RUN} words twice: {twice}"


def test_no_readme_paragraph_copied_into_docs():
    mine = set(paragraphs(prose(README.read_text())))
    for page in PAGES[1:]:
        copied = mine & set(paragraphs(prose(page.read_text())))
        assert not copied, f"{page.relative_to(REPO)} repeats README paragraphs: {[p[:80] for p in copied]}"


def test_readme_model_table_is_current():
    from jaxlm.commands.models import table

    assert table() in README.read_text(), ("README.md's model table differs from what `jaxlm models` prints; "
                                           "paste its output:\n" + table())
