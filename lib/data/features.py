"""Frozen-encoder features, computed once per (encoder, utterance set) and cached.

The paper keeps the speech encoder frozen, so its output for an utterance never changes:
training and evaluation read cached features instead of re-running the encoder every step.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

Stage: data (the frozen encoder's features).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from lib.cache import say_once
from lib.clock import note_reused, stage, track
from lib.data.audio import DataWarning, read_audio
from lib.data.loaders import Utterance
from lib.errors import CompanionError
from lib.fileio import CorruptFile, file_sha256, set_aside
from lib.paths import cache_subdir
from lib.ranks import agree, barrier, gather, is_main, leads, rank_world, share
from lib.data.store import SHARD_BYTES, FeatureStore, LazyFeats, ShardWriter, set_files
from lib.build.autocast import bf16_autocast
from lib.build.components import SpeechEncoder


@dataclass
class FeatureSet:
    """Encoder features of a list of utterances, in the order given.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """

    utterances: list[Utterance]
    # [T_i, D] float16 each: a list, or a cached set's clips read from disk when indexed
    # (lib.data.store.LazyFeats)
    feats: Sequence[torch.Tensor]
    _digest: str | None = field(default=None, repr=False, compare=False)  # see digest()
    # One task per utterance (lib.tasks.Task): a multi-task training mix, where an
    # utterance's target is its own task's field. None: one task, the model's.
    tasks: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.utterances)

    def batch(self, indices: Sequence[int], target: str = "text"
              ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Padded float32 features ``[B, T, D]``, lengths and target texts of ``indices``.

        Args:
            target: the utterance field the texts come from: a task's target
                (:class:`lib.tasks.Task`; ``"text"``, the transcript, for ASR).
        """
        items = [self.feats[i] for i in indices]
        lengths = torch.tensor([x.shape[0] for x in items])
        out = torch.zeros(len(items), int(lengths.max()), items[0].shape[1])
        for j, x in enumerate(items):
            out[j, : x.shape[0]] = x.float()
        if self.tasks is not None:  # a mix: each utterance's own task's target
            return out, lengths, [getattr(self.utterances[i], self.tasks[i].target)
                                  for i in indices]
        return out, lengths, [getattr(self.utterances[i], target) for i in indices]

    def frames(self) -> list[int]:
        """Each utterance's number of encoder frames (a cached set's from its headers, no
        feature read): what batching by length and the alignment checks need."""
        if isinstance(self.feats, LazyFeats):
            return self.feats.frames()
        return [f.shape[0] for f in self.feats]

    def tasks_of(self, indices: Sequence[int]) -> list[Any] | None:
        """The tasks of ``indices`` in a multi-task mix (None for a one-task set)."""
        return None if self.tasks is None else [self.tasks[i] for i in indices]

    def slice(self, start: int | None, stop: int | None) -> "FeatureSet":
        """The utterances ``[start:stop]`` (and their tasks, in a mix)."""
        return FeatureSet(self.utterances[start:stop], self.feats[start:stop],
                          tasks=None if self.tasks is None else self.tasks[start:stop])

    def digest(self) -> str:
        """A hash of the set's content: ids, transcripts and every feature tensor's bytes.

        Cached results computed from a feature set (scores, ...) are keyed by it, so a
        changed clip or transcript never reuses an old result.
        """
        if self._digest is not None:
            return self._digest
        h = hashlib.sha256()
        for k, (u, f) in enumerate(zip(self.utterances, self.feats)):
            h.update(f"{u.id}|{u.text}|{tuple(f.shape)}\n".encode())
            if self.tasks is not None:  # a mix: the task and its target count too
                task = self.tasks[k]
                h.update(f"{task.name}|{getattr(u, task.target)}\n".encode())
            h.update(f.contiguous().view(-1).view(torch.uint8).numpy())
        self._digest = h.hexdigest()[:16]
        return self._digest

    def other_audio(self) -> "FeatureSet":
        """The same utterances and targets, each with the next one's audio (the last with
        the first's): the floor a model reaches hearing nothing useful, from the prompt and
        its language prior alone (chapter 5's no-audio floor, chapter 3's loss floor)."""
        return FeatureSet(self.utterances, self.feats[1:] + self.feats[:1])

    def subset(self, n: int | None) -> "FeatureSet":
        """The first ``n`` utterances (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return self.slice(None, n)


FEATURES_VERSION = 2
"""Bumped when the encoder forward changes what a clip's features are (part of the key).
2: every clip's features are its own (masked batch), long clips encoded in 30 s chunks."""


