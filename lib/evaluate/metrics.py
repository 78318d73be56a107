"""Metrics: WER and CER after Whisper's English normaliser, bootstrap intervals, paired
differences, and a task's score by its metric.

Scores follow the paper: Whisper's English text normaliser on both sides, then word and
character error rates with jiwer. Every rate carries a 95 % bootstrap interval over
utterances; two systems on the same utterances are compared by a paired bootstrap.

Stage: evaluation. Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, Sequence

import jiwer

from lib.errors import CompanionError, check_pairs
from lib.tasks import Task


@functools.lru_cache(maxsize=1)
def english_normalizer() -> Callable[[str], str]:
    """Whisper's English text normaliser, with its British-to-American spelling table.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    from lib.assets import ensure_model

    mapping = json.loads((ensure_model("whisper-normalizer") / "english.json").read_text())
    return EnglishTextNormalizer(mapping)


@functools.lru_cache(maxsize=1)
def spanish_normalizer() -> Callable[[str], str]:
    """Whisper's basic (language-independent) normaliser, accents removed: lower case, no
    punctuation or symbols, one space between words.

    Accents go because the Reina-Valera 1909 writes them where today's Spanish does not
    ("fué", "á"), while the audio sounds the same: a transcript in today's spelling is not
    a word error. Explained in chapter 5 (book/05_tasks_and_languages.ipynb).
    """
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer(remove_diacritics=True)


def normalizer(language: str) -> Callable[[str], str]:
    """The WER normaliser of a written language: Whisper's English one for ``en``,
    :func:`spanish_normalizer` for ``es``, Whisper's basic one (accents kept) for ``fr``.

    Raises:
        CompanionError: a language without a normaliser.
    """
    if language == "en":
        return english_normalizer()
    if language == "es":
        return spanish_normalizer()
    if language == "fr":  # CoVoST 2's French: lower case, no punctuation, accents kept
        from transformers.models.whisper.english_normalizer import BasicTextNormalizer

        return BasicTextNormalizer()
    raise CompanionError(f"no WER normaliser for language {language!r}: use en, es or fr, or "
                         "add one in lib.evaluate.metrics.normalizer")


def score_asr(refs: Sequence[str], hyps: Sequence[str],
              normalize: bool = True, language: str = "en") -> dict[str, Any]:
    """Corpus WER and CER (fractions, not %) with the error counts.

    ``language`` picks the normaliser applied to both sides (:func:`normalizer`).
    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Raises:
        CompanionError: refs or hyps is not a list of strings (one string, None), lengths
            differ, nothing to score, or a reference normalises to nothing (an empty
            transcript cannot be scored).
    """
    refs, hyps = check_pairs(refs, hyps, "score_asr")
    norm = normalizer(language) if normalize else (lambda s: " ".join(s.split()))
    r = [norm(x) for x in refs]
    h = [norm(x) for x in hyps]
    empty = [i for i, x in enumerate(r) if not x.strip()]
    if empty:
        raise CompanionError(f"reference {empty[0]} ({refs[empty[0]]!r}) is empty after "
                             "normalisation: drop utterances without words")
    words = jiwer.process_words(r, h)
    chars = jiwer.process_characters(r, h)
    n_ref = sum(len(x.split()) for x in r)
    errors = utterance_errors(words)
    counts = [len(x.split()) for x in r]
    return {
        "wer": words.wer, "wer_ci95": bootstrap_wer_ci(errors, counts),
        "cer": chars.cer, "n_utterances": len(r), "n_ref_words": n_ref,
        "substitutions": words.substitutions, "deletions": words.deletions,
        "insertions": words.insertions,
        "utterance_errors": errors, "utterance_words": counts,  # for paired bootstraps
    }


def utterance_errors(words: Any) -> list[int]:
    """Word errors (S + D + I) of each utterance, read from jiwer's corpus alignment.

    ``words`` is the output of ``jiwer.process_words`` over all utterances: its alignment
    already holds every utterance's edit operations, so no second pass is needed.
    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """
    errors = []
    for chunks in words.alignments:
        n = 0
        for c in chunks:
            if c.type in ("substitute", "delete"):
                n += c.ref_end_idx - c.ref_start_idx
            elif c.type == "insert":
                n += c.hyp_end_idx - c.hyp_start_idx
        errors.append(n)
    return errors


