"""WER at a cut: decode a SpeechLLM with a set of decoder layers skipped and cache the point;
the full model's WER from chapter 1's decodes, capped like a cut's.

Every point is one greedy decoding of a test set with the given layers skipped
(:func:`lib.prune.surgery.skip_layers`; the model is restored afterwards), scored with its 95 %
bootstrap interval, and saved as JSON beside the run it belongs to, keyed by the layers, the
utterances, the decoding settings and the weights' own run folder: an interrupted chapter
resumes at the first point it had not finished, and two strategies that pick the same layers
share one decoding. Stage: prune (evaluation of pruned models). Explained in chapter 3
(book/03_pruning.ipynb).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence


from lib.config.sections import EvalConfig
from lib.errors import CompanionError
from lib.evaluate.metrics import score_task
from lib.evaluate.decode import (CAP_SLACK_TOKENS, CAP_TOKENS_PER_SECOND, audio_caps, cap_text,
                                 evaluate_asr, precision_key, transcribe)
from lib.fileio import load_jsonl
from lib.cache import cached, file_label
from lib.prune.surgery import check_layers, skip_layers

if TYPE_CHECKING:
    from lib.data.features import FeatureSet
    from lib.build.speechllm import SpeechLLM

CURVE_VERSION = 1
"""Part of every point's key: bump it when decoding or scoring changes."""


def evaluate_cut(model: "SpeechLLM", data: "FeatureSet", layers: Sequence[int], out_dir: Path,
                 name: str, ev: EvalConfig = EvalConfig(), n_layers: int | None = None,
                 reuse: bool = True, capped: bool = False) -> dict[str, Any]:
    """WER of ``model`` on ``data`` with decoder ``layers`` skipped (``[]``: the full model);
    for a translation task (``model.task``), its BLEU and chrF with their per-sentence
    statistics instead.

    Every utterance of ``data`` is decoded (``ev.max_test_utterances`` does not apply: a curve
    point is measured on the subset it is given), ``ev.batch_size`` at a time, at most
    ``ev.max_new_tokens`` each; ``capped``: at most what its audio can carry
    (:func:`lib.evaluate.decode.audio_caps`), so a decoder caught in a loop stops early.

    Args:
        out_dir: the folder of the weights being evaluated (a training or healing run);
            the point is saved there as ``cuts/<name>-<key>.json`` with its hypotheses.
        n_layers: the decoder's layer count, for ``removed_fraction`` (default: the model's).

    Returns:
        ``test_set, layers, n_removed, removed_fraction, wer, wer_ci95, utterance_errors,
        utterance_words, insertion_rate, decode_utterances_per_s, hypotheses, provenance``.
    """
    big_l = n_layers or len(model.decoder_layers)
    layers = check_layers(layers, big_l) if len(layers) else []
    keyed = {"data": data.digest(), "layers": layers, "max_new_tokens": ev.max_new_tokens,
             "batch_size": ev.batch_size, "prompt": model.prompt, "version": CURVE_VERSION,
             **precision_key(model, ev)}
    if capped:
        keyed["cap"] = {"tokens_per_second": CAP_TOKENS_PER_SECOND, "slack": CAP_SLACK_TOKENS}

    def decode(_: Path) -> dict[str, Any]:
        skip = skip_layers(model.decoder, layers) if layers else contextlib.nullcontext()
        t0 = time.perf_counter()
        with skip:
            hyps = transcribe(model, data, ev, desc=f"{name}, {len(layers)} layers removed",
                              capped=capped)
        wall = time.perf_counter() - t0
        refs = model.task.targets(data.utterances)
        score = score_task(model.task, refs, hyps)
        measured = ({k: score[k] for k in ("wer", "wer_ci95", "utterance_errors",
                                           "utterance_words")}
                    if model.task.metric == "wer" else score)  # translation: BLEU and chrF
        return {
            "test_set": name, "layers": layers, "n_removed": len(layers),
            "removed_fraction": len(layers) / big_l, "n_layers": big_l, **measured,
            "insertion_rate": insertion_rate(score), "n_utterances": len(data),
            "decode_utterances_per_s": round(len(data) / max(wall, 1e-9), 3),
            "hypotheses": [{"id": u.id, "ref": r, "hyp": h}
                           for u, r, h in zip(data.utterances, refs, hyps)]}

    # a curve has many points: a reused one is counted, not said
    return cached(Path(out_dir) / "cuts", file_label(name), keyed, decode,
                  reuse=reuse)


def insertion_rate(score: dict[str, Any]) -> float | None:
    """Inserted words per reference word (a decoder repeating itself inserts; None for a
    metric without word counts, BLEU)."""
    if "insertions" not in score:
        return None
    return score["insertions"] / max(score["n_ref_words"], 1)


def full_capped(model: "SpeechLLM", data: "FeatureSet", out_dir: Path, name: str,
                ev: EvalConfig) -> dict[str, Any]:
    """The full model's WER with chapter 1's decodes, each cut to its audio's cap
    (:func:`lib.evaluate.decode.cap_text`; greedy decoding is causal, so no new decode is
    needed): the reference a capped cut (:func:`evaluate_cut`) is compared with. The
    decodes are chapter 1's (read from its run folder; decoded here if it has none), on
    its test utterances (``ev.max_test_utterances``).

    Returns:
        as :func:`evaluate_cut` (no ``hypotheses``), with ``reused`` the decodes' file.
    """
    subset = data.subset(ev.max_test_utterances)
    rec = evaluate_asr(model, data, out_dir, name, ev)
    rows = load_jsonl(Path(out_dir) / rec["hypotheses"])
    if [r["id"] for r in rows] != [u.id for u in subset.utterances]:
        raise CompanionError(f"{name}: chapter 1's decodes in {out_dir} are not of these "
                             "utterances: re-run chapter 1 on this test set")
    caps = audio_caps(subset, ev.max_new_tokens)
    hyps = [cap_text(model, r["hyp"], c) for r, c in zip(rows, caps)]
    score = score_task(model.task, [r["ref"] for r in rows], hyps)
    return {"test_set": name, "layers": [], "n_removed": 0, "removed_fraction": 0.0,
            "wer": score["wer"], "wer_ci95": score["wer_ci95"],
            "utterance_errors": score["utterance_errors"],
            "utterance_words": score["utterance_words"],
            "insertion_rate": insertion_rate(score), "n_utterances": len(rows),
            "reused": rec["hypotheses"]}
