"""What the synthetic corpus is made of: the :class:`CorpusSpec` and its voices.

Kept apart from the builder (:mod:`lib.data.corpus`) so that configs can name a corpus without
importing the audio stack: this module needs nothing but the standard library and
:mod:`lib.errors`. Stage: data. Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from lib.errors import CompanionError

CORPUS_VERSION = 1
"""Bumped when the builder changes what a spec produces (part of the folder hash)."""


ESPEAK_LANGUAGES = (
    "en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan",
    "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
)  # fmt: skip
"""espeak-ng English accents: British, American, RP, Scottish, Lancaster, West Midlands,
Caribbean, New York City."""

ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
)  # fmt: skip
"""espeak-ng voice variants (formant sets): seven male, five female."""

TEST_VOICES = (
    "en-us+m3", "en-us+f2", "en+m6", "en+f4", "en-gb-scotland+m1",
    "en-gb-scotland+f5", "en-gb-x-rp+m5", "en-029+f1", "en-029+m7",
    "en-gb-x-gbclan+f3", "en-gb-x-gbcwmd+m2", "en-us-nyc+m4",
)  # fmt: skip
"""Accent+variant pairs held out for the test split. Every accent and every variant still
occurs in training (in other pairs); these exact voices never do."""


@dataclass(frozen=True)
class CorpusSpec:
    """What :func:`ensure_synthetic_corpus` builds; its hash names the cache folder.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Piper has one voice ("joe"), so it is used for training only; the test split is
    spoken entirely by the held-out espeak-ng voices in ``test_voices``.
    """

    n_train: int = 6000  # the CTC warm start needs this many (2000: 45 % WER); ~2 min
    n_test: int = 200  # a WER to about +-0.02, and quick to evaluate per layer pruned
    min_words: int = 4  # shorter verses carry too little context to transcribe
    max_words: int = 15  # keeps clips under ~6 s: fast encoder and short token sequences
    seed: int = 0  # picks the sentences and voices; same seed, same corpus
    engines: tuple[str, ...] = ("espeak", "piper")  # TTS engines to use
    piper_fraction: float = 0.085  # share of TRAIN spoken by Piper (~500 of 6000): slow
    languages: tuple[str, ...] = ESPEAK_LANGUAGES  # espeak-ng accents
    variants: tuple[str, ...] = ESPEAK_VARIANTS  # espeak-ng voice variants
    test_voices: tuple[str, ...] = TEST_VOICES  # "accent+variant" pairs for test only
    rate_range: tuple[int, int] = (130, 200)  # espeak words/minute (its default is 175)
    pitch_range: tuple[int, int] = (25, 75)  # espeak pitch 0-99 (its default is 50)
    length_scale_range: tuple[float, float] = (0.85, 1.2)  # Piper speed (<1 faster)

    def __post_init__(self) -> None:
        """Check the spec, raising a one-line CompanionError on a bad value."""
        problems = []
        if self.n_train < 0 or self.n_test < 0 or self.n_train + self.n_test == 0:
            problems.append("n_train and n_test must be >= 0 and not both 0")
        if not 1 <= self.min_words <= self.max_words:
            problems.append("need 1 <= min_words <= max_words")
        unknown = set(self.engines) - {"espeak", "piper"}
        if unknown or not self.engines:
            problems.append(f"engines must be among 'espeak', 'piper' (got {self.engines})")
        if not 0.0 <= self.piper_fraction <= 1.0:
            problems.append("piper_fraction must be in [0, 1]")
        if "espeak" not in self.engines and self.n_test > 0:
            problems.append("the test split needs 'espeak' (Piper's one voice is train-only)")
        if "espeak" not in self.engines and self.piper_fraction < 1.0 and self.n_train:
            problems.append("without 'espeak' set piper_fraction=1.0")
        combos = {f"{lang}+{var}" for lang in self.languages for var in self.variants}
        stray = [voice for voice in self.test_voices if voice not in combos]
        if stray:
            problems.append(f"test_voices {stray} are not language+variant pairs")
        if "espeak" in self.engines and self.n_test and not self.test_voices:
            problems.append("test_voices is empty")
        if "espeak" in self.engines and not combos - set(self.test_voices):
            problems.append("no espeak voice is left for training")
        if problems:
            raise CompanionError(f"invalid CorpusSpec: {'; '.join(problems)}")

    @property
    def train_voices(self) -> tuple[str, ...]:
        """espeak-ng ``accent+variant`` pairs used for training (all but the test ones)."""
        held_out = set(self.test_voices)
        return tuple(
            f"{lang}+{var}"
            for lang in self.languages
            for var in self.variants
            if f"{lang}+{var}" not in held_out
        )

    def digest(self) -> str:
        """Short hash of the spec (and builder version) naming its cache folder."""
        payload = asdict(self)
        payload["version"] = CORPUS_VERSION
        blob = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]



SPANISH_LANGUAGES = ("es", "es-419")
"""espeak-ng Spanish accents: Spain, Latin America (its MBROLA voices need MBROLA, which the
Debian archive here does not have)."""

SPANISH_TEST_VOICES = ("es+m3", "es+f2", "es-419+m6", "es-419+f4")
"""Spanish accent+variant pairs held out for the test split, as TEST_VOICES for English."""


@dataclass(frozen=True)
class ParallelSpec:
    """What :func:`lib.data.parallel.ensure_parallel_corpus` builds: verse-aligned English /
    Spanish pairs, spoken in both languages; its hash names the cache folder.

    Explained in chapter 5 (book/05_tasks_and_languages.ipynb). The test verses are never
    among chapter 1's training sentences (``english``) and the training verses never among
    its test sentences, so chapter 1's ASR-only model and chapter 5's multi-task model are
    compared on speech neither trained on.
    """

    n_train: int = 2000  # verse pairs whose speech the multi-task model trains on
    n_test: int = 100  # verse pairs per test set (each task's, in both languages)
    min_words: int = 4  # as chapter 1: both sides of a pair within this range
    max_words: int = 15
    seed: int = 0  # picks the verses and the voices
    languages: tuple[str, ...] = SPANISH_LANGUAGES  # espeak-ng Spanish accents
    variants: tuple[str, ...] = ESPEAK_VARIANTS  # espeak-ng voice variants
    test_voices: tuple[str, ...] = SPANISH_TEST_VOICES  # Spanish "accent+variant", test only
    rate_range: tuple[int, int] = (130, 200)  # espeak words/minute
    pitch_range: tuple[int, int] = (25, 75)  # espeak pitch 0-99
    english: CorpusSpec = CorpusSpec()  # chapter 1's corpus: its voices and its splits

    def __post_init__(self) -> None:
        problems = []
        if self.n_train < 1 or self.n_test < 1:
            problems.append("n_train and n_test must be >= 1")
        if not 1 <= self.min_words <= self.max_words:
            problems.append("need 1 <= min_words <= max_words")
        combos = {f"{lang}+{var}" for lang in self.languages for var in self.variants}
        stray = [v for v in self.test_voices if v not in combos]
        if stray:
            problems.append(f"test_voices {stray} are not language+variant pairs")
        if not combos - set(self.test_voices):
            problems.append("no Spanish voice is left for training")
        if problems:
            raise CompanionError(f"invalid ParallelSpec: {'; '.join(problems)}")

    @property
    def train_voices(self) -> tuple[str, ...]:
        """Spanish ``accent+variant`` pairs used for training (all but the test ones)."""
        held_out = set(self.test_voices)
        return tuple(f"{lang}+{var}" for lang in self.languages for var in self.variants
                     if f"{lang}+{var}" not in held_out)

    def digest(self) -> str:
        """Short hash of the spec (and builder version) naming its cache folder."""
        payload = asdict(self)
        payload["english"] = self.english.digest()
        payload["version"] = PARALLEL_VERSION
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


PARALLEL_VERSION = 1
"""Bumped when the parallel builder changes what a spec produces (part of the folder hash)."""
