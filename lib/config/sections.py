"""The typed config sections each stage takes whole, and the run made of them.

A stage takes the section it needs (training a :class:`TrainConfig`, decoding an
:class:`EvalConfig`, scoring a :class:`ScoreConfig`, ...), never a handful of scalars cut
out of it. Every default here is *derived* from :mod:`lib.config.defaults` (the one place
a default value and its reason live), so a section built without arguments is the default
preset's; the few fields that are not parameters are each section's named ``CONSTANTS``,
with their reasons. A section's fields are the parameters' names with its ``PREFIX``
dropped (``heal_steps`` is ``HealConfig.steps``); :mod:`lib.config.resolve` fills them from
a chapter's checked parameters into one :class:`Run`, which also says what the run records
(:class:`Record`).

Imports nothing of the library but :mod:`lib.config.defaults`, :mod:`lib.data.spec`,
:mod:`lib.errors` and :mod:`lib.fileio`. Stage: all (configuration). Explained in chapter 1
(book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from lib.config.defaults import Chapter6Params as P
from lib.data.spec import CorpusSpec
from lib.fileio import to_dict


@dataclass(frozen=True)
class ModelConfig:
    """One SpeechLLM: which encoder, projector and decoder, and the LoRA on the decoder.

    One per name in the ``decoders`` parameter (its ``decoder``); every other field is the
    parameter of the same name."""

    PREFIX: ClassVar[str] = ""
    CONSTANTS: ClassVar[tuple[str, ...]] = ("lora_dropout", "lora_targets")

    encoder: str = P.encoder
    decoder: str = P.decoders[0]
    projector_stack: int = P.projector_stack
    projector_hidden: int = P.projector_hidden
    lora_rank: int = P.lora_rank
    lora_alpha: int = P.lora_alpha
    lora_dropout: float = 0.05  # not a parameter: regularises the adapters on a small corpus
    # (its random masks cost about a quarter of a CPU step, yet at 0 chapter 1's default run
    # came out worse, paired against 0.05: SmolLM2 real WER +4.8 points [+0.5, +9.3],
    # Gemma-3 synthetic +6.8 [+3.1, +10.7]; one run each, 2026-12-05)
    # not a parameter: LoRA on the attention projections (SpeechBrain's recipe adapts all)
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class TrainConfig:
    """How the projector and LoRA train (chapter 1); healing reuses it with its own budget.

    ``precision`` is resolved by :func:`lib.device.resolve_precision` when the run is
    resolved: ``auto`` means bf16 autocast on a GPU and where this CPU was measured to gain
    from it (:mod:`lib.machine`), float32 elsewhere.
    """

    PREFIX: ClassVar[str] = "train_"
    CONSTANTS: ClassVar[tuple[str, ...]] = ("weight_decay",)

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

    PREFIX: ClassVar[str] = "eval_"
    CONSTANTS: ClassVar[tuple[str, ...]] = ()

    batch_size: int = P.eval_batch_size
    max_new_tokens: int = P.max_new_tokens
    precision: str = P.eval_precision  # resolved for the device (lib.device)
    max_test_utterances: int | None = P.max_test_utterances
    rescore_beams: int = P.rescore_beams
    rescore_weights: tuple[float, ...] = P.rescore_weights


@dataclass(frozen=True)
class ScoreConfig:
    """How redundancy is scored (chapter 2)."""

    PREFIX: ClassVar[str] = "score_"
    CONSTANTS: ClassVar[tuple[str, ...]] = ()

    n_score_utterances: int = P.n_score_utterances
    batch_size: int = P.score_batch_size
    profile_fractions: tuple[float, ...] = P.profile_fractions
    profile_utterances: int = P.profile_utterances
    chance_draws: int = P.chance_draws
    agree_rho: float = P.agree_rho
    agree_overlap_gain: float = P.agree_overlap_gain
    specific_min: float = P.specific_min


@dataclass(frozen=True)
class PruneConfig:
    """How the models are pruned and the curves measured (chapter 3)."""

    PREFIX: ClassVar[str] = "prune_"
    CONSTANTS: ClassVar[tuple[str, ...]] = ()

    strategies: tuple[str, ...] = P.prune_strategies
    fractions: tuple[float, ...] = P.prune_fractions
    calibration_utterances: int = P.calibration_utterances
    loss_threshold: float = P.prune_loss_threshold
    threshold: float = P.prune_threshold


@dataclass(frozen=True)
class HealConfig:
    """How the pruned models are healed (chapter 4). The healing runs' schedule is built
    from these and chapter 1's training section by :func:`lib.heal.healing.schedule`."""

    PREFIX: ClassVar[str] = "heal_"
    CONSTANTS: ClassVar[tuple[str, ...]] = ()

    variants: tuple[str, ...] = P.heal_variants
    fraction: float = P.heal_fraction
    seeds: int = P.heal_seeds
    steps: int = P.heal_steps
    batch_size: int = P.heal_batch_size
    learning_rate: float = P.heal_learning_rate
    warmup_steps: int = P.heal_warmup_steps
    lora_rank: int = P.heal_lora_rank
    lora_alpha: int = P.heal_lora_alpha
    cost_rounds: int = P.cost_rounds


