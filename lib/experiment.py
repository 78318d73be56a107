"""Chapter-level steps shared by the chapters: features, train-or-reuse, evaluate.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib.config import Chapter1Config, ModelConfig, config_hash, resolve_device
from lib.evaluate import audio_reliance, evaluate_asr
from lib.features import FeatureSet, extract_features
from lib.paths import cache_subdir
from lib.sources import load_source
from lib.speechllm import SpeechLLM, build_encoder, build_speechllm, count_parameters
from lib.train import TrainRun, train_speechllm


@dataclass
class ModelRun:
    """One trained SpeechLLM with its training record and test scores."""

    config: ModelConfig
    model: SpeechLLM
    train: TrainRun
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)


def slug(name: str) -> str:
    """A file-name-safe short form of a model name or path."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", Path(name.rstrip("/")).name or name).strip("-")


def run_dir(mc: ModelConfig, cfg: Chapter1Config) -> Path:
    """The cache folder of one training run, keyed by everything that changes its result."""
    key = config_hash({"model": mc, "train": cfg.train, "train_data": cfg.train_data,
                       "corpus": cfg.corpus if cfg.train_data.startswith("synthetic") else None})
    return cache_subdir("runs") / f"{slug(mc.decoder)}-{key}"


def prepare_features(cfg: Chapter1Config) -> tuple[FeatureSet, dict[str, FeatureSet]]:
    """Load the data sources and encode them once with the (frozen) encoder.

    Returns:
        ``(train_features, {test_source_name: features})``.
    """
    device = resolve_device(cfg.device)
    encoder = build_encoder(cfg.models[0].encoder).to(device)
    train = extract_features(encoder, load_source(cfg.train_data, cfg.corpus),
                             desc=f"features {cfg.train_data}")
    tests = {name: extract_features(encoder, load_source(name, cfg.corpus),
                                    desc=f"features {name}")
             for name in cfg.test_data}
    return train, tests


def train_and_evaluate(mc: ModelConfig, cfg: Chapter1Config, train: FeatureSet,
                       tests: dict[str, FeatureSet], evaluate: bool = True) -> ModelRun:
    """Build one SpeechLLM, train it (or reuse the finished run), score every test set.

    Args:
        evaluate: score the test sets (only the main process does, under several GPUs).
    """
    device = resolve_device(cfg.device)
    model = build_speechllm(mc, device=device, seed=cfg.train.seed)
    params = count_parameters(model)
    out = run_dir(mc, cfg)
    name = slug(mc.decoder)
    tr = train_speechllm(model, train, cfg.train, out, run_config=cfg, desc=f"training {name}")
    scores = {
        test: evaluate_asr(model, fs, out, test, cfg.eval.batch_size, cfg.eval.max_new_tokens,
                           cfg.eval.max_utterances, config=cfg)
        for test, fs in tests.items()
    } if evaluate else {}
    return ModelRun(mc, model, tr, scores, params)


def data_summary(train: FeatureSet, tests: dict[str, FeatureSet],
                 train_name: str = "train") -> Any:
    """Utterances, hours, voices and mean duration of each data set (a DataFrame)."""
    import pandas as pd

    rows = []
    for name, fs in [(train_name, train), *tests.items()]:
        durs = [u.duration for u in fs.utterances]
        rows.append({"set": name, "utterances": len(fs), "hours": sum(durs) / 3600,
                     "mean duration (s)": sum(durs) / len(durs),
                     "voices": len({u.voice for u in fs.utterances}),
                     "sources": ", ".join(sorted({u.source for u in fs.utterances}))})
    return pd.DataFrame(rows)


def training_log(runs: dict[str, ModelRun]) -> Any:
    """All runs' training logs in one long DataFrame (model, step, loss, lr, elapsed_s)."""
    import pandas as pd

    return pd.concat([pd.DataFrame(r.train.log).assign(model=slug(name))
                      for name, r in runs.items()], ignore_index=True)


def score_table(runs: dict[str, ModelRun]) -> Any:
    """WER/CER per model and test set, with utterance counts and the quick-run label."""
    import pandas as pd

    rows = []
    for name, r in runs.items():
        for test, s in r.scores.items():
            rows.append({"model": slug(name), "test set": test, "wer": s["wer"],
                         "cer": s["cer"], "utterances": s["n_utterances"],
                         "quick run": s["quick_run"]})
    return pd.DataFrame(rows)


