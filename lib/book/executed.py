"""What an executed chapter shows of its run: its parameters once, and where a failed cell
sits in the source notebook.

Stage: the book. Explained in the README (Re-running a chapter).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

INJECTED = "injected-parameters"  # papermill's tag on the cell of values it injects
ERROR_MARKER = "papermill-error-cell-tag"  # papermill's notes in a failed copy


def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def source_cell(executed: Path, index: int) -> int:
    """Where cell ``index`` of papermill's run sits in the source notebook (from 1).

    Papermill numbers the cells of its copy, which has its injected parameters cell (and,
    after a failure, its error notes) on top of the source's cells.
    """
    import nbformat

    try:
        cells = [c for c in nbformat.read(executed, 4).cells if ERROR_MARKER not in _tags(c)]
    except (OSError, ValueError):  # unreadable copy: assume the usual injected cell
        return index
    return index + 1 - sum(INJECTED in _tags(c) for c in cells[:index])


def show_parameters_once(executed: Path, note: str,
                         preset_values: dict[str, Any] | None = None) -> None:
    """Let the executed copy show its parameter values in one cell, marked as such.

    Papermill keeps the source's ``parameters`` cell (the defaults, with comments that
    explain them) and adds its ``injected-parameters`` cell below it. Here the injected
    cell takes the source cell's text with the values it injected in place of the defaults,
    under a first line saying so, and the source cell goes: the page lists each value once,
    as it was in effect, and the cells keep the source notebook's numbering. Nothing changes
    when nothing was injected. Only the copy's text changes: both cells ran.

    A chapter that resolves its values in its kernel is injected only its ``-p`` values;
    ``preset_values`` (the preset's values of its own parameters, which its kernel read
    from the same file) are shown in their places too, so the page shows what it ran with.

    Args:
        executed: the executed notebook, rewritten in place.
        note: what to say about the run, e.g. ``preset tiny``.
    """
    import nbformat

    nb = nbformat.read(executed, 4)
    injected = next((c for c in nb.cells if INJECTED in _tags(c)), None)
    if injected is None:
        return
    defaults = next((c for c in nb.cells if "parameters" in _tags(c)), None)
    shown = injected.source
    if preset_values:
        shown += "".join(f"\n{k} = {v!r}" for k, v in preset_values.items())
    lines = shown.splitlines()
    if lines and lines[0].strip() == "# Parameters":  # papermill's own heading
        lines = lines[1:]
    head = f"# Parameters this page was run with ({note})"
    merged = None if defaults is None else _with_values(defaults.source, shown)
    if merged is not None:
        nb.cells = [c for c in nb.cells if c is not defaults]
        injected.source = f"{head}\n{merged}"
    elif defaults is not None:
        injected.source = "\n".join([f"{head}; the cell above has the defaults", *lines])
    else:
        injected.source = "\n".join([head, *lines])
    nbformat.write(nb, executed)


def _with_values(defaults: str, injected: str) -> str | None:
    """``defaults`` (a parameters cell) with each value ``injected`` sets put in its place.

    Comments and layout stay. Returns None when a cell is not plain ``name = value`` lines
    or the injected cell sets a name the defaults do not.
    """
    import ast

    def assignments(text: str) -> list[tuple[str, ast.expr]] | None:
        try:
            tree = ast.parse(text)
        except SyntaxError:
            return None
        out = []
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign):
                target, value = node.target, node.value
            else:
                return None
            if value is None or not isinstance(target, ast.Name):
                return None
            out.append((target.id, value))
        return out

    old, new = assignments(defaults), assignments(injected)
    if old is None or new is None:
        return None
    values = {name: ast.get_source_segment(injected, value) for name, value in new}
    if not set(values) <= {name for name, _ in old}:
        return None
    # ast offsets count UTF-8 bytes within a line: edit the bytes, from the end.
    raw = defaults.encode()
    starts = [0]
    for line in raw.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    for name, value in reversed(old):
        if name in values:
            a = starts[value.lineno - 1] + value.col_offset
            b = starts[value.end_lineno - 1] + value.end_col_offset
            raw = raw[:a] + values[name].encode() + raw[b:]
    return raw.decode()