MULTITASK_STARTS = ("chapter-1", "anew")
"""Where the multi-task model starts: chapter 1's trained ASR model of the same decoder
(projector, LoRA and CTC head), or ``anew`` by chapter 1's recipe (``recipe``)."""


@dataclass(frozen=True)
class MultitaskConfig:
    """The multi-task SpeechLLM of chapter 5: its tasks, its parallel corpus, its budget.
    Its schedule is chapter 1's training section at ``steps``
    (:func:`lib.recipes.multitask.schedule`)."""

    PREFIX: ClassVar[str] = "multitask_"
    CONSTANTS: ClassVar[tuple[str, ...]] = ()

    tasks: tuple[str, ...] = P.tasks
    decoders: tuple[str, ...] = P.multitask_decoders  # of the run's decoders (): all
    n_parallel_train: int = P.n_parallel_train
    n_parallel_test: int = P.n_parallel_test
    task_dev_utterances: int = P.task_dev_utterances
    start: str = P.multitask_start  # MULTITASK_STARTS
    steps: int = P.multitask_steps
    corpus: tuple[str, ...] = P.multitask_corpus  # (): the Bible corpus; CoVoST 2 pairs


@dataclass(frozen=True)
class TransferConfig:
    """Chapter 6: the encoders set beside each other (``<encoder>[@variant]``,
    :data:`lib.build.components.ENCODER_VARIANTS`), each with ``decoder``."""

    PREFIX: ClassVar[str] = "transfer_"
    CONSTANTS: ClassVar[tuple[str, ...]] = ()

    encoders: tuple[str, ...] = P.transfer_encoders
    decoder: str = P.transfer_decoder


@dataclass(frozen=True)
class BackboneConfig:
    """Chapter 6's pruned multi-task backbone: the task its cut is chosen on (``"pooled"``:
    every learned task) and the healing variant (:data:`lib.heal.healing.HEAL_VARIANTS`)."""

    PREFIX: ClassVar[str] = "backbone_"
    CONSTANTS: ClassVar[tuple[str, ...]] = ()

    chosen_on: str = P.backbone_chosen_on
    heal_variant: str = P.backbone_heal_variant


RECORDS = ("run", "trial", "hand")
"""What a run writes (:class:`Record`): the numbers of record (a full book run of a
preset), a trial beside them (some chapters, or ``-p`` changes), or a notebook run by hand
(a trial named ``by-hand``)."""


@dataclass(frozen=True)
class Record:
    """Where a run's headline figures go: ``kind`` one of :data:`RECORDS`; ``name`` the full
    run's id or the trial's name."""

    kind: str = "hand"  # not a parameter: set by the runner's ``record`` (RECORDS)
    name: str = "by-hand"  # not a parameter: the run's id or the trial's name

    @classmethod
    def parse(cls, text: str | None) -> "Record":
        """``run:<id>``, ``trial:<name>`` (the book's runner sets these), or ``hand`` /
        None (a notebook run by hand)."""
        text = (text or "hand").strip()
        kind, _, name = text.partition(":")
        if kind == "hand" and not name:
            return cls()
        if kind not in RECORDS[:2] or not name.strip():
            from lib.errors import CompanionError

            raise CompanionError(f"record={text!r}: use hand (a notebook run by hand), or "
                                 "let the book's runner set it (run:<id>, trial:<name>)")
        return cls(kind, name.strip())

    def line(self, preset: str) -> str:
        """One line saying where this run's figures go."""
        if self.kind == "run":
            return (f"a full run of preset {preset} (run {self.name}): its figures become "
                    f"the numbers of record, results/{preset}/, when every chapter has run")
        who = "a notebook run by hand" if self.kind == "hand" else f"trial {self.name}"
        return (f"{who}: its figures go to results/{preset}/trials/{self.name}/, beside the "
                "numbers of record, which only a full `make book` writes")


