"""Every verdict rule and threshold of the book, in one place.

A verdict sentence on a page or in the README ("lower than", "the same blocks", "the peak
fell", "target met") is computed by one of these functions from measured values and a
named threshold; nothing else in the library or the chapters decides a verdict. The
thresholds that a reader may change per run are parameters (``agree_rho``,
``agree_overlap_gain``, ``prune_threshold``: :mod:`lib.config.defaults`); the fixed ones
are named here, each with its reason. The paper's pruning rule, which chooses a cut rather
than judging one, is the pruning stage's own (:mod:`lib.prune.rule`).

Stage: report (the rules). Explained in chapter 1 (book/01_building_a_speechllm.ipynb) and
where each rule is first used.
"""

from __future__ import annotations

import math
from typing import Any

from lib.clock import others_share
from lib.score.agreement import overlap_gain

LISTENS_GAP = 1.0
"""Nats per token: a decoder "reads the audio" when scoring each transcript after another
clip's audio costs at least this much more than after its own (chapter 1's reliance check)."""

WER_TARGETS = {"synthetic:test": 0.15, "real": 0.35}
"""The default recipe's WER targets per test set (issue 11): what a SpeechLLM that really
transcribes should reach on the offline data."""


BF16_MIN_SPEEDUP = 1.15
"""bf16 earns its rounding where it runs at least this many times as fast as float32: single
timings on these machines vary by about 10 %, so a smaller ratio is no gain one can count on
(chapter 1, section 1.6)."""


def bf16_verdict(speedup: float, wer_check: dict[str, Any] | None = None,
                 rounds: list[float] | None = None) -> str:
    """What bf16 buys over float32, from a speed ratio measured in the run (float32 time over
    bf16 time) and, for decoding, the paired WER difference bf16 minus float32:
    ``"costs accuracy"`` when that difference lies wholly above zero; ``"undecided"`` when
    the per-round ratios (``rounds``) fall on both sides of :data:`BF16_MIN_SPEEDUP`, so the
    machine's noise is larger than the question; else ``"pays"`` when bf16 is at least that
    many times as fast, ``"buys nothing"`` otherwise."""
    if wer_check is not None and paired_verdict(wer_check) == "higher than":
        return "costs accuracy"
    if rounds and min(rounds) < BF16_MIN_SPEEDUP <= max(rounds):
        return "undecided"
    if math.isfinite(speedup) and speedup >= BF16_MIN_SPEEDUP:
        return "pays"
    return "buys nothing"


SHARED_MAX = 0.05
"""A chapter's stage times are the machine's when others (processes, the host's steal) took at
most this share of its CPU time: on two cores a second job, even niced, slows every step."""


def machine_shared(cpu: dict[str, Any] | None, wall_s: float) -> tuple[str, float]:
    """``(verdict, share)``: "to itself", "shared" or "not measured", and the share of the CPU
    others took (:func:`lib.clock.others_share` of a summary's ``cpu``)."""
    share = others_share(cpu, wall_s)
    verdict = "not measured" if share != share else "shared" if share > SHARED_MAX else "to itself"
    return verdict, share


def compare_wer(a: dict[str, Any], b: dict[str, Any]) -> str:
    """``"lower than"``, ``"higher than"`` or ``"not distinguishable from"``: ``a`` beats
    ``b`` only when their 95 % bootstrap intervals do not overlap (a conservative rule, the
    one chapter 1's verdicts and the README's use). Explained in chapter 1."""
    (a_lo, a_hi), (b_lo, b_hi) = a["wer_ci95"], b["wer_ci95"]
    return _sign_verdict(a_lo - b_hi, a_hi - b_lo)  # the widest a - b the intervals allow


def paired_verdict(d: dict[str, Any]) -> str:
    """``"lower than"``, ``"higher than"`` or ``"not distinguishable from"`` for a paired
    difference (:func:`lib.evaluate.metrics.paired_difference`, ``a`` minus ``b``): ``a``
    beats ``b`` when the 95 % interval of the difference lies wholly below zero. The rule
    for two systems on the same utterances (chapter 1's rescored against greedy)."""
    return _sign_verdict(*d["difference_ci95"])


def seed_widened(d: dict[str, Any], spread: float) -> dict[str, Any]:
    """A paired difference (``difference``, ``difference_ci95``) whose interval is the wider
    of its own and the difference +- half the seed ``spread`` (max - min of one system's
    figure over training seeds), on each side: a verdict between two trained systems must
    hold against both the choice of utterances and the choice of seed (chapter 1)."""
    low, high = d["difference_ci95"]
    half = spread / 2 if math.isfinite(spread) else 0.0
    diff = d["difference"]
    return {**d, "difference_ci95": [min(low, diff - half), max(high, diff + half)],
            "seed_half_range": half}