MIN_SECONDS = 0.1
"""Clips shorter than this (5 encoder frames, one projector frame at k=5) are skipped."""


def encoder_fingerprint(encoder: SpeechEncoder) -> str:
    """A hash of the encoder's weights and kind (computed once per encoder object).

    Two folders with the same name but other weights get other feature caches.
    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """
    cached = getattr(encoder, "_fingerprint", None)
    if cached is None:
        h = hashlib.sha256(f"{encoder.kind}|{encoder.hidden_size}".encode())
        for name, tensor in sorted(encoder.model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
        cached = h.hexdigest()[:16]
        encoder._fingerprint = cached  # type: ignore[attr-defined]
    return cached


def file_digest(path: str) -> str:
    """sha256 of a file's bytes ("missing" when it cannot be read): data by content."""
    try:
        return file_sha256(path)  # type: ignore[arg-type]
    except OSError:
        return "missing"


def _set_key(encoder: SpeechEncoder, utts: Sequence[Utterance], precision: str) -> str:
    """The feature cache key: encoder weights, precision, code version, every clip's bytes."""
    h = hashlib.sha256()
    h.update(json.dumps([FEATURES_VERSION, encoder_fingerprint(encoder), precision]).encode())
    for u in utts:
        h.update(f"{u.id}|{file_digest(u.audio)}\n".encode())
    return h.hexdigest()[:16]


def features_path(encoder: SpeechEncoder, utts: Sequence[Utterance], precision: str) -> Path:
    """Where the features of ``utts`` are cached (:func:`extract_features` reads it)."""
    return cache_subdir("features") / f"{_set_key(encoder, utts, precision)}.safetensors"


def _whole(path: Path, desc: str) -> bool:
    """Whether the cached set at ``path`` is whole (every shard read and checked, one at a
    time); a damaged one is set aside, file by file, in one line each."""
    try:
        FeatureStore(path)
    except CorruptFile as err:
        for f in set_files(path):
            set_aside(f, f"{desc}: the features cache {err}")
        return False
    return True


def _cached_set(path: Path, utts: list[Utterance], desc: str) -> FeatureSet | None:
    """The cached set at ``path``, read lazily, or None: not cached, or damaged. Under
    several processes working together the first checks it and tells the others."""
    if not agree(path.is_file()) or not agree(_whole(path, desc) if leads() else None):
        return None
    store = FeatureStore(path, verify=False)
    kept = store.indices()
    say_once(f"{desc}: cached ({len(kept)} utterances, {path.name}"
             + (f", {store.n_shards} shards)" if store.n_shards > 1 else ")"))
    note_reused()
    return FeatureSet([utts[i] for i in kept], LazyFeats(store, kept))


def _readable(utts: list[Utterance], indices: Sequence[int]) -> tuple[list[int], list[Any]]:
    """The clips of ``indices`` that can be read and are long enough, with their waveforms;
    each other one skipped with a one-line warning."""
    idx, waves = [], []
    for i in indices:
        try:
            wave = read_audio(utts[i].audio)
            if len(wave) < MIN_SECONDS * 16000:
                raise CompanionError(
                    f"{utts[i].audio} lasts {len(wave) / 16000:.2f} s, less than one "
                    f"projector frame ({MIN_SECONDS} s): drop it from the data")
            waves.append(wave)
            idx.append(i)
        except CompanionError as err:  # one bad file never sinks the set
            warnings.warn(f"{err} (utterance {utts[i].id} skipped)", DataWarning, stacklevel=3)
    return idx, waves


@stage("features")
def extract_features(encoder: SpeechEncoder, utts: Sequence[Utterance], batch_size: int = 16,
                     desc: str = "encoder features", use_cache: bool = True,
                     precision: str = "fp32", shard_bytes: int = SHARD_BYTES) -> FeatureSet:
    """Run the frozen encoder over ``utts`` (longest first, batched) or load the cache.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        encoder: the speech encoder.
        utts: utterances to encode.
        batch_size: clips per encoder forward.
        desc: progress-bar label.
        use_cache: read/write ``<cache>/features/<key>.safetensors`` in shards of
            ``shard_bytes`` (:mod:`lib.data.store`: written while encoding, read lazily, so
            memory stays flat in the number of utterances; each shard with the digest of its
            bytes, a damaged set is set aside and encoded again). Without the cache the
            features are held in memory.
        precision: ``bf16`` runs the encoder under bf16 autocast (about 3x faster on a CPU
            with native bf16; features agree with fp32 to a mean cosine of 0.9997) or
            ``fp32``. Part of the cache key.
    """
    utts = list(utts)
    if not utts:
        raise CompanionError(f"{desc}: no utterances to encode; check the data source")
    path = features_path(encoder, utts, precision)
    hit = _cached_set(path, utts, desc) if use_cache else None
    if hit is not None:
        return hit
    order = sorted(range(len(utts)), key=lambda i: -utts[i].duration)
    rank, world = rank_world()
    split = use_cache and world > 1  # several processes, each encoding its share
    done: list[int] = []
    held: dict[int, torch.Tensor] = {}  # without the cache: every clip's features
    writer = (ShardWriter(path, shard_bytes, tag=f"r{rank}-" if split else "")
              if use_cache else None)
    # each process its share of the batches one process would encode (the same bits)
    mine = share([order[s:s + batch_size] for s in range(0, len(order), batch_size)])
    with torch.inference_mode():
        for batch in track(mine, desc=desc, total=len(mine)):
            idx, waves = _readable(utts, batch)
            if not idx:
                continue
            with bf16_autocast(encoder, encoder.device.type, enabled=precision == "bf16"):
                out, lengths = encoder(waves)
            for j, i in enumerate(idx):
                f = out[j, : int(lengths[j])].float().to(torch.float16).cpu().clone()
                done.append(i)
                if writer is None:
                    held[i] = f
                else:
                    writer.add(i, f)
    if split:  # every process's shards named in the first one, written by the main one
        every = gather([(writer.finish(), done)])
        done = [i for _, d in every for i in d]
        if done and is_main():
            ShardWriter(path, shard_bytes).close([n for names, _ in every for n in names])
        barrier()
    kept = sorted(done)
    if not kept:
        raise CompanionError(f"{desc}: none of the {len(utts)} audio files could be read")
    if writer is None:
        return FeatureSet([utts[i] for i in kept], [held[i] for i in kept])
    if not split:
        writer.close()
    return FeatureSet([utts[i] for i in kept], LazyFeats(FeatureStore(path, verify=False), kept))


def split_dev(train: FeatureSet, n: int) -> tuple[FeatureSet, FeatureSet | None]:
    """Hold out the last ``n`` training utterances as the dev subset of the learning curve.

    Raises:
        CompanionError: fewer than ``n + 1`` utterances would be left to train on.
    """
    if n == 0:
        return train, None
    if n >= len(train):
        raise CompanionError(f"dev_utterances={n} leaves nothing to train on ({len(train)} "
                             "training utterances): lower dev_utterances or raise n_train")
    return train.slice(None, -n), train.slice(-n, None)
