"""The typed config sections each stage takes whole, and the chapters' configs built of them.

A stage takes the section it needs (training a :class:`TrainConfig`, decoding an
:class:`EvalConfig`, scoring a :class:`ScoreConfig`, ...), never a handful of scalars cut
out of it. Every default here is *derived* from :mod:`lib.config.defaults` (the one place
a default value and its reason live), so a section built without arguments is the default
preset's; the few fields that are not parameters keep their one value here, with its
reason. :mod:`lib.config.build` fills the sections from a chapter's validated parameters.

Imports nothing of the library but :mod:`lib.config.defaults`, :mod:`lib.data.spec` and
:mod:`lib.fileio`. Stage: all (configuration). Explained in chapter 1
(book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lib.config.defaults import Chapter5Params as P
from lib.data.spec import CorpusSpec
from lib.fileio import to_dict


@dataclass(frozen=True)
class ModelConfig:
    """One SpeechLLM: which encoder, projector and decoder, and the LoRA on the decoder."""

    encoder: str = P.encoder
    decoder: str = P.decoders[0]
    projector_stack: int = P.projector_stack
    projector_hidden: int = P.projector_hidden
    lora_rank: int = P.lora_rank
    lora_alpha: int = P.lora_alpha
    lora_dropout: float = 0.05  # not a parameter: regularises the adapters on a small corpus
    # not a parameter: LoRA on the attention projections (SpeechBrain's recipe adapts all)
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class TrainConfig:
    """How the projector and LoRA train (chapter 1); healing reuses it with its own budget.

    ``precision`` is resolved by :func:`lib.device.resolve_precision` where it is used, so
    ``auto`` means bf16 autocast where the hardware runs it natively.
    """

    steps: int = P.train_steps
    batch_size: int = P.batch_size
    grad_accum: int = P.grad_accum
    learning_rate: float = P.learning_rate
    warmup_steps: int = P.warmup_steps
    weight_decay: float = 0.0  # not a parameter: the projector is small; no decay needed
    checkpoint_every: int = P.checkpoint_every
    seed: int = P.seed
    recipe: str = P.recipe
    ctc_epochs: float = P.ctc_epochs
    ctc_learning_rate: float = P.ctc_learning_rate
    ctc_batch_size: int = P.ctc_batch_size
    precision: str = P.precision
    dev_every: int = P.dev_every
    ctc_weight: float = P.ctc_weight
    projector_learning_rate: float | None = P.projector_learning_rate
    length_grouping: int = P.length_grouping


@dataclass(frozen=True)
class EvalConfig:
    """How the models are decoded and scored."""

    batch_size: int = P.eval_batch_size
    max_new_tokens: int = P.max_new_tokens
    precision: str = P.eval_precision  # resolved where it is used (lib.evaluate.decode)
    max_utterances: int | None = P.max_test_utterances
    rescore_beams: int = P.rescore_beams
    rescore_weights: tuple[float, ...] = P.rescore_weights


@dataclass(frozen=True)
class ScoreConfig:
    """How redundancy is scored (chapter 2)."""

    n_utterances: int = P.n_score_utterances
    batch_size: int = P.score_batch_size
    ablation_block: int = P.ablation_block
    ablation_utterances: int = P.ablation_utterances
    chance_draws: int = P.chance_draws
    agree_rho: float = P.agree_rho
    agree_overlap_gain: float = P.agree_overlap_gain


@dataclass(frozen=True)
class PruneConfig:
    """How the models are pruned and the curves measured (chapter 3)."""

    strategies: tuple[str, ...] = P.prune_strategies
    fractions: tuple[float, ...] = P.prune_fractions
    curve_utterances: int = P.curve_utterances
    calibration_utterances: int = P.calibration_utterances
    threshold: float = P.prune_threshold


@dataclass(frozen=True)
class HealConfig:
    """How the pruned models are healed (chapter 4)."""

    variants: tuple[str, ...] = P.heal_variants
    fraction: float = P.heal_fraction
    curve_fractions: tuple[float, ...] = P.heal_curve_fractions
    lora_rank: int = P.heal_lora_rank
    lora_alpha: int = P.heal_lora_alpha
    train: TrainConfig = field(default_factory=TrainConfig)  # the healing runs' schedule
    cost_rounds: int = P.cost_rounds


MULTITASK_STARTS = ("chapter-1", "anew")
"""Where the multi-task model starts: chapter 1's trained ASR model of the same decoder
(projector, LoRA and CTC head), or ``anew`` by chapter 1's recipe (``recipe``)."""


