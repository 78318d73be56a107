"""Every parameter's default, once, with its reason: one dataclass per chapter, each adding
its own fields to the previous chapter's (nanoGPT's ``GPTConfig`` habit).

This is the one place a default lives. Everything else is derived from it or checked
against it: the typed config sections (:mod:`lib.config.sections`) take their defaults from
these classes; a preset in ``params/`` holds only the values that differ from them, each
with its reason (:mod:`lib.config.presets`); a chapter's ``parameters`` cell lists the
chapter's own fields (:func:`own_names`) with these values, and :mod:`lib.config.resolve`
resolves them with the preset once (``tests/test_config_defaults.py`` keeps cells, presets
and classes in step).

Imports nothing of the library. Stage: all (configuration). Explained in chapter 1
(book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Chapter1Params:
    """Chapter 1: build, train and evaluate a SpeechLLM per decoder."""

    encoder: str = "whisper-base"  # offline alias, save_pretrained folder or hub id
    decoders: tuple[str, ...] = ("smollm2-135m", "gemma3-270m")  # one SpeechLLM each
    train_data: str = "synthetic:train"  # a lib.data.sources name
    test_data: tuple[str, ...] = ("synthetic:test", "real")  # unseen voices; real speech
    n_train: int = 6000  # synthetic train utterances: the CTC warm start needs this many
    n_test: int = 100  # synthetic test utterances (unseen voices)
    piper_fraction: float = 0.085  # training clips in Piper's natural voice (~510 of 6000)
    flite_fraction: float = 0.0  # training clips in flite's four CMU voices (0: none)
    text_fraction: float = 0.0  # training sentences from Debian's fortunes (0: the Bible only)
    augment: tuple[str, ...] = ()  # waveform augmentations of the training audio, by name
    augment_prob: float = 0.5  # each augmentation's chance per training clip
    speed_range: tuple[float, float] = (0.9, 1.1)  # speed factor (pitch moves with it)
    tempo_range: tuple[float, float] = (0.85, 1.15)  # tempo factor (pitch kept)
    rt60_range: tuple[float, float] = (0.2, 0.8)  # reverberation time, seconds
    snr_range: tuple[float, float] = (5.0, 30.0)  # added noise, signal-to-noise ratio in dB
    band_range: tuple[float, float] = (3400.0, 8000.0)  # low-pass cutoff in Hz (3400: phone)
    gain_range: tuple[float, float] = (-25.0, 0.0)  # level change in dB
    projector_stack: int = 5  # frames per LLM position: 50 Hz -> 10 Hz (paper)
    projector_hidden: int = 1024  # hidden width of the projector's MLP
    lora_rank: int = 8  # 0 trains the projector only
    lora_alpha: int = 16  # LoRA scale: alpha / rank
    train_steps: int = 300  # ~10 minutes per decoder on 2 CPU cores (warm start included)
    batch_size: int = 8  # utterances per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    learning_rate: float = 0.001  # peak AdamW rate of the LLM stage
    warmup_steps: int = 20  # linear warm-up, then linear decay
    checkpoint_every: int = 50  # steps between resumable checkpoints
    eval_batch_size: int = 32  # utterances decoded at once
    max_new_tokens: int = 48  # tokens decoded at most per utterance
    eval_precision: str = "auto"  # decoding: bf16 where it pays on this machine (section 1.6)
    max_test_utterances: int | None = None  # N: a quick run, labelled as one
    seed: int = 0  # data order and initialisation
    device: str = "auto"  # auto, cpu, cuda
    recipe: str = "ctc-warmstart"  # CTC on the projector first; "plain" is the paper's
    ctc_epochs: float = 4  # warm-start passes over the training set (projector only)
    ctc_learning_rate: float = 0.003  # peak rate of the warm start
    ctc_batch_size: int = 64  # cheap steps: projector only
    precision: str = "auto"  # training: bf16 where it pays on this machine (section 1.6)
    dev_utterances: int = 48  # held out from train_data for the learning curve
    dev_every: int = 100  # steps between dev WER checks (0: none)
    ctc_weight: float = 0.3  # the CTC loss kept on while the LLM trains (0: off)
    projector_learning_rate: float | None = 0.0003  # None: learning_rate
    length_grouping: int = 16  # batches from pools of N batches sorted by length (0: off)
    rescore_beams: int = 2  # joint CTC / attention decoding: beams re-ranked (0: off)
    rescore_weights: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # CTC weights tried
    # on the dev subset; the best one decodes the test sets
    levers: tuple[str, ...] = ("text", "all")  # measured against the clean recipe (lib.data.spec.LEVERS)
    lever_seeds: int = 3  # seeds of each lever's CTC head: the spread beside each interval
    corpus_recipe: str = "rule"  # train on the lever section 1.8's rule chooses ("given": as set)


@dataclass(frozen=True)
class Chapter2Params(Chapter1Params):
    """Chapter 2: chapter 1's models (reused from the cache) and the redundancy scores."""

    n_score_utterances: int = 64  # test utterances (and transcripts) scored
    score_batch_size: int = 8  # sequences per scoring forward pass
    profile_fractions: tuple[float, ...] = (0.1, 0.2)  # blocks of f times L layers, each removed
    profile_utterances: int = 32  # utterances behind each profile (halves of 16: the ceiling)
    chance_draws: int = 1000  # shuffled surfaces behind each chance baseline
    agree_rho: float = 0.8  # per-n Spearman mean for "the same blocks"
    agree_overlap_gain: float = 0.5  # overlap this far from chance toward 1, same verdict
    specific_min: float = 0.5  # specificity index: halfway from the null to the ceiling


