"""The README and benchmarks/RESULTS.md: every table row has its header's number of cells (a ``|`` inside a cell, even
in backticks, splits it and shifts the rest of the row), every name of ours they cite or import exists, every
config override they write is a key of some domain's config, the README's commands parse (its training commands
resolve their configs), and its layout lists every module, each one reachable from its package alone."""

import contextlib
import dataclasses
import importlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import multigen.train
from discrete.cli import build_parser as discrete_parser
from multigen.config import load_config
from multigen.domain import available_domains, get_domain
from pointcloud.cli import build_complete_parser
from pointcloud.cli import build_parser as pointcloud_parser
from video.cli import build_parser as video_parser

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


def readme_commands() -> list[list[str]]:
    """The README's command lines in its shell code blocks (and ``$`` prompts in its other plain ones) as argument
    lists (``\\`` continuations joined, comments and ``a && b`` chains split off), from the program on:
    ``multigen-*``, or ``multigen/train.py`` after ``accelerate launch``'s or ``python``'s own arguments; lines with
    a placeholder (``...``, ``NAME``) are left out."""
    commands, block, line = [], None, ""
    for raw in (REPO / "README.md").read_text().splitlines():
        if raw.startswith("```"):
            block, line = (raw[3:] if block is None else None), ""
            continue
        if not (block == "bash" or block == "" and raw.startswith("$ ")):  # shell blocks, shell prompts in others
            continue
        line += raw.removeprefix("$ ")
        if line.endswith("\\"):
            line = line[:-1]
            continue
        tokens = shlex.split(line, comments=True)
        ands = [i for i, token in enumerate(tokens) if token == "&&"]
        for start, end in zip([-1, *ands], [*ands, len(tokens)]):
            args = tokens[start + 1:end]
            starts = [i for i, a in enumerate(args) if a.startswith("multigen-") or a == "multigen/train.py"]
            if starts and not {"...", "NAME"} & set(args):
                commands.append(args[starts[0]:])
        line = ""
    return commands


def test_the_readme_commands_are_found():
    programs = {args[0] for args in readme_commands()}
    assert programs == {"multigen/train.py", "multigen-train", "multigen-video", "multigen-pointcloud",
                        "multigen-complete", "multigen-discrete"}
    assert ["multigen/train.py", "--domain", "video"] in readme_commands()


@pytest.mark.parametrize("args", [a for a in readme_commands() if a[0] in ("multigen/train.py", "multigen-train")],
                         ids=" ".join)
def test_the_readme_training_commands_resolve_their_configs(args):
    """Each training command's domain, config file and overrides load (``--print-config`` stops there), and the
    domain accepts them (its own checks: settings that fit together); the README's example of a misspelt key is
    refused."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = multigen.train.main([*args[1:], "--print-config"])
    misspelt = "train.bach_size=8" in args
    assert code == (2 if misspelt else 0), err.getvalue()
    domain = args[args.index("--domain") + 1]
    if code == 0 and domain != "list":
        config = args[args.index("--config") + 1] if "--config" in args else None
        cls = get_domain(domain)
        cls(load_config(cls.config_class, multigen.train.resolve_config_file(domain, config),
                        [a for a in args if "=" in a]))


PARSERS = {"multigen-video": video_parser, "multigen-pointcloud": pointcloud_parser,
           "multigen-discrete": discrete_parser, "multigen-complete": build_complete_parser}


@pytest.mark.parametrize("args", [a for a in readme_commands() if a[0] in PARSERS], ids=" ".join)
def test_the_readme_tool_commands_parse(args):
    PARSERS[args[0]]().parse_args(args[1:])  # an unknown option or a missing argument exits


def test_the_readme_layout_lists_every_module_of_each_package():
    text = (REPO / "README.md").read_text()
    layout = text[text.index("## Layout"):].split("```")[1]
    listed: dict[str, set[str]] = {}
    for line in layout.strip().splitlines():
        if not line.startswith(" "):
            package = line.split()[0]
        listed.setdefault(package, set()).update(re.findall(r"\b(\w+\.py|\w+/)(?=\s|$)", line.removeprefix(package)))
    for package in ("multigen/", "video/", "pointcloud/", "discrete/"):
        modules = {p.name for p in (REPO / package).glob("*.py") if p.name != "__init__.py"}
        modules |= {f"{p.name}/" for p in (REPO / package).iterdir() if (p / "__init__.py").exists()}
        assert listed[package] == modules, package


def test_every_module_is_an_attribute_of_its_package_after_importing_the_package_alone():
    """``import video; video.sampling.predict`` works in a fresh interpreter (submodules import on first access),
    and a name that is no submodule is an AttributeError naming it."""
    names = [f"{package}.{p.stem}" for package in ("multigen", "video", "pointcloud", "discrete")
             for p in (REPO / package).glob("*.py") if p.name != "__init__.py"]
    script = f"""
import types, multigen, video, pointcloud, discrete
for name in {names!r}:
    assert isinstance(eval(name), types.ModuleType), name
assert callable(video.sampling.predict)
try:
    video.nope
except AttributeError as e:
    assert "'video' has no attribute 'nope'" in str(e), e
else:
    raise AssertionError("video.nope")
assert not hasattr(video, "nope.x") and not hasattr(video, "sampling.predict")  # a dotted name is no submodule
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO)
