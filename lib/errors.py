"""One error type for mistakes a user can fix: bad input, missing tools, unknown names.

Every message is one line that names the offending input and says what to do. Notebooks
show it without a stack trace (see :func:`lib.recipes.notebook.setup`); scripts print it and exit 1.

Stage: all (bad input). Explained where each error is raised; the habit is set out in
chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

from collections.abc import Callable


class CompanionError(Exception):
    """A user-fixable problem, reported as a single line (no traceback needed)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def check_texts(value: object, name: str, where: str) -> list[str]:
    """``value`` as a list of strings, or a one-line error naming the argument.

    Catches the usual slips at a library entry point: one string where a list of strings
    is expected (a string is itself a sequence of one-letter strings), ``None``, or an item
    that is not a string.

    Args:
        value: what the caller passed.
        name: the argument's name, e.g. ``"refs"``.
        where: the function, e.g. ``"score_asr"``.

    Returns:
        The items, as a new list (an iterator is consumed once).

    Raises:
        CompanionError: ``value`` is a string, None, not iterable, or holds a non-string.
    """
    if isinstance(value, (str, bytes)):
        shown = repr(value) if len(value) <= 40 else repr(value[:40]) + "..."
        raise CompanionError(f"{where}: {name} is one string ({shown}), not a list: pass a "
                             f"list of strings, e.g. [{shown}]")
    if value is None:
        raise CompanionError(f"{where}: {name} is None: pass a list of strings")
    try:
        items = list(value)  # type: ignore[call-overload]
    except TypeError:
        raise CompanionError(f"{where}: {name} is a {type(value).__name__}, not a list: pass "
                             "a list of strings") from None
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise CompanionError(f"{where}: {name}[{i}] is {item!r:.40}, not a string: pass a "
                                 "list of strings ('' for an empty transcript)")
    return items


def check_pairs(refs: object, hyps: object, where: str) -> tuple[list[str], list[str]]:
    """References and hypotheses as two lists of strings of one length, not empty.

    Raises:
        CompanionError: either fails :func:`check_texts`, the lengths differ, or both are
            empty.
    """
    refs, hyps = check_texts(refs, "refs", where), check_texts(hyps, "hyps", where)
    if len(refs) != len(hyps):
        raise CompanionError(f"{len(refs)} references but {len(hyps)} hypotheses: score "
                             "matching lists")
    if not refs:
        raise CompanionError("nothing to score: the test set is empty")
    return refs, hyps


def io_reason(err: BaseException) -> str:
    """What an I/O failure means for a user, in a few words: no space left, a read-only
    folder, permission denied, or the first 80 characters of the error (an ``OSError`` or
    the ``SafetensorError`` that wraps one)."""
    import errno

    code = getattr(err, "errno", None)
    text = " ".join(str(err).split())
    if code == errno.ENOSPC or "StorageFull" in text or "No space left" in text:
        return "no space left on the device"
    if code == errno.EROFS or "ReadOnlyFilesystem" in text or "Read-only file system" in text:
        return "the folder is read-only"
    if code == errno.EACCES or "PermissionDenied" in text or "Permission denied" in text:
        return "permission denied"
    return f"{type(err).__name__}: {text[:80]}"


def is_disk_error(err: BaseException) -> bool:
    """A failure of the disk rather than of the code: no space, read-only, no permission."""
    import errno

    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES,
                                                      errno.EDQUOT)


def disk_error(err: OSError) -> str:
    """The one line for :func:`is_disk_error`: what failed, on which file, and what to do
    (the cache is ``$COMPANION_CACHE``: a file inside it names the cache and how to move
    it)."""
    import os
    from pathlib import Path

    where = str(err.filename or "a file")
    reason = io_reason(err)
    repo = Path(__file__).resolve().parents[1]
    cache = Path(os.environ.get("COMPANION_CACHE", repo / ".cache")).expanduser()
    if where.startswith(str(cache)):
        state = {"no space left on the device": "is full",
                 "the folder is read-only": "is read-only"}.get(reason, f"refused ({reason})")
        return (f"the cache {cache} {state} (writing {where}): free space there, or set "
                "COMPANION_CACHE to a writable folder with room, then run again")
    return f"cannot write {where} ({reason}): free space or choose a writable folder"


def exit_status(main: Callable[[], int]) -> int:
    """Run a command's body; a :class:`CompanionError` or a full / read-only disk
    (:func:`is_disk_error`) is one line on stderr (``error: ...``) and status 1. What every
    ``python -m lib.*`` command returns."""
    import sys

    try:
        return main()
    except CompanionError as err:
        print(f"error: {err}", file=sys.stderr)
    except OSError as err:
        if not is_disk_error(err):
            raise
        print(f"error: {disk_error(err)}", file=sys.stderr)
    return 1
