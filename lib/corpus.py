"""The offline synthetic ASR corpus: World English Bible sentences read by TTS voices.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

No speech corpus can be downloaded here, so the book builds one: English sentences from
the World English Bible (public domain, read with ``diatheke``) spoken by espeak-ng with
many accent and voice variants, plus Piper's natural "joe" voice for part of the training
set. Test voices never appear in training, so a test score measures generalisation to an
unseen voice, not memorisation of one.
"""

from __future__ import annotations

import html
import json
import multiprocessing
import os
import random
import re
import shutil
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lib.data import (
    SAMPLE_RATE,
    Utterance,
    audio_duration,
    load_manifest,
    write_manifest,
    write_wav,
)
from lib.corpus_spec import CORPUS_VERSION, CorpusSpec
from lib.errors import CompanionError
from lib.paths import cache_subdir

BIBLE_MODULE = "engWEB2015eb"
"""SWORD module of the World English Bible installed by Debian's ``sword-text-web``."""

APT_PACKAGES = ("espeak-ng", "diatheke", "sword-text-web")
"""Debian packages the synthetic corpus needs."""

BIBLE_BOOKS = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges",
    "Ruth", "1 Samuel", "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles",
    "2 Chronicles", "Ezra", "Nehemiah", "Esther", "Job", "Psalms", "Proverbs",
    "Ecclesiastes", "Song of Solomon", "Isaiah", "Jeremiah", "Lamentations",
    "Ezekiel", "Daniel", "Hosea", "Joel", "Amos", "Obadiah", "Jonah", "Micah",
    "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah", "Malachi", "Matthew",
    "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians", "2 Corinthians",
    "Galatians", "Ephesians", "Philippians", "Colossians", "1 Thessalonians",
    "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews",
    "James", "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude",
    "Revelation",
)  # fmt: skip
"""The 66 books exported one by one (one diatheke call for a long range stops early)."""

def voice_family(voice: str) -> str:
    """The speaker identity of a voice id, without per-utterance rate/pitch.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        voice: e.g. ``"espeak:en-us+m3:r160:p40"`` or ``"piper:joe"``.

    Returns:
        e.g. ``"espeak:en-us+m3"`` or ``"piper:joe"``.
    """
    return ":".join(voice.split(":")[:2])


# --------------------------------------------------------------------------- system tools


def _missing_tools() -> list[str]:
    """Debian packages among :data:`APT_PACKAGES` that are not usable now."""
    missing = []
    if shutil.which("espeak-ng") is None:
        missing.append("espeak-ng")
    if shutil.which("diatheke") is None:
        missing.append("diatheke")
        missing.append("sword-text-web")
    elif not _bible_available():
        missing.append("sword-text-web")
    return missing


def _bible_available() -> bool:
    """Whether diatheke can read Genesis 1:1 from the World English Bible."""
    result = subprocess.run(
        ["diatheke", "-b", BIBLE_MODULE, "-f", "plain", "-k", "Genesis 1:1"],
        capture_output=True,
        text=True,
    )
    return "beginning" in result.stdout


