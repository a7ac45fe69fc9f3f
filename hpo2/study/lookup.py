"""A study named on the command line: its file, its name, or a suite's study.

The ``hpo2 study`` commands take a study file, the ``name`` inside one (found as
:func:`~hpo2.study.locate.find_study_file` finds it), or the study a suite runs for
one of its tasks, named ``<suite>.<task label>`` (``suite_small.digits_mlp``).
Such a study has no file of its own: it is defined by its suite file, found by the
suite's name in the same folders, and read from there as ``hpo2 suite run`` reads
it, so its storage, its MLflow store and its exports sit beside the suite file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo2.errors import SettingsError
from hpo2.study.config import StudyConfig, load_study_config
from hpo2.study.locate import find_study_file, search_folders, shown_path, suite_files
from hpo2.study.suite import load_suite


@dataclass(frozen=True)
class NamedStudy:
    """A study's validated config and the file that defines it (for a suite's
    study: the suite file, and ``suite`` is the suite's name)."""

    config: StudyConfig
    path: Path
    suite: str | None = None

    @property
    def run_command(self) -> str:
        """The command that runs (or resumes) the study."""
        return f"hpo2 {'suite' if self.suite else 'study'} run {shown_path(self.path)}"


def load_named_study(name_or_file: str, overrides: dict[str, Any] | None = None,
                     cwd: Path | None = None) -> NamedStudy:  # fmt: skip
    """The study ``name_or_file`` names (module docstring); ``overrides`` (command-line
    options, None ones ignored) apply as they do to a study file.  A name that is
    neither a study's nor a suite's study raises the study lookup's error."""
    try:
        file = find_study_file(name_or_file, cwd)
    except SettingsError as missing:
        member = _suite_study(name_or_file, overrides, cwd)
        if member is None:
            raise missing from None
        return member
    return NamedStudy(*load_study_config(file, overrides))


def _suite_study(name: str, overrides: dict[str, Any] | None, cwd: Path | None) -> NamedStudy | None:
    """The study ``<suite>.<label>`` of the first suite file named ``<suite>`` in the
    search folders; None when no suite's name prefixes ``name``."""
    for folder in search_folders(cwd):
        for file, data in suite_files(folder):
            suite_name = data.get("name")
            if not isinstance(suite_name, str) or not name.startswith(suite_name + "."):
                continue
            suite = load_suite(file, overrides)
            for config in suite.studies:
                if config.name == name:
                    return NamedStudy(config, suite.path, suite.config.name)
            raise SettingsError(f"suite {suite_name!r} ({file}) runs no study {name!r}; its studies: "
                                f"{', '.join(config.name for config in suite.studies)}")  # fmt: skip
    return None
