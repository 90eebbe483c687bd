"""Every code example in the README and in the package's docstrings runs as written.

Python examples run in a fresh sandbox folder holding the files they name: ``path/to/chest_xray``
(a small real Kermany folder), ``xray.jpeg``, ``a.jpeg``, ``folder/`` (real X-rays) and
``runs/default`` (a copy of the shared tiny run). Command-line examples of the README (lines
that start with ``pneumoscan`` and hold no ``[option]`` placeholder) must parse.
"""
from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from conftest import make_site

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "pneumoscan"


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def docstring_examples() -> list[tuple[str, str]]:
    """(where, code) for every indented code block in a docstring that looks like Python."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)):
                continue
            doc = ast.get_docstring(node, clean=True) or ""
            for block in re.findall(r"(?:^|\n)\n((?:    .*\n?)+)", doc):
                code = "\n".join(line[4:] for line in block.splitlines())
                if re.match(r"(import |from )", code):
                    found.append((f"{path.relative_to(SRC.parent)}:{getattr(node, 'name', 'module')}", code))
    return found


PYTHON_EXAMPLES = [(f"README.md python block {i + 1}", code) for i, code in enumerate(readme_blocks("python"))] \
    + docstring_examples()


def test_examples_were_found():
    where = [w for w, _ in PYTHON_EXAMPLES]
    assert sum(w.startswith("README") for w in where) >= 2
    assert any("api.py" in w for w in where) and any("predictor.py" in w for w in where)


@pytest.fixture(scope="module")
def small_kermany(tmp_path_factory, kermany_dir) -> Path:
    """A real Kermany folder in miniature: 24 train and 8 test images per class."""
    root = tmp_path_factory.mktemp("kermany") / "chest_xray"
    for split, n in (("train", 24), ("test", 8)):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True)
            for src in sorted((kermany_dir / split / cls).glob("*.jpeg"))[:n]:
                os.symlink(src, root / split / cls / src.name)
    return root


@pytest.fixture
def sandbox(tmp_path, small_kermany, kermany_dir, tiny_run, monkeypatch) -> Path:
    (tmp_path / "path" / "to").mkdir(parents=True)
    os.symlink(small_kermany, tmp_path / "path" / "to" / "chest_xray")
    normal = sorted((kermany_dir / "test" / "NORMAL").glob("*.jpeg"))
    shutil.copy(normal[0], tmp_path / "xray.jpeg")
    shutil.copy(normal[1], tmp_path / "a.jpeg")
    (tmp_path / "folder").mkdir()
    for src in sorted((kermany_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[:3]:
        shutil.copy(src, tmp_path / "folder" / src.name)
    make_site(kermany_dir, tmp_path)  # site.csv: 60 real X-rays of a "new site", for pneumoscan.adapt
    (tmp_path / "runs").mkdir()
    shutil.copytree(tiny_run.root, tmp_path / "runs" / "default", ignore=shutil.ignore_patterns("checkpoints"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("where, code", PYTHON_EXAMPLES, ids=[w for w, _ in PYTHON_EXAMPLES])
def test_python_example_runs(where, code, sandbox, capsys):
    exec(compile(code, where, "exec"), {"__name__": "__example__"})
    capsys.readouterr()


def test_the_readme_quick_start_gives_the_promised_results(sandbox):
    code = readme_blocks("python")[0]
    namespace: dict = {}
    exec(compile(code, "README.md quick start", "exec"), namespace)
    table, probabilities, model = namespace["table"], namespace["probabilities"], namespace["model"]
    assert list(table.columns) == ["path", "probability", "label", "ood_score", "in_scope", "error", "warning"]
    assert len(table) == 6 and (table["error"] == "").all()  # xray.jpeg, 3 in folder/, the array, the PIL image
    # The same X-ray as a file, an array and a PIL image: one probability.
    same = table.iloc[[0, 4, 5]]["probability"].to_numpy()
    assert same.max() - same.min() < 1e-6
    assert probabilities.shape == (2, 2) and abs(probabilities.sum(axis=1) - 1).max() < 1e-9
    assert model.engine == "onnx" and model.class_names == ("NORMAL", "PNEUMONIA")


def readme_commands() -> list[str]:
    commands = []
    for block in readme_blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("pneumoscan ") and not re.search(r"[\[|]|\.\.\.", line):
                commands.append(line)
    return commands


def test_readme_command_lines_parse():
    from pneumoscan.cli import build_parser

    commands = readme_commands()
    assert len(commands) >= 8
    parser = build_parser()
    for command in commands:
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit:
            pytest.fail(f"README command does not parse: {command}")
