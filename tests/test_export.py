"""A pruned SpeechLLM exported as a product: from a training run folder by one command, with
a model card, reloaded in a fresh process with plain transformers and giving the in-memory
outputs exactly; an export folder that holds anything is refused, nothing written."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lib.prune.export import (CARD, MODEL_CONFIG, check_out_folder, export_model, load_run,
                              main, model_card, reload_check)
from lib.build.speechllm import build_speechllm
from lib.config.sections import ModelConfig
from lib.errors import CompanionError
from lib.fileio import save_tensors
from lib.prune.surgery import prune_speechllm

MC = ModelConfig(encoder="tiny-whisper", decoder="tiny-llama", projector_hidden=16, lora_rank=4,
                 lora_alpha=8)


def _run_folder(tmp_path):
    """A finished training run as the book leaves one: its model config and final weights
    (LoRA moved off zero, so merging them changes the decoder)."""
    model = build_speechllm(MC, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    run = tmp_path / "runs" / "tiny-llama-abc"
    (run / "final").mkdir(parents=True)
    save_tensors(run / "final" / "trainable.safetensors", model.trainable_state_dict())
    (run / MODEL_CONFIG).write_text(json.dumps(dataclasses.asdict(MC)))
    return run, model


def test_a_run_folder_loads_as_it_was_trained(tmp_path):
    run, model = _run_folder(tmp_path)
    back = load_run(run)
    feats, lengths = torch.randn(1, 20, 64), torch.tensor([20])
    with torch.no_grad():
        assert torch.equal(back.loss(feats, lengths, ["a b"]), model.eval().loss(
            feats, lengths, ["a b"]))


def test_the_export_reloads_in_a_fresh_process_exactly(tmp_path):
    run, _ = _run_folder(tmp_path)
    model = prune_speechllm(load_run(run), [1])
    folder = export_model(model, tmp_path / "out", {"removed": [1], "n_layers": 4,
                                                    "decoder": "tiny-llama",
                                                    "scores": {"asr": {"metric": "WER %",
                                                                       "full": "50.0 [40, 60]",
                                                                       "this": "55.0 [45, 65]"}}})
    card = (folder / CARD).read_text()
    assert "decoder layers 1 removed (1 of 4)" in card and "| asr | WER % |" in card
    feats = torch.randn(2, 30, 64, generator=torch.Generator().manual_seed(1))
    check = reload_check(model, folder, feats, torch.tensor([30, 22]), ["one", "two three"],
                         new_tokens=4)
    assert check["exact"] and check["max_loss_gap"] == 0.0 and check["same_tokens"]


def test_a_different_model_is_not_exact(tmp_path):
    """The check can say no: a saved model that is not the one in memory."""
    run, _ = _run_folder(tmp_path)
    folder = export_model(prune_speechllm(load_run(run), [1]), tmp_path / "out", {})
    other = prune_speechllm(load_run(run), [2])
    check = reload_check(other, folder, torch.randn(1, 30, 64), torch.tensor([30]), ["one"],
                         new_tokens=4)
    assert not check["exact"] and check["max_loss_gap"] > 0


def test_the_command_exports_and_refuses_a_folder_in_use(tmp_path, capsys):
    run, _ = _run_folder(tmp_path)
    assert main([str(run), "--layers", "2", "--out", str(tmp_path / "cli")]) == 0
    assert "the same outputs exactly" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / "speechllm.json").read_text())["pruned_layers"] == [2]
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    assert main([str(run), "--layers", "2", "--out", str(used)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: export folder") and "not empty" in err
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
    assert main([str(tmp_path), "--layers", "2", "--out", str(tmp_path / "x")]) == 2
    assert "not a finished training run" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bad_layers_and_folders_are_one_line(tmp_path):
    run, _ = _run_folder(tmp_path)
    assert main([str(run), "--layers", "a,b", "--out", str(tmp_path / "y")]) == 2
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CompanionError, match="exists and is not empty"):
        check_out_folder(f)
    assert model_card({}).startswith("# A pruned SpeechLLM")
