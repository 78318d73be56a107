"""One way to reuse a computed result: :func:`cached`, and the line that says so.

Every cached result of a stage (a test set decoded and scored, a point of a pruning curve,
the Whisper baseline, the rescoring sweep, the text cascade) goes through :func:`cached`:

- the key covers everything that changes the content: the caller's ``keyed`` mapping (data
  by content, every setting that changes the output), hashed by
  :func:`lib.fileio.config_hash` into the file name ``<stem>-<key>.json``;
- the file is verified when read (:func:`lib.fileio.load_cached_json`: a damaged or edited
  one is set aside in one line and computed again);
- the provenance (what the key was made of, commit, versions, device, wall time) is
  stamped once, here;
- under several processes (:mod:`lib.ranks`), all reuse a result or all compute it (the
  main process decides), and the main process alone writes it while the others wait;
- a reused result says which key it matched (:func:`say_reused`, once per process, and
  counts it in the current stage every time: :func:`lib.clock.note_reused`).

A trained projector or adapter is kept in its run's folder (keyed by its config) as weights
beside a record; the trainers read them back through the same verified reads and say so
through :func:`say_reused`. Stage: all (the cache). Explained in chapter 1
(book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lib.clock import note_reused
from lib.fileio import config_hash, load_cached_json, provenance, save_cached_json
from lib.ranks import agree, barrier, is_main


def file_label(name: str) -> str:
    """A test set's or task's name as part of a cache file name (``synthetic:test`` ->
    ``synthetic-test``, ``a/b`` -> ``a_b``): the one rule every cached result uses."""
    return name.replace(":", "-").replace("/", "_")


_SAID: set[str] = set()
"""The lines :func:`say_once` has printed in this process (a kernel runs one chapter)."""


def say_once(line: str) -> None:
    """Print ``line`` unless this process printed it already: a chapter that reads the same
    cached corpus or lever run again (each time it resolves the recipe of record) says so
    once on its page, not once per reading."""
    if line not in _SAID:
        _SAID.add(line)
        print(line)


def say_reused(what: str, key: str) -> None:
    """The one line of a result taken from the cache instead of computed, naming the key it
    matched (once per process: :func:`say_once`), and the count of it in the current stage
    (every time)."""
    say_once(f"{what}: cached result reused (key {key})")
    note_reused()


def cached(folder: Path, stem: str, keyed: Mapping[str, Any],
           compute: Callable[[Path], dict[str, Any]], *, what: str | None = None,
           reuse: bool = True) -> dict[str, Any]:
    """The result ``compute`` makes, kept as ``folder/<stem>-<key>.json`` and read back
    (verified) the next time the same key is asked for.

    Args:
        folder: where the result is kept (a run's folder, or a folder of the cache).
        stem: the file name before the key, e.g. ``eval-synthetic-test``.
        keyed: everything that changes the content; its hash is the key.
        compute: makes the result (a JSON-able dict) given the path it will be kept at (to
            write files beside it, e.g. per-utterance hypotheses).
        what: how the line of a reused result names it (``None``: no line; still counted).
        reuse: False to compute (and keep) it again even when it is kept.

    Returns:
        The result, with ``key`` and ``provenance``, as :func:`lib.fileio.load_cached_json`
        reads it back.
    """
    key = config_hash(dict(keyed))
    path = Path(folder) / f"{stem}-{key}.json"
    hit = load_cached_json(path) if reuse else None
    if agree(hit is not None):  # several processes: all reuse it, or all compute it
        hit = hit if hit is not None else load_cached_json(path)
    if hit is not None:
        if what is not None:
            say_reused(what, key)
        else:
            note_reused()
        return hit
    t0 = time.perf_counter()
    result = compute(path)  # with several processes, each its share (lib.ranks)
    record = {**result, "key": key,
              "provenance": provenance(dict(keyed), wall_time_s=time.perf_counter() - t0)}
    if is_main():  # one writer; the others wait until it is there
        save_cached_json(path, record)
    barrier()
    return json.loads(json.dumps(record, default=str))  # as a reuse will read it back
