"""The pipeline every chapter starts from: encode the data once, train each SpeechLLM or
reuse its finished run, score the test sets; the run keys.

Chapter 1 trains with it (:mod:`lib.recipes.ch01`); chapters 2-4 call the same functions and
find chapter 1's runs in the cache; ``python -m lib.experiment`` runs it outside a notebook
(long and multi-GPU runs). Stage: the pipeline (build -> data -> train -> evaluate).
Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lib.cache import cached
from lib.clock import stage
from lib.config.sections import ModelConfig, Run, TrainConfig
from lib.fileio import config_hash
from lib.device import resolve_device
from lib.train.ctc import (WARMSTART_VERSION, WarmStart, ctc_loss, ctc_warm_start,
                           warmstart_folder)
from lib.data.sources import load_source
from lib.data.spec import CorpusSpec
from lib.recipes.levers import training_corpus
from lib.errors import CompanionError
from lib.prune.export import keep_model_config
from lib.evaluate.decode import (Rescoring, choose, evaluate_asr, precision_key, transcribe,
                                 transcribe_candidates)
from lib.evaluate.metrics import paired_difference, score_task
from lib.evaluate.baselines import score_ctc
from lib.data.features import FeatureSet, extract_features, split_dev
from lib.paths import cache_subdir, slug
from lib.ranks import is_main, together
from lib.assets.hub import resolve_model
from lib.build.components import build_encoder, encoder_variant
from lib.build.speechllm import SpeechLLM, build_speechllm, count_parameters
from lib.train.loop import TrainRun, train_speechllm


@dataclass
class ModelRun:
    """One trained SpeechLLM with its training record, test scores and baselines."""

    config: ModelConfig
    model: SpeechLLM
    train: TrainRun
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)
    warm_start: WarmStart | None = None  # the CTC warm start (recipe ctc-warmstart)
    ctc_scores: dict[str, dict[str, Any]] = field(default_factory=dict)  # CTC head alone
    rescored: dict[str, Any] = field(default_factory=dict)  # joint decoding: rescore_run()
    start: "ModelRun | None" = None  # the run this one continued (chapter 5's mix)


def run_folder(mc: ModelConfig, train: TrainConfig, fit: FeatureSet,
               start: str | None = None) -> Path:
    """The cache folder of one training run, keyed by everything that changes its result:
    the model, the training settings, the training data by content (``fit.digest()``) and
    the run it continues (``start``, a run folder's name; None: a model built anew)."""
    spec = {"model": mc, "train": train, "data": fit.digest(), "warmstart": WARMSTART_VERSION}
    key = config_hash(spec if start is None else {**spec, "start": start})
    return cache_subdir("runs") / f"{slug(mc.decoder)}-{key}"


def run_dir(mc: ModelConfig, cfg: Run, fit: FeatureSet) -> Path:
    """Chapter 1's run folder of ``mc`` (:func:`run_folder` with chapter 1's training)."""
    return run_folder(mc, cfg.train, fit)


def ready_models(cfg: Run) -> None:
    """Every model the run builds, ready on disk (an offline one converted, a tiny one made,
    a hub id found): under several processes the first does it while the others wait
    (:mod:`lib.experiment`), instead of all writing the same folder at once."""
    for m in cfg.models:
        resolve_model(encoder_variant(m.encoder)[0])
        resolve_model(m.decoder)


def load_sources(cfg: Run, corpus: CorpusSpec | None = None
                 ) -> tuple[list[Any], dict[str, list[Any]]]:
    """The utterances of the training source and of each test source (a synthetic corpus is
    spoken first when it is not cached).

    Args:
        corpus: the synthetic corpus to train on; None: the run's
            (:func:`lib.recipes.levers.training_corpus`, the lever chapter 1's rule chose).
    """
    if corpus is None:
        corpus = training_corpus(cfg)
    return (load_source(cfg.train_data, corpus),
            {name: load_source(name, cfg.corpus) for name in cfg.test_data})


def encode_sources(cfg: Run, sources: tuple[list[Any], dict[str, list[Any]]]
                   ) -> tuple[FeatureSet, dict[str, FeatureSet]]:
    """:func:`load_sources`' utterances encoded once with the (frozen) encoder, or read from
    the cache; under several processes working together (:func:`lib.ranks.together`) each
    encodes its share."""
    device = resolve_device(cfg.device)
    encoder = build_encoder(cfg.models[0].encoder).to(device)
    prec = cfg.train.precision
    train_utts, test_utts = sources
    train = extract_features(encoder, train_utts, desc=f"features {cfg.train_data}",
                             precision=prec)
    tests = {name: extract_features(encoder, utts, desc=f"features {name}", precision=prec)
             for name, utts in test_utts.items()}
    return train, tests


def prepare_features(cfg: Run, corpus: CorpusSpec | None = None
                     ) -> tuple[FeatureSet, dict[str, FeatureSet]]:
    """Load the data sources and encode them once with the (frozen) encoder
    (:func:`load_sources`, :func:`encode_sources`).

    Returns:
        ``(train_features, {test_source_name: features})``.
    """
    return encode_sources(cfg, load_sources(cfg, corpus))


def dev_wer(model: SpeechLLM, dev: FeatureSet, cfg: Run) -> dict[str, Any]:
    """WER (and its interval) of greedy transcripts of the dev subset: the learning curve."""
    hyps = transcribe(model, dev, cfg.eval, desc="dev WER")
    score = score_task(model.task, model.task.targets(dev.utterances), hyps)
    return {"dev_wer": score["wer"], "dev_wer_ci95": score["wer_ci95"]}


def train_run(mc: ModelConfig, train: TrainConfig, fit: FeatureSet, out: Path, device: str,
              *, warm_set: FeatureSet | None = None,
              dev_check: Callable[[SpeechLLM], dict[str, Any]] | None = None,
              after_warm_start: Callable[[SpeechLLM, WarmStart], None] | None = None
              ) -> tuple[SpeechLLM, WarmStart | None, TrainRun]:
    """Build one SpeechLLM and train it by ``train.recipe`` in ``out`` (or reuse the run).

    ``ctc-warmstart``: the projector first learns the CTC head on ``warm_set`` (the
    transcripts of the audio; ``fit`` when None), ``after_warm_start`` sees the model then
    (chapter 1 scores the CTC head alone), and the CTC loss stays on at ``ctc_weight``
    while projector and LoRA train on ``fit``. ``plain``: projector and LoRA from scratch.
    """
    model = build_speechllm(mc, device=device, seed=train.seed)
    name = slug(mc.decoder)
    warm = None
    if train.recipe == "ctc-warmstart":
        warm_on = fit if warm_set is None else warm_set
        with together():  # several processes: each its share of every batch (lib.ranks)
            warm = ctc_warm_start(model, warm_on, train, warmstart_folder(mc, train, warm_on),
                                  desc=f"CTC warm start {name}")
        if after_warm_start is not None:
            after_warm_start(model, warm)
    with stage("training"):
        tr = train_speechllm(model, fit, train, out,
                             desc=f"training {name}", dev_check=dev_check,
                             aux_loss=ctc_aux(warm, train))
    model.eval()  # trained or reused from the cache (peft builds LoRA in train mode)
    keep_model_config(out, mc)  # the run can be exported on its own (lib.prune.export)
    return model, warm, tr


def ctc_aux(warm: WarmStart | None, train: TrainConfig) -> Callable | None:
    """The CTC loss kept on at ``train.ctc_weight`` while the LLM trains (None: off)."""
    if warm is None or train.ctc_weight <= 0:
        return None
    warm.head.requires_grad_(False)  # the head is fixed; its loss keeps the projector
    w = train.ctc_weight              # pointing at word pieces while the LLM trains
    return lambda m, f, n, t: w * ctc_loss(m, warm.head, f, n, t)


def train_and_evaluate(mc: ModelConfig, cfg: Run, train: FeatureSet,
                       tests: dict[str, FeatureSet], evaluate: bool = True) -> ModelRun:
    """Chapter 1's run of one decoder: train it (or reuse the finished run), score every
    test set.

    With ``recipe = "ctc-warmstart"`` the CTC head alone is scored on every test set as a
    baseline right after the warm start (:func:`train_run`), before the decoder's LoRA and
    the projector train together.

    Args:
        evaluate: score the test sets (under several processes every one of them calls
            this with the same ``evaluate``: they decode their shares together,
            :mod:`lib.ranks`; the dev check inside training and the CTC head's scores are
            the main process's alone).
    """
    fit, dev = split_dev(train, cfg.dev_utterances)
    out = run_dir(mc, cfg, fit)
    ctc_scores: dict[str, dict[str, Any]] = {}

    def head_alone(model: SpeechLLM, warm: WarmStart) -> None:
        if evaluate and is_main():  # while the others' warm start may still run
            ctc_scores.update({test: score_ctc(model, warm.head,
                                               fs.subset(cfg.eval.max_test_utterances))
                               for test, fs in tests.items()})

    check = (lambda m: dev_wer(m, dev, cfg)) if dev is not None and evaluate else None
    model, warm, tr = train_run(mc, cfg.train, fit, out, resolve_device(cfg.device), dev_check=check, after_warm_start=head_alone)
    with together():  # several processes: each decodes its share of every test set
        scores = {test: evaluate_asr(model, fs, out, test, cfg.eval)
                  for test, fs in tests.items()} if evaluate else {}
    return ModelRun(mc, model, tr, scores, count_parameters(model), warm, ctc_scores)


def rescore_run(run: ModelRun, cfg: Run, train: FeatureSet,
                tests: dict[str, FeatureSet]) -> dict[str, Any]:
    """Joint CTC / attention decoding of a trained run (:class:`lib.evaluate.decode.Rescoring`).

    The CTC weight is chosen on the dev subset (the last ``dev_utterances`` of the training
    data, never trained on): one beam-search pass gives every candidate's two
    log-likelihoods, the dev WER is computed for each of ``rescore_weights`` and the lowest
    wins (ties: the smaller weight, closer to the plain decoder). Every test set is then
    decoded with that weight and scored like the greedy SpeechLLM (cached by key beside the
    run), and compared with the greedy score of the same test set by a paired bootstrap
    (:func:`lib.evaluate.metrics.paired_difference`, rescored minus greedy). Sets ``run.rescored``
    and returns it: ``{"sweep": [{"weight", "dev_wer", "dev_wer_ci95"}, ...], "weight": w,
    "scores": {test: score}, "vs_greedy": {test: difference}}``; ``{}`` when the run has
    no CTC head (recipe ``plain``), ``rescore_beams`` is 0 or there is no dev subset.
    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """
    ev = cfg.eval
    _, dev = split_dev(train, cfg.dev_utterances)
    if run.warm_start is None or ev.rescore_beams == 0 or dev is None:
        return {}
    head = run.warm_start.head
    keyed = {"dev": dev.digest(), "beams": ev.rescore_beams, "weights": ev.rescore_weights,
             "max_new_tokens": ev.max_new_tokens, "batch_size": ev.batch_size,
             **precision_key(run.model, ev)}

    def sweep_weights(_: Path) -> dict[str, Any]:
        cands = transcribe_candidates(run.model, dev, head, ev.rescore_beams, ev,
                                      desc="dev: beams + CTC")
        refs = run.model.task.targets(dev.utterances)
        sweep = []
        for w in ev.rescore_weights:
            sc = score_task(run.model.task, refs, choose(cands, w))
            sweep.append({"weight": w, "dev_wer": sc["wer"], "dev_wer_ci95": sc["wer_ci95"]})
        return {"sweep": sweep, "n_dev": len(dev)}

    sweep = cached(run.train.run_dir, "rescore-dev", keyed, sweep_weights,
                   what="rescoring weights on the dev set")["sweep"]
    best = min(sweep, key=lambda r: (r["dev_wer"], r["weight"]))["weight"]
    rescore = Rescoring(head, weight=best, num_beams=ev.rescore_beams)
    scores = {test: evaluate_asr(run.model, fs, run.train.run_dir, test, ev,
                                 rescore=rescore)
              for test, fs in tests.items()}
    vs_greedy = {test: paired_difference(s, run.scores[test])
                 for test, s in scores.items() if test in run.scores}
    run.rescored = {"sweep": sweep, "weight": best, "scores": scores, "vs_greedy": vs_greedy}
    return run.rescored
