"""The training step's kernels: eager attention on a CPU and bf16 copies of the frozen
weights change no number the step computes, and the model comes back as it was."""

from __future__ import annotations

import torch
from torch import nn

from lib.build.components import decoder_body
from lib.config.sections import TrainConfig
from lib.train.kernels import TrainingKernels
from lib.train.loop import train_speechllm


def _step(model, data, kernels=None):
    """Loss and gradients of one bf16 training step on the first 4 utterances."""
    feats, lengths, texts = data.batch([0, 1, 2, 3])
    model.train()
    for p in model.parameters():
        p.grad = None
    with kernels if kernels is not None else torch.enable_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(feats, lengths, texts, reduction="sum")
        loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                           if p.requires_grad}


def _attention(model):
    return model.decoder.get_base_model().config._attn_implementation


def test_the_bf16_copies_give_the_same_bits_and_eager_the_same_function(random_features,
                                                                          tiny_speechllm):
    data = random_features(4, split="train", base=20, step=5)
    model = tiny_speechllm(lora_dropout=0.0)
    loaded = _attention(model)
    weights = {n: p for n, p in model.named_parameters()}
    sdpa_loss, sdpa_grads = _step(model, data)
    model.decoder.get_base_model().set_attn_implementation("eager")
    eager_loss, eager_grads = _step(model, data)  # fp32 weights cast by autocast every call
    model.decoder.get_base_model().set_attn_implementation(loaded)
    kernels = TrainingKernels(model, bf16=True)
    assert kernels.frozen is not None
    loss, grads = _step(model, data, kernels)
    assert torch.equal(loss, eager_loss)  # the same bf16 products, bit for bit
    assert all(torch.equal(grads[n], eager_grads[n]) for n in grads)
    # eager and sdpa attention: one function, rounded differently
    assert torch.allclose(loss, sdpa_loss, rtol=2e-2)
    # the model as it came: the same parameter objects (fp32), the same attention
    assert {n: p for n, p in model.named_parameters()} == weights
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert _attention(model) == loaded


def test_inside_the_kernels_the_frozen_weights_are_bf16_and_attention_is_eager(tiny_speechllm):
    model = tiny_speechllm(lora_dropout=0.0)
    head = model.decoder.get_output_embeddings()
    with TrainingKernels(model, bf16=True):
        assert head.weight.dtype == torch.bfloat16 and _attention(model) == "eager"
        lora = [m for n, m in model.decoder.named_modules() if n.endswith("lora_A.default")]
        assert lora and all(m.weight.dtype == torch.float32 for m in lora)  # trainable
        assert model.decoder.get_input_embeddings().weight.dtype == torch.float32
    with TrainingKernels(model, bf16=False):
        assert head.weight.dtype == torch.float32 and _attention(model) == "eager"
    assert head.weight.dtype == torch.float32
    # an exception inside gives the model back too
    try:
        with TrainingKernels(model, bf16=True):
            raise RuntimeError("killed")
    except RuntimeError:
        pass
    assert head.weight.dtype == torch.float32 and _attention(model) != "eager"
    assert all(isinstance(m.weight, nn.Parameter) for m in decoder_body(model.decoder).modules()
               if isinstance(m, nn.Linear))


def test_a_bf16_run_checks_its_dev_set_with_the_float32_model(tmp_path, random_features,
                                                              tiny_speechllm):
    """The dev check decodes in float32 between steps: the loop must leave the kernels for it
    (inside them a float32 decode would meet bf16 weights)."""
    data = random_features(4, split="train", base=20, step=5)
    cfg = TrainConfig(steps=2, batch_size=2, learning_rate=1e-3, warmup_steps=0,
                      checkpoint_every=10, dev_every=1, precision="bf16")
    seen = []

    def check(model):
        head = model.decoder.get_output_embeddings()
        seen.append((head.weight.dtype, _attention(model)))
        return {"dev_wer": 0.5, "dev_wer_ci95": [0.1, 0.9]}

    model = tiny_speechllm(lora_dropout=0.0)
    loaded = _attention(model)
    run = train_speechllm(model, data, cfg, tmp_path / "run", dev_check=check)
    assert run.finished and seen == [(torch.float32, loaded)] * 2


def test_a_model_trained_in_bf16_computes_in_float32_afterwards(tmp_path, random_features,
                                                                  tiny_speechllm):
    """accelerate's prepare wraps a model's forward in bf16 autocast on the model object: the
    loop must take it off, or every later float32 call of a model trained in the same
    process runs in bf16 (a run from nothing and a run reusing the model measured apart).
    Reference: an untouched model given the trained weights, called in float32."""
    data = random_features(4, split="train", base=20, step=5)
    cfg = TrainConfig(steps=2, batch_size=2, learning_rate=1e-3, warmup_steps=0,
                      checkpoint_every=10, precision="bf16")
    model = tiny_speechllm(lora_dropout=0.0)
    assert train_speechllm(model, data, cfg, tmp_path / "run").finished
    reference = tiny_speechllm(lora_dropout=0.0)
    reference.load_state_dict(model.state_dict())
    feats, lengths, texts = data.batch([0, 1, 2, 3])
    model.eval(), reference.eval()
    with torch.no_grad():
        loss = model(feats, lengths, texts, reduction="sum")
        expected = reference(feats, lengths, texts, reduction="sum")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_loss = reference(feats, lengths, texts, reduction="sum")
    assert not torch.equal(bf16_loss.float(), expected)  # the case can tell the two apart
    assert torch.equal(loss, expected)
    assert not {"forward", "_is_accelerate_prepared"} & set(vars(model))
