"""Decoding and scoring: batched greedy decoding, WER/CER after the Whisper normaliser.

Scores follow the paper: greedy decoding, then Whisper's English text normaliser on both
sides, then word and character error rates with jiwer. Chapter 1 also decodes a second way,
joint CTC / attention decoding (:class:`Rescoring`: the decoder's beams re-ranked with the
warm start's CTC head), scored the same way. Every score is saved with the
per-utterance hypotheses beside it and with its provenance; a test set cut to N utterances
is labelled a quick run in the file and on the page.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

Stage: evaluation.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import jiwer
from tqdm.auto import tqdm

from lib.components import eval_mode
from lib.ctc import CTCHead, ctc_greedy, ctc_logprob, ctc_transcribe
from lib.errors import CompanionError, check_texts
from lib.features import FeatureSet
from lib.fileio import load_json, provenance, save_json, save_jsonl
from lib.speechllm import SpeechLLM
from lib.tasks import Task


EVAL_VERSION = 2
"""Bumped when decoding or scoring changes what a cached score holds (part of its key)."""


@functools.lru_cache(maxsize=1)
def english_normalizer() -> Callable[[str], str]:
    """Whisper's English text normaliser, with its British-to-American spelling table.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    from lib.assets import ensure_model

    mapping = json.loads((ensure_model("whisper-normalizer") / "english.json").read_text())
    return EnglishTextNormalizer(mapping)


def score_asr(refs: Sequence[str], hyps: Sequence[str],
              normalize: bool = True) -> dict[str, Any]:
    """Corpus WER and CER (fractions, not %) with the error counts.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Raises:
        CompanionError: refs or hyps is not a list of strings (one string, None), lengths
            differ, nothing to score, or a reference normalises to nothing (an empty
            transcript cannot be scored).
    """
    refs = check_texts(refs, "refs", "score_asr")
    hyps = check_texts(hyps, "hyps", "score_asr")
    if len(refs) != len(hyps):
        raise CompanionError(f"{len(refs)} references but {len(hyps)} hypotheses: "
                             "score matching lists")
    if not refs:
        raise CompanionError("nothing to score: the test set is empty")
    norm = english_normalizer() if normalize else (lambda s: " ".join(s.split()))
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
def _norm_words(s: str) -> str:
    return english_normalizer()(s)


def utterance_wer(ref: str, hyp: str) -> float:
    """WER of one utterance after normalisation (for the per-utterance table).

    Raises:
        CompanionError: ref or hyp is not a string.
    """
    for name, value in (("ref", ref), ("hyp", hyp)):
        if not isinstance(value, str):
            raise CompanionError(f"utterance_wer: {name} is {value!r:.40}, not a string: pass "
                                 "one transcript ('' for an empty one)")
    r, h = _norm_words(ref), _norm_words(hyp)
    return jiwer.wer(r, h) if r.strip() else float("nan")


def score_task(task: Task, refs: Sequence[str], hyps: Sequence[str]) -> dict[str, Any]:
    """A test set scored by the task's metric (:mod:`lib.tasks`): WER for ASR.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """
    if task.metric == "wer":
        return score_asr(refs, hyps)
    raise CompanionError(f"task {task.name!r}: metric {task.metric!r} is not implemented yet: "
                         "use 'wer'")


def score_ctc(model: SpeechLLM, head: CTCHead, data: FeatureSet) -> dict[str, Any]:
    """WER of the CTC head alone on ``data`` (greedy CTC, no language model): a baseline.

    Call it while ``model.projector`` holds the warm-start weights (before LLM training).
    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """
    hyps = ctc_transcribe(model, head, data)
    return {**score_asr([u.text for u in data.utterances], hyps), "hypotheses": hyps}


