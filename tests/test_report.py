"""The README's results tables: rendered from results/<preset>/<chapter>.json, never typed."""

from __future__ import annotations

import json
from pathlib import Path

from lib.fileio import figures_digest
from lib.paths import REPO_ROOT
from lib.report.readme import render
from lib.report.summary import found_ch04


def _ch01(tmp_path: Path) -> Path:
    rec = {
        "chapter": "ch01", "preset": "demo",
        "decoders": {"smollm2-135m": {
            "test_sets": {"real": {
                "wer": 0.2345, "wer_ci95": [0.1, 0.4], "cer": 0.1, "n_utterances": 10,
                "ctc_rescored": {"wer": 0.051, "wer_ci95": [0.0, 0.09], "weight": 0.6,
                                 "vs_greedy": {"difference": -0.1835,
                                               "difference_ci95": [-0.3, -0.05]}},
                "baselines": {"ctc_head": {"wer": 0.5, "wer_ci95": [0.3, 0.7]},
                              "whisper": {"wer": 0.13, "wer_ci95": [0.05, 0.2]}}}},
            "training": {"recipe": "ctc-warmstart", "steps": 400, "ctc_minutes": 2.5,
                         "llm_minutes": 7.25, "minutes": 9.75},
            "audio_reliance_gap": 3.456}},
        "provenance": {"date": "2026-11-23T18:00:00+00:00", "git_hash": "abcdef0123",
                       "git_dirty": False, "device": {"cpu_count": 2},
                       "versions": {"torch": "2.13.0+cpu"}},
    }
    path = tmp_path / "demo" / "ch01.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rec["digest"] = figures_digest(rec)
    path.write_text(json.dumps(rec))
    return tmp_path


def test_a_block_is_rendered_from_its_json(tmp_path):
    root = _ch01(tmp_path)
    text = "intro\n<!-- results: demo/ch01 -->\n| 99.9 | typed |\n<!-- end results -->\nend\n"
    out = render(text, root)
    assert out.startswith("intro\n<!-- results: demo/ch01 -->\n") and out.endswith(
        "<!-- end results -->\nend\n")
    # Percentages with one decimal, intervals in brackets, as written by hand here:
    assert "| smollm2-135m | real (10) | 23.4 [10.0, 40.0] | 5.1 [0.0, 9.0] | " \
           "50.0 [30.0, 70.0] | 13.0 [5.0, 20.0] |" in out
    assert "9.8 min of training (2.5 min CTC warm start + 7.2 min for 400 LLM steps" in out
    assert "gap 3.46 nats/token" in out and "commit abcdef0" in out and "2 CPU cores" in out
    assert "99.9" not in out  # the typed number is gone
    assert render(out, root) == out  # rendering is stable


def test_a_missing_results_file_says_so(tmp_path):
    out = render("<!-- results: nothere/ch01 -->\nx\n<!-- end results -->", tmp_path)
    assert "no full `nothere` run recorded yet" in out


def test_the_readme_matches_its_results_files():
    """Every results block of README.md and of the course page is exactly the rendering of
    the committed JSON."""
    from lib.report.readme import RENDERED

    for name in RENDERED:
        text = (REPO_ROOT / name).read_text(encoding="utf-8")
        assert text == render(text, REPO_ROOT / "results"), \
            f"{name} is out of date with results/: run `.venv/bin/python -m lib.report`"


def test_verdicts_follow_the_interval_rule_and_the_named_thresholds(tmp_path):
    """The demo record by hand: real WER [10, 40] vs CTC head [30, 70] overlap -> not
    distinguishable; vs Whisper [5, 20] overlap -> not distinguishable; 23.45 % > the 35 %
    target? no -> met; rescored [0, 9] below greedy [10, 40] -> lower, 5.1 % <= 35 % -> met;
    gap 3.456 >= 1 -> reads the audio."""
    out = render("<!-- results: demo/ch01 -->\n<!-- end results -->", _ch01(tmp_path))
    assert ("smollm2-135m: on real its WER is not distinguishable from its CTC head's and "
            "not distinguishable from Whisper-base's; target ≤ 35 % met; with CTC rescoring "
            "(weight 0.6) 5.1 %, lower than greedy (paired difference -18.4 points, 95 % interval "
            "-30.0 to -5.0), target met; it reads the audio "
            "(reliance gap 3.46 ≥ 1 nats/token)") in out


