"""Every relative link in the README and docs/*.md points at a file that exists and, with an
``#anchor``, at a heading of that file (GitHub's slug rule), so the docs never send a reader
to nothing after a rename."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    body = FENCE.sub("", page.read_text())
    seen: dict[str, int] = {}
    out = set()
    for line in body.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def test_slug_follows_githubs_rule():
    assert slug("The paper's LayerNorm contrast, in minutes") == "the-papers-layernorm-contrast-in-minutes"
    assert slug("Metric variants: `reference` or `paper`") == "metric-variants-reference-or-paper"
    assert slug("K, detours & R²") == "k-detours--r²"


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` that point at no file, or at no heading of one."""
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor})")
    return broken


def test_broken_links_are_found(tmp_path):
    (tmp_path / "other.md").write_text("# Setup\n\n## Setup\n")
    page = tmp_path / "page.md"
    page.write_text("[a](other.md#setup) [b](other.md#setup-1) [c](other.md#install) [d](gone.md) "
                    "[e](https://x.org/y) ![img](pic.png)\n```\n[f](in-code.md)\n```\n")
    assert broken_links(page) == ["other.md#install (no heading #install)", "gone.md (no such file)"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    assert not broken_links(page), f"{page.relative_to(ROOT)}: {broken_links(page)}"
