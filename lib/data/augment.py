"""Waveform augmentation: what real recordings have and TTS lacks, applied to the training
audio of the synthetic corpus.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb). Stage: data.

==========  ================================================================  =============
name        what it does to one clip                                          range (spec)
==========  ================================================================  =============
``speed``   resampled by a factor: faster and higher, or slower and lower     ``speed_range``
``tempo``   time-stretched, pitch kept (WSOLA: 30 ms frames aligned by        ``tempo_range``
            cross-correlation)
``reverb``  convolved with a room response: a direct path and an              ``rt60_range``
            exponentially decaying noise tail of the drawn RT60 (seconds)
``noise``   white, pink or babble noise (three other training clips) at the   ``snr_range``
            drawn signal-to-noise ratio (dB)
``band``    band-limited: high-pass 300 Hz and low-pass at the drawn cutoff   ``band_range``
            (Hz; 3400 is a telephone)
``gain``    the level moved by the drawn dB, clipped at full scale            ``gain_range``
==========  ================================================================  =============

Each named augmentation is applied to a clip with probability ``augment_prob``, in the order
of the table, its value drawn uniformly from its range; the draws come from a generator seeded
by the corpus seed and the clip's id, so the same spec gives the same audio. Only the
training split is augmented; the test voices stay clean. :func:`augment_corpus` writes the
changed clips beside the clean corpus (``augmented-<digest>/``) and a manifest that mixes
them with the untouched ones, so a new augmentation never re-synthesises the corpus.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from lib.cache import say_once
from lib.clock import track
from lib.data.audio import SAMPLE_RATE, read_audio, write_wav
from lib.data.loaders import cached_manifest, load_manifest, write_manifest
from lib.data.spec import AUGMENTATIONS, CorpusSpec

AUGMENT_VERSION = 2
"""Bumped when an augmentation changes what it writes (part of the folder digest).
2: reverb convolves by FFT (the same sums to float rounding, 30x faster than direct)."""


def speed(wave: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (pitch moves with it): linear-interpolation resampling."""
    n_out = max(1, int(round(len(wave) / factor)))
    return np.interp(np.arange(n_out) * factor, np.arange(len(wave)), wave).astype(np.float32)


