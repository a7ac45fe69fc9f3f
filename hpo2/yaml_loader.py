"""The one YAML loader hpo2 reads config files with: safe, and YAML 1.2 numbers.

PyYAML implements YAML 1.1, whose float pattern needs a dot and a signed
exponent, so ``1e-4``, ``1E5`` and ``5e3`` -- what anyone writes for a learning
rate or a budget -- are read as *strings*.  YAML 1.2 (core schema, section
10.3.2) reads them as floats.  :class:`Yaml12SafeLoader` is PyYAML's
``SafeLoader`` (no ``!!python`` tags, no code runs) with the 1.2 float rule:
``[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?`` plus ``.inf``, ``-.inf``
and ``.nan``; integers stay integers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

_FLOAT_12 = re.compile(
    r"""^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class Yaml12SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that resolves YAML 1.2 floats (``1e-4``) as floats."""


# A copy of SafeLoader's resolver table (SafeLoader itself stays untouched) with the
# 1.1 float rule swapped for the 1.2 one; it goes last, so "12" still resolves as int.
Yaml12SafeLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12SafeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def load_yaml(path: Path) -> Any:
    """Parse the YAML file ``path``; a syntax error's message names the file, line and column."""
    with open(path, encoding="utf-8") as stream:
        return yaml.load(stream, Loader=Yaml12SafeLoader)  # noqa: S506 -- a SafeLoader subclass


def yaml_error_message(path: Path, exc: yaml.YAMLError) -> str:
    """One line for a YAML error: ``file, line L, column C: what is wrong``."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    problem = " ".join(str(part) for part in (getattr(exc, "context", None), getattr(exc, "problem", None)) if part)
    return f"{where}: {problem or ' '.join(str(exc).split())}"
