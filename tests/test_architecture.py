"""The layout rules of the code, checked on the source itself (README, "Architecture").

- stages import only from their own stage or a lower one;
- no module over 400 lines;
- the command line imports no numerical library: it parses and calls the library;
- runs.py alone spells the names of the files inside a run directory;
- every list of choices is written once, in options.py;
- every package the code imports is a declared dependency.
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "pneumoscan"
# Lowest first. The foundation (config, errors, options, paths, runs) is below every stage;
# the public API and the command line sit on top.
STAGES = ("foundation", "imaging", "data", "models", "evaluation", "training", "report", "inference", "deploy", "top")
FOUNDATION = {"config", "errors", "options", "paths", "runs", "__version__"}  # __version__: package metadata
TOP = {"api", "cli", "__init__"}


def modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> str:
    parts = module.split(".")[1:]  # drop "pneumoscan"
    if not parts or parts[0] in TOP:
        return "top"
    if parts[0] in FOUNDATION:
        return "foundation"
    assert parts[0] in STAGES, f"{module}: not in any stage; add it to STAGES or FOUNDATION"
    return parts[0]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every pneumoscan import in a file, lazy ones included."""
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{target}.{a.name}" for a in node.names] if not node.module else [target]
            else:
                names = [node.module or ""]
            found += [(node.lineno, n) for n in names if n.startswith("pneumoscan")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("pneumoscan")]
    return found


def test_stages_never_import_a_higher_stage():
    upward = []
    for path in modules():
        here = stage_of(module_name(path))
        for line, target in imported_modules(path):
            there = stage_of(target) if target != "pneumoscan" else "top"
            if STAGES.index(there) > STAGES.index(here):
                upward.append(f"{path.relative_to(SRC)}:{line} ({here}) imports {target} ({there})")
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_the_import_checker_sees_relative_and_lazy_imports(tmp_path):
    # The checker itself must find what the rule forbids, or the test above could never fail.
    fake = SRC / "imaging" / "loader.py"
    found = dict((target, line) for line, target in imported_modules(fake))
    assert "pneumoscan.errors" in found and stage_of("pneumoscan.errors") == "foundation"
    lazy = SRC / "deploy" / "serve.py"
    assert any(t == "pneumoscan.report.gradcam" for _, t in imported_modules(lazy))  # inside a method


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p in modules() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"


def test_the_command_line_only_parses_and_calls_the_library():
    heavy = {"numpy", "keras", "tensorflow", "sklearn", "PIL", "matplotlib", "onnxruntime"}
    tree = ast.parse((SRC / "cli.py").read_text())
    used = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    used |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    # tensorflow is imported by name only, to hide its start-up lines (import_tensorflow_quietly).
    assert not (used & heavy) - {"tensorflow"}, used & heavy


RUN_FILE_NAMES = {"config.json", "model.keras", "history.csv", "splits.csv", "metrics.json", "predictions.csv",
                  "environment.json", "checkpoints", "state.json", "last.keras", "best.weights.h5", "plots",
                  "report.html", "export", "tensorboard", "training_curves.png", "confusion_matrix.png",
                  "roc_pr.png", "calibration.png", "sample_predictions.png", "gradcam_grid.png", "scope.npz",
                  "scope_scores.png", "scope_extra.csv", "MODEL_CARD.md", "adapt.json"}


def path_parts(path: Path) -> list[tuple[int, str]]:
    """String literals joined onto a path: ``x / "name"`` and ``x.joinpath("name", ...)``."""
    found = []
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) and isinstance(n.right, ast.Constant):
            found.append((n.lineno, n.right.value))
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("joinpath", "with_name"):
            found += [(n.lineno, a.value) for a in n.args if isinstance(a, ast.Constant)]
    return [(line, v) for line, v in found if isinstance(v, str)]


