"""Comparable positions for text and speech: the transcript tokens in both, the audio span
on its own (issue 8, part 3). Checked on a hand-built layout and against the tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.config.sections import ModelConfig
from lib.errors import CompanionError
from lib.score.redundancy import score_speech, score_text, speech_positions
from lib.build.speechllm import build_speechllm


def _layout():
    """Two rows, right padding. Row 0: P P A A A P T T E . ; row 1: P A A P T E . . . .
    (P prompt, A audio, T transcript token, E its closing <eos>, . padding)."""
    rows = ["PPAAAPTTE.", "PAAPTE...."]
    mask = torch.tensor([[c != "." for c in r] for r in rows])
    audio = torch.tensor([[c == "A" for c in r] for r in rows])
    text = torch.tensor([[c in "PTE" for c in r] for r in rows])
    labels = torch.tensor([[7 if c in "TE" else -100 for c in r] for r in rows])
    return {"attention_mask": mask.long(), "audio_mask": audio, "text_mask": text,
            "labels": labels}, rows


@pytest.mark.parametrize("positions,chars", [("all", "PATE"), ("audio", "A"),
                                             ("text", "PTE"), ("transcript", "T")])
def test_speech_positions_on_a_hand_built_layout(positions, chars):
    batch, rows = _layout()
    want = [[c in chars for c in r] for r in rows]
    assert speech_positions(batch, positions).tolist() == want


def test_speech_positions_bad_input():
    batch, _ = _layout()
    with pytest.raises(CompanionError, match="positions='nope'"):
        speech_positions(batch, "nope")
    del batch["labels"]
    with pytest.raises(CompanionError, match="with_targets=True"):
        speech_positions(batch, "transcript")


@pytest.fixture(scope="module")
def speech_model():
    mc = ModelConfig(encoder="tiny-whisper", decoder="tiny-gemma", projector_hidden=32,
                     lora_rank=4, lora_alpha=8)
    return build_speechllm(mc, seed=0).eval()


def test_transcript_positions_count_the_same_tokens_for_text_and_speech(speech_model,
                                                                         random_features):
    data = random_features(n=4)
    tok = speech_model.tokenizer
    # Counted from the tokenizer alone: each transcript's own tokens, in the speech input
    # as " text" (without its <eos>), in the text input as "text" (without <bos>).
    n_speech = sum(len(tok(" " + u.text, add_special_tokens=False).input_ids)
                   for u in data.utterances)
    n_text = sum(len(tok(u.text, add_special_tokens=False).input_ids)
                 for u in data.utterances)
    rs = score_speech(speech_model, data, batch_size=3, positions="transcript")
    rt = score_text(speech_model, None, [u.text for u in data.utterances], batch_size=3,
                    positions="transcript")
    assert rs.n_tokens == n_speech and rs.positions == "transcript"
    assert rt.n_tokens == n_text and rt.n_sequences == len(data)
    assert np.isfinite(rs.distance_last[0, 1:]).all()
    # "all" also counts the tokenizer's special tokens (<bos> where it adds one)
    ra = score_text(speech_model, None, [u.text for u in data.utterances], batch_size=3)
    assert ra.n_tokens == sum(len(tok(u.text).input_ids) for u in data.utterances)
    with pytest.raises(CompanionError, match="with_targets=True"):
        score_speech(speech_model, data, positions="transcript", with_targets=False)


def test_text_transcript_positions_leave_out_bos():
    from lib.build.components import load_decoder

    model, tok = load_decoder("tiny-llama")
    tok.add_bos_token = True  # as Llama's and Gemma's real tokenizers do
    texts = ["hello world", "the cat sat on the mat"]
    with_bos = [len(tok(t).input_ids) for t in texts]
    without = [len(tok(t, add_special_tokens=False).input_ids) for t in texts]
    assert with_bos != without  # this tokenizer adds <bos>: the test can tell them apart
    assert score_text(model, tok, texts).n_tokens == sum(with_bos)
    assert score_text(model, tok, texts, positions="transcript").n_tokens == sum(without)


def test_two_selections_from_one_pass_equal_two_separate_passes(speech_model, random_features):
    """Scoring transcript and audio positions together (one forward per batch) gives the
    same scores as scoring each selection on its own."""
    import numpy as np

    data = random_features(5, dim=64, base=20, step=5)
    both = score_speech(speech_model, data, batch_size=2, positions=("transcript", "audio"))
    for sel in ("transcript", "audio"):
        alone = score_speech(speech_model, data, batch_size=2, positions=sel)
        for field in ("distance_last", "distance_all", "bi"):
            np.testing.assert_allclose(getattr(both[sel], field), getattr(alone, field),
                                       rtol=1e-6, atol=1e-9)
        assert both[sel].n_tokens == alone.n_tokens and both[sel].positions == sel
