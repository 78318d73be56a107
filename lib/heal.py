"""Healing a pruned SpeechLLM: LoRA on the MLP of the layer that receives the cut, the
projector optionally unfrozen, then save and reload the result with plain transformers.

:func:`prune_speechllm` merges the decoder's LoRA adapters into its weights and removes
the layers for good (:func:`lib.prune.remove_layers`); :func:`prepare_healing` makes the
parameters of one healing variant trainable; :func:`heal` trains them with the training
loop of chapter 1 (:func:`lib.train.train_speechllm`: AdamW without weight decay, linear
warm-up and decay, resumable checkpoints) in a run folder keyed by the base run, the layers
removed, the variant and the schedule. :func:`save_speechllm` / :func:`load_speechllm`
write the decoder with ``save_pretrained`` and the projector beside it. Stage: heal.
Explained in chapter 4 (book/04_healing.ipynb).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from lib.config import HEAL_VARIANTS as VARIANT_NAMES
from lib.config import TrainConfig, config_hash, to_dict
from lib.errors import CompanionError
from lib.fileio import load_json, provenance, save_json
from lib.prune import pruned_layers, receiving_layers, remove_layers

if TYPE_CHECKING:
    from lib.features import FeatureSet
    from lib.speechllm import SpeechLLM
    from lib.train import TrainRun

HEAL_VARIANTS = {
    "none": (False, "none"),            # the pruned model as it is
    "projector": (True, "none"),        # projector only
    "decoder": (False, "receiving"),    # LoRA on the receiving layers' MLPs only
    "both": (True, "receiving"),        # the paper's recipe: LoRA there and the projector
    "lora-all": (True, "all"),          # LoRA on every layer's MLP, and the projector
}
"""Variant -> (projector trains, where the LoRA goes); the names are lib.config's."""
assert tuple(HEAL_VARIANTS) == VARIANT_NAMES

MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
"""The MLP's linear layers in Llama, Qwen2 and Gemma3."""


def merge_adapters(model: "SpeechLLM") -> "SpeechLLM":
    """Merge the decoder's peft LoRA adapters into its weights (a plain transformers model)."""
    if hasattr(model.decoder, "merge_and_unload"):
        model.decoder = model.decoder.merge_and_unload()
    return model


def prune_speechllm(model: "SpeechLLM", layers: Sequence[int]) -> "SpeechLLM":
    """Merge the adapters, then remove decoder ``layers`` for good (in place; returned)."""
    merge_adapters(model)
    remove_layers(model.decoder, layers)
    model.decoder.requires_grad_(False)
    return model


def check_variant(variant: str) -> str:
    if variant not in HEAL_VARIANTS:
        raise CompanionError(f"unknown healing variant {variant!r}: use any of "
                             f"{', '.join(HEAL_VARIANTS)}")
    return variant


def heal_targets(model: "SpeechLLM", variant: str) -> list[int]:
    """Decoder layers (indices in the pruned model) whose MLP gets LoRA in ``variant``."""
    where = HEAL_VARIANTS[check_variant(variant)][1]
    removed = pruned_layers(model.decoder)
    if not removed:
        raise CompanionError("this model was not pruned (its config records no "
                             "pruned_layers): prune it first with prune_speechllm(model, "
                             "layers), then heal")
    if where == "none":
        return []
    if where == "all":
        return list(range(len(model.decoder_layers)))
    original = int(model.decoder.config.unpruned_num_hidden_layers)
    return receiving_layers(removed, original)


def prepare_healing(model: "SpeechLLM", variant: str, rank: int = 64, alpha: int = 128,
                    dropout: float = 0.0, seed: int = 0) -> dict[str, int]:
    """Make ``variant``'s parameters trainable (everything else frozen).

    The new adapters are initialised from ``seed`` (the global random state is left as it
    was), so the same healing configuration always starts from the same weights.

    Returns:
        ``{"projector": n, "lora": n, "layers": [...]}``: trainable parameters and the
        layers whose MLP has LoRA.
    """
    from peft import LoraConfig, get_peft_model

    targets = heal_targets(model, variant)
    if hasattr(model.decoder, "peft_config"):
        raise CompanionError("the decoder still has adapters: prune with prune_speechllm "
                             "(which merges them) before healing")
    if rank < 1:
        raise CompanionError(f"heal_lora_rank={rank}: use a positive integer (paper: 64)")
    model.requires_grad_(False)
    train_projector = HEAL_VARIANTS[variant][0]
    model.projector.requires_grad_(train_projector)
    if targets:
        cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                         target_modules=list(MLP_TARGETS), layers_to_transform=targets,
                         layers_pattern="layers", bias="none")
        devices = [model.device.index or 0] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            model.decoder = get_peft_model(model.decoder, cfg)
    lora = sum(p.numel() for n, p in model.decoder.named_parameters()
               if p.requires_grad and "lora_" in n)
    proj = sum(p.numel() for p in model.projector.parameters()) if train_projector else 0
    return {"projector": proj, "lora": lora, "layers": targets}


@dataclass
class HealRun:
    """A healing run: where it lives, what trained, and its training record."""

    variant: str
    run_dir: Path | None
    trainable: dict[str, Any]
    train: "TrainRun | None"

    def record(self) -> dict[str, Any]:
        """Steps, trainable parameters and wall time (what the chapter reports)."""
        r = self.train.result if self.train is not None else {}
        prov = r.get("provenance", {})
        return {"variant": self.variant, "steps": r.get("steps", 0),
                "trainable_projector": self.trainable["projector"],
                "trainable_lora": self.trainable["lora"], "lora_layers": self.trainable["layers"],
                "wall_time_s": prov.get("wall_time_s", 0.0),
                "final_loss": r.get("final_loss")}


