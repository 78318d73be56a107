"""Healing a pruned SpeechLLM: LoRA on the MLP of the layer that receives the cut, the
projector optionally unfrozen.

:data:`HEAL_VARIANTS` names what each variant trains; :func:`prepare_healing` makes one
variant's parameters trainable on a model pruned by :func:`lib.prune.surgery.prune_speechllm`;
:func:`heal` trains them with chapter 1's training loop
(:func:`lib.train.loop.train_speechllm`: AdamW without weight decay, linear warm-up and
decay, resumable checkpoints) in a run folder keyed by the base run, the layers removed,
the variant and the schedule. Saving the healed model is :mod:`lib.build.checkpoint`.
Stage: heal. Explained in chapter 4 (book/04_healing.ipynb).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from lib.clock import stage
from lib.config.sections import HealConfig, TrainConfig
from lib.errors import CompanionError
from lib.fileio import config_hash, load_json, provenance, save_json, to_dict
from lib.build.components import pruned_layers
from lib.prune.surgery import receiving_layers

if TYPE_CHECKING:
    from lib.data.features import FeatureSet
    from lib.build.speechllm import SpeechLLM
    from lib.train.loop import TrainRun

@dataclass(frozen=True)
class Variant:
    """What one healing variant trains."""

    projector: bool  # the projector trains
    lora: str  # where LoRA goes on the MLPs: "none", "receiving" layers, or "all" layers
    note: str  # what it is, for a reader


HEAL_VARIANTS: dict[str, Variant] = {
    "none": Variant(False, "none", "the pruned model as it is"),
    "projector": Variant(True, "none", "the projector only"),
    "decoder": Variant(False, "receiving", "LoRA on the receiving layers' MLPs only"),
    "both": Variant(True, "receiving", "the paper's recipe: LoRA there and the projector"),
    "lora-all": Variant(True, "all", "LoRA on every layer's MLP, and the projector"),
}
"""The healing variants, in the order chapter 4 compares them: adding one is one entry."""

# The healing schedule's fixed choices, each with its reason (the paper's Method):
HEAL_GRAD_ACCUM = 1  # the healing batch is small and its steps cheap: no accumulation
HEAL_RECIPE = "plain"  # the projector is already trained: no CTC warm start before healing
HEAL_DEV_EVERY = 0  # no learning curve: the healed model is measured once, on the curve set
HEAL_CTC_WEIGHT = 0.0  # the paper heals on the LM loss alone
HEAL_WEIGHT_DECAY = 0.0  # as in training: the adapters are small

MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
"""The MLP's linear layers in Llama, Qwen2 and Gemma3."""


def check_variant(variant: str) -> str:
    if variant not in HEAL_VARIANTS:
        raise CompanionError(f"unknown healing variant {variant!r}: use any of "
                             f"{', '.join(HEAL_VARIANTS)}")
    return variant


def control_targets(layers: list[int], n_layers: int) -> list[int]:
    """The layers, in the unpruned model, that would receive the cut ``layers``: where the
    control (the unpruned model trained with the same budget) gets its LoRA, so that it
    trains what healing that cut trains."""
    drop = set(layers)
    keep = [i for i in range(n_layers) if i not in drop]
    return [keep[i] for i in receiving_layers(layers, n_layers)]


def heal_targets(model: "SpeechLLM", variant: str, layers: list[int] | None = None
                 ) -> list[int]:
    """Decoder layers (indices in the pruned model) whose MLP gets LoRA in ``variant``;
    ``layers``: these instead of the receiving ones (the control, on an unpruned model)."""
    where = HEAL_VARIANTS[check_variant(variant)].lora
    removed = pruned_layers(model.decoder)
    if layers is not None:
        n = len(model.decoder_layers)
        if not layers or any(not 0 <= int(i) < n for i in layers):
            raise CompanionError(f"LoRA layers {list(layers)}: give indices of the decoder's "
                                 f"{n} layers")
        return [] if where == "none" else list(range(n)) if where == "all" else \
            sorted(int(i) for i in layers)
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
                    dropout: float = 0.0, seed: int = 0, layers: list[int] | None = None
                    ) -> dict[str, int]:
    """Make ``variant``'s parameters trainable (everything else frozen); ``layers``: LoRA
    on these layers' MLPs instead of the receiving ones (:func:`heal_targets`).

    The new adapters are initialised from ``seed`` (the global random state is left as it
    was), so the same healing configuration always starts from the same weights.

    Returns:
        ``{"projector": n, "lora": n, "layers": [...]}``: trainable parameters and the
        layers whose MLP has LoRA.
    """
    from peft import LoraConfig, get_peft_model

    targets = heal_targets(model, variant, layers)
    if hasattr(model.decoder, "peft_config"):
        raise CompanionError("the decoder still has adapters: prune with prune_speechllm "
                             "(which merges them) before healing")
    if rank < 1:
        raise CompanionError(f"heal_lora_rank={rank}: use a positive integer (paper: 64)")
    model.requires_grad_(False)
    train_projector = HEAL_VARIANTS[variant].projector
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