def test_compare_wer_needs_intervals_apart():
    from lib.report.rules import compare_wer

    a, b = {"wer_ci95": [0.10, 0.20]}, {"wer_ci95": [0.21, 0.30]}
    assert compare_wer(a, b) == "lower than" and compare_wer(b, a) == "higher than"
    assert compare_wer(a, {"wer_ci95": [0.20, 0.30]}) == "not distinguishable from"


def _ch02(tmp_path: Path) -> Path:
    rec = {
        "chapter": "ch02", "preset": "demo",
        "decoders": {"smollm2-135m": {
            "comparisons": {"text vs speech, transcript tokens": {
                "spearman_per_n_mean": 0.8765, "overlap_mean": 0.9012,
                "chance": {"spearman_per_n_mean": -0.0049, "overlap_mean": 0.6001},
                "verdict": "the same blocks"}},
            "ablation": {"block_size": 4, "spearman": 0.456, "n_blocks": 27,
                         "chosen_start": 20, "chosen_delta": 0.1234, "chosen_rank": 3,
                         "best_start": 19, "best_delta": 0.1}}},
        "thresholds": {"agree_rho": 0.8, "agree_overlap_gain": 0.5},
        "provenance": {"date": "2026-11-23T18:00:00+00:00", "git_hash": "abcdef0123",
                       "git_dirty": False, "device": {"cpu_count": 2},
                       "versions": {"torch": "2.13.0+cpu"}},
    }
    path = tmp_path / "demo" / "ch02.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rec["digest"] = figures_digest(rec)
    path.write_text(json.dumps(rec))
    return tmp_path


def test_chapter_2_block_shows_each_figure_beside_its_chance_level(tmp_path):
    root = _ch02(tmp_path)
    out = render("<!-- results: demo/ch02 -->\n<!-- end results -->", root)
    # two decimals, chance in brackets, as written by hand from the record above
    assert ("| smollm2-135m | text vs speech, transcript tokens | 0.88 (-0.00) | "
            "0.90 (0.60) | the same blocks |") in out
    assert ("smollm2-135m: removing the block the score picks ([20, 24)) raises the loss by "
            "0.12 nats, rank 3 of 27; Spearman(d, loss) 0.46") in out
    assert "at least 0.8 and the block overlap at least 0.5 of the way" in out
    assert "commit abcdef0" in out and render(out, root) == out
    missing = render("<!-- results: nothere/ch02 -->\n<!-- end results -->", tmp_path)
    assert "no full `nothere` run recorded yet" in missing


def test_memory_verdict_judges_the_change_against_the_spread_of_the_rounds():
    from lib.report.rules import memory_verdict

    def cost(full, pruned, spread):  # rounds whose spread is `spread` (one round for NaN)
        rounds = [full] if spread != spread else [full, full + spread]
        return {"peak_mib_full": full, "peak_mib_pruned": pruned,
                "peak_mib_full_rounds": rounds, "peak_mib_pruned_rounds": [pruned]}

    # 72 MiB less, rounds spread over 40: the interval -72 ± 40 lies below zero
    assert memory_verdict(cost(1957, 1885, 40.0)).startswith("the peak fell")
    # 1 MiB less against a 150 MiB spread: no verdict
    assert memory_verdict(cost(1154, 1153, 150.0)).startswith("no change beyond the noise")
    # a change exactly as large as the spread is not beyond it
    assert memory_verdict(cost(1000, 960, 40.0)).startswith("no change beyond the noise")
    assert memory_verdict(cost(1000, 1060, 20.0)).startswith("the peak rose")
    assert "up to 40 MiB" in memory_verdict(cost(1957, 1885, 40.0))
    assert memory_verdict(cost(1000, 900, float("nan"))).startswith("one process per model")
    assert memory_verdict({"peak_mib_full": 1000, "peak_mib_pruned": 900}).startswith(
        "no spread recorded")
    assert memory_verdict(cost(float("nan"), float("nan"), float("nan"))) == "no peak measured"


