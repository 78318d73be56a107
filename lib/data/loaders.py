"""Speech data as :class:`Utterance` records: manifests and corpus loaders.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb). Stage: data.

Every corpus the book uses (the offline synthetic corpus of :mod:`lib.data.corpus`, LibriSpeech at
paper scale, or a user's own manifest; real recordings: :mod:`lib.data.real`) becomes a list of :class:`Utterance` records. Audio is always read
back through :func:`lib.data.audio.read_audio` as float32 mono at 16 kHz.

Problems with single files (missing audio, empty transcript) are reported as one line each
through :class:`~lib.data.audio.DataWarning` and the file is skipped; problems that leave
nothing usable are a :class:`~lib.errors.CompanionError`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile as sf

from lib.data.audio import warn_skipped, audio_duration
from lib.errors import CompanionError
from lib.fileio import atomic_write_text


MANIFEST_KEYS = ("id", "audio", "duration", "text", "voice", "split", "source")
"""Keys of one manifest row, in the order they are written."""

OPTIONAL_KEYS = ("language", "translation")
"""Keys a row carries only when they differ from their defaults (English, no translation),
so an English-only manifest stays as it always was."""

@dataclass(frozen=True)
class Utterance:
    """One transcribed recording.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Attributes:
        id: Unique name of the utterance within its corpus.
        audio: Absolute path of the audio file.
        text: The transcript.
        duration: Length of the audio in seconds.
        voice: Who or what spoke it, e.g. ``"espeak:en-us+m3:r160:p40"``, ``"piper:joe"``
            or ``"librispeech:1089"``.
        split: Corpus split, e.g. ``"train"``, ``"test"``, ``"real"``, ``"test-clean"``.
        source: Where it came from: ``"synthetic-espeak"``, ``"synthetic-piper"``,
            ``"pocketsphinx"``, ``"librispeech"`` or ``"manifest"``.
        language: The language spoken (and of ``text``), e.g. ``"en"``, ``"es"``.
        translation: The same words in the other language of a parallel corpus, ``""``
            when there is none (the target of a speech-translation task).
    """

    id: str
    audio: str
    text: str
    duration: float
    voice: str
    split: str
    source: str
    language: str = "en"
    translation: str = ""


# --------------------------------------------------------------------------- manifests


def write_manifest(path: str | os.PathLike[str], utts: Iterable[Utterance]) -> Path:
    """Write utterances as a JSON Lines manifest, atomically.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    One object per line with keys id, audio, duration, text, voice, split, source. Audio
    paths inside the manifest's folder are stored relative to it, so the folder can move.

    Args:
        path: The manifest file (``.jsonl``).
        utts: The utterances.

    Returns:
        The manifest path.
    """
    manifest = Path(path).resolve()
    folder = manifest.parent
    lines = []
    for utt in utts:
        row = asdict(utt)
        audio = Path(utt.audio).resolve()
        if audio.is_relative_to(folder):
            row["audio"] = audio.relative_to(folder).as_posix()
        else:
            row["audio"] = str(audio)
        row["duration"] = round(float(utt.duration), 4)
        keep = {k: row[k] for k in MANIFEST_KEYS}
        keep.update({k: row[k] for k in OPTIONAL_KEYS
                     if row[k] != Utterance.__dataclass_fields__[k].default})
        lines.append(json.dumps(keep, ensure_ascii=False))
    atomic_write_text(manifest, "".join(line + "\n" for line in lines))
    return manifest


def load_manifest(path: str | os.PathLike[str]) -> list[Utterance]:
    """Load a JSON Lines manifest written by :func:`write_manifest` (or by hand).

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Required keys: id, audio, text. Optional: duration (read from the file header when
    absent), voice (default ``"unknown"``), split (default ``""``), source (default
    ``"manifest"``), language (default ``"en"``), translation (default ``""``). Relative
    audio paths are relative to the manifest's folder. A row
    whose audio file is missing or whose transcript is empty is skipped with one
    :class:`DataWarning` line naming it; the rest load.

    Args:
        path: The manifest file.

    Returns:
        The usable utterances, in file order.

    Raises:
        CompanionError: The manifest is missing, empty, not JSON Lines, a row lacks a
            required key, or no row is usable.
    """
    manifest = Path(path)
    if not manifest.is_file():
        raise CompanionError(
            f"manifest not found: {manifest}: build the corpus first or check the path"
        )
    folder = manifest.resolve().parent
    rows = manifest.read_text(encoding="utf-8").splitlines()
    if not any(line.strip() for line in rows):
        raise CompanionError(
            f"manifest is empty: {manifest}: expected one JSON object per line with "
            "keys id, audio, text"
        )
    utts: list[Utterance] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(rows, start=1):
        u = _manifest_row(line, f"{manifest}:{number}", folder) if line.strip() else None
        if u is None:
            continue
        if u.id in first_line:
            raise CompanionError(f"manifest {manifest}: id {u.id!r} is on lines "
                                 f"{first_line[u.id]} and {number}: give every utterance its "
                                 "own id")
        first_line[u.id] = number
        utts.append(u)
    if not utts:
        raise CompanionError(
            f"manifest {manifest} has no usable rows (see the warnings above): fix the "
            "audio paths or transcripts"
        )
    return utts


def _manifest_row(line: str, where: str, folder: Path) -> Utterance | None:
    """One manifest line as an utterance; None (with a one-line warning) when its audio is
    missing or its transcript empty.

    Raises:
        CompanionError: the line is not a JSON object with id, audio and text, or its
            duration is not a number.
    """
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CompanionError(
            f"malformed manifest line {where} ({exc.msg}): expected one JSON object "
            "per line with keys id, audio, text"
        ) from None
    if not isinstance(row, dict):
        raise CompanionError(
            f"malformed manifest line {where}: expected a JSON object with keys "
            "id, audio, text"
        )
    missing = [key for key in ("id", "audio", "text") if key not in row]
    if missing:
        raise CompanionError(
            f"malformed manifest line {where}: missing key(s) {', '.join(missing)}"
        )
    audio = Path(str(row["audio"])).expanduser()
    if not audio.is_absolute():
        audio = folder / audio
    text = " ".join(str(row["text"] or "").split())
    if not audio.is_file():
        warn_skipped(f"skipped {where} (id {row['id']}): audio file not found: {audio}")
        return None
    if not text:
        warn_skipped(f"skipped {where} (id {row['id']}): empty transcript")
        return None
    if not re.search(r"\w", text):  # "... !!! ?" normalises to nothing a WER can count
        warn_skipped(f"skipped {where} (id {row['id']}, source "
                     f"{row.get('source') or 'manifest'}): the transcript {text!r} has no "
                     "words, only punctuation")
        return None
    try:
        duration = float(row["duration"]) if "duration" in row else None
    except (TypeError, ValueError):
        raise CompanionError(
            f"malformed manifest line {where}: duration {row['duration']!r} is "
            "not a number"
        ) from None
    if duration is None:
        duration = audio_duration(audio)
    return Utterance(id=str(row["id"]), audio=str(audio), text=text, duration=duration,
                     voice=str(row.get("voice") or "unknown"),
                     split=str(row.get("split") or ""),
                     source=str(row.get("source") or "manifest"),
                     language=str(row.get("language") or "en"),
                     translation=" ".join(str(row.get("translation") or "").split()))


def cached_manifest(path: Path, expected: int) -> list[Utterance] | None:
    """A cached corpus's manifest when it is whole (``expected`` rows, every one readable),
    else None; a damaged one is set aside (:func:`lib.fileio.set_aside`) so the corpus is
    built again, reusing every complete wav."""
    from lib.fileio import set_aside

    if not Path(path).is_file():
        return None
    try:
        utts = load_manifest(path)
    except CompanionError as err:
        set_aside(Path(path), f"the cached corpus manifest is damaged ({err})")
        return None
    return utts if len(utts) == expected else None


# --------------------------------------------------------------------------- LibriSpeech

LIBRISPEECH_LAYOUT = (
    "<root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac with "
    "<speaker>-<chapter>.trans.txt beside them"
)


def load_librispeech(
    folder: str | os.PathLike[str], split: str | None = None
) -> list[Utterance]:
    """Load a LibriSpeech split (or any folder in its layout).

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Accepts the LibriSpeech root with ``split="test-clean"`` (etc.), or a split folder
    directly (``split=None``; a root holding several splits then loads them all). Durations
    come from the flac headers, nothing is decoded. A transcript line whose flac is missing
    or whose text is empty is skipped with one :class:`DataWarning` line.

    Args:
        folder: LibriSpeech root or split folder.
        split: Name of the split folder under ``folder``, or None.

    Returns:
        The utterances sorted by id; ``voice`` is ``"librispeech:<speaker>"``.

    Raises:
        CompanionError: The folder is missing or holds no utterance in the layout.
    """
    root = Path(folder).expanduser()
    if split is not None:
        root = root / split
    if not root.is_dir():
        raise CompanionError(
            f"LibriSpeech folder not found: {root}: expected {LIBRISPEECH_LAYOUT}"
        )
    utts: list[Utterance] = []
    for trans in sorted(root.rglob("*.trans.txt")):
        parts = trans.relative_to(root).parts
        split_name = split or (parts[0] if len(parts) >= 4 else root.name)
        lines = trans.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            text = " ".join(text.split())
            flac = trans.parent / f"{utt_id}.flac"
            if not text:
                warn_skipped(f"skipped {utt_id} ({trans}:{number}): empty transcript")
                continue
            if not flac.is_file():
                warn_skipped(f"skipped {utt_id} ({trans}:{number}): audio not found: {flac}")
                continue
            try:
                info = sf.info(str(flac))
            except (sf.SoundFileError, RuntimeError, ValueError):
                warn_skipped(f"skipped {utt_id}: unreadable audio file {flac}")
                continue
            utts.append(
                Utterance(
                    id=utt_id,
                    audio=str(flac.resolve()),
                    text=text,
                    duration=info.frames / info.samplerate,
                    voice=f"librispeech:{utt_id.split('-')[0]}",
                    split=split_name,
                    source="librispeech",
                )
            )
    if not utts:
        raise CompanionError(
            f"no LibriSpeech utterances found under {root}: expected {LIBRISPEECH_LAYOUT} "
            "(pass the root with split='test-clean', or the split folder itself)"
        )
    return sorted(utts, key=lambda utt: utt.id)
