"""SpeechLLM construction, checked against independent references on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.config.sections import ModelConfig
from lib.errors import CompanionError
from lib.build.model_configs import projector_parameters
from lib.build.components import Projector, build_encoder, find_decoder_layers
from lib.build.speechllm import build_speechllm, count_parameters


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gemma"])
def model(request):
    torch.manual_seed(0)
    mc = ModelConfig(encoder="tiny-whisper", decoder=request.param, projector_hidden=32,
                     lora_rank=4, lora_alpha=8)
    m = build_speechllm(mc, seed=0)
    m.eval()
    return m


def _feats(lengths, dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), dim, generator=g)
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    return x, torch.tensor(lengths)


def test_projector_stacks_k_frames_then_mlp():
    torch.manual_seed(0)
    p = Projector(in_dim=3, out_dim=2, stack=4, hidden=5)
    feats, lengths = _feats([10, 7], dim=3)
    out, out_len = p(feats, lengths)
    # Reference: pad T=10 to 12, concatenate frames 4t..4t+3, apply the two linears by hand.
    padded = torch.cat([feats, torch.zeros(2, 2, 3)], 1)
    w1, b1 = p.net[0].weight, p.net[0].bias
    w2, b2 = p.net[2].weight, p.net[2].bias
    for t in range(3):
        cat = padded[:, 4 * t: 4 * t + 4].reshape(2, 12)
        ref = torch.nn.functional.gelu(cat @ w1.T + b1) @ w2.T + b2
        torch.testing.assert_close(out[:, t], ref)
    assert out.shape == (2, 3, 2)
    assert out_len.tolist() == [3, 2]  # ceil(10/4), ceil(7/4)
    assert sum(x.numel() for x in p.parameters()) == projector_parameters(3, 2, 4, 5)


def test_projector_rejects_bad_stack():
    with pytest.raises(CompanionError, match="projector_stack"):
        Projector(3, 2, stack=0)


def test_inputs_layout_and_labels(model):
    feats, lengths = _feats([15, 8])
    batch = model.build_inputs(feats, lengths, ["hello world", "a b"])
    n_audio = [3, 2]  # ceil(15/5), ceil(8/5)
    assert batch["audio_mask"].sum(1).tolist() == n_audio
    for i, text in enumerate(["hello world", "a b"]):
        target = model.tokenizer(" " + text, add_special_tokens=False).input_ids
        labels = batch["labels"][i][batch["labels"][i] != -100].tolist()
        assert labels == target + [model.eos_id]
        n_prompt = len(model._prefix_ids) + n_audio[i] + len(model._suffix_ids)
        assert int(batch["attention_mask"][i].sum()) == n_prompt + len(target) + 1
    # audio, text and padding never overlap
    assert not (batch["audio_mask"] & batch["text_mask"]).any()
    assert ((batch["audio_mask"] | batch["text_mask"]) == batch["attention_mask"].bool()).all()


def test_loss_matches_full_logits_cross_entropy(model):
    """The target-only logits shortcut equals cross-entropy over the full logits."""
    feats, lengths = _feats([15, 8])
    targets = ["the cat sat", "on the mat today"]
    with torch.no_grad():
        fast = model.loss(feats, lengths, targets)
        batch = model.build_inputs(feats, lengths, targets)
        logits = model.decoder(inputs_embeds=batch["inputs_embeds"],
                               attention_mask=batch["attention_mask"]).logits
        ref = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


def test_batched_greedy_equals_one_by_one_without_cache(model):
    """Left-padded batched generation with KV cache == per-utterance argmax loop."""
    feats, lengths = _feats([15, 6, 11], seed=1)
    batched = model.generate(feats, lengths, max_new_tokens=6)
    for i in range(3):
        single = model.build_inputs(feats[i:i + 1, : lengths[i]], lengths[i:i + 1], None)
        emb, mask = single["inputs_embeds"], single["attention_mask"]
        table = model.decoder.get_input_embeddings()
        ids = []
        with torch.no_grad():
            for _ in range(6):
                logits = model.decoder(inputs_embeds=emb, attention_mask=mask,
                                       use_cache=False).logits[0, -1]
                nxt = int(logits.argmax())
                if nxt == model.eos_id:
                    break
                ids.append(nxt)
                emb = torch.cat([emb, table(torch.tensor([[nxt]]))], 1)
                mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], 1)
        ref = model.tokenizer.decode(ids, skip_special_tokens=True).strip()
        assert batched[i] == ref


def test_decoder_layers_is_the_module_list(model):
    layers = model.decoder_layers
    assert isinstance(layers, torch.nn.ModuleList)
    assert len(layers) == model.decoder.config.num_hidden_layers


def test_find_decoder_layers_error_names_the_class():
    with pytest.raises(CompanionError, match="Linear"):
        find_decoder_layers(torch.nn.Linear(2, 2))


def test_trainable_parameters_are_projector_and_lora(model):
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("projector.") or "lora_" in n for n in names)
    counts = count_parameters(model)
    assert counts["projector"] == sum(p.numel() for p in model.projector.parameters())
    assert counts["lora"] > 0
    state = model.trainable_state_dict()
    assert set(state) == set(names)


def test_whisper_short_forward_equals_stock_encoder_on_30s_input():
    """Given a full 30 s clip, the short-input forward is the stock WhisperEncoder forward."""
    enc = build_encoder("tiny-whisper")
    wave = np.random.default_rng(0).normal(0, 0.1, 16000 * 30).astype(np.float32)
    ours, lengths = enc([wave])
    fe = enc.feature_extractor(wave, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        ref = enc.model(fe.input_features).last_hidden_state
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert lengths.tolist() == [1500]


def test_whisper_short_forward_lengths_and_batch_independence():
    enc = build_encoder("tiny-whisper")
    rng = np.random.default_rng(1)
    a = rng.normal(0, 0.1, 16000).astype(np.float32)  # 1 s -> 50 frames
    b = rng.normal(0, 0.1, 8000).astype(np.float32)  # 0.5 s -> 25 frames
    feats, lengths = enc([a, b])
    assert lengths.tolist() == [50, 25]
    # Each clip's frames are those it gets alone, the padded short one included, in
    # either order.
    for clip, n, row in ((a, 50, 0), (b, 25, 1)):
        alone, alone_lengths = enc([clip])
        assert alone_lengths.tolist() == [n]
        torch.testing.assert_close(feats[row, :n], alone[0, :n], rtol=1e-4, atol=1e-4)
    swapped, _ = enc([b, a])
    torch.testing.assert_close(swapped[0, :25], feats[1, :25], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(swapped[1, :50], feats[0, :50], rtol=1e-4, atol=1e-4)


def test_wavlm_encoder_lengths():
    enc = build_encoder("tiny-wavlm")
    waves = [np.random.default_rng(2).normal(0, 0.1, n).astype(np.float32)
             for n in (16000, 12000)]
    feats, lengths = enc(waves)
    ref = enc.model._get_feat_extract_output_lengths(torch.tensor([16000, 12000]))
    assert lengths.tolist() == ref.tolist()
    assert feats.shape[-1] == enc.hidden_size


def test_encoder_rejects_empty_audio():
    enc = build_encoder("tiny-whisper")
    with pytest.raises(CompanionError, match="zero-length"):
        enc([np.zeros(0, dtype=np.float32)])


def test_bad_lora_target_is_named():
    mc = ModelConfig(encoder="tiny-whisper", decoder="tiny-llama", projector_hidden=8,
                     lora_rank=2, lora_targets=("nope_proj",))
    with pytest.raises(CompanionError, match="nope_proj"):
        build_speechllm(mc)


def test_pretrained_decoder_is_the_llm_without_adapters():
    """With LoRA switched off, the decoder computes exactly what the pretrained LLM does."""
    from lib.build.components import load_decoder
    from lib.build.adapters import pretrained_decoder

    m = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                    projector_hidden=8, lora_rank=4), seed=0)
    m.eval()  # no LoRA dropout
    with torch.no_grad():  # make the adapters matter (lora_B starts at zero)
        for name, p in m.decoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = torch.tensor([[5, 9, 23, 41, 7]])
    llm, _ = load_decoder("tiny-llama")
    with torch.no_grad():
        ref = llm(input_ids=ids).logits
        adapted = m.decoder(input_ids=ids).logits
        with pretrained_decoder(m) as base:
            off = base.decoder(input_ids=ids).logits
        again = m.decoder(input_ids=ids).logits
    torch.testing.assert_close(off, ref)
    assert not torch.allclose(adapted, ref)
    torch.testing.assert_close(again, adapted)  # adapters back on after the block


def test_lora_update_norms_against_the_output_change():
    """||scale * B A||_F / ||W||_F, checked by feeding the identity through each adapted layer."""
    from lib.build.adapters import lora_update_norms, pretrained_decoder

    m = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                    projector_hidden=8, lora_rank=4), seed=0)
    m.eval()
    fresh = lora_update_norms(m)
    n_layers = len(m.decoder_layers)
    assert len(fresh) == 4 * n_layers and (fresh["relative_update"] == 0).all()  # B = 0
    assert sorted(set(fresh["layer"])) == list(range(n_layers))
    with torch.no_grad():
        for name, p in m.decoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    got = lora_update_norms(m).set_index(["layer", "module"])["relative_update"]
    for i, layer in enumerate(m.decoder_layers):
        for mod in ("q_proj", "v_proj"):
            lin = getattr(layer.self_attn, mod)
            eye = torch.eye(lin.in_features)
            with torch.no_grad():
                on = lin(eye)
                with pretrained_decoder(m):
                    off = lin(eye)  # = W^T, with the adapter switched off
            ref = float((on - off).norm() / off.norm())
            assert got[(i, mod)] == pytest.approx(ref, rel=1e-5) and ref > 0
    plain = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                        projector_hidden=8, lora_rank=0), seed=0)
    assert lora_update_norms(plain).empty
