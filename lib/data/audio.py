"""Audio I/O: every waveform read back as float32 mono at 16 kHz, WAV files written whole.

Problems with single files (missing, unreadable, silent) are reported as one line each
through :class:`DataWarning`. Stage: data. Explained in chapter 1
(book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from lib.errors import CompanionError


SAMPLE_RATE = 16000
"""Sample rate of every waveform the companion hands to a model (Hz)."""

SILENCE_PEAK = 1e-4
"""A file whose absolute peak stays below this is treated as silent."""

class DataWarning(UserWarning):
    """One skipped file or manifest row, described in a single line."""


def warn_skipped(message: str) -> None:
    """Report one skipped item as a single-line :class:`DataWarning`."""
    warnings.warn(" ".join(message.split()), DataWarning, stacklevel=3)


# --------------------------------------------------------------------------- audio I/O


def read_audio(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an audio file as float32 mono at 16 kHz.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Any format libsndfile reads (wav, flac, ogg, ...) at any rate is accepted: channels are
    averaged to mono and other rates are resampled with soxr.

    Args:
        path: The audio file.

    Returns:
        The waveform, shape ``(samples,)``, dtype float32, at :data:`SAMPLE_RATE`.

    Raises:
        CompanionError: The file is missing, empty, unreadable or silent (one line naming
            the file and what to do).
    """
    file = Path(path)
    if not file.is_file():
        raise CompanionError(
            f"audio file not found: {file}: check the path, or rebuild the corpus "
            "or manifest that points to it"
        )
    if file.stat().st_size == 0:
        raise CompanionError(
            f"audio file is empty (0 bytes): {file}: re-create or re-download it"
        )
    try:
        samples, rate = sf.read(str(file), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise CompanionError(
            f"cannot read audio file {file} (corrupt or unsupported format: {reason}): "
            "re-create or re-download it"
        ) from None
    if samples.shape[0] == 0:
        raise CompanionError(
            f"audio file has no samples: {file}: re-create or re-download it"
        )
    mono = samples.mean(axis=1, dtype=np.float32)
    if float(np.max(np.abs(mono))) < SILENCE_PEAK:
        raise CompanionError(
            f"audio file is silent (peak below {SILENCE_PEAK:g}): {file}: "
            "check the recording, or remove it from the corpus"
        )
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def write_wav(path: str | os.PathLike[str], audio: np.ndarray, rate: int) -> float:
    """Write a mono waveform as a 16 kHz 16-bit wav, atomically.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    The audio is resampled to :data:`SAMPLE_RATE` with soxr when needed, written to a
    temporary name in the same folder and renamed, so an interrupted run never leaves a
    half-written file under the final name.

    Args:
        path: Destination ``.wav`` file.
        audio: Mono waveform (float in [-1, 1] or int16).
        rate: Sample rate of ``audio`` in Hz.

    Returns:
        The duration of the written file in seconds.
    """
    target = Path(path)
    wave = np.asarray(audio)
    if wave.dtype == np.int16:
        wave = wave.astype(np.float32) / 32768.0
    wave = wave.astype(np.float32, copy=False)
    if rate != SAMPLE_RATE:
        wave = soxr.resample(wave, rate, SAMPLE_RATE, quality="HQ")
    wave = np.clip(wave, -1.0, 1.0)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.stem}.partial.wav")
    sf.write(str(partial), wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(partial, target)
    return len(wave) / SAMPLE_RATE


def audio_duration(path: str | os.PathLike[str]) -> float:
    """Duration of an audio file in seconds, from its header (no decoding).

    Args:
        path: The audio file.

    Returns:
        Frames divided by the sample rate.

    Raises:
        CompanionError: The file cannot be opened.
    """
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise CompanionError(
            f"cannot read audio header of {path} ({reason}): re-create or re-download it"
        ) from None
    return info.frames / info.samplerate