def test_chapter_5_targets_can_say_no():
    """Chapter 5's verdicts on constructed cases, the relative change by hand."""
    from lib.report.rules import asr_against_asr_only, asr_rule_sentence, whisper_target

    worse = asr_against_asr_only(0.20, 0.26)  # (0.26 - 0.20) / 0.20 = 0.30 > 0.25
    assert abs(worse["relative"] - 0.30) < 1e-12 and worse["within"] is False
    ok = asr_against_asr_only(0.20, 0.24)  # 0.20 <= 0.25
    assert abs(ok["relative"] - 0.20) < 1e-12 and ok["within"] is True
    assert asr_rule_sentence({"d": worse}) == ("d: relative WER change +30 % (beyond the "
                                               "paper's 25 %)")
    assert whisper_target(["worse than", "worse than"]) == "not met"
    assert whisper_target([]) == "not met"
    assert whisper_target(["worse than", "not distinguishable from"]).startswith(
        "met only in the weak sense")
    assert whisper_target(["better than"]) == "met: better than it"


# ------------------------------------------------------------------ the README's summary


def test_the_summary_reads_each_chapter_from_its_record_and_can_say_no(tmp_path):
    """One row per chapter, its figures as written by hand from the records above; a
    chapter whose comparisons fall short is counted as such (0 of 1), and a chapter with
    no record says so."""
    root = _ch01(_ch02(tmp_path))
    out = render("<!-- results: demo/summary -->\n<!-- end results -->", root)
    assert ("| 1 | Does a SpeechLLM trained on two CPU cores transcribe speech? | "
            "smollm2-135m: 23.4 % [10.0, 40.0] WER on real (10 utt.) |") in out
    assert "smollm2-135m: the same blocks in 1 of 1 comparisons" in out
    assert "| 3 | How many layers can go" in out and "not recorded yet" in out
    rec = json.loads((root / "demo" / "ch02.json").read_text())
    rec["decoders"]["smollm2-135m"]["comparisons"]["text vs speech, transcript tokens"][
        "verdict"] = "no more than chance"
    rec["digest"] = figures_digest(rec)
    (root / "demo" / "ch02.json").write_text(json.dumps(rec))
    out = render("<!-- results: demo/summary -->\n<!-- end results -->", root)
    assert "smollm2-135m: the same blocks in 0 of 1 comparisons" in out


# ------------------------------------------------------------------ the benchmarks' output