def choose_lever(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The recipe of record among measured levers, by a rule fixed before the run: the lever
    with the lowest WER on the dev set (``real:dev``) wins if its difference from ``clean``
    there (:func:`seed_widened`) is wholly below zero; otherwise ``clean`` stays. Each row:
    ``lever``, ``dev_wer``, ``vs_clean`` (a widened paired difference; None for clean).

    Returns:
        ``{"lever", "verdict", "sentence"}``; verdict ``"lower than"`` when a lever wins.
    """
    best = min((r for r in rows if r["lever"] != "clean"), key=lambda r: r["dev_wer"],
               default=None)
    if best is None:
        return {"lever": "clean", "verdict": "", "sentence": "only the clean recipe was measured"}
    verdict = paired_verdict(best["vs_clean"])
    lo, hi = (100 * x for x in best["vs_clean"]["difference_ci95"])
    won = verdict == "lower than"
    sentence = (f"{best['lever']} has the lowest dev WER; its WER is {verdict} clean's "
                f"(difference {100 * best['vs_clean']['difference']:+.1f} points [{lo:+.1f}, "
                f"{hi:+.1f}], utterances and seeds), so the recipe of record is "
                f"{best['lever'] if won else 'clean'}")
    return {"lever": best["lever"] if won else "clean", "verdict": verdict, "sentence": sentence}


def _sign_verdict(low: float, high: float) -> str:
    """The verdict on ``a`` against ``b`` from an interval of ``a - b``: which side of zero."""
    if high < 0:
        return "lower than"
    if low > 0:
        return "higher than"
    return "not distinguishable from"


def peak_spread(cost: dict[str, Any]) -> float:
    """The noise of a peak-memory measurement (MiB): the largest max - min among one
    model's rounds (``peak_mib_full_rounds``, ``peak_mib_pruned_rounds`` of
    :func:`lib.prune.cost.compare_decoding`); NaN when no model has two rounds."""
    spreads = [max(r) - min(r) for r in (cost.get("peak_mib_full_rounds", []),
                                         cost.get("peak_mib_pruned_rounds", [])) if len(r) > 1]
    return max(spreads) if spreads else float("nan")


def memory_verdict(cost: dict[str, Any]) -> str:
    """Whether pruning lowered the peak memory of a fresh decoding process, as a phrase: the
    change of the medians (pruned - full, :func:`lib.prune.cost.compare_decoding`) judged by
    :func:`_sign_verdict` on ``change ± spread`` (:func:`peak_spread`, the noise of the same
    run): "the peak fell" only below minus the spread. Explained in chapter 4."""
    change = cost["peak_mib_pruned"] - cost["peak_mib_full"]
    if change != change:  # NaN: no saved folders, no processes
        return "no peak measured"
    if "peak_mib_full_rounds" not in cost:  # a record written before the rounds were kept
        return "no spread recorded to judge the change against"
    spread = peak_spread(cost)
    if spread != spread:
        return "one process per model, so no spread to judge the change against"
    verdict = _sign_verdict(change - spread, change + spread)
    said = {"lower than": "the peak fell", "higher than": "the peak rose",
            "not distinguishable from": "no change beyond the noise"}[verdict]
    return f"{said} (the rounds of one model spread over up to {spread:.0f} MiB)"


P_MAX = 0.05
"""An agreement figure beats its chance draws when at most this share of them reach it."""

CHEAP_SHARE = 0.25
"""Chapter 2: the score's block is "cheap to remove" when its removal ranks within this
share of all candidate blocks (a block picked at random does so one time in four)."""

SPEEDUP_TARGET = 0.9
"""Chapter 4: pruning's measured decoding speed-up should reach this share of the ideal
one computed from the FLOPs removed."""


def agreement_verdict(agr: dict[str, Any], rho_min: float, gain_min: float,
                      p_max: float = P_MAX) -> str:
    """"The same blocks": the per-n Spearman mean is at least ``rho_min`` and the overlap at
    least ``gain_min`` of the way from chance to 1 (:func:`overlap_gain`), both above their
    chance draws (``p <= p_max``); "no more than chance": neither figure beats its chance
    draws; otherwise "partly the same blocks". Explained in chapter 2."""
    c = agr["chance"]
    beats_r = math.isfinite(c["p_spearman"]) and c["p_spearman"] <= p_max
    beats_o = c["p_overlap"] <= p_max
    if (beats_r and beats_o and agr["spearman_per_n_mean"] >= rho_min
            and overlap_gain(agr) >= gain_min):
        return "the same blocks"
    if not beats_r and not beats_o:
        return "no more than chance"
    return "partly the same blocks"


def reads_audio(gap: float) -> bool:
    """Chapter 1's reliance check: the decoder reads the audio when a transcript costs at
    least :data:`LISTENS_GAP` nats/token more after another clip's audio than after its
    own."""
    return gap >= LISTENS_GAP


def target_met(wer: float, test_set: str) -> bool | None:
    """Whether ``wer`` meets :data:`WER_TARGETS` for ``test_set`` (None: no target)."""
    target = WER_TARGETS.get(test_set)
    return None if target is None else wer <= target


def cheap_to_remove(rank: int, n_blocks: int) -> bool:
    """Chapter 2: the score's block ranks (1 = least harmful removal) within
    :data:`CHEAP_SHARE` of the ``n_blocks`` candidates (at least the first)."""
    return rank <= max(1, int(n_blocks * CHEAP_SHARE))


def speedup_reaches_target(ratio: float) -> bool:
    """Chapter 4: the measured speed-up over the ideal reaches :data:`SPEEDUP_TARGET`."""
    return ratio >= SPEEDUP_TARGET


def seeded_verdict(d: dict[str, Any]) -> str:
    """``"lower than"``, ``"higher than"`` or ``"not distinguishable from"``: one healing
    variant's loss against another's (:func:`lib.heal.measure.compare_seeded`, ``a`` minus
    ``b``), by which side of zero the wider of the utterance interval and the seed spread
    lies. A difference that a second seed can reverse is not a difference. Explained in
    chapter 4."""
    return _sign_verdict(*d["ci95"])


def repair_verdict(d: dict[str, Any]) -> str:
    """Whether healing repairs the cut or mostly trains the model: the gain on the pruned
    model minus the gain of the unpruned model trained the same way
    (:func:`lib.heal.measure.repair_contrast`), read by :func:`seeded_verdict`'s rule;
    healing must first win something back (its own gain above zero by the same rule), or a
    control that training made worse would make doing nothing look like a repair.
    Explained in chapter 4."""
    if d["gain_healed_ci95"][0] <= 0:
        return "healing is not shown to win anything back: it does not repair the cut"
    side = _sign_verdict(*d["ci95"])
    if side == "higher than":
        return "healing repairs the cut: it wins back more than the same training gives " \
               "the unpruned model"
    if side == "lower than":
        return "the same training helps the unpruned model more than the pruned one: " \
               "healing does not repair the cut"
    return "healing wins back no more than the same training gives the unpruned model: " \
           "it is not shown to repair the cut"


NULL_SHARE_MAX = 0.75
"""Chapters 2 and 5: an agreement says something about the two inputs (not only about the
decoder) when a null input, which carries no task (:mod:`lib.score.controls`), reaches at
most this share of it above chance."""


def null_share(agr: dict[str, Any], null_agrs: list[dict[str, Any]]) -> float:
    """How much of an agreement above chance a null input already reaches: the largest,
    over the null comparisons given and the two measures (per-n Spearman, block overlap),
    of ``(null - chance) / (observed - chance)``; 1 or more when a null input agrees as
    much; NaN when the observed agreement is not above chance."""
    shares = []
    for key in ("spearman_per_n_mean", "overlap_mean"):
        chance = agr["chance"][key]
        gain = agr[key] - chance
        if not (gain > 0):
            continue
        shares += [(n[key] - chance) / gain for n in null_agrs]
    return max(shares) if shares else float("nan")


def specific_verdict(base: str, share: float, share_max: float = NULL_SHARE_MAX) -> str:
    """An agreement verdict (:func:`agreement_verdict`) read against the null inputs:
    "the same blocks" becomes "the same blocks, beyond a null input" when a null input
    reaches at most ``share_max`` (:data:`NULL_SHARE_MAX`) of it, else "the same blocks, as
    a null input does" (the decoder marks those blocks for anything)."""
    if base != "the same blocks":
        return base
    if share == share and share <= share_max:
        return "the same blocks, beyond a null input"
    return "the same blocks, as a null input does"


