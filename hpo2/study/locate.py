"""Finding a project's study files from wherever the user stands.

A study is named on the command line either by its file or by the ``name`` inside
it.  A name is looked up, in this order, in ``$HPO2_STUDIES`` (when set: that
folder only), else in the current directory, ``./studies`` and the ``studies/``
folder of every parent directory (so ``hpo2 study status quickstart`` works from
the repository root, from ``studies/`` and from any sub-folder of the project).
The first ``studies/`` folder found upward is also *the* studies folder of the
project: ``hpo2 study list`` lists it and ``hpo2 dashboard`` serves its
``mlflow.db``.  Suite files are found the same way (:func:`suite_files`); the
study a suite runs for each task is named ``<suite>.<task label>``
(:mod:`hpo2.study.lookup`).
"""

from __future__ import annotations

import os
from pathlib import Path

from hpo2.errors import SettingsError
from hpo2.optim.registry import load_config_file

STUDIES_ENV = "HPO2_STUDIES"
STUDY_SUFFIXES = (".yaml", ".yml", ".json")


def search_folders(cwd: Path | None = None) -> list[Path]:
    """Where a study name is looked for: ``$HPO2_STUDIES`` alone when set, else the
    current directory, ``./studies`` and ``<parent>/studies`` for every parent."""
    env = os.environ.get(STUDIES_ENV)
    if env:
        return [Path(env).expanduser().resolve()]
    here = (cwd or Path.cwd()).resolve()
    folders = [here, here / "studies", *(parent / "studies" for parent in here.parents)]
    return list(dict.fromkeys(folders))


def studies_folder(cwd: Path | None = None) -> Path | None:
    """The project's studies folder: ``$HPO2_STUDIES``, else the nearest ``studies/``
    at or above ``cwd`` (``cwd`` itself when it is named ``studies``), else None."""
    env = os.environ.get(STUDIES_ENV)
    if env:
        return Path(env).expanduser().resolve()
    here = (cwd or Path.cwd()).resolve()
    if here.name == "studies":
        return here
    return next((folder for folder in search_folders(here)[1:] if folder.is_dir()), None)


def _config_files(folder: Path) -> list[tuple[Path, dict]]:
    """Every readable YAML/JSON mapping in ``folder`` with its raw content."""
    found = []
    for file in sorted(p for p in folder.iterdir() if p.suffix in STUDY_SUFFIXES) if folder.is_dir() else []:
        try:
            found.append((file, load_config_file(file)))
        except SettingsError:
            continue
    return found


def study_files(folder: Path) -> list[tuple[Path, dict]]:
    """The study files in ``folder`` (files with a ``name`` and a ``task`` and no
    ``optimizer``: train configs live there too) with their raw content."""
    return [(file, data) for file, data in _config_files(folder)
            if "name" in data and "task" in data and "optimizer" not in data]  # fmt: skip


def suite_files(folder: Path) -> list[tuple[Path, dict]]:
    """The suite files in ``folder`` (a ``name`` and a list of ``tasks``) with their raw content."""
    return [(file, data) for file, data in _config_files(folder) if "name" in data and "tasks" in data]


def find_study_file(name_or_file: str, cwd: Path | None = None) -> Path:
    """A study file given by path, or the file whose ``name`` is ``name_or_file`` in
    the first of :func:`search_folders` that has one; the error lists where it looked."""
    candidate = Path(name_or_file)
    if candidate.suffix in STUDY_SUFFIXES or candidate.is_file():
        if not candidate.is_file():
            raise SettingsError(f"study file {name_or_file!r} does not exist")
        return candidate
    folders = search_folders(cwd)
    for folder in folders:
        for file, data in study_files(folder):
            if data.get("name") == name_or_file:
                return file
    looked = ", ".join(str(folder) for folder in folders if folder.is_dir()) or "nowhere (no such folder exists)"
    raise SettingsError(
        f"no study named {name_or_file!r}: looked in {looked}; pass the study file, run from the project, "
        f"or set {STUDIES_ENV} to the folder of study files"
    )


def beside_study(study_file: Path, name: str, suffix: str) -> Path:
    """``<study dir>/<name><suffix>``: where a study's exports go when no path is given
    (``studies/quickstart.best.yaml``, ``studies/quickstart.report.html``)."""
    return study_file.parent / f"{name}{suffix}"


def shown_path(path: Path, cwd: Path | None = None) -> str:
    """``path`` relative to the current directory when it lies below it, else absolute."""
    absolute = path.resolve()
    try:
        return str(absolute.relative_to((cwd or Path.cwd()).resolve()))
    except ValueError:
        return str(absolute)