def examples_table(runs: dict[str, ModelRun], test: str, n: int = 5) -> Any:
    """Reference and each model's hypothesis for the first ``n`` utterances of ``test``."""
    import pandas as pd

    table: dict[str, list[str]] = {}
    for name, r in runs.items():
        rec = r.scores[test]
        hyp_file = r.train.run_dir / rec["hypotheses"]
        rows = [json.loads(x) for x in hyp_file.read_text().splitlines()][:n]
        table.setdefault("reference", [x["ref"] for x in rows])
        table[slug(name)] = [x["hyp"] for x in rows]
    return pd.DataFrame(table)


def reliance_table(runs: dict[str, ModelRun], data: FeatureSet, n: int = 64) -> Any:
    """Per model: target loss with the right audio and with another utterance's audio."""
    import pandas as pd

    rows = []
    for name, r in runs.items():
        rel = audio_reliance(r.model, data, n=n)
        rows.append({"model": slug(name), "loss, own audio": rel["own_audio_loss"],
                     "loss, other audio": rel["other_audio_loss"],
                     "utterances": rel["n_utterances"]})
    return pd.DataFrame(rows)

def training_change(model: SpeechLLM, pretrained_text: Any, trained_text: Any,
                    speech: Any) -> dict[str, Any]:
    """What LoRA training did to one decoder, with the text -> speech change for scale.

    ``pretrained_text`` / ``trained_text`` / ``speech`` are :class:`RedundancyResult` of the
    same utterances (the decoder with LoRA off and on, and speech through the SpeechLLM).
    Returns one table row: number of adapted matrices, mean and max relative weight update
    (%), mean and max ``|Δd|`` (last token) from training, mean ``|Δd|`` from text to
    speech, and the spread of ``d`` (largest minus smallest cell) of the pretrained LLM.
    Explained in chapter 2.
    """
    import numpy as np

    from lib.redundancy import agreement
    from lib.speechllm import lora_update_norms

    upd = lora_update_norms(model)["relative_update"]
    lora = agreement(pretrained_text, trained_text)
    modal = agreement(trained_text, speech)
    surf = pretrained_text.distance_last[:, 1:]
    return {"adapted matrices": len(upd),
            "update, mean (%)": 100 * float(upd.mean()) if len(upd) else 0.0,
            "update, max (%)": 100 * float(upd.max()) if len(upd) else 0.0,
            "|Δd| training, mean": lora["mean_abs_diff"],
            "|Δd| training, max": lora["max_abs_diff"],
            "|Δd| text → speech, mean": modal["mean_abs_diff"],
            "spread of d": float(np.nanmax(surf) - np.nanmin(surf))}


def save_scores(results: dict[str, Any], run: ModelRun, config: Any) -> Path:
    """Save each redundancy result (JSON) and one tidy CSV beside the run, with provenance.

    Explained in chapter 2 (book/02_where_redundancy_lies.ipynb).

    Args:
        results: input label -> :class:`lib.redundancy.RedundancyResult`.
        run: the trained SpeechLLM run the scores belong to (its folder is the destination).
        config: stored with every file.

    Returns:
        The folder written, ``<run>/redundancy/``.
    """
    import pandas as pd

    from lib.results import atomic_write_text, provenance

    out = run.train.run_dir / "redundancy"
    prov = provenance(config)
    frames = []
    for label, res in results.items():
        res.save(out / f"{slug(label)}.json", prov)
        frames.append(res.to_frame().assign(input=label))
    atomic_write_text(out / "scores.csv", pd.concat(frames).to_csv(index=False))
    return out

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

    from lib.config import CHAPTER1_PARAMS, chapter1_config, load_preset, parse_parameters
    from lib.errors import CompanionError

    ap = argparse.ArgumentParser(prog="python -m lib.experiment", description=main.__doc__)
    ap.add_argument("--preset", default="default")
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = ap.parse_args(argv)
    import torch

    state = PartialState(cpu=not torch.cuda.is_available())  # gloo on CPU, nccl on GPUs
    try:
        preset = load_preset(args.preset)
        params = {k: preset[k] for k in CHAPTER1_PARAMS if k in preset}
        params.update(parse_parameters(args.p))  # YAML values; unknown names: error
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
        print(f"error: {err}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
