"""A feature set on disk in shards of bounded size, read lazily: memory flat in its length.

At the paper's scale (LibriSpeech 960 h: 281k utterances, WavLM Large's 1024 dimensions at
50 Hz) a set's features are hundreds of GB; held in memory, or written as one file that every
process loads whole, they would not fit. :class:`ShardWriter` writes them while they are
encoded, a shard each time :data:`SHARD_BYTES` are held, so the encoding pass never holds
more than one shard; :class:`FeatureStore` opens them with ``safetensors.safe_open``
(memory-mapped, headers only) and reads a clip's tensor when it is asked for
(:class:`LazyFeats`, what :class:`lib.data.features.FeatureSet` holds).

On disk: the set's path (``<key>.safetensors``) is its first shard, written last, with the
names of the others in its header (``<key>.<k>.safetensors``; ``<key>.r<rank>-<k>...`` when
several processes encoded their shares of the set). A set is complete
when its first shard exists, so a run killed while encoding leaves no set that looks whole,
and a set of one shard is the single file the cache held before shards (same key, same
bytes: earlier caches are read as they are). Every shard carries the sha256 of its tensors
(:func:`lib.fileio.save_tensors`); opening a cached set checks each shard and its values
one shard at a time.

Stage: data (the frozen encoder's features). Explained in chapter 1
(book/01_building_a_speechllm.ipynb, section on the features).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from lib.fileio import CorruptFile, load_tensors, save_tensors

SHARD_BYTES = 256 << 20
"""Bytes of features a shard holds at most (one clip more than that at worst): what the
encoding pass holds in memory besides the encoder. The default preset's training set (about
1 GB) is four shards."""

PARTS_KEY = "parts"
"""The first shard's header entry that names the set's other shards, in order (a JSON list of
file names in the same folder; absent: the set is its first shard alone)."""


def set_files(path: Path) -> list[Path]:
    """Every file of the set at ``path`` on disk: its first shard and any other
    (``<key>.<tag>.safetensors``), named by its header or left by an interrupted run."""
    path = Path(path)
    stem = path.name.removesuffix(".safetensors")
    return ([path] if path.exists() else []) + sorted(path.parent.glob(f"{stem}.*.safetensors"))


class ShardWriter:
    """Collects ``(index, tensor)`` pairs and writes a shard (``<key>.<tag><k>.safetensors``,
    ``k`` = 1, 2, ...) each time ``max_bytes`` are held; :meth:`close` writes the first
    shard, the one that makes the set whole, last. Several processes encoding one set each
    write theirs under a tag of their own and :meth:`finish`; the main process then closes
    the set with every process's shards (:func:`lib.data.features.extract_features`)."""

    def __init__(self, path: Path, max_bytes: int = SHARD_BYTES, tag: str = "") -> None:
        self.path, self.max_bytes, self.tag = Path(path), max_bytes, tag
        self.held: dict[str, torch.Tensor] = {}
        self.bytes = 0
        self.parts: list[str] = []  # file names of the shards written so far

    def add(self, index: int, tensor: torch.Tensor) -> None:
        self.held[str(index)] = tensor
        self.bytes += tensor.numel() * tensor.element_size()
        if self.bytes >= self.max_bytes:
            self._write_part()

    def _write_part(self) -> None:
        stem = self.path.name.removesuffix(".safetensors")
        name = f"{stem}.{self.tag}{len(self.parts) + 1}.safetensors"
        save_tensors(self.path.with_name(name), self.held)
        self.parts.append(name)
        self.held, self.bytes = {}, 0

    def finish(self) -> list[str]:
        """Write what is held as a shard of its own; the names of every shard written."""
        if self.held:
            self._write_part()
        return list(self.parts)

    def close(self, parts: list[str] | None = None) -> int:
        """Write the first shard (what is held, and the names of the others: this writer's,
        or ``parts``); files of an earlier, interrupted or longer set under this key that
        it does not name are removed. Returns the number of shards."""
        parts = self.parts if parts is None else parts
        for stale in set_files(self.path):
            if stale != self.path and stale.name not in parts:
                stale.unlink()
        save_tensors(self.path, self.held, {PARTS_KEY: json.dumps(parts)} if parts else None)
        self.held, self.bytes = {}, 0
        return 1 + len(parts)


def _header(path: Path) -> tuple[dict[str, str], dict[int, tuple[int, ...]]]:
    """A shard's header entries and its tensors' shapes by clip index (no tensor read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (dict(f.metadata() or {}),
                    {int(k): tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    except Exception as err:  # safetensors raises several kinds on a damaged file
        raise CorruptFile(f"{path} is unreadable ({' '.join(str(err).split())[:80]})") from None


class FeatureStore:
    """The set written by :class:`ShardWriter` at ``path``: its clips' shards and shapes from
    the headers, each tensor read when asked for (:meth:`get`).

    Args:
        verify: read every shard once, one at a time, and check its digest and that its
            values are finite (:func:`lib.fileio.load_tensors`); a set just written needs
            no check.

    Raises:
        CorruptFile: a shard is missing, unreadable, or not what was written (one line).
    """

    def __init__(self, path: Path, verify: bool = True) -> None:
        self.path = Path(path)
        meta, shapes = _header(self.path)
        try:
            parts = json.loads(meta.get(PARTS_KEY, "[]"))
        except ValueError:
            raise CorruptFile(f"{self.path} names its shards {meta[PARTS_KEY]!r}") from None
        self.files = [self.path, *(self.path.with_name(name) for name in parts)]
        self.n_shards = len(self.files)
        self.where: dict[int, int] = {}
        self.shapes: dict[int, tuple[int, ...]] = {}
        for k, p in enumerate(self.files):
            if k:
                if not p.is_file():
                    raise CorruptFile(f"{p} is missing (shard {k + 1} of {self.n_shards})")
                shapes = _header(p)[1]
            if verify:
                load_tensors(p, finite=True)  # one shard in memory, dropped here
            self.shapes.update(shapes)
            self.where.update(dict.fromkeys(shapes, k))
        self._open: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:  # open handles stay with their process
        return {**self.__dict__, "_open": {}}

    def indices(self) -> list[int]:
        """The clip indices the set holds, ascending (the order of the utterances)."""
        return sorted(self.where)

    def frames(self, index: int) -> int:
        return self.shapes[index][0]

    def get(self, index: int) -> torch.Tensor:
        """Clip ``index``'s features, read from its shard (kept open, memory-mapped)."""
        from safetensors import safe_open

        k = self.where[index]
        handle = self._open.get(k)
        if handle is None:
            handle = self._open[k] = safe_open(str(self.files[k]), framework="pt")
        return handle.get_tensor(str(index))


class LazyFeats(Sequence):
    """The features of some clips of a :class:`FeatureStore`, in a given order: a sequence of
    tensors, each read from disk when indexed or iterated; slices and ``+`` of two of the same
    store stay lazy."""

    def __init__(self, store: FeatureStore, rows: Sequence[int]) -> None:
        self.store, self.rows = store, list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return LazyFeats(self.store, self.rows[i])
        return self.store.get(self.rows[i])

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self.store.get(r) for r in self.rows)

    def __add__(self, other: Any) -> Any:
        if isinstance(other, LazyFeats) and other.store is self.store:
            return LazyFeats(self.store, self.rows + other.rows)
        return list(self) + list(other)

    def frames(self) -> list[int]:
        """Each clip's number of encoder frames, from the headers (nothing read)."""
        return [self.store.frames(r) for r in self.rows]