def tempo(wave: np.ndarray, factor: float, frame: int = 480, search: int = 160) -> np.ndarray:
    """``factor`` times faster at the same pitch, by waveform-similarity overlap-add.

    Frames of ``frame`` samples (30 ms) are taken every ``frame/2 * factor`` input samples,
    each shifted by up to ``search`` samples to best continue the output written so far
    (cross-correlation), Hann-windowed and overlap-added every ``frame/2`` output samples.
    """
    hop = frame // 2
    window = np.hanning(frame).astype(np.float32)
    padded = np.concatenate([np.zeros(search, np.float32), wave,
                             np.zeros(frame + 2 * search, np.float32)])
    n_frames = max(1, int((len(wave) / factor) // hop))
    out = np.zeros(n_frames * hop + frame, np.float32)
    norm = np.zeros_like(out)
    previous = padded[search:search + frame]
    for k in range(n_frames):
        centre = search + int(k * hop * factor)
        if k:
            target = previous[hop:]  # what the last frame would have continued with
            segment = padded[centre - search:centre + search + hop]
            scores = np.correlate(segment, target, mode="valid")
            centre += int(np.argmax(scores)) - search
        chunk = padded[centre:centre + frame]
        out[k * hop:k * hop + frame] += chunk * window
        norm[k * hop:k * hop + frame] += window
        previous = padded[centre:centre + frame + hop][:frame]
        if len(previous) < frame:
            previous = np.pad(previous, (0, frame - len(previous)))
    keep = int(round(len(wave) / factor))
    return (out / np.maximum(norm, 1e-3))[:keep].astype(np.float32)


def room_response(rt60: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room impulse response: a unit direct path, then Gaussian noise whose
    energy falls by 60 dB in ``rt60`` seconds."""
    n = max(2, int(rt60 * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * 10 ** (-3 * t / rt60) * 0.3
    tail[0] = 1.0
    return (tail / np.sqrt(np.sum(tail ** 2))).astype(np.float32)


def reverb(wave: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with :func:`room_response` (same length, level kept at the input's peak).

    By FFT: a response of up to 0.8 s is 12,800 taps, and the direct sum over a 4 s clip
    took 60 ms, most of what augmenting a corpus cost."""
    from scipy.signal import fftconvolve

    wet = fftconvolve(wave.astype(np.float64), room_response(rt60, rng))[: len(wave)]
    peak = np.max(np.abs(wet)) or 1.0
    return (wet * (np.max(np.abs(wave)) / peak)).astype(np.float32)


def add_noise(wave: np.ndarray, snr_db: float, noise: np.ndarray) -> np.ndarray:
    """Add ``noise`` (tiled or cut to length) scaled to ``snr_db`` below the clip's power."""
    noise = np.resize(noise, len(wave)).astype(np.float64)
    p_sig = np.mean(wave.astype(np.float64) ** 2) or 1e-12
    p_noise = np.mean(noise ** 2) or 1e-12
    scale = np.sqrt(p_sig / (p_noise * 10 ** (snr_db / 10)))
    return (wave + scale * noise).astype(np.float32)


def pink(n: int, rng: np.random.Generator) -> np.ndarray:
    """Pink (1/f power) noise: white noise shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    return np.fft.irfft(spectrum, n).astype(np.float32)


def band_limit(wave: np.ndarray, cutoff: float, low: float = 300.0) -> np.ndarray:
    """Keep ``low`` to ``cutoff`` Hz (brick-wall in the frequency domain)."""
    spectrum = np.fft.rfft(wave)
    freqs = np.fft.rfftfreq(len(wave), 1 / SAMPLE_RATE)
    spectrum[(freqs < low) | (freqs > cutoff)] = 0
    return np.fft.irfft(spectrum, len(wave)).astype(np.float32)


def gain(wave: np.ndarray, db: float) -> np.ndarray:
    """Move the level by ``db`` decibels, clipped at full scale."""
    return np.clip(wave * 10 ** (db / 20), -1.0, 1.0).astype(np.float32)


def clip_rng(seed: int, utt_id: str) -> np.random.Generator:
    """The generator of one clip's draws: by corpus seed and clip id, never by order."""
    return np.random.default_rng(int(hashlib.sha256(f"{seed}:{utt_id}".encode())
                                     .hexdigest()[:16], 16))


def augment_clip(wave: np.ndarray, spec: CorpusSpec, rng: np.random.Generator,
                 others: Sequence[str] = ()) -> tuple[np.ndarray, list[str]]:
    """Apply ``spec.augment`` to one clip: each with probability ``spec.augment_prob``;
    babble noise is three of ``others`` (audio paths), drawn by ``rng``.

    Returns:
        The clip and what was done to it, e.g. ``["speed 1.07", "noise pink 12.0 dB"]``.
    """
    done: list[str] = []
    for name in AUGMENTATIONS:
        if name not in spec.augment or rng.random() >= spec.augment_prob:
            continue
        value = float(rng.uniform(*getattr(spec, AUGMENTATIONS[name])))
        if name == "speed":
            wave = speed(wave, value)
        elif name == "tempo":
            wave = tempo(wave, value)
        elif name == "reverb":
            wave = reverb(wave, value, rng)
        elif name == "noise":
            kind = ["white", "pink", "babble"][int(rng.integers(3 if others else 2))]
            if kind == "babble":
                picked = rng.integers(len(others), size=3)
                noise = np.sum([np.resize(read_audio(others[int(i)]), len(wave))
                                for i in picked], axis=0)
            else:
                noise = (rng.standard_normal(len(wave)) if kind == "white"
                         else pink(len(wave), rng))
            wave = add_noise(wave, value, noise)
            name = f"noise {kind}"
        elif name == "band":
            wave = band_limit(wave, value)
        else:
            wave = gain(wave, value)
        done.append(f"{name} {value:.2f}")
    return wave, done


def augment_digest(spec: CorpusSpec) -> str:
    """Names the folder of one augmentation of one corpus."""
    payload = {"corpus": spec.digest(), "augment": spec.augment_settings(),
               "version": AUGMENT_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def augment_corpus(manifest: Path, spec: CorpusSpec) -> Path:
    """The training clips of ``manifest`` augmented by ``spec`` (once), as a new manifest.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Written beside the clean corpus as ``augmented-<digest>/manifest.jsonl`` with the changed
    clips under ``wavs/`` and ``log.jsonl`` (what was done to each); a clip that nothing
    changed keeps its clean path. Interrupt-safe: each wav appears complete under its name,
    the manifest last. Without ``spec.augment`` the clean manifest itself is returned.
    """
    if not spec.augment:
        return manifest
    folder = manifest.parent / f"augmented-{augment_digest(spec)}"
    out = folder / "manifest.jsonl"
    utts = load_manifest(manifest)
    if cached_manifest(out, len(utts)) is not None:
        say_once(f"augmented corpus: cached ({folder.name})")
        return out
    start = time.perf_counter()
    others = [u.audio for u in utts if u.split == "train"]
    result, log = [], []
    for utt in track(utts, total=len(utts), desc="augmenting", unit="utt"):
        if utt.split != "train":
            result.append(utt)
            continue
        wave, done = augment_clip(read_audio(utt.audio), spec, clip_rng(spec.seed, utt.id),
                                  others)
        if not done:
            result.append(utt)
            continue
        path = folder / "wavs" / f"{utt.id}.wav"
        duration = write_wav(path, np.clip(wave, -1, 1), SAMPLE_RATE)
        result.append(replace(utt, audio=str(path), duration=duration))
        log.append(json.dumps({"id": utt.id, "done": done}))
    (folder / "log.jsonl").write_text("".join(line + "\n" for line in log))
    write_manifest(out, result)
    print(f"augmented corpus: {len(log)} of {len(others)} training clips changed in "
          f"{time.perf_counter() - start:.0f} s -> {folder}")
    return out
