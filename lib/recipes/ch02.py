"""Chapter 2's recipe: where the redundancy lies, for text and for speech, section by
section (book/02_where_redundancy_lies.ipynb).

Each function is one section of the page and returns a
:class:`~lib.recipes.section.Section`; every verdict comes from :mod:`lib.report.rules`.

Stage: the chapters' recipes. Explained in chapter 2 (book/02_where_redundancy_lies.ipynb).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lib.build.speechllm import SpeechLLM, count_parameters
from lib.build.adapters import lora_update_norms, pretrained_decoder
from lib.config.sections import Run
from lib.evaluate.baselines import audio_reliance
from lib.paths import slug
from lib.recipes.pipeline import prepare_features, train_and_evaluate
from lib.recipes.section import Section, settings_line
from lib.report import plotting
from lib.report.rules import (LISTENS_GAP, NULL_SHARE_MAX, agreement_verdict, null_share,
                              reads_audio, specific_verdict)
from lib.score.controls import null_agreement, null_surfaces
from lib.score.agreement import overlap_gain
from lib.score.records import SPEECH_LABEL, save_scores
from lib.score.redundancy import agreement, score_speech, score_text
from lib.score.stats import RedundancyResult

PRE, TRAINED, SPEECH, AUDIO = ("text, pretrained LLM", "text, SpeechLLM decoder", SPEECH_LABEL,
                               "speech, audio")
"""The four inputs scored for every decoder."""

COMPARISONS: dict[str, tuple[str, str]] = {
    "text vs speech, transcript tokens": (PRE, SPEECH),
    "text vs speech, audio positions": (PRE, AUDIO),
    "pretrained vs trained decoder, text": (PRE, TRAINED),
}
"""Chapter 2's comparisons: label -> the two inputs (keys of a decoder's results)."""


def gguf_decoders(names: Any) -> list[str]:
    """The decoders among ``names`` that are offline GGUF checkpoints: 4-bit llama.cpp
    weights dequantised to fp32 (:mod:`lib.assets.gguf`)."""
    from lib.assets.registry import OFFLINE_MODELS

    return [n for n in names if getattr(OFFLINE_MODELS.get(n), "kind", None) == "gguf"]


def settings(cfg: Run) -> str:
    """The line under the chapter's resolved values: what this run does, in its own numbers."""
    sc = cfg.score
    return settings_line(cfg, f"{sc.n_score_utterances} utterances scored",
                         f"profiles of blocks of {list(sc.profile_fractions)} of the layers on "
                         f"{sc.profile_utterances} utterances",
                         f"verdict thresholds: Spearman per n >= {sc.agree_rho}, overlap "
                         f"gain >= {sc.agree_overlap_gain}, {sc.chance_draws} chance draws, "
                         f"specificity >= {sc.specific_min}")


# ------------------------------------------------------------------ 2.1 the inputs


def _notes(sizes: dict[str, int], gaps: dict[str, float], gguf: list[str]) -> dict[str, str]:
    deaf = [k for k, g in gaps.items() if not reads_audio(g)]
    return dict(
        decoder_sizes=" and ".join(f"{v / 1e6:.3g}M ({k})" for k, v in sizes.items()),
        size_note=(
            "far below the paper's 1–8B decoders (Llama 3.2 1B to Llama 3.1 8B, Qwen2.5 1.5B "
            "to 7B; the paper's Setup); the paper finds that smaller decoders tolerate less "
            "pruning (abstract, claim 3)" if max(sizes.values()) < 1e9 else
            "in the range of the paper's 1–8B decoders (the paper's Setup)"),
        gguf_note=(
            f"{' and '.join(gguf)} {'is' if len(gguf) == 1 else 'are'} 4-bit GGUF "
            "checkpoints (llama.cpp quantisation) dequantised to fp32, not the original "
            "bf16 weights the paper uses. Quantisation adds a small rounding error to every "
            "weight; the redundancy score compares hidden states, so it can make adjacent "
            "layers look a little less alike (a larger d) and can swap the order of blocks "
            "whose distances nearly tie. Read small differences between blocks with that in "
            "mind." if gguf else "The decoders are unquantised checkpoints."),
        listen_note=(
            "By chapter 1's rule (a transcript costs at least "
            f"{LISTENS_GAP:g} nats/token more after another clip's audio than after its own), "
            + ("every SpeechLLM here reads the audio " if not deaf else
               f"{' and '.join(deaf)} {'does' if len(deaf) == 1 else 'do'} not read the "
               "audio: there the audio positions carry little the decoder uses, and the "
               "speech scores say more about the prompt and the text than about speech ")
            + "(gaps: " + ", ".join(f"{k} {g:.2f}" for k, g in gaps.items())
            + " nats/token)."))


