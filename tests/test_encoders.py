"""Chapter 6's encoders set beside each other: ``@half`` keeps the first half of the blocks
(its features are the full encoder's hidden state there, then the final norm), ``@random``
the architecture with seeded random weights; both for Whisper and WavLM stand-ins."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.build.components import build_encoder, encoder_variant
from lib.errors import CompanionError
from lib.data.features import encoder_fingerprint


def _wave(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(16000 * seconds)).astype(np.float32) * 0.1


@pytest.mark.parametrize("name", ["tiny-whisper", "tiny-wavlm"])
def test_half_keeps_half_the_blocks_and_gives_their_hidden_state(name):
    full, half = build_encoder(name), build_encoder(f"{name}@half")
    owner = (lambda m: m) if full.kind == "whisper" else (lambda m: m.encoder)
    n = len(owner(full.model).layers)
    assert len(owner(half.model).layers) == max(1, n // 2)
    assert half.hidden_size == full.hidden_size
    if full.kind == "whisper":  # the full encoder's hidden state after n // 2 blocks, normed
        seen = []
        hook = owner(full.model).layers[n // 2 - 1].register_forward_hook(
            lambda _m, _a, out: seen.append(out[0] if isinstance(out, tuple) else out))
        with torch.no_grad():
            full([_wave()])
            hook.remove()
            want = full.model.layer_norm(seen[0])
            got, lengths = half([_wave()])
        t = int(lengths[0])
        assert torch.allclose(got[0, :t], want[0, :t], atol=1e-5)
    assert encoder_fingerprint(half) != encoder_fingerprint(full)


def test_random_is_seeded_and_not_the_trained_weights():
    a, b = build_encoder("tiny-whisper@random"), build_encoder("tiny-whisper@random")
    trained = build_encoder("tiny-whisper")
    assert encoder_fingerprint(a) == encoder_fingerprint(b)
    assert encoder_fingerprint(a) != encoder_fingerprint(trained)
    assert not any(p.requires_grad for p in a.model.parameters())


def test_an_unknown_variant_is_one_line():
    assert encoder_variant("whisper-base") == ("whisper-base", None)
    with pytest.raises(CompanionError, match="unknown variant @quarter"):
        encoder_variant("whisper-base@quarter")


def test_the_papers_pairing_is_one_change_away():
    """``-p transfer_encoders [<wavlm>, <whisper>]``: each encoder's SpeechLLM (its
    projector sized to that encoder's width) hears its own encoder's features; the tiny
    random encoders stand for microsoft/wavlm-large and openai/whisper-large-v3."""
    from lib.build.speechllm import build_speechllm
    from lib.config.resolve import resolve
    from lib.recipes.encoders import encoder_config

    cfg = resolve(6, preset="tiny", changes={"transfer_encoders": ["tiny-wavlm",
                                                                   "tiny-whisper"]})
    for enc in cfg.transfer.encoders:
        mc, sub = encoder_config(cfg, enc)
        assert sub.models == (mc,) and mc.decoder == cfg.transfer.decoder
        model = build_speechllm(mc, with_encoder=True, seed=0).eval()
        feats, lengths = model.encoder([_wave(0.8)])
        with torch.no_grad():
            loss = model.loss(feats.float(), lengths, ["one two"])
        assert torch.isfinite(loss)


def test_each_encoder_trains_on_chapter_1s_corpus_without_measuring_the_levers_again(
        monkeypatch):
    """The levers are chapter 1's choice, measured with its first model: an encoder of
    chapter 6 (another model) trains on the corpus chapter 1 chose and measures nothing."""
    from lib.config.resolve import resolve
    from lib.recipes import encoders, levers

    cfg = resolve(6, preset="tiny")
    chosen = levers.lever_spec(cfg.corpus, "all")
    monkeypatch.setattr(encoders, "training_corpus", lambda c: chosen, raising=False)
    monkeypatch.setattr(levers, "measure_levers", lambda *a, **kw: pytest.fail("measured"))
    for enc in cfg.transfer.encoders:
        mc, sub = encoders.encoder_config(cfg, enc)
        assert sub.corpus == chosen and levers.training_corpus(sub) == chosen
