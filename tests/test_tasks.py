"""Tasks as data: the default ASR task keeps the book's prompt, its keys and its metric."""

from __future__ import annotations

import hashlib
import json

import pytest

from lib.fileio import config_hash
from lib.data.loaders import Utterance
from lib.errors import CompanionError
from lib.evaluate.metrics import score_task
from lib.tasks import ASR, Prompt, Task, get_task


def test_asr_prompt_is_the_books_prompt():
    """The strings every trained run and cached evaluation was made with (commit 8db4fb0)."""
    assert ASR.prompt() == Prompt()
    assert (Prompt().audio_start, Prompt().audio_end, Prompt().instruction) == (
        "<audio>", "</audio>", " Transcribe the audio:")
    assert (ASR.target, ASR.metric) == ("text", "wer")


def test_evaluation_key_material_is_unchanged():
    """evaluate_asr keys a score by config_hash({..., "prompt": model.prompt, ...}).

    bada9e7d2d9c was computed at commit 8db4fb0 (before tasks existed) from the Prompt
    dataclass of lib/build/speechllm.py, hashed as json.dumps(asdict, sort_keys) -> sha256[:12].
    """
    material = {"data": "x", "max_new_tokens": 8, "batch_size": 8, "prompt": ASR.prompt(),
                "version": 1}
    assert config_hash(material) == "bada9e7d2d9c"
    blob = json.dumps({**material, "prompt": {"audio_start": "<audio>",
                                              "audio_end": "</audio>",
                                              "instruction": " Transcribe the audio:"}},
                      sort_keys=True)
    assert hashlib.sha256(blob.encode()).hexdigest()[:12] == "bada9e7d2d9c"


def test_speechllm_reads_its_tasks_prompt():
    from lib.config.sections import ModelConfig
    from lib.build.speechllm import build_speechllm

    mc = ModelConfig(encoder="tiny-whisper", decoder="tiny-llama", projector_hidden=8,
                     lora_rank=0)
    model = build_speechllm(mc)
    assert model.task is ASR and model.prompt == Prompt()
    tok = model.tokenizer
    assert model._suffix_ids == tok("</audio> Transcribe the audio:",
                                    add_special_tokens=False).input_ids
    other = build_speechllm(mc, task=Task(name="echo", instruction=" Repeat:"))
    assert other._suffix_ids == tok("</audio> Repeat:", add_special_tokens=False).input_ids


def test_targets_and_metric():
    utts = [Utterance(id="a", audio="/x.wav", text="the cat sat", duration=1.0, voice="v",
                      split="test", source="manifest")]
    assert ASR.targets(utts) == ["the cat sat"]
    assert score_task(ASR, ["the cat sat"], ["the cat"])["wer"] == pytest.approx(1 / 3)
    with pytest.raises(CompanionError, match="utterance a .*has no 'translation'"):
        Task(name="st", instruction=" Translate:", target="translation").targets(utts)
    with pytest.raises(CompanionError, match="metric 'rouge' is not known"):
        score_task(Task(name="sum", instruction=" Sum:", metric="rouge"), ["a"], ["a"])
    with pytest.raises(CompanionError, match="unknown task 'summarise'.*asr, asr-es"):
        get_task("summarise")


def test_every_task_is_one_entry_and_scores_by_its_metric():
    """Each task of TASKS: its metric and its written language's normaliser (an
    independent reference: jiwer on strings normalised by hand)."""
    import jiwer

    from lib.tasks import TASKS

    assert list(TASKS) == ["asr", "asr-es", "st-en-es", "st-es-en", "asr-fr", "st-en-de",
                           "st-fr-en"]
    es = TASKS["asr-es"]
    assert (es.hears, es.writes, es.target, es.metric) == ("es", "es", "text", "wer")
    assert es.instruction == ASR.instruction  # the model hears the language
    got = score_task(es, ["¿Qué fué lo que dijo?"], ["que fue lo dijo"])["wer"]
    assert got == pytest.approx(jiwer.wer("que fue lo que dijo", "que fue lo dijo"))
    st = TASKS["st-es-en"]
    assert (st.hears, st.writes, st.target, st.metric) == ("es", "en", "translation", "bleu")
    s = score_task(st, ["the cat sat on the mat"], ["the cat sat on the mat"])
    assert s["bleu"] == pytest.approx(100.0) and "bleu_signature" in s


def test_no_normaliser_for_an_unknown_language_is_one_line():
    from lib.evaluate.metrics import normalizer

    with pytest.raises(CompanionError, match="no WER normaliser for language 'de'"):
        normalizer("de")


def test_training_batches_carry_the_task_target(random_features):
    """FeatureSet.batch reads the field a task names; the default is the transcript."""
    import dataclasses

    data = random_features(3, dim=8)
    extra = [dataclasses.replace(u, text=u.text) for u in data.utterances]
    for u, k in zip(extra, range(3)):
        object.__setattr__(u, "translation", f"target {k}")
    from lib.data.features import FeatureSet

    fs = FeatureSet(extra, data.feats)
    assert fs.batch([2, 0])[2] == [extra[2].text, extra[0].text]
    assert fs.batch([2, 0], target="translation")[2] == ["target 2", "target 0"]
