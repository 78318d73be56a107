"""The offline synthetic ASR corpus: World English Bible sentences read by TTS voices.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb). Stage: data.

No speech corpus can be downloaded here, so the book builds one: English sentences from
the World English Bible (public domain, read with ``diatheke``, see :mod:`lib.data.text`)
spoken by espeak-ng with many accent and voice variants, plus Piper's natural "joe" voice
for part of the training set. Test voices never appear in training, so a test score
measures generalisation to an unseen voice, not memorisation of one.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import shutil
import struct
import subprocess
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lib.cache import say_once
from lib.clock import stage, track
from lib.data.augment import augment_corpus
from lib.data.spec import CORPUS_VERSION, CorpusSpec
from lib.data.audio import audio_duration, write_wav
from lib.data.loaders import Utterance, cached_manifest, write_manifest
from lib.data.text import require_espeak, require_flite, select_texts
from lib.errors import CompanionError
from lib.paths import cache_subdir


def voice_family(voice: str) -> str:
    """The speaker identity of a voice id, without per-utterance rate/pitch.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        voice: e.g. ``"espeak:en-us+m3:r160:p40"`` or ``"piper:joe"``.

    Returns:
        e.g. ``"espeak:en-us+m3"`` or ``"piper:joe"``.
    """
    return ":".join(voice.split(":")[:2])


# --------------------------------------------------------------------------- synthesis


@dataclass(frozen=True)
class _Job:
    """One utterance to synthesise."""

    id: str
    text: str
    split: str
    engine: str  # "espeak", "piper" or "flite"
    voice: str  # espeak "accent+variant"; "joe" for piper; a flite voice
    rate: int = 0  # espeak words per minute
    pitch: int = 0  # espeak pitch
    length_scale: float = 1.0  # piper

    @property
    def voice_id(self) -> str:
        """The Utterance.voice string."""
        if self.engine in ("piper", "flite"):
            return f"{self.engine}:{self.voice}"
        return f"espeak:{self.voice}:r{self.rate}:p{self.pitch}"


def plan_jobs(spec: CorpusSpec, train: list[str], test: list[str]) -> list[_Job]:
    """Assign engine, voice, rate and pitch to each text, deterministically by seed.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Test utterances only get ``spec.test_voices``, dealt round-robin from a shuffled list so
    each appears about equally often; train ones only the rest. A training sentence's voice,
    rate and pitch (or Piper's length scale) are drawn by a generator seeded by the sentence
    itself, so a sentence sounds the same in every corpus of the same seed: a lever's corpus
    (:mod:`lib.recipes.levers`) shares those clips, byte for byte, with the clean one, and
    their features with it.

    Args:
        spec: The corpus spec.
        train: Train texts.
        test: Test texts.

    Returns:
        One job per text, test first.
    """
    rng = random.Random(f"voices-{spec.seed}")
    n_piper = 0
    if "piper" in spec.engines:
        n_piper = round(spec.piper_fraction * len(train))
    n_flite = round(spec.flite_fraction * len(train))
    piper_rows = set(rng.sample(range(len(train)), n_piper))
    if n_flite:  # drawn after Piper's, so a corpus without flite is what it always was
        rest = [i for i in range(len(train)) if i not in piper_rows]
        flite_rows = set(random.Random(f"flite-{spec.seed}").sample(rest, n_flite))
    else:
        flite_rows = set()
    jobs = []
    for split, texts, voices in (
        ("test", test, list(spec.test_voices)),
        ("train", train, list(spec.train_voices)),
    ):
        rng.shuffle(voices)
        dealt = 0
        for index, text in enumerate(texts):
            job_id = f"{split}-{index:05d}"
            own = rng if split == "test" else random.Random(f"clip-{spec.seed}-{text}")
            if split == "train" and index in piper_rows:
                scale = round(own.uniform(*spec.length_scale_range), 2)
                jobs.append(_Job(job_id, text, split, "piper", "joe", length_scale=scale))
                continue
            if split == "train" and index in flite_rows:
                flite_voice = spec.flite_voices[index % len(spec.flite_voices)]
                jobs.append(_Job(job_id, text, split, "flite", flite_voice))
                continue
            if split == "test":
                voice = voices[dealt % len(voices)]
                dealt += 1
            else:
                voice = own.choice(spec.train_voices)
            rate = own.randint(*spec.rate_range)
            pitch = own.randint(*spec.pitch_range)
            jobs.append(_Job(job_id, text, split, "espeak", voice, rate, pitch))
    return jobs


def _espeak_audio(job: _Job) -> tuple[np.ndarray, int]:
    """Run espeak-ng for one job; returns int16 samples and their rate."""
    result = subprocess.run(
        ["espeak-ng", "-v", job.voice, "-s", str(job.rate), "-p", str(job.pitch),
         "--stdout"],
        input=job.text.encode(),
        capture_output=True,
    )  # fmt: skip
    wav = result.stdout
    if result.returncode != 0 or len(wav) <= 44 or wav[:4] != b"RIFF":
        detail = result.stderr.decode(errors="replace").strip()[:200]
        raise CompanionError(f"espeak-ng failed for voice {job.voice}: {detail}")
    # Header sizes are bogus when streaming to stdout; the rate and 44-byte header are not.
    rate = struct.unpack("<I", wav[24:28])[0]
    samples = np.frombuffer(wav[44 : 44 + (len(wav) - 44) // 2 * 2], dtype="<i2")
    return samples, rate


def _flite_audio(job: _Job, path: str) -> tuple[np.ndarray, int]:
    """Run flite for one job (into a file beside ``path``); int16 samples and their rate."""
    temp = f"{path}.flite.wav"
    result = subprocess.run(["flite", "-voice", job.voice, "-t", job.text, "-o", temp],
                            capture_output=True)
    if result.returncode != 0 or not os.path.isfile(temp):
        detail = result.stderr.decode(errors="replace").strip()[:200]
        raise CompanionError(f"flite failed for voice {job.voice}: {detail}")
    import soundfile as sf

    samples, rate = sf.read(temp, dtype="int16")
    os.unlink(temp)
    return samples, rate


PIPER_GROUP = 16
"""Piper's jobs are spoken in groups of this many, sorted by id, each by a session of its own
seeded by the group (:func:`_speak_piper`): Piper's VITS draws noise on every call, so a
clip's audio is fixed only by the seed of its session and the clips spoken before it."""


def _group_seed(jobs: tuple[_Job, ...]) -> int:
    """The seed of a group of Piper jobs: fixed by their ids and texts, nothing else."""
    key = "\n".join(f"{job.id}\t{job.text}\t{job.length_scale}" for job in jobs)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")


def _speak_piper(jobs: tuple[_Job, ...], paths: tuple[str, ...], piper_dir: str
                 ) -> list[tuple[str, float]]:
    """Speak a group of Piper jobs in order with a session seeded by :func:`_group_seed`;
    a wav already there is kept, but its job is still spoken (and thrown away) so that the
    clips after it draw the same noise as in an uninterrupted build."""
    if all(os.path.isfile(path) for path in paths):
        return [(job.id, audio_duration(path)) for job, path in zip(jobs, paths)]
    voice = _load_piper(Path(piper_dir), seed=_group_seed(jobs))
    out = []
    for job, path in zip(jobs, paths):
        samples, rate = _piper_audio(voice, job)
        seconds = audio_duration(path) if os.path.isfile(path) else write_wav(path, samples, rate)
        out.append((job.id, seconds))
    return out


def _synthesise(args: tuple[tuple[_Job, ...], tuple[str, ...], str]) -> list[tuple[str, float]]:
    """Pool worker: synthesise one work item (a Piper group, or one job of another engine)
    into its paths (a wav already there is reused).

    Args:
        args: (jobs, destination wavs, Piper voice folder or "").

    Returns:
        (job id, duration in seconds) per job.
    """
    jobs, paths, piper_dir = args
    if jobs[0].engine == "piper":
        return _speak_piper(jobs, paths, piper_dir)
    (job,), (path,) = jobs, paths
    if os.path.isfile(path):
        return [(job.id, audio_duration(path))]
    if job.engine == "flite":
        samples, rate = _flite_audio(job, path)
    else:
        samples, rate = _espeak_audio(job)
    return [(job.id, write_wav(path, samples, rate))]


def piper_voice_dir() -> Path:
    """Folder holding Piper's ``en_US-joe-medium.onnx`` and its ``.onnx.json``.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    ``$COMPANION_PIPER_VOICE`` overrides it; otherwise ``lib.assets.ensure_model``.

    Returns:
        The folder.
    """
    override = os.environ.get("COMPANION_PIPER_VOICE")
    if override:
        return Path(override)
    from lib.assets import ensure_model

    return Path(ensure_model("piper-joe"))


def _load_piper(folder: Path, seed: int = 0) -> Any:
    """Load the Piper voice in ``folder`` on CPU with one onnxruntime thread, its random
    draws seeded by ``seed`` (onnxruntime seeds a session's random operators when it is
    created, so the seed is set just before).

    One thread per process: the pool runs one process per core, and onnxruntime's default
    thread pool made Piper about 2x slower on a busy 2-core machine.
    """
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    models = sorted(folder.glob("*.onnx"))
    if not models or not Path(f"{models[0]}.json").is_file():
        raise CompanionError(
            f"no Piper voice (*.onnx + *.onnx.json) in {folder}: rerun the setup step"
        )
    onnxruntime.set_seed(int(seed))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    config = json.loads(Path(f"{models[0]}.json").read_text(encoding="utf-8"))
    return PiperVoice(
        config=PiperConfig.from_dict(config),
        session=onnxruntime.InferenceSession(
            str(models[0]), sess_options=options, providers=["CPUExecutionProvider"]
        ),
    )


def _piper_audio(voice: Any, job: _Job) -> tuple[np.ndarray, int]:
    """Synthesise one job with a loaded Piper voice; returns float32 samples and rate."""
    from piper import SynthesisConfig

    config = SynthesisConfig(length_scale=job.length_scale)
    chunks = [chunk.audio_float_array for chunk in voice.synthesize(job.text, config)]
    rate = int(voice.config.sample_rate)
    pause = np.zeros(int(0.2 * rate), dtype=np.float32)  # between sentences
    pieces: list[np.ndarray] = []
    for chunk in chunks:
        pieces.extend([pause, chunk] if pieces else [chunk])
    if not pieces:
        raise CompanionError(f"Piper produced no audio for {job.id}: {job.text!r}")
    return np.concatenate(pieces).astype(np.float32), rate


def clip_key(job: _Job) -> str | None:
    """What fixes a clip's audio, for the deterministic engines (espeak-ng, flite): engine,
    voice, rate, pitch and text, whatever the clip's id or corpus (None for Piper, whose
    clip depends on its group: :data:`PIPER_GROUP`)."""
    if job.engine == "piper":
        return None
    key = f"{CORPUS_VERSION}|{job.engine}|{job.voice}|{job.rate}|{job.pitch}|{job.text}"
    return hashlib.sha256(key.encode()).hexdigest()[:24]


CLIPS_FILE = "clips.json"
"""Beside each built corpus's manifest: :func:`clip_key` -> wav file name."""


def spoken_clips(corpora: Path, but: Path) -> dict[str, Path]:
    """Every clip another built corpus under ``corpora`` has spoken, by :func:`clip_key`
    (from their :data:`CLIPS_FILE`; a damaged one is skipped)."""
    found: dict[str, Path] = {}
    for index in sorted(corpora.glob(f"synthetic-*/{CLIPS_FILE}")):
        if index.parent == but:
            continue
        try:
            names = json.loads(index.read_text())
        except (OSError, ValueError):
            continue
        found.update({k: index.parent / "wavs" / name for k, name in names.items()})
    return found


def borrow(jobs: list[_Job], paths: dict[str, str], donors: dict[str, Path]) -> int:
    """Link each job's wav to the same clip another corpus spoke (a hard link, else a copy:
    the file appears whole under its name); returns how many."""
    n = 0
    for job in jobs:
        key, path = clip_key(job), paths[job.id]
        donor = donors.get(key) if key else None
        if donor is None or os.path.isfile(path) or not donor.is_file():
            continue
        try:
            os.link(donor, path)
        except OSError:
            shutil.copyfile(donor, f"{path}.part")
            os.replace(f"{path}.part", path)
        n += 1
    return n


def synthesise(jobs: list[_Job], wavs: Path, donors: dict[str, Path] | None = None
               ) -> tuple[dict[str, str], dict[str, float]]:
    """Speak every job into ``wavs/<id>.wav`` on a process pool over all cores (a wav
    already there is reused, and a clip another corpus spoke, ``donors`` by
    :func:`clip_key`, is linked rather than spoken again); the paths and durations by job id.

    Piper's jobs are spoken in groups of :data:`PIPER_GROUP` (sorted by id, each group by a
    session seeded by its jobs), so a clip is the same whatever worker speaks it and whether
    or not the build was interrupted; slow Piper groups go first, so both cores stay busy
    until the end.
    """
    wavs.mkdir(parents=True, exist_ok=True)
    paths = {job.id: str(wavs / f"{job.id}.wav") for job in jobs}
    if donors:
        n = borrow(jobs, paths, donors)
        if n:
            print(f"{n} of {len(jobs)} clips already spoken by another corpus: linked")
    durations: dict[str, float] = {}
    piper_dir = ""
    if any(job.engine == "piper" for job in jobs):
        piper_dir = str(piper_voice_dir())
    piper = sorted((job for job in jobs if job.engine == "piper"), key=lambda job: job.id)
    groups = [tuple(piper[i:i + PIPER_GROUP]) for i in range(0, len(piper), PIPER_GROUP)]
    groups += [(job,) for job in jobs if job.engine != "piper"]
    work = [(group, tuple(paths[job.id] for job in group), piper_dir) for group in groups]
    workers = max(1, min(os.cpu_count() or 1, len(work)))
    with multiprocessing.get_context().Pool(workers) as pool:
        results = pool.imap_unordered(_synthesise, work, chunksize=2)
        desc = "espeak-ng + piper" if piper_dir else "espeak-ng"
        for done in track(results, total=len(work), desc=desc, unit="job"):
            durations.update(done)
    return paths, durations


@stage("corpus")
def ensure_synthetic_corpus(spec: CorpusSpec | None = None) -> Path:
    """Build (once) the synthetic ASR corpus for a spec and return its manifest.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Texts: World English Bible sentences of ``min_words..max_words`` words, train and test
    disjoint. Audio: espeak-ng (accent+variant voices, random rate and pitch; test voices
    held out) on a process pool over all cores, and Piper's joe voice (length scale varied)
    for ``piper_fraction`` of the training set; Piper's single voice is train-only. Written
    as 16 kHz mono 16-bit wav into ``<cache>/corpora/synthetic-<hash>/wavs/``.

    Interrupt-safe: each wav appears under its final name only when complete and is reused
    on a rerun; the manifest is written last, atomically. When it exists the call returns
    at once.

    Args:
        spec: What to build; the default spec when None (2000 train + 200 test).

    Returns:
        ``<cache>/corpora/synthetic-<hash>/manifest.jsonl`` (load it with
        :func:`lib.data.loaders.load_manifest`).

    Raises:
        CompanionError: espeak-ng, diatheke or the Bible module is missing.
    """
    spec = spec or CorpusSpec()
    folder = cache_subdir("corpora", f"synthetic-{spec.digest()}")
    manifest = folder / "manifest.jsonl"
    expected = spec.n_train + spec.n_test
    utts = cached_manifest(manifest, expected)
    if utts is not None:
        say_once(f"synthetic corpus: cached ({len(utts)} utterances)")
        return augment_corpus(manifest, spec)
    if "espeak" in spec.engines:
        require_espeak()
    if spec.flite_fraction > 0:
        require_flite()
    start = time.perf_counter()
    train, test = select_texts(spec)
    jobs = plan_jobs(spec, train, test)
    spec_file = {**asdict(replace(spec, augment=())), "version": CORPUS_VERSION}
    (folder / "spec.json").write_text(json.dumps(spec_file, indent=1) + "\n")
    paths, durations = synthesise(jobs, folder / "wavs", spoken_clips(folder.parent, folder))
    (folder / CLIPS_FILE).write_text(json.dumps(
        {clip_key(job): Path(paths[job.id]).name for job in jobs if clip_key(job)}))
    utts = [
        Utterance(
            id=job.id,
            audio=paths[job.id],
            text=job.text,
            duration=durations[job.id],
            voice=job.voice_id,
            split=job.split,
            source=f"synthetic-{job.engine}",
        )
        for job in jobs
    ]
    write_manifest(manifest, utts)
    hours = sum(utt.duration for utt in utts) / 3600
    print(
        f"synthetic corpus: built {len(utts)} utterances ({hours:.2f} h of audio) "
        f"in {time.perf_counter() - start:.0f} s -> {folder}"
    )
    return augment_corpus(manifest, spec)


if __name__ == "__main__":  # pragma: no cover - manual build: python -m lib.data.corpus
    ensure_synthetic_corpus(CorpusSpec())
