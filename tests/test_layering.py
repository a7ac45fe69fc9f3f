"""The package's layers: no module imports upwards (DESIGN.md, "Imports run one way").

Every module under ``hpo2/`` is parsed (``ast``, nothing is imported) and each
``import`` / ``from ... import`` naming an ``hpo2`` module -- at module level or
inside a function, where an import only hides a cycle -- must name a module of the
same layer or a lower one.  The lower layers must not import Optuna or MLflow
either: the optimizers and the training loop know nothing of them.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hpo2"

#: bottom first; a module belongs to the layer of the longest prefix that names it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("infrastructure", ("hpo2.errors", "hpo2.common")),
    ("curvature", ("hpo2.curvature",)),
    ("solvers", ("hpo2.solvers",)),
    ("optim", ("hpo2.optim",)),
    ("tasks", ("hpo2.tasks",)),
    ("train", ("hpo2.train",)),
    ("tracking", ("hpo2.study.tracking",)),
    ("study", ("hpo2.study",)),
    ("report", ("hpo2.interface.report", "hpo2.interface.suite_report", "hpo2.interface.dashboard",
                "hpo2.interface.confirmation")),
    # what a person uses: the CLI, and the package's own namespace (hpo2.Task, hpo2.run_study, loaded lazily)
    ("interface", ("hpo2", "hpo2.__main__", "hpo2.interface")),
]
#: third-party packages a layer below ``tracking`` must not import
ORCHESTRATION = ("optuna", "optuna_integration", "mlflow")
FIRST_ORCHESTRATING_LAYER = "tracking"


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of ``module`` (its longest matching prefix); KeyError if none."""
    best: tuple[int, int] | None = None  # (prefix length, layer index)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    if best is None or (best[0] == len("hpo2") and module != "hpo2"):
        raise KeyError(f"{module} has no layer: add it to LAYERS in tests/test_layering.py")
    return best[1]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, module: str, root: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, function-level ones included; relative
    imports resolved, and ``from PACKAGE import name`` counted as the submodule ``name`` when it is one."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def submodule(name: str, attribute: str) -> str:
        folder = root.parent.joinpath(*name.split("."))
        is_module = (folder / f"{attribute}.py").is_file() or (folder / attribute).is_dir()
        return f"{name}.{attribute}" if is_module else name

    found = []
    with warnings.catch_warnings():  # a module's own syntax warnings are not this test's business
        warnings.simplefilter("ignore")
        tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found += [(node.lineno, submodule(name, alias.name)) for alias in node.names]
    return found


def upward_imports(root: Path) -> list[str]:
    """``file:line: a (layer) imports b (layer)`` for each import of a higher layer, or of
    Optuna/MLflow below the tracking layer, in the package at ``root``."""
    names = [name for name, _ in LAYERS]
    floor = names.index(FIRST_ORCHESTRATING_LAYER)
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        own = layer_of(module)
        for line, target in imported_modules(path, module, root):
            where = f"{path.relative_to(root.parent)}:{line}: {module} ({names[own]})"
            if target.split(".")[0] == root.name:
                other = layer_of(target)
                if other > own:
                    problems.append(f"{where} imports {target} ({names[other]})")
            elif own < floor and target.split(".")[0] in ORCHESTRATION:
                problems.append(f"{where} imports {target} (only the {FIRST_ORCHESTRATING_LAYER} layer and above may)")
    return problems


def test_no_module_imports_upwards() -> None:
    assert upward_imports(PACKAGE) == []


def test_every_module_has_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path, PACKAGE))  # KeyError names the module


@pytest.mark.parametrize(
    ("file", "source", "expected"),
    [
        # a function-level import counts: it only hides a cycle
        ("study/extra.py", "def finish():\n    from hpo2.interface.report import render_study_report\n",
         "hpo2.study.extra (study) imports hpo2.interface.report (report)"),
        ("optim/extra.py", "from hpo2.train import run_training\n",
         "hpo2.optim.extra (optim) imports hpo2.train (train)"),
        ("train_extra.py", "import optuna\n", None),  # no layer: KeyError, checked below
        ("tasks/extra.py", "import mlflow\n", "hpo2.tasks.extra (tasks) imports mlflow"),
        ("curvature/extra.py", "from ..optim import NewtonCG\n", "hpo2.curvature.extra (curvature) imports hpo2.optim"),
        ("errors_extra.py", "", None),
        ("common_extra.py", "", None),
        ("common/yaml_loader.py", "from hpo2 import study\n",
         "hpo2.common.yaml_loader (infrastructure) imports hpo2.study (study)"),
    ],
)
def test_an_upward_import_is_found(tmp_path: Path, file: str, source: str, expected: str | None) -> None:
    """The check on a copy of the package with one module added."""
    import shutil

    root = tmp_path / "hpo2"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / file).write_text(source)
    if expected is None:
        with pytest.raises(KeyError, match="has no layer"):
            upward_imports(root)
        return
    problems = upward_imports(root)
    assert len(problems) == 1 and expected in problems[0], problems