def test_a_benchmark_block_is_rendered_from_its_own_output(tmp_path):
    """make bench's JSON (figures chosen here) renders its ratios as computed by hand; a
    benchmark never run says which command measures it; a file that is not its output is
    one line."""
    import pytest

    from lib.errors import CompanionError

    bench = tmp_path / "bench"
    bench.mkdir()
    r = {"train_utt_s": 8.0, "train_step_s": 1.0, "bare_step_s": 0.8, "overhead": 1.25,
         "decode_utt_s": 6.5, "decode_bf16_speedup": 2.0}
    (bench / "train.json").write_text(json.dumps({
        "settings": {"batch": 8, "seconds": 3.1, "words": 11, "precision": "bf16",
                     "decode_batch": 32, "new_tokens": 24, "rounds": 3, "ctc_batch": 64,
                     "ctc_vocab": 5000},
        "decoders": {"d": r}, "ctc": {"d": {"fp32_s": 0.3, "bf16_s": 0.1, "speedup": 3.0}},
        "provenance": {"date": "2026-12-04T05:00:00", "git_hash": "abcdef0123",
                       "device": {"cpu_count": 2, "cpu": "AMD EPYC",
                                  "cpu_native_bf16": True}}}))
    out = render("<!-- results: bench/train -->\n<!-- end results -->", tmp_path)
    assert "| d | 8.00 | 1.000 | 0.800 | 1.25 | 6.50 | 2.00 |" in out
    assert "| d | 300 | 100 | 3.00 |" in out
    assert "at commit abcdef0 on 2026-12-04, on 2 CPU cores (AMD EPYC, native bf16), no GPU" in out
    never = render("<!-- results: bench/scores -->\n<!-- end results -->", tmp_path)
    assert "not measured on this checkout yet: `make bench-scores` writes it" in never
    (bench / "prune.json").write_text(json.dumps({"offline": [{"decoder": "d"}]}))
    with pytest.raises(CompanionError, match="prune.json is not the output of `make "
                       "bench-prune`") as err:
        render("<!-- results: bench/prune -->\n<!-- end results -->", tmp_path)
    assert "\n" not in str(err.value)


def test_the_feature_memory_block_judges_the_growth_by_hand(tmp_path):
    """bench-features' runs (figures chosen here): a peak that grew by 2 % of the 90 MiB of
    features added is flat, one that grew by all of it is not."""
    (tmp_path / "bench").mkdir()
    mib = 2**20

    def run(storage, n, rise):
        return {"storage": storage, "utterances": n, "feature_bytes": n * mib,
                "peak_rise_bytes": rise * mib, "seconds": 1.0}

    runs = [run("sharded", 10, 20), run("sharded", 100, 21.8),
            run("one shard", 10, 20), run("one shard", 100, 110)]
    (tmp_path / "bench" / "features.json").write_text(json.dumps({
        "runs": runs, "settings": {"dim": 1024, "frames": 600, "shard_mb": 8.0},
        "provenance": {"date": "2026-12-04T05:00:00", "git_hash": "abcdef0123",
                       "device": {"cpu_count": 2}}}))
    out = render("<!-- results: bench/features -->\n<!-- end results -->", tmp_path)
    assert "| one shard | 100 | 100.0 | 110.0 | 1.0 |" in out
    assert "In shards the peak grew by 2 % of the features added: flat;" in out
    assert "in one shard the peak grew by 100 % of the features added: not flat." in out


def _render_ch04(rec, tmp_path):
    """``rec`` given a provenance and its digest, written as demo/ch04 and rendered."""
    rec["provenance"] = {"date": "2026-12-04T05:00:00", "git_hash": "abcdef0123",
                         "device": {"cpu_count": 2}, "versions": {"torch": "2.13.0+cpu"}}
    rec["digest"] = figures_digest(rec)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "ch04.json").write_text(json.dumps(rec))
    return render("<!-- results: demo/ch04 -->\n<!-- end results -->", tmp_path)


def test_chapter_4_block_fits_five_columns_with_the_rest_in_notes(tmp_path):
    """The healing table as written by hand from a record: WER pruned -> healed with its
    interval and the recovery; the cut and what each variant trained in the notes."""
    rec = {"chapter": "ch04", "preset": "demo",
           "decoders": {"d": {"cut": {"n_removed": 6, "n_layers": 30},
                              "variants": {"both": {"trainable": 3_618_368, "wall_time_s": 49.35,
                                                    "tests": {"real": {
                                                        "wer_before": 0.9, "wer_after": 0.6,
                                                        "wer_after_ci95": [0.5, 0.7],
                                                        "recovery": 0.75}}}}}},
           "settings": {"heal_steps": 50, "heal_batch_size": 8, "heal_learning_rate": 0.0005,
                        "heal_lora_rank": 64}}
    out = _render_ch04(rec, tmp_path)
    assert "| d | both | real | 90.0 -> 60.0 [50.0, 70.0] | 0.75 |" in out
    assert "- d: 6 of 30 layers removed; trained (M parameters, minutes): both 3.62, 0.8" in out
    assert "50 steps of 8 utterances" in out


