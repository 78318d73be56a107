"""Decoding and scoring: batched greedy decoding, WER/CER after the Whisper normaliser.

Scores follow the paper: greedy decoding, then Whisper's English text normaliser on both
sides, then word and character error rates with jiwer. Every score is saved with the
per-utterance hypotheses beside it and with its provenance; a test set cut to N utterances
is labelled a quick run in the file and on the page.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

Stage: evaluation.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jiwer
from tqdm.auto import tqdm

from lib.components import eval_mode
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
    import numpy as np

    e = np.asarray(errors, dtype=float)
    w = np.asarray(counts, dtype=float)
    if len(e) == 0 or len(e) != len(w):
        raise CompanionError("bootstrap_wer_ci needs matching, non-empty error and word counts")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(e), size=(n_boot, len(e)))
    words = w[idx].sum(1)
    rates = e[idx].sum(1) / np.maximum(words, 1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(rates, [tail, 100 - tail])
    return [float(low), float(high)]


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


def transcribe(model: SpeechLLM, data: FeatureSet, batch_size: int = 16,
               max_new_tokens: int = 64, desc: str = "decoding") -> list[str]:
    """Greedy transcripts of every utterance in ``data`` (in order).

    Batches are formed longest-first so padding stays small. The model runs in eval mode
    (dropout off) and gets its own mode back (:func:`lib.components.eval_mode`).
    """
    order = sorted(range(len(data)), key=lambda i: -data.feats[i].shape[0])
    hyps: list[str] = [""] * len(data)
    with eval_mode(model):
        for start in tqdm(range(0, len(order), batch_size), desc=desc,
                          total=-(-len(order) // batch_size)):
            idx = order[start:start + batch_size]
            feats, lengths, _ = data.batch(idx)
            for i, text in zip(idx, model.generate(feats, lengths, max_new_tokens)):
                hyps[i] = text
    return hyps


def evaluate_asr(model: SpeechLLM, data: FeatureSet, out_dir: Path, name: str,
                 batch_size: int = 16, max_new_tokens: int = 64,
                 max_utterances: int | None = None, config: Any = None,
                 reuse: bool = True) -> dict[str, Any]:
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
    """
    from lib.config import config_hash

    subset = data.subset(max_utterances)
    slug = name.replace(":", "-").replace("/", "_")
    key = config_hash({"data": subset.digest(), "max_new_tokens": max_new_tokens,
                       "batch_size": batch_size, "prompt": model.prompt,
                       "version": EVAL_VERSION})
    suffix = f".first{max_utterances}" if subset is not data else ""
    path = Path(out_dir) / f"eval-{slug}{suffix}-{key}.json"
    if reuse and path.is_file():
        print(f"{name}: cached score reused (key {key}: same utterances, audio features, "
              f"max_new_tokens and batch size)")
        return load_json(path)
    t0 = time.perf_counter()
    hyps = transcribe(model, subset, batch_size, max_new_tokens, desc=f"decoding {name}")
    wall = time.perf_counter() - t0
    refs = model.task.targets(subset.utterances)
    score = score_task(model.task, refs, hyps)
    rows = [{"id": u.id, "voice": u.voice, "ref": r, "hyp": h, "wer": utterance_wer(r, h)}
            for u, r, h in zip(subset.utterances, refs, hyps)]
    hyp_path = save_jsonl(path.with_suffix(".hyps.jsonl"), rows)
    record = {
        "test_set": name, "key": key, **score,
        "quick_run": subset is not data,
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
