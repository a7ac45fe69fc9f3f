"""The one YAML loader hpo2 reads config files with: safe, and YAML 1.2 numbers.

PyYAML implements YAML 1.1, whose float pattern needs a dot and a signed
exponent, so ``1e-4``, ``1E5`` and ``5e3`` -- what anyone writes for a learning
rate or a budget -- are read as *strings*.  YAML 1.2 (core schema, section
10.3.2) reads them as floats.  :class:`Yaml12SafeLoader` is PyYAML's
``SafeLoader`` (no ``!!python`` tags, no code runs) with the 1.2 float rule:
``[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?`` plus ``.inf``, ``-.inf``
and ``.nan``; integers stay integers.

A config file is small, so the loader refuses what only an attack needs, each in
one line naming the file (and the line and column) before it costs time or memory:

* more than :data:`MAX_FILE_BYTES` (pure-Python PyYAML reads about 30 kB/s of a
  crafted file: 4 MB took 134 s);
* more than :data:`MAX_DEPTH` levels of nesting (20,000 ``[`` overflowed Python's
  recursion limit in PyYAML's composer);
* more than :data:`MAX_ALIASES` aliases, or a document that expands to more than
  :data:`MAX_NODES` values once aliases are followed (a 387-byte "billion laughs"
  file of nested aliases is 9^9 values to whatever walks it: validation, an error
  message that shows it, the copy logged to MLflow).  Sizes are counted as the
  document is composed, each alias counting its anchor's full expansion, so a
  bomb stops at the first anchor that crosses the limit, before anything expands.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.error import MarkedYAMLError
from yaml.nodes import MappingNode, Node, SequenceNode

#: the largest config file read (the shipped ones are under 1 kB)
MAX_FILE_BYTES = 32 * 1024
#: the deepest nesting of mappings and lists (a study file needs about 5)
MAX_DEPTH = 64
#: the most aliases (``*name``) in one file
MAX_ALIASES = 256
#: the most values a file may expand to once its aliases are followed
MAX_NODES = 100_000
#: the most characters of PyYAML's description of a problem that a message shows
MAX_PROBLEM_CHARS = 160


class YamlLimitError(MarkedYAMLError):
    """A config file past one of the loader's limits (module docstring), at ``mark`` when known."""

    def __init__(self, problem: str, mark: Any = None) -> None:  # a yaml.error.Mark: this loader is pure Python
        super().__init__(problem=problem, problem_mark=mark)

_FLOAT_12 = re.compile(
    r"""^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class Yaml12SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that resolves YAML 1.2 floats (``1e-4``) as floats and
    refuses deep nesting and alias bombs (module docstring) as it composes."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._expanded: dict[int, int] = {}  # id(node) -> values it expands to (aliases share the node)

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlLimitError(f"more than {MAX_ALIASES} aliases", event.start_mark)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise YamlLimitError(f"more than {MAX_DEPTH} levels of nesting", event.start_mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is not None and id(node) not in self._expanded:
            self._expanded[id(node)] = self._size(node)
            if self._expanded[id(node)] > MAX_NODES:
                raise YamlLimitError(f"expands to more than {MAX_NODES:,} values through its aliases", node.start_mark)
        return node

    def _size(self, node: Node) -> int:
        """Values ``node`` expands to: 1, plus its children's (each alias its anchor's whole expansion)."""
        if isinstance(node, SequenceNode):
            return 1 + sum(self._expanded[id(child)] for child in node.value)
        if isinstance(node, MappingNode):
            return 1 + sum(self._expanded[id(key)] + self._expanded[id(value)] for key, value in node.value)
        return 1


# A copy of SafeLoader's resolver table (SafeLoader itself stays untouched) with the
# 1.1 float rule swapped for the 1.2 one; it goes last, so "12" still resolves as int.
Yaml12SafeLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12SafeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def check_file_size(path: Path) -> None:
    """Raise :class:`YamlLimitError` for a config file (YAML or JSON) over :data:`MAX_FILE_BYTES`."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise YamlLimitError(f"{size:,} bytes, more than a config file may have ({MAX_FILE_BYTES:,})")


def load_yaml(path: Path) -> Any:
    """Parse the YAML file ``path``; a syntax error's message names the file, line and
    column.  Raises :class:`YamlLimitError` (a ``yaml.YAMLError``) for a file past the
    limits (module docstring)."""
    check_file_size(path)
    with open(path, encoding="utf-8") as stream:
        return yaml.load(stream, Loader=Yaml12SafeLoader)  # noqa: S506 -- a SafeLoader subclass


def yaml_error_message(path: Path, exc: yaml.YAMLError) -> str:
    """One line for a YAML error: ``file, line L, column C: what is wrong``."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    problem = " ".join(str(part) for part in (getattr(exc, "context", None), getattr(exc, "problem", None)) if part)
    problem = problem or " ".join(str(exc).split())
    if len(problem) > MAX_PROBLEM_CHARS:  # PyYAML quotes the offending token, which a file can make any length
        problem = f"{problem[:MAX_PROBLEM_CHARS]}... ({len(problem):,} characters)"
    return f"{where}: {problem}"
