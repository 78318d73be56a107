"""Healing a pruned SpeechLLM, and saving / reloading it: checked against decoders rebuilt
by hand, parameter counts worked out by hand, uninterrupted runs and file bytes."""

from __future__ import annotations

import dataclasses

import copy
import json
import re
from pathlib import Path

import pytest
import torch

from lib.config.sections import HealConfig, ModelConfig, TrainConfig
from lib.errors import CompanionError
from lib.heal.healing import HEAL_VARIANTS, heal, prepare_healing
from lib.build.checkpoint import load_speechllm, save_speechllm
from lib.prune.surgery import prune_speechllm
from lib.build.components import pruned_layers
from lib.prune.surgery import remove_layers
from references import rebuild_decoder
from lib.build.speechllm import SpeechLLM, build_speechllm

S, F = "sliding_attention", "full_attention"
# tiny-gemma: hidden 64, MLP 128; the projector stacks 5 frames of 64 -> 32 -> 64
PROJECTOR_PARAMS = (5 * 64) * 32 + 32 + 32 * 64 + 64
MLP_LORA_PER_LAYER = lambda r: r * (64 + 128) + r * (64 + 128) + r * (128 + 64)  # noqa: E731
# fp32 (chapter 1's training section: seed, precision, checkpoints) and healing's own
# budget, one rate for every trainable weight, as the references below were measured
TRAIN = TrainConfig(checkpoint_every=2, seed=0, precision="fp32")
CFG = HealConfig(steps=5, batch_size=2, learning_rate=1e-2, warmup_steps=1)  # rank 64
CFG4 = dataclasses.replace(CFG, lora_rank=4, lora_alpha=8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads; on a shared CPU they only wait. Restored."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _speech(seed=0):
    m = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-gemma",
                                    projector_hidden=32, lora_rank=4, lora_alpha=8), seed=seed)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for n, p in m.decoder.named_parameters():
            if "lora_B" in n:  # nonzero: the chapter-1 adapters change the outputs
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return m.eval()


@pytest.fixture(scope="module")
def pruned():
    """The tiny SpeechLLM with its adapters merged and layer 1 removed."""
    return prune_speechllm(_speech(), [1])


@pytest.fixture
def data(random_features):
    return random_features(4, split="train", base=20, step=5)




def _loss(model, data):
    f, ln, tx = data.batch(range(len(data)))
    with torch.no_grad():
        return float(model.loss(f, ln, tx))


def _decode(model, data, new=8):
    f, ln, _ = data.batch(range(len(data)))
    return model.generate(f, ln, max_new_tokens=new)


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------- pruning


def test_prune_speechllm_merges_the_adapters_then_removes(data):
    model = _speech()
    reference = SpeechLLM(None, copy.deepcopy(model.projector),
                          rebuild_decoder(copy.deepcopy(model.decoder).merge_and_unload(), [0, 2, 3],
                                   [S, S, F]),
                          model.tokenizer).eval()
    assert _loss(model, data) != pytest.approx(_loss(reference, data), rel=1e-3)
    out = prune_speechllm(model, [1])
    assert out is model
    assert not hasattr(model.decoder, "peft_config")
    assert not any("lora_" in n for n, _ in model.decoder.named_parameters())
    assert not any(p.requires_grad for p in model.decoder.parameters())
    assert pruned_layers(model.decoder) == [1] and len(model.decoder_layers) == 3
    assert list(model.decoder.config.layer_types) == [S, S, F]
    assert _loss(model, data) == pytest.approx(_loss(reference, data), rel=1e-5)
    assert _decode(model, data) == _decode(reference, data)


# ------------------------------------------------------------- variants by hand


@pytest.mark.parametrize("variant", list(HEAL_VARIANTS))
def test_each_variant_trains_what_it_says(variant, pruned, data):
    model = copy.deepcopy(pruned)
    before = _loss(model, data)
    info = prepare_healing(model, variant, rank=4, alpha=8)
    # removed original 1 of 4: original 2 (now 1) receives the cut
    layers = {"none": [], "projector": [], "decoder": [1], "both": [1],
              "lora-all": [0, 1, 2]}[variant]
    proj = variant in ("projector", "both", "lora-all")
    assert info["layers"] == layers
    assert info["projector"] == (PROJECTOR_PARAMS if proj else 0)
    assert info["lora"] == MLP_LORA_PER_LAYER(4) * len(layers)
    names = _trainable(model)
    lora = {n for n in names if "lora_" in n}
    assert {n for n in names if n.startswith("projector.")} == \
        ({f"projector.{k}" for k, _ in model.projector.named_parameters()} if proj else set())
    assert names == lora | {n for n in names if n.startswith("projector.")}
    where = {(int(re.search(r"\.layers\.(\d+)\.", n).group(1)),
              re.search(r"\.mlp\.(\w+)\.lora_", n).group(1)) for n in lora}
    assert where == {(j, t) for j in layers for t in ("gate_proj", "up_proj", "down_proj")}
    # fresh adapters change nothing yet
    assert _loss(model, data) == pytest.approx(before, rel=1e-6)


