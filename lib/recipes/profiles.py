"""Chapter 2's section 2.5: the functional profile, what removing each block of layers costs
on every utterance for speech and for text beside two nulls, the specificity index, and the
chapter's figures of record (book/02_where_redundancy_lies.ipynb). Called as
``ch02.functional_profiles``.

Stage: the chapters' recipes. Explained in chapter 2 (book/02_where_redundancy_lies.ipynb).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from lib.build.speechllm import SpeechLLM
from lib.config.sections import Run
from lib.data.features import FeatureSet
from lib.prune.losses import ablation_summary
from lib.recipes.section import Section
from lib.report import plotting
from lib.report.results import record_headline, recorded_line
from lib.report.rules import CHEAP_SHARE, cheap_to_remove
from lib.score.records import SPEECH_LABEL as SPEECH


PROFILE_DRAWS = 1000
"""Resamples of the utterances behind each specificity interval."""

TEXT_LM, NOISE, RANDOM = "text, pretrained LLM", "noise audio", "random weights"
"""The functional profile's inputs beside speech: the transcripts through the pretrained
LLM, and the two nulls (noise audio with the real transcripts, scored at the transcript's
positions; the same decoder configuration with seeded random weights)."""


def _profiles_of(model: SpeechLLM, n: int, meters: dict[str, Any]) -> dict[str, Any]:
    """The four profiles of one decoder at block size ``n``."""
    from lib.build.adapters import pretrained_decoder
    from lib.clock import stage
    from lib.prune.profiles import block_profile

    with stage("profiles"):
        out = {SPEECH: block_profile(meters[SPEECH], n, desc=f"{SPEECH}, blocks of {n}")}
        with pretrained_decoder(model):
            out[TEXT_LM] = block_profile(meters[TEXT_LM], n, desc=f"{TEXT_LM}, blocks of {n}")
        for null in (NOISE, RANDOM):
            out[null] = block_profile(meters[null], n, desc=f"{null}, blocks of {n}")
    return out


def _judge(name: str, n: int, prof: dict[str, Any], sc: Any, seed: int
           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """One decoder's profiles at block size ``n``: text against speech, each null, the
    specificity index against the null that agrees more, and the verdict; the table's row
    and the record's entry."""
    from lib.prune.profiles import profile_agreement, specificity
    from lib.report.rules import profile_verdict

    agr = profile_agreement(prof[SPEECH], prof[TEXT_LM])
    spec = {null: specificity(prof[SPEECH], prof[TEXT_LM], prof[null],
                              draws=PROFILE_DRAWS, seed=seed)
            for null in (NOISE, RANDOM)}
    strict = max(spec, key=lambda k: spec[k]["rho_null"])  # the null agreeing most
    verdict = profile_verdict(agr["rho"], spec[strict]["index_ci95"], sc.agree_rho,
                              sc.specific_min)
    lo, hi = spec[strict]["index_ci95"]
    row = {"decoder": name, "n": n,
           "Spearman text–speech (ceiling)": f"{agr['rho']:.2f} "
                                             f"({spec[strict]['rho_ceiling']:.2f})",
           "Spearman with noise / random": f"{spec[NOISE]['rho_null']:.2f} / "
                                           f"{spec[RANDOM]['rho_null']:.2f}",
           f"top-{agr['k']} overlap": agr["top_k_overlap"],
           "specificity [95 % CI]": f"{spec[strict]['index']:.2f} [{lo:.2f}, {hi:.2f}]",
           "verdict": verdict}
    entry = {
        "rho": agr["rho"], "top_k_overlap": agr["top_k_overlap"], "k": agr["k"],
        "rho_ceiling": spec[strict]["rho_ceiling"],
        "nulls": {k: {"rho_null": v["rho_null"], "index": v["index"],
                      "index_ci95": v["index_ci95"]} for k, v in spec.items()},
        "stricter_null": strict, "index": spec[strict]["index"],
        "index_ci95": spec[strict]["index_ci95"], "verdict": verdict}
    return row, entry


