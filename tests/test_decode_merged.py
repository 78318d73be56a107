"""A model with LoRA adapters is decoded with them merged into its weights, put back bit
for bit after (lib.build.adapters.adapters_merged): the adapted model's function."""

from __future__ import annotations

import pytest
import torch

from lib.build.speechllm import SpeechLLM
from lib.config.sections import EvalConfig
from lib.evaluate.decode import precision_key, transcribe
from lib.prune.surgery import pruned_copy
from references import adapted_speechllm

EV = EvalConfig(batch_size=2, max_new_tokens=6, precision="fp32")


@pytest.fixture(scope="module")
def adapted():
    """Tiny Llama with LoRA whose B is non-zero (a trained adapter), dropout off."""
    return adapted_speechllm("tiny-llama").eval()


def _slow_greedy(model: SpeechLLM, feats, lengths, steps: int) -> list[str]:
    """The reference: the adapted model as it is (adapters unmerged), its whole sequence run
    again for every token, no cache, the most likely token appended, stopped at eos."""
    batch = model.build_inputs(feats, lengths, None, left_pad=True)
    emb, mask = batch["inputs_embeds"], batch["attention_mask"]
    out = [[] for _ in range(emb.shape[0])]
    done = [False] * emb.shape[0]
    table = model.decoder.get_input_embeddings()
    with torch.no_grad():
        for _ in range(steps):
            logits = model.decoder(inputs_embeds=emb, attention_mask=mask).logits[:, -1]
            nxt = logits.argmax(-1)
            for i, t in enumerate(nxt.tolist()):
                done[i] = done[i] or t == model.eos_id
                if not done[i]:
                    out[i].append(t)
            emb = torch.cat([emb, table(nxt)[:, None].to(emb.dtype)], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return [model.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out]


def test_a_decode_is_the_adapted_models_greedy_decode(adapted, random_features):
    data = random_features(n=4)
    hyps = transcribe(adapted, data, EV)
    feats, lengths, _ = data.batch(list(range(4)))
    want = []
    for i in range(4):  # one at a time: no padding in the reference
        f, n, _ = data.batch([i])
        want += _slow_greedy(adapted, f, n, EV.max_new_tokens)
    assert hyps == want
    assert any(hyps)  # the reference wrote something to compare


def _lora_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.decoder.modules() if isinstance(m, BaseTunerLayer)]


def test_every_generate_runs_merged_weights_and_the_model_is_put_back(
        adapted, random_features, monkeypatch):
    seen = []
    generate = SpeechLLM._generate

    def spy(self, *args, **kwargs):
        seen.append([m.merged for m in _lora_layers(self)])
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(SpeechLLM, "_generate", spy)
    before = {k: v.clone() for k, v in adapted.state_dict().items()}
    transcribe(adapted, random_features(n=4), EV)
    assert seen and all(all(s) and s for s in seen)  # every layer merged in every call
    assert not any(m.merged for m in _lora_layers(adapted))  # apart again
    after = adapted.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit for bit


def test_the_weights_are_put_back_when_the_decode_fails(adapted):
    from lib.build.adapters import adapters_merged

    before = {k: v.clone() for k, v in adapted.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with adapters_merged(adapted):
            assert all(m.merged for m in _lora_layers(adapted))
            raise RuntimeError("boom")
    assert not any(m.merged for m in _lora_layers(adapted))
    assert all(torch.equal(before[k], v) for k, v in adapted.state_dict().items())


def test_a_cached_decode_says_its_adapters_were_merged(adapted):
    assert precision_key(adapted, EV) == {"adapters": "merged, cast after"}
    assert precision_key(pruned_copy(adapted, [0]), EV) == {}  # merged already: key as before


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_dev_check_that_decodes_leaves_training_where_it_was(tmp_path, random_features,
                                                               precision):
    """Training with a dev check that decodes (adapters merged, put back) ends on the same
    weights, bit for bit, as training whose dev check decodes nothing."""
    from lib.config.sections import TrainConfig
    from lib.train.loop import train_speechllm

    data = random_features(4, split="train", base=20, step=5)
    cfg = TrainConfig(precision=precision, projector_learning_rate=None, steps=4,
                      batch_size=2, learning_rate=1e-2, warmup_steps=0, checkpoint_every=100,
                      dev_every=1)
    ev = EvalConfig(batch_size=2, max_new_tokens=4, precision=precision)
    ends = []
    for name, check in (("quiet", lambda m: {"n": 0}),
                        ("decodes", lambda m: {"n": len(transcribe(m, data, ev))})):
        model = adapted_speechllm("tiny-llama")
        train_speechllm(model, data, cfg, tmp_path / name, dev_check=check)
        ends.append({k: v.clone() for k, v in model.state_dict().items()})
    assert ends[0].keys() == ends[1].keys()
    assert all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])


def test_a_bf16_decode_after_bf16_work_reads_the_merged_weights(random_features):
    """bf16 work on the model first (a forward under bf16 autocast, as a loss pass or a
    training step makes) keeps bf16 copies of the weights as they were; the decode after it
    must read the merged weights, as a copy of the model with no such work behind it does."""
    import copy

    from lib.build.autocast import bf16_autocast

    model = adapted_speechllm("tiny-llama").eval()
    data = random_features(n=4)
    ev = EvalConfig(batch_size=2, max_new_tokens=6, precision="bf16")
    want = transcribe(copy.deepcopy(model), data, ev)
    feats, lengths, _ = data.batch(list(range(4)))
    with torch.no_grad(), bf16_autocast(model.decoder, "cpu"):
        model.loss(feats, lengths, ["a b", "c", "d e f", "g"])
    assert transcribe(model, data, ev) == want


def test_a_model_merged_in_place_after_bf16_work_runs_its_merged_weights(random_features):
    """The same for merging for good (pruning, saving): a bf16 loss after the merge is the
    loss of a copy merged with no bf16 work behind it."""
    import copy

    from lib.build.adapters import merge_adapters
    from lib.build.autocast import bf16_autocast

    model = adapted_speechllm("tiny-llama").eval()
    data = random_features(n=4)
    feats, lengths, _ = data.batch(list(range(4)))
    texts = ["a b", "c", "d e f", "g"]

    def loss(m):
        with torch.no_grad(), bf16_autocast(m.decoder, "cpu"):
            return m.loss(feats, lengths, texts)

    want = loss(merge_adapters(copy.deepcopy(model)))
    loss(model)  # bf16 copies of the weights before the merge
    assert torch.equal(loss(merge_adapters(model)), want)
