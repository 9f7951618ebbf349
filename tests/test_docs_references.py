"""Every "§N" the code cites resolves inside the repository, in docs/format.md's description of
upstream's format (headings `### §N`, paragraphs `**§N.M`, and the numbered items of §9)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORMAT_DOC = REPO / "docs" / "format.md"
CITATION = re.compile(r"§(\d+(?:\.\d+)?)(?: item (\d+))?")


def cited() -> set[tuple[str, str | None]]:
    found = set()
    for package in ("famfs", "agent", "fusefs", "demo", "bench"):
        for path in (REPO / package).rglob("*.py"):
            found |= {(match[0], match[1] or None) for match in CITATION.findall(path.read_text())}
    return found


def test_every_cited_section_and_item_is_in_docs_format_md() -> None:
    doc = FORMAT_DOC.read_text()
    sections = set(re.findall(r"^### §(\d+(?:\.\d+)?) ", doc, re.M)) | set(re.findall(r"\*\*§(\d+\.\d+) ", doc))
    quirks = doc[doc.index("### §9 "):]
    items = set(re.findall(r"^(\d+)\. ", quirks, re.M))
    citations = cited()
    assert citations, "the code cites the format description"
    missing = [f"§{section}" + (f" item {item}" if item else "") for section, item in sorted(citations, key=str)
               if section not in sections or (item is not None and (section != "9" or item not in items))]
    assert missing == []