def functional_profiles(cfg: Run, results: dict[str, dict[str, Any]],
                        models: dict[str, SpeechLLM], scored: FeatureSet,
                        agree: pd.DataFrame) -> Section:
    """What removing each contiguous block costs, on every utterance, for speech and for
    text, beside two nulls; whether the two profiles mark the same blocks beyond the nulls
    (the specificity index, :func:`lib.prune.profiles.specificity`, read by
    :func:`lib.report.rules.profile_verdict`); where the score's block ranks among them.
    Then the chapter's figures of record are kept (a full book run only)."""
    from lib.prune.loss_curves import LossMeter
    from lib.prune.profiles import TextLossMeter, random_weights
    from lib.prune.strategies import cut_sizes
    from lib.score.controls import noise_features

    sc, seed, prec = cfg.score, cfg.train.seed, cfg.train.precision
    data = scored.subset(sc.profile_utterances)
    texts = [u.text for u in data.utterances]
    rows, picks, top, summaries, record, verdicts = [], [], [], {}, {}, {}
    for name, model in models.items():
        sizes = cut_sizes(sc.profile_fractions, len(model.decoder_layers))
        nulled = random_weights(model, seed)
        meters = {SPEECH: LossMeter(model, data, sc.batch_size, prec),
                  TEXT_LM: TextLossMeter(model, texts, sc.batch_size, prec),
                  NOISE: LossMeter(model, noise_features(data, seed), sc.batch_size, prec),
                  RANDOM: LossMeter(nulled, data, sc.batch_size, prec)}
        found, record[name] = {}, {}
        for n in sizes:
            found[n] = prof = _profiles_of(model, n, meters)
            row, record[name][str(n)] = _judge(name, n, prof, sc, seed)
            rows.append(row)
            verdicts.setdefault(name, []).append(row["verdict"])
        del nulled, meters  # the random-weights copy is freed
        plotting.plot_functional_profiles(found, title=name)
        n0 = sizes[0]
        s = ablation_summary(found[n0][SPEECH].frame(), results[name][SPEECH], n0)
        summaries[name] = {"block_size": n0, **s}
        l_d = s["chosen_start"]
        picks.append(f"for {name} the score picks [{l_d}, {l_d + n0}), whose removal raises "
                     f"the loss by {s['chosen_delta']:.2f} nats, rank {s['chosen_rank']} of "
                     f"{s['n_blocks']} candidates; the least harmful removal is "
                     f"[{s['best_start']}, {s['best_start'] + n0}) at {s['best_delta']:+.2f} "
                     f"nats (Spearman of d and the cost over the blocks "
                     f"{s['spearman']:.2f})")
        top.append(cheap_to_remove(s["chosen_rank"], s["n_blocks"]))
    table = pd.DataFrame(rows)
    every = [v for vs in verdicts.values() for v in vs]
    glue = dict(
        profile_n=len(data), profile_sizes="; ".join(
            f"{n}: n = " + ", ".join(str(k) for k in cut_sizes(sc.profile_fractions,
                                                               len(m.decoder_layers)))
            for n, m in models.items()),
        specific_min=sc.specific_min, profile_verdicts="; ".join(
            f"{n}: " + ", ".join(vs) for n, vs in verdicts.items()),
        profile_verdict=profile_sentence(every),
        abl_picks="; ".join(picks),
        abl_verdict=(f"for every decoder the score's block is among the cheapest "
                     f"{CHEAP_SHARE:.0%} of removals" if all(top) else
                     f"for at least one decoder the score's block is not among the cheapest "
                     f"{CHEAP_SHARE:.0%} of removals: at this scale, check a pruning choice "
                     "against the loss before trusting it"))
    from lib.recipes.ch02 import headline

    path = record_headline(cfg, headline(agree, summaries, record, {
        "agree_rho": sc.agree_rho, "agree_overlap_gain": sc.agree_overlap_gain,
        "chance_draws": sc.chance_draws, "specific_min": sc.specific_min}))
    return Section(table, glue, {"verdicts": verdicts}, items=[recorded_line(path, cfg)])


def profile_sentence(verdicts: list[str]) -> str:
    """The chapter's answer from the functional profiles' verdicts (every decoder and block
    size), as a sentence that can say no."""
    from lib.report.rules import PROFILE_DECODER, PROFILE_NOT, PROFILE_SPECIFIC

    if verdicts and all(v == PROFILE_SPECIFIC for v in verdicts):
        return ("text and speech mark the same blocks, and more than any input does: the "
                "agreement belongs to the inputs, as the paper's claim 2 says")
    if verdicts and all(v == PROFILE_NOT for v in verdicts):
        return ("text and speech do not mark the same blocks by what removing them costs: "
                "the paper's claim 2 is not reproduced here")
    if any(v == PROFILE_DECODER for v in verdicts) and not any(v == PROFILE_NOT
                                                               for v in verdicts):
        return ("text and speech mark the same blocks, but so does an input that carries no "
                "task: the profile belongs to the decoder, which fits the paper's "
                "\"inherited\" but does not show that speech is processed like text")
    return ("the profiles agree for some decoders or block sizes and not for others (each "
            "verdict is in the table): the paper's claim 2 holds here only in part")