def heal_seeds(hc: HealConfig, train: TrainConfig) -> list[int]:
    """The seeds of the repeated healings: chapter 1's seed, then the next ones
    (``heal_seeds`` of them); the first is the healing a single run does."""
    return [train.seed + k for k in range(hc.seeds)]


def schedule(hc: HealConfig, train: TrainConfig, seed: int | None = None) -> TrainConfig:
    """The healing runs' schedule: chapter 1's training section (its seed, precision and
    length grouping) with healing's steps, batch, rate and warm-up, one learning rate for
    every trainable part, checkpoints at most every ``train.checkpoint_every`` steps, and
    the fixed choices above; ``seed``: another seed (the adapters' start and the order of
    the batches)."""
    return dataclasses.replace(
        train, seed=train.seed if seed is None else int(seed), steps=hc.steps,
        batch_size=hc.batch_size, grad_accum=HEAL_GRAD_ACCUM,
        learning_rate=hc.learning_rate, warmup_steps=hc.warmup_steps,
        weight_decay=HEAL_WEIGHT_DECAY,
        checkpoint_every=max(1, min(train.checkpoint_every, hc.steps)), recipe=HEAL_RECIPE,
        dev_every=HEAL_DEV_EVERY, ctc_weight=HEAL_CTC_WEIGHT, projector_learning_rate=None)


@stage("healing")
def heal(model: "SpeechLLM", train_set: "FeatureSet", variant: str, hc: HealConfig,
         train: TrainConfig, base_run: Path, desc: str = "healing",
         run_dir: Path | None = None, stop_after: int | None = None,
         dev_check: Callable[["SpeechLLM"], dict[str, Any]] | None = None,
         seed: int | None = None, lora_layers: list[int] | None = None) -> HealRun:
    """Heal a pruned SpeechLLM in place with one variant; reuse or resume its run.

    Args:
        hc: chapter 4's healing section: the LoRA rank and alpha, steps, batch, rate and
            warm-up.
        train: chapter 1's training section (seed, precision; :func:`schedule`).
        base_run: the training run the pruned model came from (its key is part of the
            healing run's key); the healing run lives in ``<base_run>/heal/``.
        run_dir: an explicit folder instead of the keyed one; it must not hold a run of
            another configuration.
        stop_after: stop after this many steps (as if killed; for tests).
        seed: another seed than chapter 1's (:func:`heal_seeds`).
        lora_layers: LoRA on these layers instead of the receiving ones: the control, an
            unpruned model trained as healing would train it (:func:`control_targets`).
    """
    from lib.train.loop import train_speechllm

    cfg, rank, alpha = schedule(hc, train, seed), hc.lora_rank, hc.lora_alpha
    trainable = prepare_healing(model, variant, rank, alpha, seed=cfg.seed, layers=lora_layers)
    if variant == "none":
        model.eval()
        return HealRun(variant, None, trainable, None)
    spec = {"base": Path(base_run).name, "layers": pruned_layers(model.decoder),
            "variant": variant, "rank": rank, "alpha": alpha, "train": to_dict(cfg),
            "data": train_set.digest()}
    if lora_layers is not None:
        spec["lora_layers"] = trainable["layers"]
    out = Path(run_dir) if run_dir is not None else (
        Path(base_run) / "heal" / f"{variant}-{config_hash(spec)}")
    marker = out / "heal_config.json"
    if marker.is_file():
        saved = load_json(marker)
        if saved.get("spec") != json.loads(json.dumps(spec)):
            raise CompanionError(f"{out} holds a healing run of another configuration: "
                                 "delete it or heal into another folder (nothing was changed)")
    else:
        save_json(marker, {"spec": spec, "provenance": provenance()})
    tr = train_speechllm(model, train_set, cfg, out, desc=desc,
                         stop_after=stop_after, dev_check=dev_check)
    model.eval()
    return HealRun(variant, out, trainable, tr)