@dataclass(frozen=True)
class Run:
    """One chapter's run, its parameters resolved once (:func:`lib.config.resolve.resolve`):
    the typed sections the stages take, what the run records, and where each value came from.

    Chapter N's run holds the sections of chapters 1..N; a later chapter's is None. Each
    parameter is one field, found by its name (:func:`lib.config.resolve.field_of`):
    ``heal_steps`` is ``heal.steps``, ``chance_draws`` is ``score.chance_draws``.
    """

    chapter: int
    preset: str  # the label the figures go under (lib.config.presets.preset_label)
    record: Record
    models: tuple[ModelConfig, ...]
    corpus: CorpusSpec
    train_data: str
    test_data: tuple[str, ...]
    train: TrainConfig
    eval: EvalConfig
    device: str = P.device
    dev_utterances: int = P.dev_utterances
    levers: tuple[str, ...] = P.levers
    lever_seeds: int = P.lever_seeds
    corpus_recipe: str = P.corpus_recipe
    # not a parameter: the later chapters' sections, None in an earlier chapter's run
    score: ScoreConfig | None = None  # not a parameter: chapter 2's section
    prune: PruneConfig | None = None  # not a parameter: chapter 3's section
    heal: HealConfig | None = None  # not a parameter: chapter 4's section
    multitask: MultitaskConfig | None = None  # not a parameter: chapter 5's section
    transfer: TransferConfig | None = None  # not a parameter: chapter 6's section
    backbone: BackboneConfig | None = None  # not a parameter: chapter 6's section
    # Where the values came from (preset, changes, inherited values): provenance, never
    # part of a cache key (keys are built from the sections above).
    source: dict[str, Any] = field(default_factory=dict, compare=False)
    # not a parameter: where the chapter's time goes (lib.clock.Clock: the kernel's own,
    # which the stages' @stage decorators charge); the record reads its stage times from it
    clock: Any = field(default=None, compare=False, repr=False,
                       metadata={"provenance": False})

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @property
    def quick(self) -> bool:
        """A quick run (test sets cut to ``max_test_utterances``): it records nothing."""
        return self.eval.max_test_utterances is not None

    def summary(self) -> str:
        """Where the values came from, in a few lines: the preset, the changes, every
        inherited value (the chapter's own ones are in its parameters cell), and what the
        run records."""
        src = self.source
        lines = [f"preset {src.get('preset', self.preset)}"
                 + (f"; changes {_pairs(src['changes'])}" if src.get("changes") else "")]
        if src.get("own_set"):
            lines.append("this chapter's own parameters, set by the preset or a change: "
                         + _pairs(src["own_set"]))
        inherited = src.get("inherited", {})
        set_here = set(src.get("set", []))
        changed = {k: v for k, v in inherited.items() if k in set_here}
        default = {k: v for k, v in inherited.items() if k not in set_here}
        if changed:
            lines.append(f"inherited, set by the preset or a change: {_pairs(changed)}")
        if default:
            lines.append(f"inherited defaults (lib/config/defaults.py): {_pairs(default)}")
        if src.get("cell"):
            lines.append(f"set in the parameters cell: {_pairs(src['cell'])}")
        lines.append(f"records: {self.record.line(self.preset)}")
        return _wrap("\n".join(lines))

    def architectures(self) -> str:
        """One line per SpeechLLM: encoder -> projector -> decoder + LoRA."""
        return "\n".join(f"{m.encoder} -> projector(k={m.projector_stack}, "
                         f"{m.projector_hidden}) -> {m.decoder} + LoRA r={m.lora_rank}"
                         for m in self.models)


SECTIONS: dict[str, type] = {"models": ModelConfig, "train": TrainConfig, "eval": EvalConfig,
                             "score": ScoreConfig, "prune": PruneConfig, "heal": HealConfig,
                             "multitask": MultitaskConfig, "transfer": TransferConfig,
                             "backbone": BackboneConfig}
"""The run's sections by field name. A parameter is found in them mechanically
(:func:`lib.config.resolve.field_of`): the first section whose ``PREFIX`` it starts with
and which has the rest as a field, else the section holding a field of its own name."""


def section_fields(section: type) -> tuple[str, ...]:
    """The fields of a section that are parameters (not its named ``CONSTANTS``)."""
    return tuple(f.name for f in fields(section) if f.name not in section.CONSTANTS)


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
