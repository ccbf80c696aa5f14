"""Reading provider/CONTRACT.md, the project's statement of the VSS contract, for the tests that
hold the code to it: its sections by heading and its Markdown tables as rows of cells."""
from __future__ import annotations

import re
from pathlib import Path

import provider

CONTRACT = Path(provider.__file__).resolve().parent / "CONTRACT.md"


def text() -> str:
    return CONTRACT.read_text(encoding="utf-8")


def section(title_regex: str) -> str:
    """The body of the section whose heading starts with `title_regex` (e.g. r"4\\.3 "), up to the
    next heading of any level."""
    m = re.search(rf"^#+ {title_regex}.*?\n(.*?)(?=^#|\Z)", text(), re.S | re.M)
    assert m, f"section {title_regex!r} not found in {CONTRACT}"
    return m.group(1)


def table(body: str) -> list[list[str]]:
    """The rows of the first Markdown table in `body`, header and separator left out. "A \\| B"
    is one cell holding "A | B"."""
    rows: list[list[str]] = []
    started = False
    for line in body.splitlines():
        if not line.startswith("|"):
            if started:
                break
            continue
        started = True
        if re.fullmatch(r"\|[-| :]+\|", line.strip()):
            continue
        cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
        rows.append([c.strip().replace("\\|", "|") for c in cells])
    assert rows, "no table in the section"
    return rows[1:]


def value(cell: str) -> int:
    """The number a cell starts with: "0x19", "12", "0xFFFFFFFF (-1 as a LONG)"."""
    m = re.match(r"(0x[0-9A-Fa-f]+|\d+)", cell)
    assert m, f"no number in {cell!r}"
    return int(m.group(1), 0)
