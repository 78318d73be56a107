"""bf16 autocast with the frozen weights cast once: the same numbers as plain autocast, the
copies remade when a weight changes, the model given back as it came."""

from __future__ import annotations

import pytest
import torch

from lib.build.autocast import FrozenBf16, bf16_autocast


def _loss(model, data, cast):
    feats, lengths, texts = data.batch([0, 1, 2])
    with torch.no_grad(), cast:
        return model.loss(feats, lengths, texts, reduction="sequence")


def test_the_copies_give_plain_autocast_bit_for_bit(random_features, tiny_speechllm):
    data = random_features(3)
    model = tiny_speechllm().eval()
    plain = _loss(model, data, torch.autocast("cpu", dtype=torch.bfloat16))
    ours = _loss(model, data, bf16_autocast(model.decoder, "cpu"))
    again = _loss(model, data, bf16_autocast(model.decoder, "cpu"))  # the kept copies
    assert torch.equal(plain, ours) and torch.equal(ours, again)
    feats, lengths, _ = data.batch([0, 1, 2])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        texts = model.generate(feats, lengths, 6)
    with torch.no_grad(), bf16_autocast(model.decoder, "cpu"):
        assert model.generate(feats, lengths, 6) == texts
    fp32 = _loss(model, data, bf16_autocast(model.decoder, "cpu", enabled=False))
    assert not torch.equal(fp32, plain) and torch.allclose(fp32, plain, rtol=5e-2)


@pytest.mark.parametrize("change", ["in place", "new storage"])
def test_a_changed_weight_gets_a_new_copy(random_features, tiny_speechllm, change):
    """A merge of adapters changes weights in place, a surgery may give them new storage:
    a copy kept from before would compute with the old weight."""
    data = random_features(3)
    model = tiny_speechllm().eval()
    _loss(model, data, bf16_autocast(model.decoder, "cpu"))  # copies made
    head = model.decoder.get_output_embeddings().weight
    with torch.no_grad():
        if change == "in place":
            head.mul_(3.0)
        else:
            head.data = head.data * 3.0
    plain = _loss(model, data, torch.autocast("cpu", dtype=torch.bfloat16))
    assert torch.equal(_loss(model, data, bf16_autocast(model.decoder, "cpu")), plain)


def test_the_model_comes_back_as_it_was(tiny_speechllm):
    model = tiny_speechllm().eval()
    weights = dict(model.named_parameters())
    head = model.decoder.get_output_embeddings()
    with FrozenBf16(model.decoder):
        assert head.weight.dtype == torch.bfloat16
        assert model.decoder.get_input_embeddings().weight.dtype == torch.float32
        assert all(p.dtype == torch.float32 for n, p in model.decoder.named_parameters()
                   if p.requires_grad)  # LoRA trains in float32
    with pytest.raises(RuntimeError):
        with bf16_autocast(model.decoder, "cpu"):
            raise RuntimeError("killed")
    assert dict(model.named_parameters()) == weights
    assert all(p.dtype == torch.float32 for p in model.parameters())
