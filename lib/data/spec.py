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

CORPUS_VERSION = 2
"""Bumped when the builder changes what a spec produces (part of the folder hash). 2: Piper
speaks its clips in seeded groups (:data:`lib.data.corpus.PIPER_GROUP`), so every build of
a spec holds the same audio; a training sentence's voice is drawn by a generator seeded by
the sentence (:func:`lib.data.corpus.plan_jobs`), so corpora share their common clips."""


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


AUGMENTATIONS = {
    "speed": "speed_range", "tempo": "tempo_range", "reverb": "rt60_range",
    "noise": "snr_range", "band": "band_range", "gain": "gain_range",
}  # fmt: skip
"""Each waveform augmentation (lib.data.augment) and the spec field holding its range."""

AUGMENT_LIMITS = {
    "speed_range": (0.5, 2.0), "tempo_range": (0.5, 2.0), "rt60_range": (0.05, 2.0),
    "snr_range": (-5.0, 60.0), "band_range": (1000.0, 8000.0), "gain_range": (-40.0, 20.0),
}  # fmt: skip
"""What each range may hold: beyond these a clip is no longer speech a model should learn."""

FLITE_VOICES = ("kal16", "awb", "rms", "slt")
"""Debian flite's CMU voices (Scottish and US male, US male, US female)."""

LEVERS: dict[str, dict[str, object]] = {
    "clean": {},
    "flite": {"flite_fraction": 0.15},
    "piper": {"piper_fraction": 0.3},
    "text": {"text_fraction": 0.5},
    **{name: {"augment": (name,)} for name in AUGMENTATIONS},
    "all": {"augment": tuple(AUGMENTATIONS)},
}
"""Chapter 1's levers of acoustic variety (lib.recipes.levers), each as the corpus fields it
changes from the clean recipe: flite's voices for 900 of 6000 training clips, Piper's for
1800 instead of 510, half the training sentences from Debian's fortunes instead of the Bible
(a text lever beside the acoustic ones), one augmentation, all six. ``name=amount`` pulls
a lever by another amount (:func:`lever_fields`)."""

LEVER_AMOUNTS = {"flite": "flite_fraction", "piper": "piper_fraction", "text": "text_fraction",
                 **{name: "augment_prob" for name in (*AUGMENTATIONS, "all")}}
"""The field a lever's amount sets in ``name=amount``: a share of the training clips (an
engine's voices, the fortunes' sentences) or each augmentation's chance per clip."""


def lever_fields(lever: str) -> dict[str, object]:
    """The corpus fields a lever changes from the clean recipe: a name of :data:`LEVERS`, or
    ``name=amount`` with the amount in (0, 1] for :data:`LEVER_AMOUNTS` (``text=0.25``: a
    quarter of the training sentences from the fortunes), so a lever can be drawn as a curve.

    Raises:
        CompanionError: an unknown name, an amount on ``clean``, or an amount that is not a
            number in (0, 1].
    """
    name, eq, amount = lever.partition("=")
    name = name.strip()
    if name not in LEVERS:
        raise CompanionError(f"unknown lever {lever!r}: use one of {', '.join(LEVERS)}, "
                             "or name=amount (e.g. text=0.25)")
    fields = dict(LEVERS[name])
    if eq:
        if name not in LEVER_AMOUNTS:
            raise CompanionError(f"lever {lever!r} takes no amount: write {name}")
        try:
            value = float(amount)
        except ValueError:
            value = float("nan")
        if not 0.0 < value <= 1.0:
            raise CompanionError(f"lever {lever!r}: the amount must be a number in (0, 1], "
                                 f"the share of {LEVER_AMOUNTS[name]}, e.g. {name}=0.25")
        fields[LEVER_AMOUNTS[name]] = value
    return fields