def test_chapter_4_loss_block_by_hand(tmp_path):
    """A record scored by the losses: the full model's and each variant's loss with its seed
    range and recovery in the table; both against a single variant, the repair verdict, the
    cuts healed and the capped WER in the notes."""
    rec = {"chapter": "ch04", "preset": "demo",
           "decoders": {"d": {
               "cut": {"n_removed": 6, "n_layers": 30},
               "rule_cut": {"n_removed": 3, "n_removed_ci95": [3, 3]},
               "losses": {"t": {"full": 1.5, "floor": 4.0, "pruned": 2.5}},
               "variants": {
                   "none": {"trainable": 0, "wall_time_s": 0.0, "tests": {"t": {
                       "loss": 2.5, "loss_per_seed": [2.5], "recovery": 0.0,
                       "recovery_ci95": [0.0, 0.0]}}},
                   "both": {"trainable": 3_618_368, "wall_time_s": 49.0, "tests": {"t": {
                       "loss": 1.75, "loss_per_seed": [1.7, 1.8, 1.75], "recovery": 0.75,
                       "recovery_ci95": [0.7, 0.8]}}}},
               "both_vs": {"projector": {"delta": -0.2, "ci95": [-0.3, -0.1],
                                         "interval_from": "seeds", "verdict": "lower than"}},
               "repair": {"delta": 0.6, "ci95": [0.5, 0.7], "gain_healed": 0.75,
                          "gain_healed_ci95": [0.7, 0.8],
                          "gain_control": 0.15, "verdict": "healing repairs the cut: it wins "
                          "back more than the same training gives the unpruned model"},
               "cuts": {"6": {"kind": "fixed", "cost_before": 0.4, "cost_after": 0.1,
                              "cost_after_ci95": [0.08, 0.12], "within_rule": True}},
               "wer": {"t": {"full model": {"wer": 0.3, "insertion_rate": 0.01}}}}},
           "settings": {"scored": "loss", "ruled_on": "t", "heal_steps": 50,
                        "heal_batch_size": 8, "heal_learning_rate": 0.0005,
                        "heal_lora_rank": 64, "heal_seeds": 3, "loss_threshold": 0.1}}
    out = _render_ch04(rec, tmp_path)
    assert "| d | full model | – | 1.500 | – |" in out
    assert "| d | none | 1 | 2.500 (2.500–2.500) | – |" in out
    assert "| d | both | 3 | 1.750 (1.700–1.800) | 0.75 [0.70, 0.80] |" in out
    assert ("- d: 6 of 30 layers removed (fixed); the loss rule's cut 3 (interval 3–3)"
            in out)
    assert ("- d: both's loss is lower than projector's (-0.200 nats per token, [-0.300, "
            "-0.100] from the seeds)") in out
    assert "- d: healing repairs the cut" in out
    assert "gain 0.750 against the control's 0.150; difference [+0.500, +0.700]" in out
    assert found_ch04(rec) == ("d, 6 of 30 layers removed: best `both`, recovery 0.75 "
                               "[0.70, 0.80] of the loss; healing repairs the cut: it wins "
                               "back more than the same training gives the unpruned model "
                               "(50 healing steps, 3 seeds)")
    assert ("- d: at 6 removed (fixed), healing takes the loss cost from 0.40 to 0.10 "
            "[0.08, 0.12], within the rule's 0.1") in out
    assert "- d: WER on t, capped: full model 30.0 % (0.01 insertions per word)" in out
    assert "50 steps of 8 utterances, peak rate 0.0005, LoRA rank 64, 3 seeds" in out