PROFILE_SPECIFIC, PROFILE_DECODER, PROFILE_UNDECIDED, PROFILE_NOT = (
    "the same blocks, specific to the inputs", "the same blocks, as any input marks them",
    "the same blocks, specificity undecided", "not the same blocks")
"""The verdicts of :func:`profile_verdict`."""


def profile_verdict(rho: float, index_ci95: list[float], rho_min: float,
                    specific_min: float) -> str:
    """Do two functional profiles (what removing each block costs, on two inputs) mark the
    same blocks, and is that agreement the inputs' own? ``not the same blocks`` when their
    Spearman ``rho`` is below ``rho_min``; otherwise read on the specificity index's 95 %
    interval (:func:`lib.prune.profiles.specificity`): ``the same blocks, specific to the
    inputs`` when it lies wholly at or above ``specific_min``, ``..., as any input marks
    them`` when wholly below it (a null input or a random-weights decoder agrees about as
    much: the profile belongs to the decoder), ``..., specificity undecided`` otherwise.
    Explained in chapter 2."""
    if not rho >= rho_min:  # NaN: not the same
        return PROFILE_NOT
    lo, hi = index_ci95
    if lo >= specific_min:
        return PROFILE_SPECIFIC
    if hi < specific_min:
        return PROFILE_DECODER
    return PROFILE_UNDECIDED


