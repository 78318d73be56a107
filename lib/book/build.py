"""Build the HTML book from the executed chapters of a preset, with execution off.

Stage: the book. Explained in the README (How the book is built).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from lib.book.chapters import list_chapters, preset_dir
from lib.paths import check_folder
from lib.errors import CompanionError
from lib.paths import REPO_ROOT

# Sphinx through jupyter-book's own entry point, so ``_config.yml`` means what it means for
# ``jupyter-book build``; called here only to choose the output folder (``html/``).
_SPHINX = """\
import sys
from pathlib import Path
from jupyter_book.sphinx import build_sphinx
src, html = Path(sys.argv[1]), Path(sys.argv[2])
result = build_sphinx(
    src, html, noconfig=True, path_config=str(src / "_config.yml"),
    confoverrides={
        "external_toc_path": str(src / "_toc.yml"),
        "latex_individualpages": False,
        "nitpicky": True,
    },
    doctreedir=html.parent / "doctrees", builder="html", freshenv=True,
    warningiserror=True, keep_going=True, quiet=True,
)
sys.exit(result if isinstance(result, int) else 1)
"""




def _stage(preset: str, root: Path) -> Path:
    """Copy the book's text and the executed chapters into ``_build/<preset>/src``."""
    base = check_folder(preset_dir(preset, root))
    executed = check_folder(base / "executed")
    src = check_folder(base / "src")
    check_folder(base / "html")
    missing = [nb.name for nb in list_chapters(root) if not (executed / nb.name).is_file()]
    if missing:
        raise CompanionError(
            f"not run yet for preset {preset!r}: {', '.join(missing)}; "
            f"run them first: make chapter PRESET={preset}"
        )
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(
        root / "book",
        src / "book",
        ignore=shutil.ignore_patterns("*.ipynb", ".*", "__pycache__"),
    )
    for name in ("_config.yml", "_toc.yml", "references.bib"):
        if (root / name).is_file():
            shutil.copy2(root / name, src / name)
    for nb in list_chapters(root):
        copy = executed / nb.name
        if nb.stat().st_mtime > copy.stat().st_mtime:
            print(f"note: book/{nb.name} changed since it was run; the page shows the old run")
        shutil.copy2(copy, src / "book" / nb.name)
    return src


def build_book(preset: str = "default", *, root: Path = REPO_ROOT) -> Path:
    """Build the HTML book from the executed chapters of a preset, with execution off.

    Sphinx runs with warnings as errors (``-W -n --keep-going``): a broken reference or a
    missing figure fails the build. Only the pages listed in ``_toc.yml`` are built.

    Args:
        preset: the preset whose executed chapters to render (see :func:`run_chapters`).
        root: the folder holding ``_config.yml``, ``_toc.yml`` and ``book/``.

    Returns:
        The built ``index.html``.

    Raises:
        CompanionError: a chapter was not run yet, a file stands where a folder of
            ``_build/<preset>`` goes, or Sphinx reported a warning.
    """
    src = _stage(preset, root)
    html = preset_dir(preset, root) / "html"
    print(f"building the book from {src} ...", flush=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _SPHINX, str(src), str(html)])
    if result.returncode != 0:
        raise CompanionError("the book build failed (warnings count as errors): see above")
    index = html / "index.html"
    if not index.is_file():
        raise CompanionError(f"the build finished but wrote no {index}")
    print(f"built in {time.perf_counter() - start:.1f} s: {index}", flush=True)
    return index


