"""The multi-task pipeline of chapter 5 (and 6): the spoken parallel corpus as training mix
and test sets, one multi-task SpeechLLM per chosen decoder and its budget-matched control (as
many steps on the mix's English ASR alone), every task scored, and its baselines.

The mix holds every training verse four times, once per task: its English speech with its
transcript (``asr``) and its Spanish translation (``st-en-es``), its Spanish speech with its
transcript (``asr-es``) and its English translation (``st-es-en``); each example reads its
own task's instruction (:meth:`lib.build.speechllm.SpeechLLM.build_inputs`). By default
the model continues chapter 1's trained ASR model of its decoder on the mix
(``multitask_start = "chapter-1"``: the English ASR it already has is what the mix must
keep); ``"anew"`` trains it anew as chapter 1 trains
(:func:`lib.recipes.pipeline.train_run`). Either way projector and LoRA train on the mix
with the CTC loss kept on. Stage: the pipeline (chapter 5). Explained in chapter 5
(book/05_tasks_and_languages.ipynb).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lib.build.components import build_encoder
from lib.prune.export import keep_model_config
from lib.build.speechllm import SpeechLLM, build_speechllm, count_parameters
from lib.clock import stage
from lib.config.sections import EvalConfig, MultitaskConfig, Run, TrainConfig
from lib.data.features import FeatureSet, extract_features
from lib.data.loaders import Utterance, load_manifest
from lib.data.parallel import check_parallel, ensure_parallel_corpus
from lib.data.spec import ParallelSpec
from lib.device import resolve_device
from lib.errors import CompanionError
from lib.evaluate.baselines import whisper_baseline
from lib.evaluate.bleu import score_translation
from lib.evaluate.decode import (autocast, decode_precision, evaluate_asr, precision_key,
                                 transcribe)
from lib.evaluate.metrics import score_task
from lib.cache import cached
from lib.paths import slug
from lib.recipes.pipeline import ModelRun, ctc_aux, run_folder, train_run
from lib.train.loop import train_speechllm
from lib.tasks import TASKS, Task, serves


@dataclass
class ParallelData:
    """The spoken parallel corpus as chapter 5 uses it."""

    mix: FeatureSet  # training examples, one task each
    asr_only: FeatureSet  # the mix's English ASR examples alone (the budget-matched control)
    audio: FeatureSet  # every training clip once, with its transcript (the CTC warm start)
    dev: dict[str, FeatureSet]  # per task: held-out training verses (the learning curve)
    tests: dict[str, FeatureSet]  # per task: the test verses, in the language it hears
    reused: int = 0  # English training clips (and features) reused from chapter 1
    pairs: dict[str, int] = field(default_factory=dict)  # verses per split


def parallel_spec(cfg: Run) -> ParallelSpec:
    """The corpus a chapter 5 config asks for (the corpus chapter 1 trained on as the English
    side: :func:`lib.recipes.levers.training_corpus`)."""
    from lib.recipes.levers import training_corpus

    mt = cfg.multitask
    return ParallelSpec(n_train=mt.n_parallel_train, n_test=mt.n_parallel_test,
                        english=training_corpus(cfg))


def _features(cfg: Run, utts: list[Utterance],
              ch1_train: FeatureSet) -> dict[str, torch.Tensor]:
    """Features by utterance id: chapter 1's where the clip is chapter 1's, the others
    encoded once (and cached by content, like every feature set)."""
    known = {u.id: k for k, u in enumerate(ch1_train.utterances)}  # read only those needed
    out = {u.id: ch1_train.feats[known[u.id]] for u in utts if u.id in known}
    new = [u for u in utts if u.id not in known]
    if new:
        device = resolve_device(cfg.device)
        encoder = build_encoder(cfg.models[0].encoder).to(device)
        for lang in sorted({u.language for u in new}):
            part = [u for u in new if u.language == lang]
            if part:
                fs = extract_features(encoder, part, desc=f"features parallel:{lang}",
                                      precision=cfg.train.precision)
                out.update({u.id: f for u, f in zip(fs.utterances, fs.feats)})
    return out


def _by_pair(utts: list[Utterance], split: str,
             name: str = "the parallel manifest") -> list[dict[str, Utterance]]:
    """The utterances of a split as ``[{"es": ..., "en": ...}, ...]``, one per verse (the
    manifest lists each verse's Spanish clip, then its English one).

    Raises:
        CompanionError: the manifest's two sides differ in length, or a verse lacks one
            (:func:`lib.data.parallel.check_parallel`), naming ``name`` and the split.
    """
    rows = [u for u in utts if u.split == split]
    check_parallel([u for u in rows if u.language == "es"],
                   [u for u in rows if u.language == "en"], f"{name} ({split}, es / en)")
    pairs = [{u.language: u for u in rows[i:i + 2]} for i in range(0, len(rows), 2)]
    broken = next((i for i, p in enumerate(pairs) if set(p) != {"es", "en"}), None)
    if broken is not None:
        raise CompanionError(f"parallel file {name} ({split}): verse {broken} has no pair of "
                             "a Spanish and an English clip: list each verse's Spanish clip, "
                             "then its English one")
    return pairs


def _hold_out(train: list[dict[str, Utterance]], n: int, seen: set[str]
              ) -> tuple[list[dict[str, Utterance]], list[dict[str, Utterance]]]:
    """``(fit, dev)``: the last ``n`` verses whose English clip is not in ``seen`` as dev
    (the last ``n`` verses when too few are), in their order; the rest to fit."""
    if n == 0:
        return list(train), []
    unseen = [i for i, p in enumerate(train) if "en" not in p or p["en"].id not in seen]
    picked = set(unseen[-n:] if len(unseen) >= n else range(len(train) - n, len(train)))
    return ([p for i, p in enumerate(train) if i not in picked],
            [p for i, p in enumerate(train) if i in picked])


def _task_set(pairs: list[dict[str, Utterance]], task: Task,
              feats: dict[str, torch.Tensor]) -> FeatureSet:
    utts = [p[task.hears] for p in pairs]
    return FeatureSet(utts, [feats[u.id] for u in utts])


def parallel_data(cfg: Run, ch1_train: FeatureSet) -> ParallelData:
    """Build (once) the spoken parallel corpus and arrange it as mix, dev and test sets.

    ``task_dev_utterances`` training verses are held out of the mix as every task's dev
    set: the last ones whose English clip chapter 1 did not train on (chapter 1's model,
    where the mix starts, would know those), else the last ones.
    """
    mt = cfg.multitask
    if mt.corpus:
        return covost_data(cfg, ch1_train)
    manifest = ensure_parallel_corpus(parallel_spec(cfg))
    utts = load_manifest(manifest)
    train, test = _by_pair(utts, "train", str(manifest)), _by_pair(utts, "test", str(manifest))
    feats = _features(cfg, utts, ch1_train)
    if mt.task_dev_utterances >= len(train):
        raise CompanionError(f"task_dev_utterances={mt.task_dev_utterances} leaves no training "
                             f"verse of {len(train)}: lower it or raise n_parallel_train")
    fit, dev = _hold_out(train, mt.task_dev_utterances, {u.id for u in ch1_train.utterances})
    tasks = [TASKS[t] for t in mt.tasks]
    examples = [(p[t.hears], t) for p in fit for t in tasks]
    mix = FeatureSet([u for u, _ in examples], [feats[u.id] for u, _ in examples],
                     tasks=[t for _, t in examples])
    langs = sorted({t.hears for t in tasks})
    clips = [p[lang] for p in fit for lang in langs]
    audio = FeatureSet(clips, [feats[u.id] for u in clips])
    return ParallelData(
        mix=mix, audio=audio, asr_only=FeatureSet(
            [p["en"] for p in fit], [feats[p["en"].id] for p in fit],
            tasks=[TASKS["asr"]] * len(fit)),
        dev={t.name: _task_set(dev, t, feats) for t in tasks} if dev else {},
        tests={t.name: _task_set(test, t, feats) for t in tasks},
        reused=sum(u.id in {x.id for x in ch1_train.utterances} for u in utts),
        pairs={"train": len(fit), "dev": len(dev), "test": len(test)})


def covost_data(cfg: Run, ch1_train: FeatureSet) -> ParallelData:
    """The multi-task data from CoVoST 2 pairs (``multitask_corpus``, paper scale): the
    first ``n_parallel_train`` training clips of each pair, each once per task it serves
    (:func:`serves`), the first ``task_dev_utterances`` dev clips and ``n_parallel_test``
    test clips of each pair as the tasks' dev and test sets."""
    from lib.data.covost import load_covost

    mt = cfg.multitask
    caps = {"train": mt.n_parallel_train, "dev": mt.task_dev_utterances,
            "test": mt.n_parallel_test}
    clips: dict[str, list[tuple[str, Utterance]]] = {sp: [] for sp in caps}
    for source in mt.corpus:
        root, _, pair = source.partition(":")[2].partition("#")
        for sp, cap in caps.items():
            if cap:
                clips[sp] += [(pair, u) for u in load_covost(root, pair, sp, limit=cap)]
    feats = _features(cfg, [u for rows in clips.values() for _, u in rows], ch1_train)
    tasks = [TASKS[t] for t in mt.tasks]

    def task_set(sp: str, task: Task) -> FeatureSet:
        utts = [u for pair, u in clips[sp] if serves(task, pair)]
        return FeatureSet(utts, [feats[u.id] for u in utts])

    examples = [(u, t) for pair, u in clips["train"] for t in tasks if serves(t, pair)]
    english = [u for _, u in clips["train"] if u.language == "en"]
    return ParallelData(
        mix=FeatureSet([u for u, _ in examples], [feats[u.id] for u, _ in examples],
                       tasks=[t for _, t in examples]),
        asr_only=FeatureSet(english, [feats[u.id] for u in english],
                            tasks=[TASKS["asr"]] * len(english)),
        audio=FeatureSet([u for _, u in clips["train"]],
                         [feats[u.id] for _, u in clips["train"]]),
        dev={t.name: task_set("dev", t) for t in tasks} if clips["dev"] else {},
        tests={t.name: task_set("test", t) for t in tasks},
        pairs={sp: len(rows) for sp, rows in clips.items()})


# ------------------------------------------------------------------ training


def main_score(task: Task, score: dict[str, Any]) -> float:
    """The number a task is judged by: WER (lower is better) or chrF (higher; BLEU near 0
    is too unstable on a few dozen verses to carry a verdict)."""
    return score["wer"] if task.metric == "wer" else score["chrf"]


def task_dev(model: SpeechLLM, dev: dict[str, FeatureSet], cfg: Run
             ) -> dict[str, Any]:
    """Every task's score on its dev set: a point of the multi-task learning curve."""
    out = {}
    for name, fs in dev.items():
        task = TASKS[name]
        with model.asking(task):
            hyps = transcribe(model, fs, cfg.eval, desc=f"dev {name}")
        try:
            out[f"dev_{name}"] = main_score(task, score_task(task, task.targets(fs.utterances),
                                                             hyps))
        except Exception:  # an untrained model may write nothing at all: no score yet
            out[f"dev_{name}"] = float("nan")
    return out


DEV_POINTS = 8
"""Points on each multi-task learning curve (score against CPU minutes, every task), whatever
the budget: where the budget stops is what the curve must show."""


def schedule(mt: MultitaskConfig, train: TrainConfig) -> TrainConfig:
    """The mix's schedule: chapter 1's training section at the mix's own number of steps,
    checkpointed at most every ``train.checkpoint_every`` steps, its dev scores checked
    :data:`DEV_POINTS` times (none when chapter 1's ``dev_every`` is 0)."""
    return dataclasses.replace(train, steps=mt.steps,
                               checkpoint_every=max(1, min(train.checkpoint_every, mt.steps)),
                               dev_every=max(1, mt.steps // DEV_POINTS) if train.dev_every
                               else 0)


def chosen_models(cfg: Run) -> list[int]:
    """The indices in ``cfg.models`` of the decoders that get a multi-task model
    (``multitask_decoders``; empty: all of them)."""
    names = cfg.multitask.decoders
    return [i for i, m in enumerate(cfg.models) if not names or m.decoder in names]


def train_multitask(cfg: Run, data: ParallelData, index: int,
                    start: ModelRun | None = None, asr_only: bool = False) -> ModelRun:
    """The multi-task SpeechLLM of decoder ``index`` (trained once, then reused).

    ``multitask_start = "chapter-1"``: the model continues ``start``, chapter 1's trained
    ASR model of the same decoder (its projector and LoRA, with its CTC head's loss kept
    on), on the mix. ``"anew"``: built anew and trained by chapter 1's recipe (with
    ``ctc-warmstart``, the CTC warm start on every training clip, then the mix).

    ``asr_only``: the budget-matched control instead: the same start, steps and batches on
    the mix's English ASR examples alone (``data.asr_only``), so that English ASR of the
    multi-task model is compared with a model that trained as long on English ASR only.

    Raises:
        CompanionError: ``"chapter-1"`` without chapter 1's run of this decoder.
    """
    mc, train = cfg.models[index], schedule(cfg.multitask, cfg.train)
    examples = data.asr_only if asr_only else data.mix
    what = "English ASR alone" if asr_only else "the mix"
    dev = {k: v for k, v in data.dev.items() if not asr_only or k == "asr"}
    check = (lambda m: task_dev(m, dev, cfg)) if dev else None
    device = resolve_device(cfg.device)
    if cfg.multitask.start == "anew":
        model, warm, tr = train_run(mc, train, examples, run_folder(mc, train, examples),
                                    device, warm_set=data.asr_only if asr_only else data.audio,
                                    dev_check=check)
        return ModelRun(mc, model, tr, {}, count_parameters(model), warm)
    if start is None or start.config.decoder != mc.decoder:
        raise CompanionError(f"multitask_start='chapter-1' needs chapter 1's run of "
                             f"{mc.decoder}: pass it, or use -p multitask_start anew")
    out = run_folder(mc, train, examples, start=start.train.run_dir.name)
    model = build_speechllm(mc, device=device, seed=train.seed)
    model.load_trainable_state_dict(start.model.trainable_state_dict())
    with stage("training"):
        tr = train_speechllm(model, examples, train, out,
                             desc=f"training {slug(mc.decoder)} on {what}",
                             dev_check=check, aux_loss=ctc_aux(start.warm_start, train))
    model.eval()
    keep_model_config(out, mc)
    return ModelRun(mc, model, tr, {}, count_parameters(model), start=start)


def multitask_runs(cfg: Run, data: ParallelData, ch1_train: FeatureSet,
                   ch1_tests: dict[str, FeatureSet], control: bool = True
                   ) -> tuple[dict[str, ModelRun], dict[str, ModelRun], dict[str, ModelRun]]:
    """``(ch1, runs, alone)`` by decoder name for each decoder of ``multitask_decoders``:
    chapter 1's ASR model (reused), the multi-task model and, with ``control``, its
    budget-matched control (each trained once, then reused; ``alone`` empty without)."""
    from lib.recipes.pipeline import train_and_evaluate

    ch1, runs, alone = {}, {}, {}
    for i in chosen_models(cfg):
        d = cfg.models[i].decoder
        ch1[d] = train_and_evaluate(cfg.models[i], cfg, ch1_train, ch1_tests, evaluate=False)
        runs[d] = train_multitask(cfg, data, i, start=ch1[d])
        if control:
            alone[d] = train_multitask(cfg, data, i, start=ch1[d], asr_only=True)
    return ch1, runs, alone


# ------------------------------------------------------------------ scoring


def evaluate_task(model: SpeechLLM, fs: FeatureSet, out: Path, task: Task, ev: EvalConfig,
                  label: str | None = None) -> dict[str, Any]:
    """One test set decoded with ``task``'s instruction and scored by its metric (cached
    beside the run, keyed like every evaluation; the prompt is part of the key)."""
    with model.asking(task):
        return evaluate_asr(model, fs, out, label or task.name, ev)


@stage("decoding")
def cascade(model: SpeechLLM, asr_score: dict[str, Any], out: Path, task: Task,
            fs: FeatureSet, ev: EvalConfig) -> dict[str, Any]:
    """The text cascade: the model's own transcripts (``asr_score``'s hypotheses), then
    the same model translating them, text in place of the audio (cached by key)."""
    rows = [json.loads(x) for x in (out / asr_score["hypotheses"]).read_text().splitlines()]
    transcripts = [r["hyp"] or "." for r in rows]
    keyed = {"transcripts": transcripts, "task": task.name,
             "max_new_tokens": ev.max_new_tokens, **precision_key(model, ev)}

    def translate(_: Path) -> dict[str, Any]:
        bs, hyps = ev.batch_size, []
        with model.asking(task), torch.no_grad(), autocast(model, decode_precision(model, ev)):
            for s in range(0, len(transcripts), bs):
                hyps += model.generate_from_text(transcripts[s:s + bs], ev.max_new_tokens)
        return {"task": task.name,
                **score_translation(task.targets(fs.utterances), hyps, allow_empty=True),
                "hypotheses": hyps, "transcripts": transcripts}

    return cached(out, f"cascade-{task.name}", keyed, translate,
                  what=f"{task.name} text cascade")


def whisper_tasks(cfg: Run, tests: dict[str, FeatureSet]) -> dict[str, Any]:
    """Whisper-base's own decoder on the tasks it can do: Spanish ASR, and its built-in
    translation of Spanish speech into English."""
    enc = cfg.models[0].encoder
    if "whisper" not in enc:
        return {}
    return {name: whisper_baseline(enc, tests[name], f"parallel-{name}", task=TASKS[name])
            for name in ("asr-es", "st-es-en") if name in tests}


def run_label(run: ModelRun) -> str:
    return slug(run.config.decoder)