_APART = ("flite_fraction", "flite_voices", "text_fraction", "augment", "augment_prob", *AUGMENTATIONS.values())
"""Fields added after the first corpora were built: in the digest only when not at their
defaults, so a corpus built before them keeps its folder."""


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
    flite_fraction: float = 0.0  # share of TRAIN spoken by flite's CMU voices (0: no flite)
    flite_voices: tuple[str, ...] = FLITE_VOICES  # flite -voice names
    text_fraction: float = 0.0  # share of TRAIN sentences from Debian's fortunes (lib.data.text)
    augment: tuple[str, ...] = ()  # waveform augmentations of TRAIN (lib.data.augment)
    augment_prob: float = 0.5  # each named augmentation's chance per training clip
    speed_range: tuple[float, float] = (0.9, 1.1)  # speed factor (pitch moves with it)
    tempo_range: tuple[float, float] = (0.85, 1.15)  # tempo factor (pitch kept)
    rt60_range: tuple[float, float] = (0.2, 0.8)  # reverberation time, seconds
    snr_range: tuple[float, float] = (5.0, 30.0)  # noise: signal-to-noise ratio, dB
    band_range: tuple[float, float] = (3400.0, 8000.0)  # low-pass cutoff, Hz
    gain_range: tuple[float, float] = (-25.0, 0.0)  # level change, dB

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
        if not 0.0 <= self.piper_fraction <= 1.0 or not 0.0 <= self.flite_fraction <= 1.0:
            problems.append("piper_fraction and flite_fraction must be in [0, 1]")
        if not 0.0 <= self.text_fraction <= 1.0:
            problems.append("text_fraction must be in [0, 1]")
        if self.piper_fraction + self.flite_fraction > 1.0:
            problems.append("piper_fraction + flite_fraction must be <= 1")
        stray = sorted(set(self.flite_voices) - set(FLITE_VOICES))
        if stray or not self.flite_voices:
            problems.append(f"flite_voices {stray or '()'}: use some of {', '.join(FLITE_VOICES)}")
        problems += _augment_problems(self)
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
        """Short hash naming the clean corpus's cache folder: the spec and builder version,
        without the augmentation (its own folder inside, :func:`lib.data.augment
        .augment_digest`) and with the later fields only when they are not at default."""
        payload, augmented = asdict(self), self.augment_settings()
        for name in _APART:
            if name in augmented or payload[name] == getattr(CorpusSpec, name):
                payload.pop(name)
        payload["version"] = CORPUS_VERSION
        blob = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def augment_settings(self) -> dict[str, object]:
        """The fields that say how the training audio is augmented ({} when it is not)."""
        if not self.augment:
            return {}
        fields = ("augment", "augment_prob", *(AUGMENTATIONS[a] for a in self.augment))
        return {name: getattr(self, name) for name in fields}


def _augment_problems(spec: CorpusSpec) -> list[str]:
    """What is wrong with a spec's augmentation: unknown names, ranges out of their limits."""
    problems = []
    unknown = [a for a in spec.augment if a not in AUGMENTATIONS]
    if unknown:
        problems.append(f"unknown augmentation {', '.join(map(repr, unknown))}: use some of "
                        f"{', '.join(AUGMENTATIONS)}")
    if not 0.0 < spec.augment_prob <= 1.0:
        problems.append(f"augment_prob={spec.augment_prob} must be in (0, 1]")
    for field, (low, high) in AUGMENT_LIMITS.items():
        lo, hi = getattr(spec, field)
        if not low <= lo <= hi <= high:
            problems.append(f"{field}=({lo}, {hi}) must satisfy {low} <= low <= high <= {high}")
    return problems



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


CLEAN_RECIPE: dict[str, object] = {"piper_fraction": CorpusSpec.piper_fraction,
                                   "flite_fraction": 0.0, "text_fraction": 0.0, "augment": ()}
"""The corpus fields of the clean recipe, which every lever starts from: no augmentation, no
flite, the Bible only, Piper's default share (:attr:`CorpusSpec.piper_fraction`)."""

CORPUS_RECIPES = ("rule", "given")
"""What chapter 1's SpeechLLMs train on (``corpus_recipe``): ``rule``, the lever that chapter
1's rule chooses on the real dev prompts, measured before they train (the clean recipe when
none wins, :func:`lib.recipes.levers.training_corpus`); ``given``, the corpus fields as
given."""


def recipe_changes(values: dict[str, object]) -> list[str]:
    """The corpus fields of ``values`` (parameters, or a corpus's fields) that differ from
    :data:`CLEAN_RECIPE`, in its order."""
    return [f for f, clean in CLEAN_RECIPE.items()
            if (tuple(values[f]) if f == "augment" else values[f]) != clean]
