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
    warningiserror=sys.argv[3] == "strict", keep_going=True, quiet=True,
)
sys.exit(result if isinstance(result, int) else 1)
"""




def _stage(preset: str, root: Path) -> tuple[Path, list[str]]:
    """Copy the book's text and the executed chapters into ``_build/<preset>/src``; with
    chapters not run yet, a table of contents of the pages that can be built (the chapters
    that ran and the introduction: the course page speaks of every chapter).

    Returns:
        The source folder and the chapters not run yet (their notebook names).
    """
    base = check_folder(preset_dir(preset, root))
    executed = check_folder(base / "executed")
    src = check_folder(base / "src")
    check_folder(base / "html")
    chapters = list_chapters(root)
    missing = [nb.name for nb in chapters if not (executed / nb.name).is_file()]
    if len(missing) == len(chapters):
        raise CompanionError(f"no chapter has run yet for preset {preset!r}: run one first, "
                             f"e.g. make chapter CH=01 PRESET={preset}")
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(
        root / "book",
        src / "book",
        ignore=shutil.ignore_patterns("*.ipynb", ".*", "__pycache__"),
    )
    for name in ("_config.yml", "_toc.yml", "references.bib"):
        if (root / name).is_file():
            shutil.copy2(root / name, src / name)
    if missing:
        _partial_toc(src / "_toc.yml", {f"book/{Path(m).stem}" for m in missing})
    for nb in chapters:
        copy = executed / nb.name
        if nb.name in missing:
            continue
        if nb.stat().st_mtime > copy.stat().st_mtime:
            print(f"note: book/{nb.name} changed since it was run; the page shows the old run")
        shutil.copy2(copy, src / "book" / nb.name)
    return src, missing


def _partial_toc(toc: Path, missing: set[str]) -> None:
    """``toc`` without the chapters in ``missing`` and without the course page."""
    import yaml

    data = yaml.safe_load(toc.read_text(encoding="utf-8"))
    data["chapters"] = [e for e in data.get("chapters", [])
                        if e.get("file") not in missing and e.get("file") != COURSE]
    toc.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


COURSE = "book/course"
"""The course page: it speaks of every chapter, so a partial book leaves it out."""


def build_book(preset: str = "default", *, root: Path = REPO_ROOT) -> Path:
    """Build the HTML book from the executed chapters of a preset, with execution off.

    Sphinx runs with warnings as errors (``-W -n --keep-going``): a broken reference or a
    missing figure fails the build. Only the pages listed in ``_toc.yml`` are built. When
    some chapters have not run yet, the book is built from those that have (a reader who
    ran one chapter, a developer checking one page), without the course page, and links
    to the others show as text: then warnings are not errors, and not shown.

    Args:
        preset: the preset whose executed chapters to render (see :func:`run_chapters`).
        root: the folder holding ``_config.yml``, ``_toc.yml`` and ``book/``.

    Returns:
        The built ``index.html``.

    Raises:
        CompanionError: no chapter has run yet, a file stands where a folder of
            ``_build/<preset>`` goes, or Sphinx reported a warning.
    """
    src, missing = _stage(preset, root)
    html = preset_dir(preset, root) / "html"
    if missing:
        shutil.rmtree(html, ignore_errors=True)  # no page of an earlier build left behind
        print(f"a partial book: {', '.join(missing)} not run yet (make chapter "
              f"PRESET={preset}), so their pages and the course page are left out, and links "
              "to them show as text", flush=True)
    print(f"building the book from {src} ...", flush=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _SPHINX, str(src), str(html),
                             "strict" if not missing else "partial"],
                            stderr=subprocess.PIPE if missing else None, text=True)
    if result.returncode != 0:
        if missing:  # its warnings were kept back: show the end of what it said
            print("\n".join(result.stderr.splitlines()[-20:]), file=sys.stderr)
        raise CompanionError("the book build failed (warnings count as errors): see above")
    index = html / "index.html"
    if not index.is_file():
        raise CompanionError(f"the build finished but wrote no {index}")
    print(f"built in {time.perf_counter() - start:.1f} s: {index}", flush=True)
    return index