def paired_target(d: dict[str, Any], higher_is_better: bool) -> str:
    """A paired difference (``a`` minus ``b``) as a verdict on ``a``: "better than",
    "worse than" or "not distinguishable from" ``b``, by :func:`paired_verdict`."""
    v = _sign_verdict(*d["difference_ci95"])
    if v == "not distinguishable from":
        return v
    return "better than" if (v == "higher than") == higher_is_better else "worse than"


# ------------------------------------------------------------------ chapter 5's targets

MULTITASK_ASR_RULE = 0.25
"""The paper's rule (a relative WER increase of at most 25 %), applied to the multi-task
model's English ASR against chapter 1's ASR-only model: sharing the decoder with three other
tasks may cost English ASR no more than pruning may (chapter 5's target)."""


def asr_against_asr_only(asr_only_wer: float, multitask_wer: float) -> dict[str, Any]:
    """The multi-task model's English ASR against the ASR-only model's: the relative WER
    change and whether it is within :data:`MULTITASK_ASR_RULE`."""
    from lib.prune.rule import relative_change, within_threshold

    rel = float(relative_change(asr_only_wer, multitask_wer))
    return {"relative": rel, "within": bool(within_threshold(rel, MULTITASK_ASR_RULE))}


def asr_rule_sentence(asr: dict[str, dict[str, Any]]) -> str:
    """Per decoder, :func:`asr_against_asr_only` as a clause of the page."""
    return "; ".join(
        f"{d}: relative WER change {100 * a['relative']:+.0f} % "
        f"({'within' if a['within'] else 'beyond'} the paper's "
        f"{100 * MULTITASK_ASR_RULE:.0f} %)" for d, a in asr.items())


def whisper_target(verdicts: list[str]) -> str:
    """Chapter 5's translation target, from each decoder's paired verdict against
    Whisper-base's own translation: met when one is better, met only in the weak sense
    when one is not worse, not met otherwise (or with no Whisper baseline)."""
    if any(v == "better than" for v in verdicts):
        return "met: better than it"
    if any(v != "worse than" for v in verdicts):
        return "met only in the weak sense, not distinguishable from it"
    return "not met"


COMPETENCE_MARGIN = {"wer": 0.10, "chrf": 5.0}
"""Chapter 5: a task is *learned* when its score beats its no-audio floor (the same model,
each clip's audio replaced by another's) by at least this much, the whole 95 % paired interval
beyond it: ten WER points for transcription, five chrF points for translation. Fixed before
the run: a model that writes fluent verse in the right language without listening reaches the
floor, so only the margin above it is the task. Only learned tasks enter the claim-5 verdict."""


def task_learned(d: dict[str, Any], metric: str) -> bool:
    """Whether a task is learned: ``d`` is its paired difference, model minus no-audio floor
    (WER as a fraction, or chrF points), and the whole 95 % interval lies beyond
    :data:`COMPETENCE_MARGIN` on the better side. Explained in chapter 5."""
    if metric not in COMPETENCE_MARGIN:
        raise ValueError(f"metric {metric!r}: use one of {', '.join(COMPETENCE_MARGIN)}")
    lo, hi = d["difference_ci95"]
    margin = COMPETENCE_MARGIN[metric]
    return bool(hi < -margin) if metric == "wer" else bool(lo > margin)


