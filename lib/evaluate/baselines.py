"""Baselines and checks beside every SpeechLLM: the CTC head alone, Whisper with its own
decoder, and whether the decoder reads the audio at all.

Stage: evaluation. Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lib.build.components import eval_mode
from lib.build.ctc_head import CTCHead, ctc_greedy
from lib.build.speechllm import SpeechLLM
from lib.cache import cached, file_label
from lib.clock import stage, track
from lib.data.features import FeatureSet
from lib.errors import CompanionError
from lib.evaluate.decode import EVAL_VERSION
from lib.evaluate.metrics import score_asr, score_task
from lib.tasks import ASR, Task


@torch.no_grad()
def ctc_transcribe(model: SpeechLLM, head: CTCHead, data: FeatureSet,
                   batch_size: int = 64) -> list[str]:
    """Greedy CTC transcripts (best class per position, repeats merged, blanks dropped).

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """
    out: list[str] = []
    for start in range(0, len(data), batch_size):
        idx = list(range(start, min(len(data), start + batch_size)))
        feats, lengths, _ = data.batch(idx)
        out += ctc_greedy(model, head, feats, lengths)
    return out


@stage("decoding")
def score_ctc(model: SpeechLLM, head: CTCHead, data: FeatureSet) -> dict[str, Any]:
    """WER of the CTC head alone on ``data`` (greedy CTC, no language model): a baseline.

    Call it while ``model.projector`` holds the warm-start weights (before LLM training).
    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """
    hyps = ctc_transcribe(model, head, data)
    return {**score_asr([u.text for u in data.utterances], hyps), "hypotheses": hyps}


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


@stage("baselines")
def whisper_baseline(name_or_path: str, data: FeatureSet, test_name: str,
                     batch_size: int = 16, max_new_tokens: int = 128,
                     reuse: bool = True, task: Task = ASR) -> dict[str, Any]:
    """The encoder's original ASR: a Whisper checkpoint with its own decoder, greedy.

    The baseline a SpeechLLM built on Whisper's encoder should beat. Audio is read again
    from ``data``'s utterances and padded to Whisper's 30 s window, as Whisper expects.
    The score is cached under ``<cache>/baselines/``, keyed by the checkpoint's weights,
    every clip's bytes and transcript, ``max_new_tokens`` and the batch size.
    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        task: what Whisper is asked, in the language ``task.hears``: transcription for a
            WER task, its built-in translation for a translation task (into English only,
            the one direction Whisper translates); scored by ``task``'s metric
            (chapter 5).

    Returns:
        The :func:`lib.evaluate.metrics.score_task` record plus ``test_set``, ``key``,
        ``task`` and ``hypotheses``.

    Raises:
        CompanionError: a translation task into another language than English.
    """
    from lib.assets import resolve_model
    from lib.data.features import file_digest
    from lib.paths import cache_subdir

    path = Path(resolve_model(name_or_path))
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if task.metric != "wer" and task.writes != "en":
        raise CompanionError(f"Whisper translates into English only, not for task "
                             f"{task.name!r} ({task.hears} -> {task.writes})")
    keyed = {"model": [file_digest(str(w)) for w in weights],
             "data": [(u.id, u.text, file_digest(u.audio)) for u in data.utterances],
             "max_new_tokens": max_new_tokens, "batch_size": batch_size,
             "version": EVAL_VERSION}
    if task is not ASR:  # chapter 1's English ASR keeps the key it always had
        keyed["task"] = task.name

    def decode(_: Path) -> dict[str, Any]:
        utts = data.utterances
        hyps = _whisper_transcripts(path, utts, test_name, task, batch_size, max_new_tokens)
        score = (score_asr([u.text for u in utts], hyps) if task is ASR
                 else score_task(task, task.targets(utts), hyps))
        return {"test_set": test_name, "model": name_or_path, **score, "hypotheses": hyps,
                **({} if task is ASR else {"task": task.name})}

    return cached(cache_subdir("baselines"), f"whisper-{file_label(test_name)}", keyed,
                  decode, what=f"{test_name} Whisper baseline", reuse=reuse)


def _whisper_transcripts(path: Path, utts: list[Any], test_name: str, task: Task,
                         batch_size: int, max_new_tokens: int) -> list[str]:
    """What a Whisper checkpoint writes for each utterance, greedy, ``batch_size`` at a
    time (:func:`whisper_baseline`)."""
    import torch
    from transformers import AutoProcessor, WhisperForConditionalGeneration
    from transformers.utils import logging as hf_logging

    from lib.data.audio import read_audio

    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    # English transcription where the checkpoint knows its languages (a tiny random
    # stand-in has no language table and decodes without one).
    has_langs = bool(getattr(model.generation_config, "lang_to_id", None))
    asked = ({"language": task.hears,
              "task": "transcribe" if task.metric == "wer" else "translate"}
             if has_langs else {})
    max_new_tokens = min(max_new_tokens, model.config.max_target_positions - 4)
    hyps: list[str] = []
    # transformers warns on every batch that max_new_tokens overrides the checkpoint's
    # max_length (448): intended here, so its logger is quiet while decoding.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        for start in track(range(0, len(utts), batch_size), desc=f"Whisper {test_name}",
                           total=-(-len(utts) // batch_size)):
            audio = [read_audio(u.audio) for u in utts[start:start + batch_size]]
            long_form = max(len(a) for a in audio) > processor.feature_extractor.n_samples
            inputs = processor(audio, sampling_rate=16000, return_tensors="pt",
                               return_attention_mask=True,
                               **({"truncation": False, "padding": "longest"}
                                  if long_form else {}))
            with torch.inference_mode():
                ids = model.generate(**inputs, **asked, max_new_tokens=max_new_tokens)
            hyps += [h.strip() for h in processor.batch_decode(ids, skip_special_tokens=True)]
    finally:
        hf_logging.set_verbosity(verbosity)
    return hyps