def test_heal_variant_none_trains_nothing(pruned, data, tmp_path):
    model = copy.deepcopy(pruned)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = heal(model, data, "none", CFG, TRAIN, base_run=tmp_path / "base")
    assert run.run_dir is None and run.train is None and run.record()["steps"] == 0
    assert not (tmp_path / "base").exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_healing_moves_only_the_variant_weights(pruned, data, tmp_path):
    for variant in ("decoder", "projector"):
        model = copy.deepcopy(pruned)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        run = heal(model, data, variant, CFG4, TRAIN, base_run=tmp_path / "base")
        assert run.run_dir.parent == tmp_path / "base" / "heal"
        assert run.run_dir.name.startswith(variant + "-")
        assert run.record()["steps"] == CFG4.steps
        trainable = _trainable(model)
        after = model.state_dict()
        for k, v in after.items():
            if k in before:  # an adapted linear's base weight is renamed, not changed
                assert torch.equal(before[k], v) == (k not in trainable), k
            else:
                base = before.get(k.replace("base_model.model.", "").replace(
                    ".base_layer", ""))
                assert "lora_" in k or torch.equal(base, v), k
        assert any(("lora_" in k) == (variant == "decoder") for k in trainable)
        # a second call with the same configuration reuses the finished run
        again = copy.deepcopy(pruned)
        run2 = heal(again, data, variant, CFG4, TRAIN, base_run=tmp_path / "base")
        assert run2.run_dir == run.run_dir and run2.train.cached
        for (k, a), (_, b) in zip(sorted(model.trainable_state_dict().items()),
                                  sorted(again.trainable_state_dict().items())):
            assert torch.equal(a, b), k


# ----------------------------------------------------------------------- 6. resuming


@pytest.mark.parametrize("variant", ["both", "projector"])
def test_killed_heal_resumes_to_the_same_weights(variant, pruned, data, tmp_path):
    base = tmp_path / "base"
    straight = copy.deepcopy(pruned)
    with torch.random.fork_rng(devices=[]):  # whatever state the process is in
        torch.manual_seed(100)
        heal(straight, data, variant, CFG4, TRAIN, base_run=base,
             run_dir=tmp_path / "a")
    with torch.random.fork_rng(devices=[]):  # a killed run, in another process's state
        torch.manual_seed(200)
        first = heal(copy.deepcopy(pruned), data, variant, CFG4, TRAIN, base_run=base,
                     run_dir=tmp_path / "b", stop_after=3)
    assert not first.train.finished
    assert not (tmp_path / "b" / "final").exists()
    resumed = copy.deepcopy(pruned)
    second = heal(resumed, data, variant, CFG4, TRAIN, base_run=base,
                  run_dir=tmp_path / "b")
    assert second.train.resumed_from == 3 and second.train.finished
    a, b = straight.trainable_state_dict(), resumed.trainable_state_dict()
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # and healing did move them
    start = copy.deepcopy(pruned)
    prepare_healing(start, variant, rank=4, alpha=8)
    assert any(not torch.equal(v, start.trainable_state_dict()[k]) for k, v in a.items())


def test_fresh_adapters_depend_on_the_seed_only(pruned):
    """The same healing configuration starts from the same adapters, whatever the global
    random state; the global state is left as it was."""
    states = []
    for global_seed in (1, 2):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(global_seed)
            next_draw = torch.randn(3)
            torch.manual_seed(global_seed)
            m = copy.deepcopy(pruned)
            prepare_healing(m, "both", rank=4, alpha=8, seed=0)
            assert torch.equal(torch.randn(3), next_draw)  # the global state is untouched
        states.append({k: v for k, v in m.trainable_state_dict().items() if "lora_A" in k})
    assert states[0].keys() and states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    m = copy.deepcopy(pruned)
    prepare_healing(m, "both", rank=4, alpha=8, seed=1)
    other = {k: v for k, v in m.trainable_state_dict().items() if "lora_A" in k}
    assert any(not torch.equal(other[k], states[0][k]) for k in other)


# ------------------------------------------------------------------- 3. save / reload