@dataclass(frozen=True)
class MultitaskConfig:
    """The multi-task SpeechLLM of chapter 5: its tasks, its parallel corpus, its budget."""

    tasks: tuple[str, ...] = P.tasks
    n_train: int = P.n_parallel_train
    n_test: int = P.n_parallel_test
    dev_per_task: int = P.task_dev_utterances
    start: str = P.multitask_start  # MULTITASK_STARTS
    # chapter 1's training section, at the mix's own number of steps
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=P.multitask_steps))


@dataclass(frozen=True)
class Chapter1Config:
    """Everything chapter 1 needs, validated: one :class:`ModelConfig` per decoder."""

    models: tuple[ModelConfig, ...]
    corpus: CorpusSpec
    train_data: str
    test_data: tuple[str, ...]
    train: TrainConfig
    eval: EvalConfig
    device: str = P.device
    dev_utterances: int = P.dev_utterances
    # Where the values came from (preset, overrides, inherited values): provenance, never
    # part of a cache key (keys are built from the sections above).
    source: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def summary(self) -> str:
        """Where the values came from, in a few lines: the preset, the overrides, and
        every inherited value (the chapter's own ones are in its parameters cell)."""
        src = self.source
        if not src:
            return "config built directly (no preset)"
        lines = [f"preset {src['preset']}"
                 + (f"; overrides {_pairs(src['overrides'])}" if src["overrides"] else "")]
        inherited = src.get("inherited", {})
        set_here = set(src.get("from_preset", []))
        changed = {k: v for k, v in inherited.items() if k in set_here}
        default = {k: v for k, v in inherited.items() if k not in set_here}
        if changed:
            lines.append(f"inherited, set by the preset or an override: {_pairs(changed)}")
        if default:
            lines.append(f"inherited defaults (lib/config/defaults.py): {_pairs(default)}")
        if src.get("cell_over_preset"):
            lines.append("the parameters cell wins over the preset for: " + ", ".join(
                f"{k} (cell {_short(v['cell'])}, preset {_short(v['preset'])})"
                for k, v in src["cell_over_preset"].items()))
        return _wrap("\n".join(lines))

    def architectures(self) -> str:
        """One line per SpeechLLM: encoder -> projector -> decoder + LoRA."""
        return "\n".join(f"{m.encoder} -> projector(k={m.projector_stack}, "
                         f"{m.projector_hidden}) -> {m.decoder} + LoRA r={m.lora_rank}"
                         for m in self.models)


@dataclass(frozen=True)
class Chapter2Config:
    """Chapter 2: the chapter 1 models (reused from the cache) and the scoring."""

    base: Chapter1Config
    score: ScoreConfig

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def summary(self) -> str:
        return self.base.summary()


@dataclass(frozen=True)
class Chapter3Config(Chapter2Config):
    """Chapter 3: chapter 2's models and scores, and the pruning."""

    prune: PruneConfig = field(default_factory=PruneConfig)


@dataclass(frozen=True)
class Chapter4Config(Chapter3Config):
    """Chapter 4: chapter 3's pruning, and the healing."""

    heal: HealConfig = field(default_factory=HealConfig)


@dataclass(frozen=True)
class Chapter5Config(Chapter4Config):
    """Chapter 5: the multi-task SpeechLLMs and the redundancy across tasks and languages."""

    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in values.items())


def _short(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _wrap(text: str, width: int = 96) -> str:
    import textwrap

    return "\n".join(textwrap.fill(line, width, subsequent_indent="  ",
                                   break_on_hyphens=False) for line in text.splitlines())