def test_only_runs_py_spells_the_files_of_a_run_directory():
    spelled = [f"{p.relative_to(SRC)}:{line}: {value!r}" for p in modules() if p.name != "runs.py"
               for line, value in path_parts(p) if value in RUN_FILE_NAMES]
    assert path_parts(SRC / "runs.py"), "the checker finds no path in runs.py: it cannot work"
    assert not spelled, "run-directory names outside runs.py:\n" + "\n".join(spelled)


def test_every_list_of_choices_is_written_once():
    from pneumoscan import options

    lists = {name: set(value) for name, value in vars(options).items()
             if name.isupper() and isinstance(value, tuple) and len(value) > 1 and all(isinstance(v, str) for v in value)}
    repeated = []
    for path in modules():
        if path.name == "options.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                values = {e.value for e in node.elts}
                for name, choices in lists.items():
                    if values == choices:
                        repeated.append(f"{path.relative_to(SRC)}:{node.lineno} repeats options.{name}")
    assert not repeated, "\n".join(repeated)


# Import name -> the distribution that provides it (when they differ, or it comes with another).
DISTRIBUTIONS = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "pyyaml", "multipart": "python-multipart",
                 "starlette": "fastapi", "google": "tensorflow-cpu", "tensorflow": "tensorflow-cpu"}


def test_every_imported_package_is_a_declared_dependency():
    import sys

    pyproject = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())
    declared = {dep.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()
                for dep in pyproject["project"]["dependencies"]}
    missing = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("pneumoscan", "__future__"):
                    continue
                dist = DISTRIBUTIONS.get(top, top).lower()
                if dist not in declared:
                    missing.append(f"{path.relative_to(SRC)}: {name} ({dist})")
    assert not missing, "imported but not declared in pyproject.toml:\n" + "\n".join(sorted(set(missing)))


@pytest.mark.parametrize("version, ok", [("3.15.0", True), ("3.8.1", True), ("3.99.0", False), ("4.0.0", False),
                                         ("3.7.0", False), ("nightly", False)])
def test_the_keras_multiworker_fix_checks_the_version_it_patches(version, ok):
    from pneumoscan.errors import DistributeError
    from pneumoscan.training.keras_patch import check_keras_version

    if ok:
        assert check_keras_version(version) == tuple(int(p) for p in version.split(".")[:2])
    else:
        with pytest.raises(DistributeError, match=f"not on the installed Keras {version}"):
            check_keras_version(version)


def test_every_pneumoscan_import_in_benchmarks_tests_and_the_notebook_resolves():
    """A moved module must not leave a benchmark (run by hand, not by the suite) importing its old name."""
    import importlib
    import json

    root = SRC.parents[1]
    sources = {p: p.read_text() for p in [*(root / "benchmarks").glob("*.py"), *(root / "tests").glob("*.py")]}
    notebook = root / "notebooks" / "pneumonia_detection.ipynb"
    sources[notebook] = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"]
                                  if c["cell_type"] == "code")
    broken = []
    for path, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("pneumoscan"):
                try:
                    module = importlib.import_module(node.module)
                except ImportError as exc:
                    broken.append(f"{path.name}:{node.lineno}: {exc}")
                    continue
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            broken.append(f"{path.name}:{node.lineno}: {node.module} has no {alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("pneumoscan"):
                        try:
                            importlib.import_module(alias.name)
                        except ImportError as exc:
                            broken.append(f"{path.name}:{node.lineno}: {exc}")
    assert len(sources) > 20 and not broken, "\n".join(broken)


def test_benchmarks_import_only_names_their_neighbours_define():
    """``from quality import x`` in one benchmark script must name something quality.py defines
    (benchmarks run by hand, so nothing else would notice a name that moved)."""
    folder = SRC.parents[1] / "benchmarks"
    scripts = {p.stem: ast.parse(p.read_text()) for p in folder.glob("*.py")}
    defined = {name: {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
               | {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
               for name, tree in scripts.items()}
    broken = [f"{name}.py:{node.lineno}: {node.module} has no {alias.name}"
              for name, tree in scripts.items() for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module in scripts
              for alias in node.names if alias.name not in defined[node.module]]
    assert not broken, "\n".join(broken)