def ensure_system_tools() -> None:
    """Make sure espeak-ng, diatheke and the World English Bible are installed.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    When something is missing and we run as root with apt-get, installs
    ``espeak-ng diatheke sword-text-web`` (running ``apt-get update`` first if the plain
    install fails). Otherwise raises an error naming the command to run.

    Raises:
        CompanionError: A tool is missing and cannot be installed from here.
    """
    missing = _missing_tools()
    if not missing:
        return
    command = f"apt-get install -y -q {' '.join(APT_PACKAGES)}"
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not is_root or shutil.which("apt-get") is None:
        raise CompanionError(
            f"missing {', '.join(missing)}: install with `sudo {command}` (Debian/Ubuntu)"
        )
    args = ["apt-get", "install", "-y", "-q", *APT_PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {' '.join(APT_PACKAGES)} with apt-get ...")
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        result = subprocess.run(args, capture_output=True, text=True, env=env)
    missing = _missing_tools()
    if result.returncode != 0 or missing:
        detail = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise CompanionError(
            f"could not install {', '.join(missing or APT_PACKAGES)} ({detail}): "
            f"run `{command}` yourself"
        )


def _require_espeak() -> None:
    """Raise a CompanionError when espeak-ng is not on PATH."""
    if shutil.which("espeak-ng") is None:
        raise CompanionError(
            "espeak-ng not found: install it with `apt-get install espeak-ng` "
            "(Debian/Ubuntu), or call lib.corpus.ensure_system_tools() as root"
        )


def _require_bible() -> None:
    """Raise a CompanionError when diatheke or the WEB module is missing."""
    if shutil.which("diatheke") is None or not _bible_available():
        raise CompanionError(
            "diatheke or the World English Bible module not found: install them with "
            "`apt-get install diatheke sword-text-web` (Debian/Ubuntu)"
        )


# --------------------------------------------------------------------------- text

_VERSE_PREFIX = re.compile(r"^(.*?) \d+:\d+: ")
_TAG = re.compile(r"<[^>]*>")
_SPEAKER_LABEL = re.compile(r"\s{2,}(?:<w>)?(?:Beloved|Lover|Friends)(?:</w>)?\s{2,}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_ALLOWED = re.compile(r"^[A-Za-z][A-Za-z ,.;:!?'-]*$")


def _export_book(book: str) -> list[tuple[int, str]]:
    """One book of the WEB as (chapter, verse text with markup removed) pairs.

    OSIS output keeps each word in a ``<w>`` element; the plain format drops the markup
    but glues neighbouring words ("Godcreated"). Here every tag becomes a space.
    """
    result = subprocess.run(
        ["diatheke", "-b", BIBLE_MODULE, "-f", "OSIS", "-k", book],
        capture_output=True,
        text=True,
    )
    lines = result.stdout.splitlines()
    label = _VERSE_PREFIX.match(lines[0]) if lines else None
    if result.returncode != 0 or label is None:
        raise CompanionError(
            f"diatheke returned no text for {book!r} of {BIBLE_MODULE}: reinstall it with "
            "`apt-get install --reinstall diatheke sword-text-web`"
        )
    verse = re.compile(re.escape(label.group(1)) + r" (\d+):(\d+): (.*)$")
    verses = []
    for line in lines:
        match = verse.search(line)  # text before the label is a psalm title: dropped
        if not match:
            continue
        raw = re.split(r" {8,}", match.group(3))[0]  # the glossary after Rev 22:21
        raw = _SPEAKER_LABEL.sub(" ", raw)  # Song of Solomon speaker headings
        raw = re.sub(r"<note\b.*?</note>|<title\b.*?</title>", " ", raw)
        verses.append((int(match.group(1)), html.unescape(_TAG.sub(" ", raw))))
    return verses


def clean_text(text: str) -> str:
    """Normalise Bible text into a plain transcript a TTS engine reads as written.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Curly quotes become ASCII; quotation marks are dropped (they are not spoken) while
    apostrophes inside words stay ("God's", "don't"); dashes become commas; brackets go;
    spaces before punctuation go and one space follows it, so words never glue.

    Args:
        text: Verse text with markup already removed.

    Returns:
        The cleaned text on one line.
    """
    text = text.translate(str.maketrans("\u2018\u2019\u201c\u201d", "''\"\""))
    text = re.sub(r"(?<=[A-Za-z])'(?=[A-Za-z])", "\x00", text)
    text = text.replace("'", " ").replace('"', " ").replace("\x00", "'")
    text = re.sub(r"\s*[\u2014\u2013]\s*", ", ", text)
    text = re.sub(r"[()\[\]{}]", " ", text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    text = re.sub(r"[,;:]\s*([.!?])", r"\1", text)
    text = re.sub(r"([,.;:!?])(?=[A-Za-z])", r"\1 ", text)
    return text.strip()


def bible_sentences() -> list[str]:
    """All cleaned sentences of the World English Bible (66 books), in canonical order.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Exported book by book with diatheke, chapters joined and split into sentences, so a
    sentence that spans verses stays whole. Cached in ``<cache>/corpora/web-sentences.txt``.

    Returns:
        Sentences containing only letters, spaces, apostrophes, hyphens and ``,.;:!?``.
    """
    cache = cache_subdir("corpora") / "web-sentences.txt"
    if cache.is_file() and cache.stat().st_size > 0:
        return cache.read_text(encoding="utf-8").splitlines()
    _require_bible()
    with ThreadPoolExecutor(max_workers=4) as pool:
        books = list(
            tqdm(
                pool.map(_export_book, BIBLE_BOOKS),
                total=len(BIBLE_BOOKS),
                desc="World English Bible",
                unit="book",
            )
        )
    sentences: list[str] = []
    for verses in books:
        chapters: dict[int, list[str]] = {}
        for chapter, text in verses:
            chapters.setdefault(chapter, []).append(text)
        for texts in chapters.values():
            for sentence in _SENTENCE_END.split(clean_text(" ".join(texts))):
                sentence = re.sub(r"^[\s,.;:!?-]+", "", sentence).strip()
                sentence = re.sub(r"[,;:-]+$", ".", sentence)
                if sentence and _ALLOWED.match(sentence):
                    sentences.append(sentence[0].upper() + sentence[1:])
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f".{cache.name}.partial")
    partial.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    os.replace(partial, cache)
    return sentences


def _text_key(text: str) -> str:
    """Comparison key: lower-case letters and spaces only."""
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def select_texts(spec: CorpusSpec) -> tuple[list[str], list[str]]:
    """Pick disjoint train and test sentences for a spec.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Sentences of ``min_words..max_words`` words, de-duplicated (ignoring case and
    punctuation), shuffled with ``spec.seed``; the first ``n_test`` go to test, the next
    ``n_train`` to train.

    Args:
        spec: The corpus spec.

    Returns:
        (train texts, test texts).

    Raises:
        CompanionError: The Bible has too few sentences of that length.
    """
    unique: dict[str, str] = {}
    for sentence in bible_sentences():
        if spec.min_words <= len(sentence.split()) <= spec.max_words:
            unique.setdefault(_text_key(sentence), sentence)
    texts = list(unique.values())
    need = spec.n_train + spec.n_test
    if need > len(texts):
        raise CompanionError(
            f"only {len(texts)} sentences of {spec.min_words}-{spec.max_words} words, "
            f"{need} requested: lower n_train/n_test or widen the word range"
        )
    random.Random(spec.seed).shuffle(texts)
    return texts[spec.n_test : need], texts[: spec.n_test]


# --------------------------------------------------------------------------- synthesis


@dataclass(frozen=True)
class _Job:
    """One utterance to synthesise."""

    id: str
    text: str
    split: str
    engine: str  # "espeak" or "piper"
    voice: str  # espeak "accent+variant"; "joe" for piper
    rate: int = 0  # espeak words per minute
    pitch: int = 0  # espeak pitch
    length_scale: float = 1.0  # piper

    @property
    def voice_id(self) -> str:
        """The Utterance.voice string."""
        if self.engine == "piper":
            return f"piper:{self.voice}"
        return f"espeak:{self.voice}:r{self.rate}:p{self.pitch}"


def plan_jobs(spec: CorpusSpec, train: list[str], test: list[str]) -> list[_Job]:
    """Assign engine, voice, rate and pitch to each text, deterministically by seed.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    espeak voices are dealt round-robin from a shuffled list so each appears about equally
    often; test utterances only get ``spec.test_voices``, train ones only the rest.

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
    piper_rows = set(rng.sample(range(len(train)), n_piper))
    jobs = []
    for split, texts, voices in (
        ("test", test, list(spec.test_voices)),
        ("train", train, list(spec.train_voices)),
    ):
        rng.shuffle(voices)
        dealt = 0
        for index, text in enumerate(texts):
            job_id = f"{split}-{index:05d}"
            if split == "train" and index in piper_rows:
                scale = round(rng.uniform(*spec.length_scale_range), 2)
                jobs.append(_Job(job_id, text, split, "piper", "joe", length_scale=scale))
                continue
            voice = voices[dealt % len(voices)]
            dealt += 1
            rate = rng.randint(*spec.rate_range)
            pitch = rng.randint(*spec.pitch_range)
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


_PIPER_VOICES: dict[str, Any] = {}
"""Piper voices loaded in this (worker) process, by folder."""


def _synthesise(args: tuple[_Job, str, str]) -> tuple[str, float]:
    """Pool worker: synthesise one job into ``path`` (reused when already there).

    Args:
        args: (job, destination wav, Piper voice folder or "").

    Returns:
        (job id, duration in seconds).
    """
    job, path, piper_dir = args
    if os.path.isfile(path):
        return job.id, audio_duration(path)
    if job.engine == "piper":
        if piper_dir not in _PIPER_VOICES:
            _PIPER_VOICES[piper_dir] = _load_piper(Path(piper_dir))
        samples, rate = _piper_audio(_PIPER_VOICES[piper_dir], job)
    else:
        samples, rate = _espeak_audio(job)
    return job.id, write_wav(path, samples, rate)


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


def _load_piper(folder: Path) -> Any:
    """Load the Piper voice in ``folder`` on CPU with one onnxruntime thread.

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
        :func:`lib.data.load_manifest`).

    Raises:
        CompanionError: espeak-ng, diatheke or the Bible module is missing.
    """
    spec = spec or CorpusSpec()
    folder = cache_subdir("corpora", f"synthetic-{spec.digest()}")
    manifest = folder / "manifest.jsonl"
    expected = spec.n_train + spec.n_test
    if manifest.is_file():
        utts = load_manifest(manifest)
        if len(utts) == expected:
            print(f"synthetic corpus: cached ({len(utts)} utterances)")
            return manifest
    if "espeak" in spec.engines:
        _require_espeak()
    start = time.perf_counter()
    train, test = select_texts(spec)
    jobs = plan_jobs(spec, train, test)
    spec_file = {**asdict(spec), "version": CORPUS_VERSION}
    (folder / "spec.json").write_text(json.dumps(spec_file, indent=1) + "\n")
    wavs = folder / "wavs"
    wavs.mkdir(exist_ok=True)
    paths = {job.id: str(wavs / f"{job.id}.wav") for job in jobs}
    durations: dict[str, float] = {}

    piper_dir = ""
    if any(job.engine == "piper" for job in jobs):
        piper_dir = str(piper_voice_dir())
    # Slow Piper jobs first so both cores stay busy until the end.
    order = sorted(jobs, key=lambda job: job.engine != "piper")
    work = [(job, paths[job.id], piper_dir) for job in order]
    workers = max(1, min(os.cpu_count() or 1, len(work)))
    with multiprocessing.get_context().Pool(workers) as pool:
        results = pool.imap_unordered(_synthesise, work, chunksize=2)
        desc = "espeak-ng + piper" if piper_dir else "espeak-ng"
        for job_id, seconds in tqdm(results, total=len(work), desc=desc, unit="utt"):
            durations[job_id] = seconds

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
    return manifest


__all__ = [
    "SAMPLE_RATE",
    "CorpusSpec",
    "bible_sentences",
    "clean_text",
    "ensure_synthetic_corpus",
    "ensure_system_tools",
    "piper_voice_dir",
    "plan_jobs",
    "select_texts",
    "voice_family",
]


if __name__ == "__main__":  # pragma: no cover - manual build: python -m lib.corpus
    ensure_synthetic_corpus(CorpusSpec())