def _render_demo(tmp_path, rec, chapter):
    """Stamp ``rec`` as a demo preset's record of ``chapter``, keep it, render its block."""
    rec.update(chapter=chapter, preset="demo", provenance={
        "date": "2026-12-05T05:00:00", "git_hash": "abcdef0123", "device": {"cpu_count": 2},
        "versions": {"torch": "2.13.0+cpu"}})
    rec["digest"] = figures_digest(rec)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / f"{chapter}.json").write_text(json.dumps(rec))
    return render(f"<!-- results: demo/{chapter} -->\n<!-- end results -->", tmp_path)


def test_chapter_5_block_by_hand(tmp_path):
    """A record as chapter 5 writes it: chrF with its interval beside BLEU, the floor's
    verdict, learned or not, a removal pair and claim 5's answer, all in the README block."""
    import pandas as pd

    from lib.recipes.ch05 import headline

    t = {"metric": "bleu", "learned": True, "chrf": 21.04, "chrf_ci95": [19.0, 23.0],
         "bleu": 2.5, "bleu_ci95": [1.0, 4.0], "chrf_signature": "nrefs:1|case:mixed",
         "n_utterances": 100, "empty_hypotheses": 0}
    floor = {**t, "chrf": 12.5, "chrf_ci95": [11.5, 13.5]}
    found = {"gemma": {"st-en-es": {"metric": "bleu", "learned": True, "score": t,
                                    "floor": floor, "baselines": {},
                                    "vs_floor": {"difference": 8.5,
                                                 "difference_ci95": [6.0, 11.0],
                                                 "verdict": "better than"}}}}
    pair = {"n": 2, "a": "asr", "b": "st-en-es", "changes": "written", "index": 0.31,
            "index_ci95": [0.1, 0.45], "verdict": "task-dependent"}
    rec = headline(found, pd.DataFrame({"decoder": []}), {},
                   type("D", (), {"pairs": {"test": 100}, "reused": 0})(),
                   {"gemma": {"tasks": ["asr", "st-en-es"], "pairs": [pair]}},
                   "task-dependent: 1 of 1 pairs of learned tasks mark other blocks")
    out = _render_demo(tmp_path, rec, "ch05")
    assert ("| gemma | st-en-es | 21.0 [19.0, 23.0] | 2.5 [1.0, 4.0] | 12.5 [11.5, 13.5] "
            "(better than) | yes | – | – | – |") in out
    assert "| gemma | 2 | asr | st-en-es | written | 0.31 [0.10, 0.45] | task-dependent |" in out
    assert "at least 5 chrF or 10 WER points" in out and "sacrebleu nrefs:1|case:mixed" in out
    assert "Claim 5 by removal: task-dependent: 1 of 1" in out
    from lib.report.summary import found_ch05

    assert found_ch05(rec) == "gemma: 1 of 1 tasks learned (st-en-es); by removal: " \
                              "task-dependent"


