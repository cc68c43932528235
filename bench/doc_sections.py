"""Writes measured figures into a docs page between `<!-- NAME:start/end -->` markers."""

from __future__ import annotations

from pathlib import Path


def replace_section(doc: Path, name: str, text: str) -> None:
    content = doc.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    before, rest = content.split(start, 1)
    doc.write_text(f"{before}{start}\n{text}\n{end}{rest.split(end, 1)[1]}")