@dataclass(frozen=True)
class Rescoring:
    """Joint CTC / attention decoding: how the SpeechLLM's beams are re-ranked.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb). The candidates of an
    utterance are the decoder's ``num_beams`` beams plus the CTC head's greedy transcript;
    each is scored ``(1 - weight) * log p_LLM(text | audio) + weight * log p_CTC(text |
    audio)`` (both summed over the text's word pieces, the LLM's with its closing eos) and
    the best one is the transcript. ``weight`` 0 is the LLM's best beam; 1 is the CTC head
    choosing among the candidates. The CTC term penalises text the audio does not carry
    (the decoder's language prior writing its own sentence), which the LLM term alone
    cannot see.
    """

    head: CTCHead  # the warm start's, trained with this model's projector
    weight: float = 0.5
    num_beams: int = 2  # chapter 1's default (rescore_beams)

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise CompanionError(f"rescore weight {self.weight}: use a value in [0, 1]")
        if self.num_beams < 1:
            raise CompanionError(f"rescore num_beams {self.num_beams}: use 1 or more")

    def key(self) -> dict[str, Any]:
        """What a cached score depends on, besides the run (whose key covers the head)."""
        return {"ctc_rescore_weight": self.weight, "num_beams": self.num_beams}


def _unique(texts: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for t in texts:
        if t.strip():
            seen.setdefault(t, None)
    return list(seen)


Candidate = tuple[str, float, float]
"""One rescoring candidate: (text, log p_LLM(text | audio), log p_CTC(text | audio))."""


def rescore_candidates(model: SpeechLLM, feats: Any, lengths: Any, head: CTCHead,
                       num_beams: int = 2, max_new_tokens: int = 64,
                       chunk: int = 32) -> list[list[Candidate]]:
    """The candidates of each utterance of one batch, with both log-likelihoods.

    The decoder's ``num_beams`` beams plus the CTC head's greedy transcript, empty and
    repeated texts dropped; both log-likelihoods are computed teacher-forced, ``chunk``
    candidates per forward pass. Explained in chapter 1 (see :class:`Rescoring`).
    """
    import torch

    k = num_beams
    beams = model.generate(feats, lengths, max_new_tokens, num_beams=k)
    greedy = ctc_greedy(model, head, feats, lengths)
    texts = [_unique([*beams[i * k:(i + 1) * k], greedy[i]]) for i in range(len(greedy))]
    owner = [i for i, c in enumerate(texts) for _ in c]
    flat = [t for c in texts for t in c]
    out: list[list[Candidate]] = [[] for _ in texts]
    for s in range(0, len(flat), chunk):
        rows = torch.tensor(owner[s:s + chunk])
        f, n, part = feats[rows], lengths[rows], flat[s:s + chunk]
        llm = (-model.loss(f, n, part, reduction="sequence")).float().cpu().tolist()
        ctc = ctc_logprob(model, head, f, n, part).tolist()
        for i, text, a, c in zip(owner[s:s + chunk], part, llm, ctc):
            out[i].append((text, a, c))
    return out


def choose(candidates: Sequence[Sequence[Candidate]], weight: float) -> list[str]:
    """The best candidate of each utterance at CTC weight ``weight`` (see :class:`Rescoring`).

    A term with weight 0 is left out (``0 * -inf`` would be nan). When every candidate is
    impossible for the CTC head (``-inf``), the first one (the decoder's best beam) is
    kept; an utterance without candidates gets ``""``.
    """
    out = []
    for cands in candidates:
        best, best_text = float("-inf"), None
        for text, llm, ctc in cands:
            score = ((1 - weight) * llm if weight < 1 else 0.0) + (
                weight * ctc if weight else 0.0)
            if best_text is None or score > best:
                best, best_text = score, text
        out.append(best_text or "")
    return out


def transcribe(model: SpeechLLM, data: FeatureSet, batch_size: int = 16,
               max_new_tokens: int = 64, desc: str = "decoding",
               rescore: Rescoring | None = None) -> list[str]:
    """Transcripts of every utterance in ``data`` (in order): greedy, or with ``rescore``
    the joint CTC / attention decoding of :class:`Rescoring`.

    Batches are formed longest-first so padding stays small. The model runs in eval mode
    (dropout off) and gets its own mode back (:func:`lib.components.eval_mode`).
    """
    if rescore is not None:
        cands = transcribe_candidates(model, data, rescore.head, rescore.num_beams,
                                      batch_size, max_new_tokens, desc)
        return choose(cands, rescore.weight)
    return _batched(model, data, batch_size, desc,
                    lambda f, n: model.generate(f, n, max_new_tokens))


def transcribe_candidates(model: SpeechLLM, data: FeatureSet, head: CTCHead,
                          num_beams: int = 2,
                          batch_size: int = 16, max_new_tokens: int = 64,
                          desc: str = "decoding (beams + CTC)") -> list[list[Candidate]]:
    """:func:`rescore_candidates` of every utterance in ``data`` (in order): one decoding
    pass serves every CTC weight (chapter 1's sweep)."""
    return _batched(model, data, batch_size, desc, lambda f, n: rescore_candidates(
        model, f, n, head, num_beams, max_new_tokens))


def _batched(model: SpeechLLM, data: FeatureSet, batch_size: int, desc: str,
             step: Callable[[Any, Any], list[Any]]) -> list[Any]:
    """``step(feats, lengths)`` over longest-first batches, results back in data order."""
    import torch

    order = sorted(range(len(data)), key=lambda i: -data.feats[i].shape[0])
    out: list[Any] = [None] * len(data)
    with eval_mode(model), torch.no_grad():
        for start in tqdm(range(0, len(order), batch_size), desc=desc,
                          total=-(-len(order) // batch_size)):
            idx = order[start:start + batch_size]
            feats, lengths, _ = data.batch(idx)
            for i, item in zip(idx, step(feats, lengths)):
                out[i] = item
    return out


def evaluate_asr(model: SpeechLLM, data: FeatureSet, out_dir: Path, name: str,
                 batch_size: int = 16, max_new_tokens: int = 64,
                 max_utterances: int | None = None, config: Any = None,
                 reuse: bool = True, rescore: Rescoring | None = None) -> dict[str, Any]:
    """Decode and score one test set; save ``<name>.json`` and ``<name>.hyps.jsonl``.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        model: the SpeechLLM to evaluate.
        data: cached features of the test set.
        out_dir: the run's folder (keyed by config).
        name: test-set label, e.g. ``"synthetic:test"``.
        max_utterances: cut the set to its first N (the result says it is a quick run).
        config: stored with the score for provenance.
        reuse: return an existing score for the same (run, test set, cut) instead.
        rescore: joint CTC / attention decoding (:class:`Rescoring`) instead of greedy.
    """
    from lib.config import config_hash

    subset = data.subset(max_utterances)
    slug = name.replace(":", "-").replace("/", "_")
    keyed = {"data": subset.digest(), "max_new_tokens": max_new_tokens,
             "batch_size": batch_size, "prompt": model.prompt, "version": EVAL_VERSION}
    if rescore is not None:
        keyed["rescore"] = rescore.key()
    key = config_hash(keyed)
    suffix = f".first{max_utterances}" if subset is not data else ""
    path = Path(out_dir) / f"eval-{slug}{suffix}-{key}.json"
    if reuse and path.is_file():
        print(f"{name}: cached score reused (key {key}: same utterances, audio features, "
              f"max_new_tokens and batch size)")
        return load_json(path)
    t0 = time.perf_counter()
    hyps = transcribe(model, subset, batch_size, max_new_tokens, desc=f"decoding {name}",
                      rescore=rescore)
    wall = time.perf_counter() - t0
    refs = model.task.targets(subset.utterances)
    score = score_task(model.task, refs, hyps)
    rows = [{"id": u.id, "voice": u.voice, "ref": r, "hyp": h, "wer": utterance_wer(r, h)}
            for u, r, h in zip(subset.utterances, refs, hyps)]
    hyp_path = save_jsonl(path.with_suffix(".hyps.jsonl"), rows)
    record = {
        "test_set": name, "key": key, **score,
        "quick_run": subset is not data,
        "decoding": "greedy" if rescore is None else {"ctc_rescore": rescore.key()},
        "n_available": len(data),
        "decode_utterances_per_s": round(len(subset) / max(wall, 1e-9), 3),
        "hypotheses": hyp_path.name,
        "provenance": provenance(config, wall_time_s=wall),
    }
    save_json(path, record)
    return record


def audio_reliance(model: SpeechLLM, data: FeatureSet, n: int = 64,
                   batch_size: int = 16) -> dict[str, float]:
    """How much the decoder uses the audio: target loss with its own vs another's audio.

    Each transcript is scored twice, once after its own audio and once after the audio of
    the next utterance in the set. A model that ignores the audio (it predicts the text
    from the language model alone) scores both the same; one that listens does much worse
    with the wrong audio. Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Returns:
        ``own_audio_loss`` and ``other_audio_loss`` (nats per target token, averaged over
        batches weighted by utterances), and ``n_utterances``.
    """
    import torch

    idx = list(range(min(n, len(data))))
    if len(idx) < 2:
        raise CompanionError("audio_reliance needs at least 2 utterances")
    other = idx[1:] + idx[:1]
    own_sum = other_sum = 0.0
    with torch.no_grad(), eval_mode(model):
        for s in range(0, len(idx), batch_size):
            b, ob = idx[s:s + batch_size], other[s:s + batch_size]
            feats, lengths, texts = data.batch(b, target=model.task.target)
            o_feats, o_lengths, _ = data.batch(ob)
            own_sum += model.loss(feats, lengths, texts).item() * len(b)
            other_sum += model.loss(o_feats, o_lengths, texts).item() * len(b)
    return {"own_audio_loss": own_sum / len(idx), "other_audio_loss": other_sum / len(idx),
            "n_utterances": len(idx)}


def whisper_baseline(name_or_path: str, data: FeatureSet, test_name: str,
                     batch_size: int = 16, max_new_tokens: int = 128,
                     reuse: bool = True) -> dict[str, Any]:
    """The encoder's original ASR: a Whisper checkpoint with its own decoder, greedy.

    The baseline a SpeechLLM built on Whisper's encoder should beat. Audio is read again
    from ``data``'s utterances and padded to Whisper's 30 s window, as Whisper expects.
    The score is cached under ``<cache>/baselines/``, keyed by the checkpoint's weights,
    every clip's bytes and transcript, ``max_new_tokens`` and the batch size.
    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Returns:
        The :func:`score_asr` record plus ``test_set``, ``key`` and ``hypotheses``.
    """
    import torch
    from transformers import AutoProcessor, WhisperForConditionalGeneration
    from transformers.utils import logging as hf_logging

    from lib.assets import resolve_model
    from lib.config import config_hash
    from lib.data.audio import read_audio
    from lib.features import file_digest
    from lib.paths import cache_subdir

    path = Path(resolve_model(name_or_path))
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    key = config_hash({"model": [file_digest(str(w)) for w in weights],
                       "data": [(u.id, u.text, file_digest(u.audio)) for u in data.utterances],
                       "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                       "version": EVAL_VERSION})
    label = test_name.replace(":", "-").replace("/", "_")
    out = cache_subdir("baselines") / f"whisper-{label}-{key}.json"
    if reuse and out.is_file():
        print(f"{test_name}: cached Whisper baseline reused (key {key})")
        return load_json(out)
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    # English transcription where the checkpoint knows its languages (a tiny random
    # stand-in has no language table and decodes without one).
    has_langs = bool(getattr(model.generation_config, "lang_to_id", None))
    task = {"language": "en", "task": "transcribe"} if has_langs else {}
    max_new_tokens = min(max_new_tokens, model.config.max_target_positions - 4)
    utts = data.utterances
    hyps: list[str] = []
    t0 = time.perf_counter()
    # transformers warns on every batch that max_new_tokens overrides the checkpoint's
    # max_length (448): intended here, so its logger is quiet while decoding.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        for start in tqdm(range(0, len(utts), batch_size), desc=f"Whisper {test_name}",
                          total=-(-len(utts) // batch_size)):
            audio = [read_audio(u.audio) for u in utts[start:start + batch_size]]
            long_form = max(len(a) for a in audio) > processor.feature_extractor.n_samples
            inputs = processor(audio, sampling_rate=16000, return_tensors="pt",
                               return_attention_mask=True,
                               **({"truncation": False, "padding": "longest"}
                                  if long_form else {}))
            with torch.inference_mode():
                ids = model.generate(**inputs, **task, max_new_tokens=max_new_tokens)
            hyps += [h.strip() for h in processor.batch_decode(ids, skip_special_tokens=True)]
    finally:
        hf_logging.set_verbosity(verbosity)
    wall = time.perf_counter() - t0
    record = {"test_set": test_name, "key": key, "model": name_or_path,
              **score_asr([u.text for u in utts], hyps), "hypotheses": hyps,
              "provenance": provenance(wall_time_s=wall)}
    save_json(out, record)
    return record
