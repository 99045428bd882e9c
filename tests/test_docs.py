"""The markdown tables of the README and of benchmarks/RESULTS.md: every row has its header's number of cells (a
``|`` inside a cell, even in backticks, splits it and shifts the rest of the row)."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def table_rows(text: str) -> list[tuple[int, int, int]]:
    """``(line number, cells, header cells)`` of every table row in ``text``; a table is a run of lines that start
    with ``|``, its first line the header; an escaped ``\\|`` is not a cell border."""
    rows, header = [], None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.startswith("|"):
            header = None
            continue
        cells = line.count("|") - line.count("\\|") - 1
        header = cells if header is None else header
        rows.append((number, cells, header))
    return rows


def test_a_split_cell_is_found():
    assert [r[1:] for r in table_rows("| a | b |\n|---|---|\n| `x|y` | 1 |\n\n| c |\n|---|")] == [
        (2, 2), (2, 2), (3, 2), (1, 1), (1, 1)]


@pytest.mark.parametrize("doc", ["README.md", "benchmarks/RESULTS.md"])
def test_every_table_row_has_its_headers_cells(doc):
    bad = [f"line {n}: {cells} cells, header {header}" for n, cells, header in table_rows((REPO / doc).read_text())
           if cells != header]
    assert not bad, f"{doc}: " + "; ".join(bad)
