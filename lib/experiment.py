"""The chapters' pipeline: prepare features, train or reuse a run, evaluate; run keys; CLI.

``python -m lib.experiment`` runs chapter 1's training and evaluation outside a notebook
(long runs). The tables and verdicts the chapters display from these runs live in
:mod:`lib.pages`. Stage: the pipeline (build -> data -> train -> evaluate). Explained in
chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib.config import Chapter1Config, ModelConfig, config_hash, resolve_device
from lib.ctc import WARMSTART_VERSION, WarmStart, ctc_loss, ctc_warm_start
from lib.data.sources import load_source
from lib.errors import CompanionError
from lib.evaluate import (Rescoring, choose, evaluate_asr, paired_difference, score_ctc,
                          score_task, transcribe, transcribe_candidates)
from lib.features import FeatureSet, extract_features
from lib.paths import cache_subdir
from lib.components import build_encoder
from lib.speechllm import SpeechLLM, build_speechllm, count_parameters
from lib.train import TrainRun, train_speechllm


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


def slug(name: str) -> str:
    """A file-name-safe short form of a model name or path."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", Path(name.rstrip("/")).name or name).strip("-")


def run_dir(mc: ModelConfig, cfg: Chapter1Config, fit: FeatureSet) -> Path:
    """The cache folder of one training run, keyed by everything that changes its result:
    the model, the training settings and the training data by content (``fit.digest()``)."""
    key = config_hash({"model": mc, "train": cfg.train, "data": fit.digest(),
                       "warmstart": WARMSTART_VERSION})
    return cache_subdir("runs") / f"{slug(mc.decoder)}-{key}"


def split_dev(train: FeatureSet, n: int) -> tuple[FeatureSet, FeatureSet | None]:
    """Hold out the last ``n`` training utterances as the dev subset of the learning curve.

    Raises:
        CompanionError: fewer than ``n + 1`` utterances would be left to train on.
    """
    if n == 0:
        return train, None
    if n >= len(train):
        raise CompanionError(f"dev_utterances={n} leaves nothing to train on ({len(train)} "
                             "training utterances): lower dev_utterances or raise n_train")
    return (FeatureSet(train.utterances[:-n], train.feats[:-n]),
            FeatureSet(train.utterances[-n:], train.feats[-n:]))


def prepare_features(cfg: Chapter1Config) -> tuple[FeatureSet, dict[str, FeatureSet]]:
    """Load the data sources and encode them once with the (frozen) encoder.

    Returns:
        ``(train_features, {test_source_name: features})``.
    """
    device = resolve_device(cfg.device)
    encoder = build_encoder(cfg.models[0].encoder).to(device)
    prec = cfg.train.precision
    train = extract_features(encoder, load_source(cfg.train_data, cfg.corpus),
                             desc=f"features {cfg.train_data}", precision=prec)
    tests = {name: extract_features(encoder, load_source(name, cfg.corpus),
                                    desc=f"features {name}", precision=prec)
             for name in cfg.test_data}
    return train, tests


def dev_wer(model: SpeechLLM, dev: FeatureSet, cfg: Chapter1Config) -> dict[str, Any]:
    """WER (and its interval) of greedy transcripts of the dev subset: the learning curve."""
    hyps = transcribe(model, dev, cfg.eval.batch_size, cfg.eval.max_new_tokens,
                      desc="dev WER")
    score = score_task(model.task, model.task.targets(dev.utterances), hyps)
    return {"dev_wer": score["wer"], "dev_wer_ci95": score["wer_ci95"]}


