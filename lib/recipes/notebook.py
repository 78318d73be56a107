"""What every chapter calls first: figure style and one-line errors.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

Stage: all (chapter set-up).
"""

from __future__ import annotations

import os

from lib.errors import CompanionError, disk_error, is_disk_error


def _show_one_line(shell, etype, value, tb, tb_offset=None):  # noqa: ANN001
    """IPython handler: show a CompanionError, or a full / read-only disk
    (:func:`lib.errors.is_disk_error`), as one line, not a stack trace; any other
    ``OSError`` as IPython would."""
    if issubclass(etype, CompanionError):
        shell._showtraceback(etype, value, [f"\x1b[31m{etype.__name__}\x1b[0m: {value}"])
    elif is_disk_error(value):
        shell._showtraceback(etype, value, [f"\x1b[31m{etype.__name__}\x1b[0m: "
                                            f"{disk_error(value)}"])
    else:
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)


def setup() -> None:
    """Set the figure style, keep the hub offline when it is unreachable, quiet errors.

    A :class:`~lib.errors.CompanionError` raised in a cell prints as one line (and still
    fails the cell, so papermill stops the run).
    """
    import warnings

    from transformers.utils import logging as hf_logging

    from lib.report.plotting import set_style

    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    hf_logging.disable_progress_bar()  # "Loading weights" bars: noise on a page
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    set_style()
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python
        return
    shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc((CompanionError, OSError), _show_one_line)


def glue_values(**values: object) -> None:
    """Glue numbers and strings for the prose (``{glue:text}`name:.1f```), not shown.

    numpy scalars become plain Python numbers, which MyST can format.
    """
    from myst_nb import glue

    for name, value in values.items():
        if hasattr(value, "item"):  # numpy / torch scalar
            value = value.item()
        glue(name, value, display=False)


def styled(table: object, precision: int = 2) -> object:
    """A DataFrame as the pages show tables: numbers at ``precision`` decimals, no index."""
    return table.style.format(precision=precision).hide(axis="index")