@dataclass(frozen=True)
class Chapter3Params(Chapter2Params):
    """Chapter 3: prune chapter 1's models by every strategy; what each cut costs."""

    prune_strategies: tuple[str, ...] = ("angular", "block-influence", "gromov", "sleb",
                                         "random", "oracle")  # lib.prune.strategies.STRATEGIES
    prune_fractions: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3)  # of the layers removed
    calibration_utterances: int = 16  # dev utterances behind sleb's and oracle's losses
    prune_loss_threshold: float = 0.1  # the rule on the loss curve: a tenth of the audio's worth
    prune_threshold: float = 0.25  # the paper's rule (relative WER increase), checked by WER


@dataclass(frozen=True)
class Chapter4Params(Chapter3Params):
    """Chapter 4: heal the pruned models; save, reload and measure them."""

    heal_variants: tuple[str, ...] = ("none", "projector", "decoder",
                                      "both")  # compared at heal_fraction ("lora-all": +1)
    heal_fraction: float = 0.2  # the fixed cut (angular) where variants are compared
    heal_seeds: int = 3  # healings per variant compared, and of the unpruned control
    heal_steps: int = 50  # 25-50 s per healing on 2 CPU cores (the paper: ~5k on GPUs)
    heal_batch_size: int = 4  # utterances per step (8: 90-99 % of the recovery, twice the time)
    heal_learning_rate: float = 0.0005  # the paper's peak rate, linear decay
    heal_warmup_steps: int = 5  # linear warm-up
    heal_lora_rank: int = 64  # the paper's rank, on the MLP of the receiving layer
    heal_lora_alpha: int = 128  # LoRA scale: alpha / rank
    cost_rounds: int = 3  # alternated rounds of the speed and memory check (medians)


@dataclass(frozen=True)
class Chapter5Params(Chapter4Params):
    """Chapter 5: one multi-task SpeechLLM per decoder (ASR and speech translation, English
    and Spanish), and whether the same blocks are redundant across tasks and languages."""

    tasks: tuple[str, ...] = ("asr", "asr-es", "st-en-es", "st-es-en")  # lib.tasks.TASKS
    multitask_decoders: tuple[str, ...] = ("gemma3-270m",)  # of decoders ([]: all): the one
    # that learned both translations best in the budget (a trial of both at 200 steps, chrF
    # En->Es / Es->En: Gemma-3 20.4 / 15.7, SmolLM2 14.4 / 14.3, no-audio floors 12.4-13.3)
    n_parallel_train: int = 900  # verse pairs in both languages; chapter 1 spoke ~860 of them
    n_parallel_test: int = 100  # verse pairs per test set: a BLEU to a few points
    multitask_start: str = "chapter-1"  # continue chapter 1's ASR model; "anew": its recipe
    multitask_steps: int = 400  # LLM steps on the mix (~16 min, Gemma-3, 2 cores): at 200 the
    # translations' dev chrF was still 16-18, near the floors; at 300, 19-23
    task_dev_utterances: int = 12  # per task, held-out training verses: the learning curve
    multitask_corpus: tuple[str, ...] = ()  # (): the offline Bible corpus; else CoVoST 2
    # pairs, covost2:<folder>#<src>_<tgt> each (lib.data.covost; the paper presets)


@dataclass(frozen=True)
class Chapter6Params(Chapter5Params):
    """Chapter 6: whether a cut chosen on one task, language or encoder transfers to the
    others, and one pruned multi-task backbone."""

    transfer_encoders: tuple[str, ...] = ("whisper-base", "whisper-base@half",
                                          "whisper-base@random")  # the run's encoder first
    # (chapter 1's model), then Whisper-base after half its blocks, then its architecture
    # with random weights (the null); each given transfer_decoder, chapter 1's recipe and budget
    transfer_decoder: str = "smollm2-135m"  # of decoders: the faster to train (~11 min a model
    # on 2 cores against Gemma-3's ~13)
    backbone_chosen_on: str = "pooled"  # the task the backbone's cut is chosen on, or every
    # learned task pooled (the paper's deployable object: one cut for all)
    backbone_heal_variant: str = "decoder"  # chapter 4's best on Gemma-3 at its fixed cut
    # (synthetic WER 181 % pruned -> 52 %; both 54 %, projector 67 %)


CHAPTER_PARAMS: dict[int, type] = {1: Chapter1Params, 2: Chapter2Params, 3: Chapter3Params,
                                   4: Chapter4Params, 5: Chapter5Params, 6: Chapter6Params}
"""Chapter number -> its parameters class (a new chapter adds one line)."""


def param_names(params: type) -> tuple[str, ...]:
    """Every parameter a chapter takes (its own and its earlier chapters'), in order."""
    return tuple(f.name for f in fields(params))


def own_names(chapter: int) -> tuple[str, ...]:
    """The parameters a chapter adds (its ``parameters`` cell lists these), in order."""
    params = CHAPTER_PARAMS[chapter]
    earlier = {f.name for base in params.__mro__[1:] if hasattr(base, "__dataclass_fields__")
               for f in fields(base)}
    return tuple(n for n in param_names(params) if n not in earlier)


def defaults(chapter: int) -> dict[str, object]:
    """Name -> default value of every parameter a chapter takes (lists as lists)."""
    params = CHAPTER_PARAMS[chapter]
    return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
            for f in fields(params)}


def parameter_names() -> tuple[str, ...]:
    """Every chapter's parameter names (the last chapter's class holds them all)."""
    return tuple(dict.fromkeys(n for params in CHAPTER_PARAMS.values()
                               for n in param_names(params)))