def train_and_evaluate(mc: ModelConfig, cfg: Chapter1Config, train: FeatureSet,
                       tests: dict[str, FeatureSet], evaluate: bool = True) -> ModelRun:
    """Build one SpeechLLM, train it (or reuse the finished run), score every test set.

    With ``recipe = "ctc-warmstart"`` the projector is first trained with the CTC head
    (:func:`lib.ctc.ctc_warm_start`), and the CTC head alone is scored on every test set
    as a baseline, before the decoder's LoRA and the projector train together.

    Args:
        evaluate: score the test sets (only the main process does, under several GPUs).
    """
    device = resolve_device(cfg.device)
    model = build_speechllm(mc, device=device, seed=cfg.train.seed)
    params = count_parameters(model)
    fit, dev = split_dev(train, cfg.dev_utterances)
    out = run_dir(mc, cfg, fit)
    name = slug(mc.decoder)
    warm, ctc_scores = None, {}
    if cfg.train.recipe == "ctc-warmstart":
        t = cfg.train
        warm = ctc_warm_start(model, fit, t.ctc_epochs, t.ctc_learning_rate, t.ctc_batch_size,
                              out / "warmstart", seed=t.seed, desc=f"CTC warm start {name}",
                              precision=t.precision, length_grouping=t.length_grouping)
        if evaluate:
            ctc_scores = {test: score_ctc(model, warm.head, fs.subset(cfg.eval.max_utterances))
                          for test, fs in tests.items()}
    check = (lambda m: dev_wer(m, dev, cfg)) if dev is not None and evaluate else None
    aux = None
    if warm is not None and cfg.train.ctc_weight > 0:
        warm.head.requires_grad_(False)  # the head is fixed; its loss keeps the projector
        w = cfg.train.ctc_weight          # pointing at word pieces while the LLM trains
        aux = lambda m, f, n, t: w * ctc_loss(m, warm.head, f, n, t)  # noqa: E731
    tr = train_speechllm(model, fit, cfg.train, out, run_config=cfg, desc=f"training {name}",
                         dev_check=check, aux_loss=aux)
    model.eval()  # trained or reused from the cache (peft builds LoRA in train mode)
    scores = {
        test: evaluate_asr(model, fs, out, test, cfg.eval.batch_size, cfg.eval.max_new_tokens,
                           cfg.eval.max_utterances, config=cfg)
        for test, fs in tests.items()
    } if evaluate else {}
    return ModelRun(mc, model, tr, scores, params, warm, ctc_scores)


def rescore_run(run: ModelRun, cfg: Chapter1Config, train: FeatureSet,
                tests: dict[str, FeatureSet]) -> dict[str, Any]:
    """Joint CTC / attention decoding of a trained run (:class:`lib.evaluate.Rescoring`).

    The CTC weight is chosen on the dev subset (the last ``dev_utterances`` of the training
    data, never trained on): one beam-search pass gives every candidate's two
    log-likelihoods, the dev WER is computed for each of ``rescore_weights`` and the lowest
    wins (ties: the smaller weight, closer to the plain decoder). Every test set is then
    decoded with that weight and scored like the greedy SpeechLLM (cached by key beside the
    run), and compared with the greedy score of the same test set by a paired bootstrap
    (:func:`lib.evaluate.paired_difference`, rescored minus greedy). Sets ``run.rescored``
    and returns it: ``{"sweep": [{"weight", "dev_wer", "dev_wer_ci95"}, ...], "weight": w,
    "scores": {test: score}, "vs_greedy": {test: difference}}``; ``{}`` when the run has
    no CTC head (recipe ``plain``), ``rescore_beams`` is 0 or there is no dev subset.
    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """
    from lib.fileio import load_json, provenance, save_json

    ev = cfg.eval
    _, dev = split_dev(train, cfg.dev_utterances)
    if run.warm_start is None or ev.rescore_beams == 0 or dev is None:
        return {}
    head = run.warm_start.head
    key = config_hash({"dev": dev.digest(), "beams": ev.rescore_beams,
                       "weights": ev.rescore_weights, "max_new_tokens": ev.max_new_tokens,
                       "batch_size": ev.batch_size})
    path = run.train.run_dir / f"rescore-dev-{key}.json"
    if path.is_file():
        sweep = load_json(path)["sweep"]
    else:
        cands = transcribe_candidates(run.model, dev, head, ev.rescore_beams, ev.batch_size,
                                      ev.max_new_tokens, desc="dev: beams + CTC")
        refs = run.model.task.targets(dev.utterances)
        sweep = []
        for w in ev.rescore_weights:
            sc = score_task(run.model.task, refs, choose(cands, w))
            sweep.append({"weight": w, "dev_wer": sc["wer"], "dev_wer_ci95": sc["wer_ci95"]})
        save_json(path, {"sweep": sweep, "n_dev": len(dev), "provenance": provenance(cfg)})
    best = min(sweep, key=lambda r: (r["dev_wer"], r["weight"]))["weight"]
    rescore = Rescoring(head, weight=best, num_beams=ev.rescore_beams)
    scores = {test: evaluate_asr(run.model, fs, run.train.run_dir, test, ev.batch_size,
                                 ev.max_new_tokens, ev.max_utterances, config=cfg,
                                 rescore=rescore)
              for test, fs in tests.items()}
    vs_greedy = {test: paired_difference(s, run.scores[test])
                 for test, s in scores.items() if test in run.scores}
    run.rescored = {"sweep": sweep, "weight": best, "scores": scores, "vs_greedy": vs_greedy}
    return run.rescored