def bootstrap_wer_ci(errors: Sequence[int], counts: Sequence[int], n_boot: int = 2000,
                     seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of the corpus WER, resampling utterances.

    Each replicate draws as many utterances as there are, with replacement, and computes
    ``sum(errors) / sum(words)`` over the draw (the corpus WER, not a mean of per-utterance
    WERs). On 10 utterances the interval is wide: that is the point of showing it.
    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Returns:
        ``[low, high]`` as fractions.
    """
    if len(errors) == 0 or len(errors) != len(counts):
        raise CompanionError("bootstrap_wer_ci needs matching, non-empty error and word counts")
    return _bootstrap_rate(errors, counts, n_boot, seed, level)


def _bootstrap_rate(errors: Sequence[float], counts: Sequence[int], n_boot: int, seed: int,
                    level: float) -> list[float]:
    """Percentile interval of ``sum(errors) / sum(counts)`` over utterances resampled with
    replacement (``errors`` may be a per-utterance difference of two systems)."""
    import numpy as np

    e = np.asarray(errors, dtype=float)
    w = np.asarray(counts, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(e), size=(n_boot, len(e)))
    rates = e[idx].sum(1) / np.maximum(w[idx].sum(1), 1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(rates, [tail, 100 - tail])
    return [float(low), float(high)]


def paired_wer_difference(errors_a: Sequence[int], errors_b: Sequence[int],
                          counts: Sequence[int], n_boot: int = 2000, seed: int = 0,
                          level: float = 0.95) -> dict[str, Any]:
    """WER of system ``a`` minus WER of ``b`` on the same utterances, with a paired bootstrap.

    Each replicate draws utterances with replacement and computes both corpus WERs on the
    *same* draw, so what the two systems share (an utterance hard for both) cancels: the
    interval of the difference is much narrower than the two WER intervals side by side.
    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Returns:
        ``difference`` and ``difference_ci95`` (``[low, high]``), as fractions.

    Raises:
        CompanionError: the three lists do not cover the same (non-empty) utterances.
    """
    if len(counts) == 0 or not len(errors_a) == len(errors_b) == len(counts):
        raise CompanionError(f"paired_wer_difference needs the same utterances for both "
                             f"systems ({len(errors_a)} and {len(errors_b)} error counts, "
                             f"{len(counts)} word counts): score them on the same test set")
    diff = [a - b for a, b in zip(errors_a, errors_b)]
    return {"difference": sum(diff) / max(sum(counts), 1),
            "difference_ci95": _bootstrap_rate(diff, counts, n_boot, seed, level)}


def paired_difference(a: dict[str, Any], b: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """:func:`paired_wer_difference` of two score dicts (:func:`score_asr`) of one test set.

    Raises:
        CompanionError: the two were scored on different utterances.
    """
    if a.get("utterance_words") != b.get("utterance_words"):
        raise CompanionError("the two scores are not of the same utterances (their reference "
                             "word counts differ): score both systems on the same test set")
    return paired_wer_difference(a["utterance_errors"], b["utterance_errors"],
                                 a["utterance_words"], **kwargs)


@functools.lru_cache(maxsize=4096)
def _norm_words(s: str, language: str = "en") -> str:
    return normalizer(language)(s)


def utterance_wer(ref: str, hyp: str, language: str = "en") -> float:
    """WER of one utterance after the ``language`` normaliser (for the per-utterance table).

    Raises:
        CompanionError: ref or hyp is not a string.
    """
    for name, value in (("ref", ref), ("hyp", hyp)):
        if not isinstance(value, str):
            raise CompanionError(f"utterance_wer: {name} is {value!r:.40}, not a string: pass "
                                 "one transcript ('' for an empty one)")
    r, h = _norm_words(ref, language), _norm_words(hyp, language)
    return jiwer.wer(r, h) if r.strip() else float("nan")


def score_task(task: Task, refs: Sequence[str], hyps: Sequence[str]) -> dict[str, Any]:
    """A test set scored by the task's metric (:mod:`lib.tasks`): WER after the written
    language's normaliser for ASR, BLEU and chrF (:mod:`lib.evaluate.bleu`) for translation.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb) and chapter 5.
    """
    if task.metric == "wer":
        return {**score_asr(refs, hyps, language=task.writes),
                "empty_hypotheses": sum(not str(h).strip() for h in hyps)}
    if task.metric == "bleu":
        from lib.evaluate.bleu import score_translation

        return score_translation(refs, hyps, allow_empty=True)  # 0 for a silent system
    raise CompanionError(f"task {task.name!r}: metric {task.metric!r} is not known: use "
                         "'wer' or 'bleu'")


def utterance_score(task: Task, ref: str, hyp: str) -> dict[str, float]:
    """One utterance's score for the per-utterance table: its WER (ASR) or its sentence
    chrF (translation)."""
    if task.metric == "wer":
        return {"wer": utterance_wer(ref, hyp, task.writes)}
    from sacrebleu.metrics import CHRF

    return {"chrf": float(CHRF().sentence_score(hyp, [ref]).score)}


def paired_task_difference(task: Task, a: dict[str, Any], b: dict[str, Any],
                           metric: str | None = None) -> dict[str, Any]:
    """System ``a`` minus system ``b`` on the same utterances by ``task``'s metric, with a
    paired bootstrap: WER (:func:`paired_difference`), or for translation chrF (the default:
    it carries chapter 5's verdicts, BLEU near 0 being too unstable on a hundred verses) or
    BLEU (:func:`lib.evaluate.bleu.paired_translation_difference`)."""
    if task.metric == "wer":
        return {**paired_difference(a, b), "metric": "wer"}
    from lib.evaluate.bleu import paired_translation_difference

    return paired_translation_difference(a, b, metric or "chrf")


def wer_by(score: dict[str, Any], groups: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The WER of each group of utterances of one score (:func:`score_asr`), ``groups`` the
    group of each utterance in order (a real set's sources): WER, its bootstrap interval,
    utterances."""
    out = {}
    for group in sorted(set(groups)):
        mine = [i for i, g in enumerate(groups) if g == group]
        errors = [score["utterance_errors"][i] for i in mine]
        counts = [score["utterance_words"][i] for i in mine]
        out[group] = {"wer": sum(errors) / max(sum(counts), 1),
                      "wer_ci95": bootstrap_wer_ci(errors, counts), "n": len(mine)}
    return out
