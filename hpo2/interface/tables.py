"""Tables that read at any terminal width: a name is never split, prose never
wraps one word per line.

A plain ``rich`` table shrinks every column to fit the terminal: at 80 columns a
description column wraps one word per line and a setting's name breaks in two
(``cov_update_eve`` / ``ry``).  A :class:`FittedTable` knows what each column holds:

* ``name``: an identifier (an optimizer, a setting, a study): never wrapped;
* ``note``: long text (a description, a reference, a path): needs :data:`NOTE_WIDTH`
  columns (or its whole length, if shorter), or goes under its row;
* ``value``: anything else (defaults, ranges, numbers): wraps between words.

When it is drawn it takes the first layout that fits the width: every column side
by side, each at its widest but the notes; else with the notes, the last first,
taken out of the table and printed under their row, indented, while the other
columns stay aligned (narrowed, at worst, to their longest word).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

#: the narrowest a prose column may be before it is folded under its row
NOTE_WIDTH = 30
#: how far a folded note is indented under its row
NOTE_INDENT = 4
#: blank columns between two cells in the folded layout
GAP = 2
#: the width cells are measured at: rich caps a measurement at the width it is given
UNBOUNDED = 100_000

Kind = Literal["name", "value", "note"]
Justify = Literal["left", "center", "right"]


@dataclass(frozen=True)
class Column:
    """A column's header, what it holds (module docstring) and how it is aligned."""

    header: str
    kind: Kind = "value"
    justify: Justify = "left"


class FittedTable:
    """A table that picks its layout for the console's width (module docstring);
    ``console.print`` it as any ``rich`` renderable."""

    def __init__(self, *columns: Column | str, title: str | None = None, caption: str | None = None) -> None:
        self.columns = [c if isinstance(c, Column) else Column(c) for c in columns]
        self.title = title
        self.caption = caption
        self.rows: list[list[str]] = []

    def add_row(self, *cells: str) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        notes = [i for i, c in enumerate(self.columns) if c.kind == "note"]
        widest, narrowest = self._limits(console, options)
        for folded in range(len(notes) + 1):
            under = notes[len(notes) - folded :]
            kept = [i for i in range(len(self.columns)) if i not in under]
            last = folded == len(notes)
            # while a note can still be folded, only notes narrow (to NOTE_WIDTH); at last, any column
            least = [min(widest[i], max(narrowest[i], NOTE_WIDTH)) if i in notes else narrowest[i] if last
                     else widest[i] for i in kept]  # fmt: skip
            # a boxed column takes a rule and a space either side; folded rows are cells GAP apart
            room = options.max_width - (3 * len(kept) + 1 if not under else GAP * (len(kept) - 1))
            if sum(least) <= room or last:
                widths = _shrink([widest[i] for i in kept], least, room)
                yield self._boxed(kept, widths) if not under else self._folded(kept, widths, under)
                return

    def _limits(self, console: Console, options: ConsoleOptions) -> tuple[list[int], list[int]]:
        """Per column: its widest cell, and how narrow it may get (a name: its length;
        else its longest word)."""
        unbounded = options.update_width(UNBOUNDED)
        widest, narrowest = [], []
        for i, column in enumerate(self.columns):
            cells = [column.header, *(row[i] for row in self.rows)]
            sizes = [Measurement.get(console, unbounded, Text(cell)) for cell in cells]
            widest.append(max(size.maximum for size in sizes))
            narrowest.append(widest[-1] if column.kind == "name" else max(size.minimum for size in sizes))
        return widest, narrowest

    def _boxed(self, kept: list[int], widths: list[int]) -> Table:
        """A ``rich`` table of the ``kept`` columns at ``widths``."""
        table = Table(title=self.title, caption=self.caption)
        for i, width in zip(kept, widths, strict=True):
            column = self.columns[i]
            table.add_column(column.header, justify=column.justify, width=width, no_wrap=column.kind == "name",
                             overflow="fold")  # fmt: skip
        for row in self.rows:  # Text: a cell is shown as written, never read as rich markup
            table.add_row(*(Text(row[i]) for i in kept))
        return table

    def _folded(self, kept: list[int], widths: list[int], under: list[int]) -> RenderableType:
        """The ``kept`` columns side by side at ``widths``, aligned across rows; each row's notes under it."""
        labelled = len(under) > 1  # with two notes under a row, each says which it is

        def line(cells: list[Text]) -> Table:
            grid = Table.grid(padding=(0, GAP))
            for i, width in zip(kept, widths, strict=True):
                column = self.columns[i]
                grid.add_column(width=width, justify=column.justify, no_wrap=column.kind == "name", overflow="fold")
            grid.add_row(*cells)
            return grid

        parts: list[RenderableType] = []
        if self.title:
            parts.append(Text(self.title, style="table.title", justify="center"))
        parts.append(line([Text(self.columns[i].header, style="table.header") for i in kept]))
        for row in self.rows:
            parts.append(line([Text(row[i]) for i in kept]))
            for i in under:
                if row[i]:
                    note = Text(f"{self.columns[i].header}: " if labelled else "", style="dim") + Text(row[i])
                    parts.append(Padding(note, (0, 0, 0, NOTE_INDENT)))
        if self.caption:
            parts.append(Text(self.caption, style="table.caption", justify="center"))
        return Group(*parts)


def _shrink(widths: list[int], least: list[int], room: int) -> list[int]:
    """``widths`` narrowed one column at a time, the one with the most to spare first,
    until they fit in ``room`` or none can give more (never below ``least``).

    Examples:
        >>> _shrink([10, 40, 6], [10, 12, 3], 40)
        [10, 24, 6]
    """
    widths = list(widths)
    while sum(widths) > room:
        spare = [w - n for w, n in zip(widths, least, strict=True)]
        most = max(range(len(widths)), key=spare.__getitem__)
        if spare[most] <= 0:
            break
        widths[most] -= 1
    return widths