def save_scores(results: dict[str, Any], run: ModelRun, config: Any) -> Path:
    """Save each redundancy result (JSON) and one tidy CSV beside the run, with provenance.

    Explained in chapter 2 (book/02_where_redundancy_lies.ipynb).

    Args:
        results: input label -> :class:`lib.redundancy_stats.RedundancyResult`.
        run: the trained SpeechLLM run the scores belong to (its folder is the destination).
        config: stored with every file.

    Returns:
        The folder written, ``<run>/redundancy/``.
    """
    import pandas as pd

    from lib.fileio import atomic_write_text, provenance

    out = run.train.run_dir / "redundancy"
    prov = provenance(config)
    frames = []
    for label, res in results.items():
        res.save(out / f"{slug(label)}.json", prov)
        frames.append(res.to_frame().assign(input=label))
    atomic_write_text(out / "scores.csv", pd.concat(frames).to_csv(index=False))
    return out

def speech_scores(run: ModelRun, data: FeatureSet, config: Any) -> Any:
    """Chapter 2's redundancy scores on speech (transcript tokens) for ``run``'s model.

    Read from ``<run>/redundancy/speech-transcript.json`` when chapter 2 saved them for as
    many utterances as chapter 2's parameters ask; otherwise computed here on the first
    ``n_score_utterances`` of ``data`` and saved there (the pruning strategies ``angular``
    and ``block-influence`` read them). Explained in chapter 3 (book/03_pruning.ipynb).
    """
    from lib.redundancy import score_speech
    from lib.redundancy_stats import RedundancyResult

    sc = config.score
    scored = data.subset(sc.n_utterances)
    path = run.train.run_dir / "redundancy" / f"{slug('speech, transcript')}.json"
    if path.is_file():
        res = RedundancyResult.load(path)
        if res.n_sequences == len(scored) and res.positions == "transcript":
            return res
    from lib.fileio import provenance

    res = score_speech(run.model, scored, batch_size=sc.batch_size, positions="transcript")
    if not path.is_file():  # chapter 2's own file (other settings) is left as it is
        res.save(path, provenance(config))
    return res


def main(argv: list[str] | None = None) -> int:
    """Train and evaluate every model of a preset from the command line.

    The same steps as chapter 1, for long runs and for several GPUs::

        python -m lib.experiment --preset default -p train_steps 600
        accelerate launch -m lib.experiment --preset paper-qwen2.5-7b
        torchrun --nproc_per_node 4 -m lib.experiment --preset paper-qwen2.5-7b

    Results land in the same cache the chapter reads, so the chapter then reuses them.
    """
    import argparse

    from accelerate import PartialState

    from lib.config import CHAPTER1_PARAMS, chapter1_config, load_preset
    from lib.params import add_parameter_option, parse_parameters
    from lib.errors import CompanionError

    ap = argparse.ArgumentParser(prog="python -m lib.experiment", description=main.__doc__)
    ap.add_argument("--preset", default="default")
    add_parameter_option(ap)
    args = ap.parse_args(argv)
    import torch

    state = PartialState(cpu=not torch.cuda.is_available())  # gloo on CPU, nccl on GPUs
    try:
        preset = load_preset(args.preset)
        params = {k: preset[k] for k in CHAPTER1_PARAMS if k in preset}
        params.update(parse_parameters(args.parameter))  # YAML values; unknown names: error
        cfg = chapter1_config(**params)
        with state.main_process_first():  # features are computed once, then read
            train, tests = prepare_features(cfg)
        for mc in cfg.models:
            run = train_and_evaluate(mc, cfg, train, tests, evaluate=state.is_main_process)
            if state.is_main_process:
                print(f"{slug(mc.decoder)}: trained on {state.num_processes} process(es) "
                      f"-> {run.train.run_dir}")
            for test, s in run.scores.items():
                print(f"{slug(mc.decoder)} {test}: WER {100 * s['wer']:.2f} % "
                      f"({s['n_utterances']} utterances)")
    except CompanionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
