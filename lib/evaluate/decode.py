"""Decoding: batched greedy decoding, joint CTC / attention rescoring, and one test set
decoded, scored and saved.

Chapter 1 decodes two ways: greedy (the paper's), and joint CTC / attention decoding
(:class:`Rescoring`: the decoder's beams re-ranked with the warm start's CTC head), scored
the same way (:mod:`lib.evaluate.metrics`). Every score is saved with the per-utterance
hypotheses beside it and with its provenance; a test set cut to N utterances is labelled a
quick run in the file and on the page.

Stage: evaluation. Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence


from lib.build.adapters import adapters_merged, has_adapters
from lib.build.components import eval_mode
from lib.build.ctc_head import CTCHead, ctc_greedy, ctc_logprob
from lib.build.speechllm import SpeechLLM
from lib.cache import cached, file_label
from lib.clock import stage, track
from lib.config.sections import EvalConfig
from lib.data.features import FeatureSet
from lib.device import resolve_precision
from lib.errors import CompanionError
from lib.evaluate.metrics import paired_difference, score_task, utterance_score
from lib.fileio import save_jsonl
from lib.ranks import gather, is_main, share


EVAL_VERSION = 2
"""Bumped when decoding or scoring changes what a cached score holds (part of its key)."""

CAP_TOKENS_PER_SECOND = 8.0
"""A capped decode (:func:`audio_caps`) writes at most this many word pieces per second of
audio: read speech runs at up to ~4 words (~6 word pieces) a second, so a transcript longer
than this is a pruned decoder repeating itself, not speech it heard."""

CAP_SLACK_TOKENS = 4
"""Added to every cap: a clip of half a second may still carry two words."""


def audio_caps(data: FeatureSet, max_new_tokens: int) -> list[int]:
    """Each utterance's budget of word pieces in a capped decode: its audio's length times
    :data:`CAP_TOKENS_PER_SECOND` plus :data:`CAP_SLACK_TOKENS`, at most ``max_new_tokens``."""
    return [min(int(max_new_tokens), int(u.duration * CAP_TOKENS_PER_SECOND) + CAP_SLACK_TOKENS)
            for u in data.utterances]


def cap_text(model: SpeechLLM, text: str, cap: int) -> str:
    """A transcript already decoded, cut to the first ``cap`` word pieces of its tokenisation:
    the cap applied afterwards to a decode kept as text (chapter 1's), which costs no new
    decode. A capped decode itself cuts the decoded ids (:meth:`SpeechLLM.generate`); the
    two agree wherever the text tokenises back to the ids it came from."""
    ids = model.tokenizer(" " + text.strip(), add_special_tokens=False).input_ids
    if len(ids) <= cap:
        return text
    return model.tokenizer.decode(ids[:cap], skip_special_tokens=True).strip()


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


def decode_precision(model: SpeechLLM, ev: EvalConfig) -> str:
    """``ev.precision`` resolved for the model's device (:func:`lib.device.resolve_precision`):
    ``bf16`` decodes under bf16 autocast (the weights stay float32), ``fp32`` does not.
    Chapter 1 (section 1.6) compares the two on its test set by the paired rule."""
    return resolve_precision(ev.precision, str(model.device))


def precision_key(model: SpeechLLM, ev: EvalConfig) -> dict[str, str]:
    """What a cached decoding's key holds of how it decodes: its precision (nothing for
    float32, ``{"precision": "bf16"}`` otherwise) and, for a model with adapters, that they
    are merged for decoding (:func:`lib.build.adapters.adapters_merged`; a pruned model's
    are merged already, its keys stay as they were)."""
    precision = decode_precision(model, ev)
    key = {} if precision == "fp32" else {"precision": precision}
    return {**key, "adapters": "merged, cast after"} if has_adapters(model) else key


def autocast(model: SpeechLLM, precision: str) -> Any:
    """The context decoding runs in: bf16 autocast for ``precision == "bf16"``, the decoder's
    frozen weights cast once (:func:`lib.build.autocast.bf16_autocast`), not at every token."""
    from lib.build.autocast import bf16_autocast

    return bf16_autocast(model.decoder, model.device.type, enabled=precision == "bf16")


def decode_timer(model: SpeechLLM, data: FeatureSet, batch_size: int,
                 tokens: int) -> Callable[[bool], float]:
    """``timed(bf16)``: greedy decoding of the first ``batch_size`` utterances of ``data`` for
    exactly ``tokens`` word pieces each (no end of text before: the speed per token is timed,
    not what an untrained model would write), in float32 or under :func:`autocast` as
    :func:`transcribe` decodes, in eval mode without gradients; returns seconds per token."""
    import torch

    feats, lengths, _ = data.batch(list(range(min(len(data), batch_size))))

    def timed(bf16: bool) -> float:
        with eval_mode(model), torch.no_grad(), adapters_merged(model), \
                autocast(model, "bf16" if bf16 else "fp32"):
            t0 = time.perf_counter()
            model.generate(feats.to(model.device), lengths.to(model.device), tokens,
                           min_new_tokens=tokens)
            return (time.perf_counter() - t0) / tokens

    return timed


def _unique(texts: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for t in texts:
        if t.strip():
            seen.setdefault(t, None)
    return list(seen)


Candidate = tuple[str, float, float]
"""One rescoring candidate: (text, log p_LLM(text | audio), log p_CTC(text | audio))."""


def rescore_candidates(model: SpeechLLM, feats: Any, lengths: Any, head: CTCHead,
                       num_beams: int, max_new_tokens: int,
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


@stage("decoding")
def transcribe(model: SpeechLLM, data: FeatureSet, ev: EvalConfig = EvalConfig(),
               desc: str = "decoding", rescore: Rescoring | None = None,
               capped: bool = False) -> list[str]:
    """Transcripts of every utterance in ``data`` (in order): greedy, or with ``rescore``
    the joint CTC / attention decoding of :class:`Rescoring`; ``capped``: greedy with each
    utterance's length capped by its audio (:func:`audio_caps`; a batch stops at its
    longest cap, each transcript is cut to its own word pieces).

    ``ev`` gives the batch size and ``max_new_tokens`` (its ``max_test_utterances`` is for
    :func:`evaluate_asr`: every utterance of ``data`` is decoded here). Batches are formed
    longest-first so padding stays small. The model runs in eval mode (dropout off) and
    gets its own mode back (:func:`lib.build.components.eval_mode`); its LoRA adapters are
    merged into its weights while it decodes, and put back bit for bit after
    (:func:`lib.build.adapters.adapters_merged`).
    """
    if rescore is not None:
        cands = transcribe_candidates(model, data, rescore.head, rescore.num_beams, ev, desc)
        return choose(cands, rescore.weight)
    if not capped:
        return _batched(model, data, ev.batch_size, desc,
                        lambda f, n, _: model.generate(f, n, ev.max_new_tokens),
                        decode_precision(model, ev))
    caps = audio_caps(data, ev.max_new_tokens)
    return _batched(model, data, ev.batch_size, desc, lambda f, n, idx: model.generate(
        f, n, ev.max_new_tokens, caps=[caps[i] for i in idx]), decode_precision(model, ev))


@stage("decoding")
def transcribe_candidates(model: SpeechLLM, data: FeatureSet, head: CTCHead, num_beams: int,
                          ev: EvalConfig = EvalConfig(),
                          desc: str = "decoding (beams + CTC)") -> list[list[Candidate]]:
    """:func:`rescore_candidates` of every utterance in ``data`` (in order): one decoding
    pass serves every CTC weight (chapter 1's sweep)."""
    return _batched(model, data, ev.batch_size, desc, lambda f, n, _: rescore_candidates(
        model, f, n, head, num_beams, ev.max_new_tokens), decode_precision(model, ev))


def _batched(model: SpeechLLM, data: FeatureSet, batch_size: int, desc: str,
             step: Callable[[Any, Any, list[int]], list[Any]], precision: str = "fp32"
             ) -> list[Any]:
    """``step(feats, lengths, indices)`` over longest-first batches (under :func:`autocast` for
    ``precision``), results back in data order. Under several processes working together
    (:func:`lib.ranks.together`) each decodes its share of the batches, the same batches one
    process would, and every process gets them all back."""
    import torch

    frames = data.frames()
    order = sorted(range(len(data)), key=lambda i: -frames[i])
    batches = share([order[s:s + batch_size] for s in range(0, len(order), batch_size)])
    done = []
    with eval_mode(model), torch.no_grad(), adapters_merged(model), autocast(model, precision):
        for idx in track(batches, desc=desc, total=len(batches)):
            feats, lengths, _ = data.batch(idx)
            done.append(list(zip(idx, step(feats, lengths, idx))))
    out: list[Any] = [None] * len(data)
    for batch in gather(done):
        for i, item in batch:
            out[i] = item
    return out


@stage("decoding")
def evaluate_asr(model: SpeechLLM, data: FeatureSet, out_dir: Path, name: str,
                 ev: EvalConfig = EvalConfig(), reuse: bool = True,
                 rescore: Rescoring | None = None) -> dict[str, Any]:
    """Decode and score one test set; save ``<name>.json`` and ``<name>.hyps.jsonl``.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        model: the SpeechLLM to evaluate.
        data: cached features of the test set.
        out_dir: the run's folder (keyed by config).
        name: test-set label, e.g. ``"synthetic:test"``.
        ev: batch size and ``max_new_tokens``; ``max_test_utterances`` cuts the set to its first
            N (the result says it is a quick run).
        reuse: return an existing score for the same (run, test set, cut) instead.
        rescore: joint CTC / attention decoding (:class:`Rescoring`) instead of greedy.
    """
    max_utterances = ev.max_test_utterances
    subset = data.subset(max_utterances)
    keyed = {"data": subset.digest(), "max_new_tokens": ev.max_new_tokens,
             "batch_size": ev.batch_size, "prompt": model.prompt, "version": EVAL_VERSION}
    keyed.update(precision_key(model, ev))
    if rescore is not None:
        keyed["rescore"] = rescore.key()
    suffix = f".first{max_utterances}" if subset is not data else ""

    def decode(path: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        hyps = transcribe(model, subset, ev, desc=f"decoding {name}", rescore=rescore)
        wall = time.perf_counter() - t0
        refs = model.task.targets(subset.utterances)
        rows = [{"id": u.id, "voice": u.voice, "ref": r, "hyp": h,
                 **utterance_score(model.task, r, h)}
                for u, r, h in zip(subset.utterances, refs, hyps)]
        hyp_path = path.with_suffix(".hyps.jsonl")
        if is_main():  # one writer under several processes (lib.ranks)
            save_jsonl(hyp_path, rows)
        return {"test_set": name, **score_task(model.task, refs, hyps),
                "quick_run": subset is not data,
                "decoding": "greedy" if rescore is None else {"ctc_rescore": rescore.key()},
                "precision": decode_precision(model, ev), "n_available": len(data),
                "decode_utterances_per_s": round(len(subset) / max(wall, 1e-9), 3),
                "hypotheses": hyp_path.name}

    return cached(out_dir, f"eval-{file_label(name)}{suffix}", keyed, decode,
                  what=f"{name} score", reuse=reuse)


def precision_check(model: SpeechLLM, data: FeatureSet, out_dir: Path, name: str,
                    ev: EvalConfig) -> dict[str, Any]:
    """One test set decoded under bf16 autocast and in float32, the two WERs paired.

    Explained in chapter 1 (section 1.6). The score in the precision ``ev`` decodes in is
    ``ev``'s own (cached when the chapter has decoded the set already); the other one is
    decoded here. Where bf16 is not native it is emulated and slow: the caller decides
    whether to check.

    Returns:
        ``bf16`` and ``fp32`` (the two scores), ``difference`` and ``difference_ci95``
        (bf16 minus fp32, paired: :func:`lib.evaluate.metrics.paired_difference`), and
        ``speedup`` (utterances per second, bf16 over fp32, each from its own decoding).
    """
    used = decode_precision(model, ev)
    other = "fp32" if used == "bf16" else "bf16"
    scores = {used: evaluate_asr(model, data, out_dir, name, ev),
              other: evaluate_asr(model, data, out_dir, name, replace(ev, precision=other))}
    bf16, fp32 = scores["bf16"], scores["fp32"]
    d = paired_difference(bf16, fp32)
    return {"bf16": bf16, "fp32": fp32, **d,
            "speedup": bf16["decode_utterances_per_s"] / fp32["decode_utterances_per_s"]}