def test_saved_pruned_and_healed_speechllm_reloads_the_same(data, tmp_path):
    from transformers import AutoModelForCausalLM

    model = prune_speechllm(_speech(), [1])
    prune_speechllm(model, [1])  # the second 1 is the original 2
    assert pruned_layers(model.decoder) == [1, 2]
    heal(model, data, "both", HealConfig(steps=3, batch_size=2, learning_rate=1e-2,
                                         warmup_steps=0, lora_rank=4, lora_alpha=8),
         TrainConfig(checkpoint_every=10, precision="fp32"), base_run=tmp_path / "base")
    assert hasattr(model.decoder, "peft_config")  # healed adapters, not merged yet
    loss, hyps = _loss(model, data), _decode(model, data)
    folder = save_speechllm(model, tmp_path / "saved", extra={"note": "test"})
    meta = json.loads((folder / "speechllm.json").read_text())
    assert meta["pruned_layers"] == [1, 2] and meta["task"] == "asr" and meta["note"] == "test"
    cfg = json.loads((folder / "decoder" / "config.json").read_text())
    assert cfg["pruned_layers"] == [1, 2] and cfg["num_hidden_layers"] == 2
    assert cfg["layer_types"] == [S, F] and cfg["unpruned_num_hidden_layers"] == 4
    back = load_speechllm(folder)
    assert not hasattr(back.decoder, "peft_config") and len(back.decoder_layers) == 2
    assert pruned_layers(back.decoder) == [1, 2]
    assert _loss(back, data) == pytest.approx(loss, rel=1e-5)
    assert _decode(back, data) == hyps
    # plain transformers reads the decoder by itself
    plain = AutoModelForCausalLM.from_pretrained(folder / "decoder")
    assert plain.config.num_hidden_layers == 2
    for k, v in back.decoder.state_dict().items():
        assert torch.equal(v, plain.state_dict()[k]), k


# ----------------------------------------------------------------------- 9. bad input


def test_healing_an_unpruned_model_is_an_error(data, tmp_path):
    model = _speech()
    with pytest.raises(CompanionError, match="not pruned") as e:
        heal(model, data, "both", CFG, TRAIN, base_run=tmp_path / "base")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "base").exists()
    merged = copy.deepcopy(model)
    merged.decoder = merged.decoder.merge_and_unload()
    with pytest.raises(CompanionError, match="not pruned"):
        prepare_healing(merged, "projector")


def test_healing_with_adapters_still_on_is_an_error(pruned):
    model = _speech()
    remove_layers(model.decoder, [1])  # pruned through the wrapper, adapters not merged
    with pytest.raises(CompanionError, match="adapters"):
        prepare_healing(model, "both")


def test_unknown_variant_is_an_error(pruned, data, tmp_path):
    for call in (lambda: prepare_healing(copy.deepcopy(pruned), "everything"),
                 lambda: heal(copy.deepcopy(pruned), data, "everything", CFG, TRAIN,
                              tmp_path)):
        with pytest.raises(CompanionError) as e:
            call()
        assert "'everything'" in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_resuming_from_a_folder_of_another_configuration_is_refused(pruned, data, tmp_path):
    run = tmp_path / "run"
    heal(copy.deepcopy(pruned), data, "projector", CFG, TRAIN, base_run=tmp_path, run_dir=run,
         stop_after=2)
    before = _snapshot(run)
    assert "heal_config.json" in before and "checkpoint/trainable.safetensors" in before
    other_cfg = dataclasses.replace(CFG, learning_rate=5e-3)
    for variant, cfg in (("projector", other_cfg), ("both", CFG)):
        with pytest.raises(CompanionError) as e:
            heal(copy.deepcopy(pruned), data, variant, cfg, TRAIN, base_run=tmp_path,
                 run_dir=run)
        assert str(run) in str(e.value) and "\n" not in str(e.value)
        assert _snapshot(run) == before


def test_saving_into_a_non_empty_folder_needs_overwrite(pruned, data, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    (folder / "sub").mkdir()
    (folder / "sub" / "w.bin").write_bytes(b"\x00\x01")
    before = _snapshot(folder)
    model = copy.deepcopy(pruned)
    with pytest.raises(CompanionError) as e:
        save_speechllm(model, folder)
    assert str(folder) in str(e.value) and "\n" not in str(e.value)
    assert _snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left
    save_speechllm(model, folder, overwrite=True)
    assert not (folder / "keep.txt").exists()
    assert _loss(load_speechllm(folder), data) == pytest.approx(_loss(model, data), rel=1e-5)
    # an empty folder is fine without overwrite
    (tmp_path / "empty").mkdir()
    save_speechllm(model, tmp_path / "empty")
    with pytest.raises(CompanionError, match="speechllm.json"):
        load_speechllm(tmp_path / "empty" / "decoder")
