"""Rows printed one at a time, as they come (`logs -f`, `get -w`), in columns that line up across lines.

A table can size its columns from all its rows; a stream cannot. So the widths are set once, from the
header, the rows already known and each column's minimum, and then kept: a later value that is too long
either widens its column from then on (names must never be cut) or, for a column given a cap (a
request path), is cut with an ellipsis, so such a column never moves the ones after it. The last column is
never padded or cut, so lines carry no trailing spaces.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

ELLIPSIS = "…"


def cell(value: Any) -> str:
    return "-" if value is None else str(value)


class Aligned:
    def __init__(self, columns: Sequence[str], rows: Iterable[Sequence[Any]] = (),
                 minimums: Mapping[str, int] | None = None, caps: Mapping[str, int] | None = None,
                 gap: int = 2) -> None:
        self.columns = [c.upper() for c in columns]
        self.caps = [(caps or {}).get(c, 0) for c in columns]
        self.widths = [max(len(c), (minimums or {}).get(c, 0)) for c in columns]
        self.gap = " " * gap
        for row in rows:
            self._fit(row, initial=True)

    def _fit(self, row: Sequence[Any], initial: bool = False) -> None:
        for i, value in enumerate(row[:len(self.widths)]):
            if self.caps[i] and not initial:
                continue  # a capped column is sized once
            wanted = len(cell(value))
            self.widths[i] = max(self.widths[i], min(wanted, self.caps[i]) if self.caps[i] else wanted)

    def _join(self, cells: Sequence[str]) -> str:
        last = len(cells) - 1
        return self.gap.join(text if i == last else text.ljust(self.widths[i]) for i, text in enumerate(cells))

    def header(self) -> str:
        return self._join(self.columns)

    def line(self, row: Sequence[Any]) -> str:
        """One row in the columns; an uncapped column grows for a longer value, a capped one cuts it."""
        self._fit(row)
        cells = []
        for i, value in enumerate(row):
            text = cell(value)
            if i < len(self.widths) - 1 and len(text) > self.widths[i]:
                text = text[:self.widths[i] - 1] + ELLIPSIS
            cells.append(text)
        return self._join(cells)