TASKS_SAME, TASKS_DIFFER, TASKS_UNDECIDED = ("the same blocks", "task-dependent",
                                             "cannot tell")
"""The verdicts of :func:`task_profile_verdict`."""

ROOM_MIN = 0.1
"""Chapter 5: two tasks' profiles can be told apart only when a task's profile agrees with
itself (split half) at least this much more (Spearman) than with its null input's; below it,
the decoder's own shape is all the profiles show, and the verdict is "cannot tell"."""


def task_profile_verdict(spec: dict[str, Any], same_min: float,
                         room_min: float = ROOM_MIN) -> str:
    """Do two tasks mark the same blocks by what removing them costs?

    ``spec`` is :func:`lib.prune.profiles.cross_specificity`: the tasks' agreement placed
    between their null's (0) and their own split-half ceiling (1), with a 95 % interval.
    "the same blocks" when the interval lies wholly at or above ``same_min`` (the tasks agree
    about as much as each task with itself), "task-dependent" when wholly below it, "cannot
    tell" otherwise, or when the ceiling is not ``room_min`` (:data:`ROOM_MIN`) above the
    null. Explained in chapter 5."""
    if not spec["rho_ceiling"] - spec["rho_null"] >= room_min:
        return TASKS_UNDECIDED
    lo, hi = spec["index_ci95"]
    if lo >= same_min:
        return TASKS_SAME
    if hi < same_min:
        return TASKS_DIFFER
    return TASKS_UNDECIDED


def claim5_sentence(verdicts: list[str]) -> str:
    """The answer for one kind of pair (heard, written, both) from its pairs' verdicts."""
    if not verdicts:
        return "not measured (fewer than two learned tasks differ this way)"
    n = len(verdicts)
    if all(v == TASKS_SAME for v in verdicts):
        return f"the same blocks ({n} of {n} pairs)"
    differ = sum(v == TASKS_DIFFER for v in verdicts)
    if differ:
        return f"task-dependent: {differ} of {n} pairs mark other blocks"
    same = sum(v == TASKS_SAME for v in verdicts)
    return f"cannot tell ({same} of {n} pairs the same blocks, the others undecided)"


# ------------------------------------------------------------------ chapter 6: transfer

TRANSFER_MIN = 0.8
"""Chapter 6: a cut chosen on condition A "transfers" to B when the 95 % interval of
TE(A -> B) (:mod:`lib.prune.transfer`) lies wholly at or above this share of what choosing on
B's own items can gain over a random block, and TE(A -> B) is not below TE(B -> B) by the
paired rule. Fixed before any chapter 6 figure existed."""

TRANSFERS, TRANSFER_UNDECIDED = "transfers", "cannot tell"
"""Two of :func:`transfer_verdict`'s verdicts; the third is :func:`dependent`'s."""


def dependent(kind: str) -> str:
    """The verdict that a cut does not transfer across ``kind`` ("task", "encoder", ...)."""
    return f"{kind}-dependent"


def transfer_verdict(cell: dict[str, Any], kind: str = "task",
                     te_min: float = TRANSFER_MIN) -> str:
    """Does a cut chosen on A suit B (``cell``: :func:`lib.prune.transfer.transfer_cell`'s)?
    "<kind>-dependent" when TE(A -> B) is below TE(B -> B) with the paired interval wholly below
    0; "transfers" when TE(A -> B)'s interval lies wholly at or above ``te_min``; "cannot
    tell" otherwise, or with an undefined interval. Explained in chapter 6."""
    lo, _ = cell["te_ci95"]
    _, d_hi = cell["difference_ci95"]
    if not (math.isfinite(lo) and math.isfinite(d_hi)):
        return TRANSFER_UNDECIDED
    if d_hi < 0:
        return dependent(kind)
    if lo >= te_min:
        return TRANSFERS
    return TRANSFER_UNDECIDED


def transfer_sentence(verdicts: list[str], kind: str) -> str:
    """The answer across one kind of condition from its off-diagonal cells' verdicts."""
    if not verdicts:
        return f"not measured (fewer than two {kind}s to transfer between)"
    n, yes = len(verdicts), sum(v == TRANSFERS for v in verdicts)
    no = sum(v == dependent(kind) for v in verdicts)
    if yes == n:
        return f"the cut transfers ({n} of {n} {kind} pairs)"
    if no:
        return (f"{dependent(kind)}: in {no} of {n} {kind} pairs the cut chosen on one does "
                f"worse on the other than the other's own choice ({yes} transfer)")
    return f"cannot tell ({yes} of {n} {kind} pairs transfer, the others undecided)"