def test_chapter_6_block_by_hand(tmp_path):
    """A record as chapter 6 writes it: the transfer verdicts counted per kind, selector and
    cut with the decoding checks, the encoders, and the backbone's scores, reload and cost."""

    from lib.recipes.ch06 import headline
    from lib.recipes.section import Section

    cell = {"group": "g", "selector": "loss", "n": 2, "a": "asr", "b": "st-en-es",
            "chosen_a": 3, "chosen_b": 5, "best_start": 5, "te": 0.4, "te_ci95": [0.2, 0.6],
            "te_self": 0.95, "te_self_ci95": [0.9, 1.0], "difference": -0.55,
            "difference_ci95": [-0.7, -0.4], "n_items": 50, "changes": "written",
            "verdict": "task-dependent"}
    diag = {**cell, "b": "asr", "verdict": "", "changes": ""}
    enc_cell = {**cell, "a": "e0", "b": "e1", "changes": "encoder", "verdict": "transfers",
                "te": 0.92, "te_ci95": [0.85, 1.0], "difference": 0.01,
                "difference_ci95": [-0.05, 0.1]}
    score = {"wer": 0.3, "wer_ci95": [0.25, 0.35], "n_utterances": 100}
    bone = {"g": {"cut": {"layers": [7, 8], "n": 2, "within": True, "chosen_on": "pooled",
                          "threshold": 0.1},
                  "scores": {"asr": {"metric": "wer", "recovery": 0.8, "full": score,
                                     "cut": {**score, "wer": 0.5, "wer_ci95": [0.45, 0.55]},
                                     "healed": {**score, "wer": 0.34},
                                     "healed_vs_full": {"verdict": "not distinguishable "
                                                                   "from"}}},
                  "export": {"reload": {"exact": True, "max_loss_gap": 0.0},
                             "cost": {"speedup": 1.1, "ideal_speedup": 1.15,
                                      "speedup_over_ideal": 0.96, "peak_mib_full": 900.0,
                                      "peak_mib_pruned": 850.0,
                                      "peak_mib_full_rounds": [900.0]}}}}
    rec = headline(Section(glue={"learned_list": "g: asr, st-en-es"}),
                   Section(glue={"task_transfer_loss": "task-dependent: in 1 of 1",
                                 "task_transfer_angular": "cannot tell (0 of 1 task pairs"},
                           data={"cells": [cell, diag]}),
                   Section(data={"record": [{"selector": "loss", "n": 2, "confirmed": True}]}),
                   Section(data={"record": {"e0": {"what": "whisper, random", **score,
                                                   "reads_audio": False,
                                                   "reliance_gap": 0.02}}}),
                   Section(glue={"encoder_transfer_loss": "the cut transfers (1 of 1",
                                 "encoder_transfer_angular": "the cut transfers (1 of 1"},
                           data={"cells": [enc_cell]}),
                   Section(data={"record": []}), Section(data={"record": bone}))
    assert rec["backbone"]["g"]["cost"] == {k: v for k, v in bone["g"]["export"]["cost"].items()
                                            if not k.endswith("_rounds")}
    out = _render_demo(tmp_path, rec, "ch06")
    assert "| tasks | loss | 2 | 0 | 1 | 0 | 1 of 1 |" in out
    assert "| encoders | loss | 2 | 1 | 0 | 0 | 0 of 0 |" in out
    assert "| e0 | whisper, random | 30.0 [25.0, 35.0] | no (0.02) |" in out
    assert ("| g | 7–8 | asr | 30.0 [25.0, 35.0] | 34.0 [25.0, 35.0] | not distinguishable "
            "from the full model | 80 % |") in out
    assert "the same outputs exactly; decoding 1.10x faster (ideal 1.15x, ratio 0.96)" in out
    from lib.report.summary import found_ch06

    assert found_ch06(rec) == ("tasks: angular cannot tell, loss task-dependent: in 1 of 1; "
                               "encoders: angular the cut transfers, loss the cut transfers; "
                               "g backbone: layers 7–8 removed, 1 of 1 learned tasks not worse "
                               "than the full model after healing, reload exact")


def test_chapter_1_block_says_the_seed_spread_of_real_speech(tmp_path):
    """The clean CTC head over three seeds, written by hand: its range and the recipe chosen."""
    root = _ch01(tmp_path)
    path = root / "demo" / "ch01.json"
    rec = json.loads(path.read_text())
    rec["levers"] = {"clean_seeds": {"real": [0.55, 0.512, 0.601]},
                     "choice": {"lever": "noise"}}
    rec["digest"] = figures_digest({k: v for k, v in rec.items() if k != "digest"})
    path.write_text(json.dumps(rec))
    out = render("<!-- results: demo/ch01 -->\n<!-- end results -->", root)
    assert ("real speech over 3 training seeds (CTC head, clean recipe): 51.2–60.1 % WER"
            in out) and "recipe of record: noise" in out
