"""The README and benchmarks/RESULTS.md: every table row has its header's number of cells (a ``|`` inside a cell, even
in backticks, splits it and shifts the rest of the row), every name of ours they cite or import exists, and every
config override they write is a key of some domain's config."""

import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from multigen.domain import available_domains, get_domain

REPO = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "benchmarks/RESULTS.md"]
PACKAGES = "multigen|video|pointcloud|discrete"


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


@pytest.mark.parametrize("doc", DOCS)
def test_every_table_row_has_its_headers_cells(doc):
    bad = [f"line {n}: {cells} cells, header {header}" for n, cells, header in table_rows((REPO / doc).read_text())
           if cells != header]
    assert not bad, f"{doc}: " + "; ".join(bad)


def cited_names(text: str) -> set[str]:
    """Dotted names of our packages that ``text`` cites in backticks (`video.metrics.linear_blend`) or imports in its
    code (``from video.metrics import linear_blend, psnr``: `video.metrics.linear_blend`, `video.metrics.psnr`)."""
    names = set(re.findall(rf"`((?:{PACKAGES})(?:\.\w+)+)", text))
    for module, imported in re.findall(rf"^\s*from ((?:{PACKAGES})[.\w]*) import ([\w, ]+)", text, re.MULTILINE):
        names.update(f"{module}.{name.strip()}" for name in imported.split(","))
    return names


def resolves(name: str) -> bool:
    """Whether the dotted ``name`` is a module of ours or an attribute of one."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


def test_cited_names_are_found_and_a_missing_one_is_caught():
    text = "`video.metrics.psnr` and\n```python\nfrom video.metrics import linear_blend, no_such_name\n```"
    names = cited_names(text)
    assert names == {"video.metrics.psnr", "video.metrics.linear_blend", "video.metrics.no_such_name"}
    assert [resolves(n) for n in sorted(names)] == [True, False, True]


@pytest.mark.parametrize("doc", DOCS)
def test_every_name_of_ours_a_document_cites_exists(doc):
    missing = sorted(name for name in cited_names((REPO / doc).read_text()) if not resolves(name))
    assert not missing, f"{doc} cites names that do not exist: {', '.join(missing)}"


def config_keys() -> set[str]:
    """``section.field`` of every installed domain's config."""
    keys = set()
    for domain in available_domains():
        config = get_domain(domain).config_class()
        for section in dataclasses.fields(config):
            value = getattr(config, section.name)
            if dataclasses.is_dataclass(value):
                keys.update(f"{section.name}.{field.name}" for field in dataclasses.fields(value))
    return keys


@pytest.mark.parametrize("doc", DOCS)
def test_every_config_override_a_document_writes_is_a_key(doc):
    """``train.lr=3e-3`` anywhere in the text; an override the document shows being refused (the README's example of
    the error naming a misspelt key) is not counted."""
    text = (REPO / doc).read_text()
    written = set(re.findall(r"\b((?:train|model|data|sample|task|diffusion|process|eval)\.\w+)=", text))
    unknown = sorted(key for key in written - config_keys() if f"{key}: Key" not in text)
    assert "train.lr" in written and not unknown, f"{doc} writes overrides of unknown keys: {', '.join(unknown)}"