def heal(model: "SpeechLLM", train_set: "FeatureSet", variant: str, cfg: TrainConfig,
         base_run: Path, rank: int = 64, alpha: int = 128, desc: str = "healing",
         run_dir: Path | None = None, stop_after: int | None = None,
         dev_check: Callable[["SpeechLLM"], dict[str, Any]] | None = None,
         run_config: Any = None) -> HealRun:
    """Heal a pruned SpeechLLM in place with one variant; reuse or resume its run.

    Args:
        base_run: the training run the pruned model came from (its key is part of the
            healing run's key); the healing run lives in ``<base_run>/heal/``.
        run_dir: an explicit folder instead of the keyed one; it must not hold a run of
            another configuration.
        stop_after: stop after this many steps (as if killed; for tests).
    """
    from lib.train import train_speechllm

    trainable = prepare_healing(model, variant, rank, alpha, seed=cfg.seed)
    if variant == "none":
        model.eval()
        return HealRun(variant, None, trainable, None)
    spec = {"base": Path(base_run).name, "layers": pruned_layers(model.decoder),
            "variant": variant, "rank": rank, "alpha": alpha, "train": to_dict(cfg),
            "data": train_set.digest()}
    out = Path(run_dir) if run_dir is not None else (
        Path(base_run) / "heal" / f"{variant}-{config_hash(spec)}")
    marker = out / "heal_config.json"
    if marker.is_file():
        saved = load_json(marker)
        if saved.get("spec") != json.loads(json.dumps(spec)):
            raise CompanionError(f"{out} holds a healing run of another configuration: "
                                 "delete it or heal into another folder (nothing was changed)")
    else:
        save_json(marker, {"spec": spec, "provenance": provenance(run_config)})
    tr = train_speechllm(model, train_set, cfg, out, run_config=run_config, desc=desc,
                         stop_after=stop_after, dev_check=dev_check)
    model.eval()
    return HealRun(variant, out, trainable, tr)


# ------------------------------------------------------------------ save and reload


def save_speechllm(model: "SpeechLLM", folder: Path, overwrite: bool = False,
                   extra: dict[str, Any] | None = None) -> Path:
    """Save a (pruned, healed) SpeechLLM: ``decoder/`` by ``save_pretrained`` (adapters
    merged, so plain transformers loads it), ``projector.safetensors`` and
    ``speechllm.json`` (projector shape, task, encoder features it expects, provenance).

    Written into a temporary folder first and moved in place: a failed save leaves an
    existing folder untouched. An existing folder is replaced only with ``overwrite``.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise CompanionError(f"{folder} already exists: pass overwrite=True or choose another "
                             "folder (nothing was written)")
    merge_adapters(model)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.decoder.save_pretrained(tmp / "decoder")
    model.tokenizer.save_pretrained(tmp / "decoder")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.projector.state_dict().items()},
              str(tmp / "projector.safetensors"))
    lin = model.projector.net[0]
    save_json(tmp / "speechllm.json", {
        "projector": {"in_dim": lin.in_features // model.projector.stack,
                      "out_dim": model.projector.net[2].out_features,
                      "stack": model.projector.stack, "hidden": lin.out_features},
        "task": model.task.name, "pruned_layers": pruned_layers(model.decoder),
        **(extra or {}), "provenance": provenance()})
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_speechllm(folder: Path, device: str = "cpu") -> "SpeechLLM":
    """Load what :func:`save_speechllm` wrote: the decoder with plain
    ``AutoModelForCausalLM.from_pretrained``, the projector from its weights."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lib.components import Projector
    from lib.speechllm import SpeechLLM
    from lib.tasks import get_task

    folder = Path(folder)
    meta_path = folder / "speechllm.json"
    if not meta_path.is_file():
        raise CompanionError(f"{folder} is not a saved SpeechLLM (no speechllm.json): save "
                             "one with lib.heal.save_speechllm")
    meta = load_json(meta_path)
    decoder = AutoModelForCausalLM.from_pretrained(folder / "decoder", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder / "decoder")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    p = meta["projector"]
    projector = Projector(p["in_dim"], p["out_dim"], p["stack"], p["hidden"])
    projector.load_state_dict(load_file(str(folder / "projector.safetensors")))
    model = SpeechLLM(None, projector, decoder, tok, task=get_task(meta["task"]))
    model.requires_grad_(False)
    model.to(device)
    return model.eval()


def pruned_copy(model: "SpeechLLM", layers: Sequence[int]) -> "SpeechLLM":
    """A pruned copy of ``model`` (adapters merged, ``layers`` removed); ``model`` is kept."""
    import copy

    return prune_speechllm(copy.deepcopy(model), layers)


def recovery(wer_full: float, wer_pruned: float, wer_healed: float) -> float:
    """The share of the WER lost to pruning that healing won back:
    ``(pruned - healed) / (pruned - full)``; NaN when pruning lost nothing."""
    lost = wer_pruned - wer_full
    return float("nan") if lost <= 0 else (wer_pruned - wer_healed) / lost


def merged_copy(model: "SpeechLLM") -> "SpeechLLM":
    """An unpruned copy of ``model`` with its adapters merged (``model`` is kept)."""
    import copy

    return merge_adapters(copy.deepcopy(model))
