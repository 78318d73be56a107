"""Chapter 6's encoders set beside each other: one SpeechLLM per encoder of
``transfer_encoders``, every one given ``transfer_decoder`` and trained by chapter 1's recipe
and budget on chapter 1's corpus (book/06_one_backbone.ipynb).

The run's own encoder is chapter 1's model (reused from its run); the others are variants
(:data:`lib.build.components.ENCODER_VARIANTS`: Whisper-base after half its blocks, its
architecture with random frozen weights) or other checkpoints (the paper's WavLM and
Whisper-large under a paper preset). Each is encoded once (features cached by the encoder's
weights), trained once (its run folder keyed by its config), scored on chapter 1's first test
set and checked for reading the audio (chapter 1's reliance check). Stage: the chapters'
recipes. Explained in chapter 6 (book/06_one_backbone.ipynb).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from lib.build.components import ENCODER_VARIANTS, encoder_variant
from lib.config.sections import ModelConfig, Run
from lib.data.features import FeatureSet
from lib.evaluate.baselines import audio_reliance
from lib.recipes.ch01 import RELIANCE_UTTERANCES
from lib.recipes.levers import training_corpus
from lib.recipes.pipeline import ModelRun, prepare_features, train_and_evaluate
from lib.report.rules import LISTENS_GAP, reads_audio

def encoder_config(cfg: Run, encoder: str) -> tuple[ModelConfig, Run]:
    """The SpeechLLM of ``encoder`` with ``transfer_decoder`` (chapter 1's model config of
    that decoder, the encoder swapped) and the run that trains it: chapter 1's, with that
    one model, chapter 1's first test set and the corpus chapter 1 trained on
    (:func:`lib.recipes.levers.training_corpus`, given as set: the levers are chapter 1's
    choice, measured with its first model, not measured again with each encoder)."""
    base = next(m for m in cfg.models if m.decoder == cfg.transfer.decoder)
    mc = dataclasses.replace(base, encoder=encoder)
    return mc, dataclasses.replace(cfg, models=(mc,), test_data=cfg.test_data[:1],
                                   corpus=training_corpus(cfg), corpus_recipe="given")


def describe(encoder: str) -> str:
    """What an encoder of ``transfer_encoders`` is, in words."""
    base, variant = encoder_variant(encoder)
    return f"{base}, {ENCODER_VARIANTS[variant]}" if variant else f"{base}, pretrained"


@dataclasses.dataclass
class EncoderRun:
    """One encoder's SpeechLLM and its test set (features by that encoder)."""

    encoder: str
    run: ModelRun
    test: FeatureSet


def encoder_runs(cfg: Run) -> dict[str, EncoderRun]:
    """Every encoder of ``transfer_encoders`` with ``transfer_decoder``, trained once (the
    run's own encoder is chapter 1's run, reused), in the order given."""
    out = {}
    for enc in cfg.transfer.encoders:
        mc, sub = encoder_config(cfg, enc)
        train, tests = prepare_features(sub)
        run = train_and_evaluate(mc, sub, train, tests)
        del train  # the training features: the largest thing held, and no longer needed
        out[enc] = EncoderRun(enc, run, tests[sub.test_data[0]])
    return out


def encoder_table(cfg: Run, runs: dict[str, EncoderRun]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per encoder: what it is, its WER with its interval on chapter 1's first test set,
    its CTC head's, and chapter 1's reliance check (the loss after another clip's audio
    minus after its own, against :data:`lib.report.rules.LISTENS_GAP`)."""
    rows, record = [], {}
    test = cfg.test_data[0]
    for enc, e in runs.items():
        s = e.run.scores[test]
        rel = audio_reliance(e.run.model, e.test, n=RELIANCE_UTTERANCES)
        gap = rel["other_audio_loss"] - rel["own_audio_loss"]
        ctc = e.run.ctc_scores.get(test)
        record[enc] = {"what": describe(enc), "wer": s["wer"], "wer_ci95": s["wer_ci95"],
                       "ctc_head_wer": ctc["wer"] if ctc else None, "reliance_gap": gap,
                       "reads_audio": reads_audio(gap),
                       "minutes": e.run.train.result["provenance"]["wall_time_s"] / 60}
        lo, hi = s["wer_ci95"]
        rows.append({"encoder": enc, "what": describe(enc),
                     "WER % [95 % CI]": f"{100 * s['wer']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]",
                     "CTC head WER %": f"{100 * ctc['wer']:.1f}" if ctc else "–",
                     f"reliance gap (nats/token; reads the audio at {LISTENS_GAP:g})":
                         f"{gap:.2f} ({'reads' if reads_audio(gap) else 'does not read'})"})
    return pd.DataFrame(rows), record