def score_inputs(cfg: Run) -> Section:
    """Chapter 1's models (reused), and the four inputs scored for each decoder on the same
    utterances of the first test set, saved beside the run."""
    sc = cfg.score
    train, tests = prepare_features(cfg)
    test_name = cfg.test_data[0]
    scored = tests[test_name].subset(sc.n_score_utterances)
    texts = [u.text for u in scored.utterances]
    results, models, sizes, gaps, nulls, items = {}, {}, {}, {}, {}, []
    for m in cfg.models:
        name = slug(m.decoder)
        run = train_and_evaluate(m, cfg, train, tests, evaluate=False)
        with pretrained_decoder(run.model) as llm:  # same weights, LoRA off
            base = score_text(llm, None, texts, batch_size=sc.batch_size,
                              positions="transcript")
        # transcript and audio positions are scored from the same forward passes
        speech = score_speech(run.model, scored, batch_size=sc.batch_size,
                              positions=("transcript", "audio"))
        results[name] = {
            PRE: base,
            TRAINED: score_text(run.model, None, texts, batch_size=sc.batch_size,
                                positions="transcript"),
            SPEECH: speech["transcript"],
            AUDIO: speech["audio"],
        }
        items.append(f"{name}: scores saved in "
                     f"{save_scores(results[name], run.train.run_dir)}")
        models[name] = run.model
        sizes[name] = count_parameters(run.model)["decoder"]
        rel = audio_reliance(run.model, scored, n=sc.n_score_utterances, batch_size=sc.batch_size)
        gaps[name] = rel["other_audio_loss"] - rel["own_audio_loss"]
        nulls[name] = null_surfaces(run.model, scored, texts, batch_size=sc.batch_size,
                                    seed=cfg.train.seed)
    glue = {"n_scored": len(scored), "test_name": test_name,
            **_notes(sizes, gaps, gguf_decoders([m.decoder for m in cfg.models]))}
    return Section(glue=glue, items=items, data={"results": results, "models": models,
                                                 "scored": scored, "nulls": nulls})


def heatmaps(results: dict[str, dict[str, RedundancyResult]]) -> Section:
    """The heatmaps of ``d(l, n)``, one figure per decoder."""
    for name, res in results.items():
        plotting.plot_distance_heatmaps(res, title=name)
    return Section()


# ------------------------------------------------------------------ 2.3 agreement


