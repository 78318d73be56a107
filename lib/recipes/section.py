"""What one notebook section shows: its items, a table, the values glued into its prose.

A chapter's recipe (:mod:`lib.recipes.ch01` ...) returns one :class:`Section` per section of
the page; the notebook cell calls the recipe and then ``section.show()``. Figures are drawn
by the recipe while the cell runs (the notebook's inline backend shows them).

Stage: the chapters' recipes. Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Section:
    """A section's output: ``items`` shown in order (text lines, audio players, tables),
    then ``table`` at ``precision`` decimals; ``glue`` holds the values its prose cites
    (``{glue:text}`name```); ``data`` what later sections of the chapter use."""

    table: Any = None  # a page-ready DataFrame, or None
    glue: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    items: list[Any] = field(default_factory=list)
    precision: int = 2

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def show(self) -> None:
        """Display the items and the table, and glue the values (inside a notebook)."""
        from IPython.display import display

        from lib.recipes.notebook import glue_values, styled

        for item in self.items:
            print(item) if isinstance(item, str) else display(item)
        if self.table is not None:
            display(styled(self.table, self.precision))
        glue_values(**self.glue)


def settings_line(cfg: Any, *parts: str) -> str:
    """The line a chapter prints under its resolved values: its decoders, then what this run does
    (``parts``, in the run's own numbers)."""
    return "; ".join([f"decoders: {', '.join(m.decoder for m in cfg.models)}", *parts])


def ci_text(pair: Any) -> str:
    """A 95 % interval of fractions as a page shows it: ``"12.3–45.6"`` (percent)."""
    return "{:.1f}–{:.1f}".format(*(100 * x for x in pair))