def agreement_table(results: dict[str, dict[str, Any]], draws: int, rho_min: float,
                    gain_min: float, seed: int = 0,
                    comparisons: dict[str, tuple[str, str]] = COMPARISONS,
                    nulls: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """Every comparison of every decoder, each figure beside its chance level.

    Columns: decoder, comparison, ``Spearman per n`` (mean over n of the correlation over
    l), ``chance Spearman``, ``overlap`` (mean block overlap), ``chance overlap``,
    ``overlap gain`` and ``verdict`` (:func:`lib.report.rules.agreement_verdict` with
    ``rho_min`` and ``gain_min``); with ``nulls`` (decoder -> its null surfaces,
    :func:`lib.score.controls.null_surfaces`) also ``null share``
    (:func:`lib.report.rules.null_share`) and ``beyond null`` (the verdict read against
    them, :func:`lib.report.rules.specific_verdict`).
    """
    rows = []
    for dec, res in results.items():
        for label, (a, b) in comparisons.items():
            agr = agreement(res[a], res[b], chance_draws=draws, seed=seed)
            row = {"decoder": dec, "comparison": label,
                   "Spearman per n": agr["spearman_per_n_mean"],
                   "chance Spearman": agr["chance"]["spearman_per_n_mean"],
                   "overlap": agr["overlap_mean"],
                   "chance overlap": agr["chance"]["overlap_mean"],
                   "overlap gain": overlap_gain(agr),
                   "verdict": agreement_verdict(agr, rho_min, gain_min)}
            if nulls is not None:
                found = [*null_agreement(res[a], nulls[dec]).values(),
                         *null_agreement(res[b], nulls[dec]).values()]
                row["null share"] = null_share(agr, found)
                row["beyond null"] = specific_verdict(row["verdict"], row["null share"])
            rows.append(row)
    return pd.DataFrame(rows)


def agreement_view(agree: pd.DataFrame) -> pd.DataFrame:
    """:func:`agreement_table` as the page shows it, within the content column: each
    figure beside its chance level in one cell, and one verdict (read against the null
    inputs when they were scored)."""
    view = pd.DataFrame({
        "decoder": agree["decoder"], "comparison": agree["comparison"],
        "Spearman per n (chance)": [f"{a:.2f} ({b:.2f})" for a, b in
                                    zip(agree["Spearman per n"], agree["chance Spearman"])],
        "block overlap (chance)": [f"{a:.2f} ({b:.2f})" for a, b in
                                   zip(agree["overlap"], agree["chance overlap"])]})
    if "null share" in agree:  # undefined where neither input beats chance: a dash
        view["null share"] = [f"{x:.2f}" if x == x else "–" for x in agree["null share"]]
    view["verdict"] = agree["beyond null"] if "beyond null" in agree else agree["verdict"]
    return view


def _all(rows: pd.DataFrame, verdict: str) -> bool:
    return bool((rows["verdict"] == verdict).all())


def _verdicts(rows: pd.DataFrame) -> str:
    return "; ".join(f"{d}: {v}" for d, v in zip(rows["decoder"], rows["verdict"]))


def agreements(cfg: Run, results: dict[str, dict[str, Any]],
               nulls: dict[str, dict[str, Any]] | None = None) -> Section:
    """Do text and speech (and the decoder before and after training) mark the same
    blocks? Each comparison against its chance draws and against the null inputs
    (chapter 5's control), with its verdicts."""
    sc = cfg.score
    agree = agreement_table(results, sc.chance_draws, sc.agree_rho, sc.agree_overlap_gain,
                            seed=cfg.train.seed, nulls=nulls)
    ts, ta, tt = (agree[agree["comparison"] == c] for c in COMPARISONS)
    glue = dict(
        chance_draws=sc.chance_draws, agree_rho=sc.agree_rho, agree_gain=sc.agree_overlap_gain,
        rho_min=ts["Spearman per n"].min(), rho_max=ts["Spearman per n"].max(),
        rho_chance=ts["chance Spearman"].abs().max(),
        ovl_min=ts["overlap"].min(), ovl_max=ts["overlap"].max(),
        ovl_chance_min=ts["chance overlap"].min(), ovl_chance_max=ts["chance overlap"].max(),
        ts_verdicts=_verdicts(ts), ta_verdicts=_verdicts(ta),
        ta_rho_min=ta["Spearman per n"].min(), ta_rho_max=ta["Spearman per n"].max(),
        lora_verdicts=_verdicts(tt),
        verdict=surface_sentence(ts),
        lora_effect=(
            "leaves the ranking of blocks where the pretrained LLM had it, for every decoder"
            if _all(tt, "the same blocks") else
            "moves the ranking of blocks away from the pretrained LLM's for at least one "
            "decoder"),
        null_sentence=_null_sentence(agree))
    return Section(agreement_view(agree), glue,
                   {"agree": agree, "lora_same": _all(tt, "the same blocks")})


def surface_sentence(rows: pd.DataFrame) -> str:
    """The answer of the distance surfaces to "do text and speech mark the same blocks?",
    read against the null inputs when they were scored (a raw "the same blocks" that a null
    input reaches as well is not counted as the inputs' own)."""
    final = rows["beyond null"] if "beyond null" in rows else rows["verdict"]
    if (final == "the same blocks, beyond a null input").all() or (
            "beyond null" not in rows and (final == "the same blocks").all()):
        return ("the same blocks stand out for text and for speech for every decoder, "
                "beyond what a null input marks, as the paper reports (abstract, claim 2)")
    if (final == "the same blocks, as a null input does").all():
        return ("text and speech mark the same blocks by the raw rule, but so does a null "
                "input, which carries no task, for every decoder: the surfaces describe the "
                "decoder, which fits the paper's \"inherited\" but does not show that "
                "speech is processed like text")
    if (final == "no more than chance").all():
        return ("text and speech agree no more than chance for any decoder: the paper's "
                "finding (abstract, claim 2) is not reproduced here")
    return ("text and speech agree beyond a null input only in part: weaker than the "
            "paper's finding (abstract, claim 2)")


def _null_sentence(agree: pd.DataFrame) -> str:
    """What the null inputs say about chapter 2's verdicts, in one sentence."""
    if "null share" not in agree:
        return "no null inputs were scored"
    same = agree[agree["verdict"] == "the same blocks"]
    if same.empty:
        return "no comparison passed the rule, so the null inputs change no verdict"
    kept = same[same["beyond null"] == "the same blocks, beyond a null input"]
    return (f"{len(kept)} of the {len(same)} comparisons that pass the rule also agree beyond "
            f"what a null input reaches (null share at most {NULL_SHARE_MAX:g}; the largest "
            f"here {same['null share'].max():.2f}); "
            + ("so the agreement is specific to the inputs" if len(kept) == len(same) else
               "for the others a null input, which carries no task, already marks the same "
               "blocks: the agreement there describes the decoder more than the inputs"))


def profiles(results: dict[str, dict[str, RedundancyResult]]) -> Section:
    """The smallest distance for each block size, one panel per decoder."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), squeeze=False,
                             figsize=(7.0 * len(results) / 1.6, 3.4))
    for ax, (name, res) in zip(axes[0], results.items()):
        plotting.plot_block_profile(res, ax=ax)
        ax.set_title(name)
    fig.tight_layout()
    return Section()


# ------------------------------------------------------------------ 2.4 what training did


def training_change(model: SpeechLLM, pretrained_text: Any, trained_text: Any,
                    speech: Any) -> dict[str, Any]:
    """What LoRA training did to one decoder, with the text -> speech change for scale.

    ``pretrained_text`` / ``trained_text`` / ``speech`` are :class:`RedundancyResult` of the
    same utterances (the decoder with LoRA off and on, and speech through the SpeechLLM).
    Returns one table row: number of adapted matrices, mean and max relative weight update
    (%), mean and max ``|Δd|`` (last token) from training, mean ``|Δd|`` from text to
    speech, and the spread of ``d`` (largest minus smallest cell) of the pretrained LLM.
    """
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


def what_training_changed(cfg: Run, results: dict[str, dict[str, Any]],
                          models: dict[str, SpeechLLM], lora_same: bool) -> Section:
    """How far LoRA moved the weights and ``d(l, n)``, against the text -> speech change."""
    rows = []
    for name, res in results.items():
        rows.append({"decoder": name, **training_change(models[name], res[PRE], res[TRAINED],
                                                        res[SPEECH])})
        plotting.plot_distance_change(
            {"LoRA training (text)": (res[PRE], res[TRAINED]),
             "text → speech (trained decoder)": (res[TRAINED], res[SPEECH])}, title=name)
    change = pd.DataFrame(rows)
    m0 = cfg.models[0]
    upd_mean, upd_max = change["update, mean (%)"], change["update, max (%)"]
    smaller = (change["|Δd| training, mean"] < change["|Δd| text → speech, mean"]).all()
    glue = dict(
        lora_desc=(f"rank {m0.lora_rank}, alpha {m0.lora_alpha}, on "
                   f"{', '.join(m0.lora_targets)}, {cfg.train.steps} steps"
                   if m0.lora_rank > 0 else "none here: lora_rank = 0"),
        upd_sentence=(
            f"Training moved the adapted weights by {upd_mean.min():.2f}–"
            f"{upd_mean.max():.2f} % on average across the decoders (at most "
            f"{upd_max.max():.2f} % in any one matrix)"
            if change["adapted matrices"].min() > 0 else
            "These decoders have no adapters, so the decoder is the pretrained LLM unchanged"),
        dd_lora_mean=change["|Δd| training, mean"].max(),
        dd_lora_peak=change["|Δd| training, max"].max(),
        dd_modal_min=change["|Δd| text → speech, mean"].min(),
        spread_min=change["spread of d"].min(),
        lora_vs_modal=(
            "less than switching the input from text to speech did, for every decoder"
            if smaller else "as much as or more than switching the input from text to "
            "speech did, for at least one decoder"),
        inherit_sentence=(
            "Here the paper's second claim (abstract, claim 2) holds from the decoder's "
            "side: the ranking of blocks, which is what pruning uses, is the pretrained "
            "LLM's (the same blocks before and after training, by the rule of section 2.3)"
            if lora_same else
            "Here the paper's second claim (abstract, claim 2) does not hold from the "
            "decoder's side for every decoder: training moved the ranking of blocks away "
            "from the pretrained LLM's (section 2.3)"))
    return Section(change, glue, precision=3)


# ------------------------------------------------------------------ 2.5 the ablation


def headline(agree: pd.DataFrame, ablation: dict[str, dict[str, Any]],
             profiles: dict[str, dict[str, Any]], thresholds: dict[str, float]
             ) -> dict[str, Any]:
    """Chapter 2's figures of record (``results/<preset>/ch02.json``): per decoder and
    comparison ``spearman_per_n_mean``, ``overlap_mean``, the same two under ``chance``
    and the verdict; per decoder the ``ablation`` summary (the score's block in the
    speech profile of the first block size) and the functional ``profiles`` per block size
    (text against speech, each null, the specificity index and the verdict); the verdicts'
    thresholds."""
    out: dict[str, Any] = {}
    for row in agree.to_dict("records"):
        dec = out.setdefault(row["decoder"], {"comparisons": {}})
        dec["comparisons"][row["comparison"]] = {
            "spearman_per_n_mean": float(row["Spearman per n"]),
            "overlap_mean": float(row["overlap"]),
            "chance": {"spearman_per_n_mean": float(row["chance Spearman"]),
                       "overlap_mean": float(row["chance overlap"])},
            "verdict": row["verdict"],
            **({"null_share": float(row["null share"]), "beyond_null": row["beyond null"]}
               if "null share" in row else {})}
    for dec, summary in ablation.items():
        out.setdefault(dec, {"comparisons": {}})["ablation"] = {
            k: (float(v) if isinstance(v, float) else v) for k, v in summary.items()}
    for dec, by_n in profiles.items():
        out.setdefault(dec, {"comparisons": {}})["profiles"] = by_n
    return {"decoders": out, "thresholds": dict(thresholds)}
