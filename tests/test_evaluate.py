"""Scoring against hand-counted errors on known strings (jiwer aligns, the counts are by hand)."""

from __future__ import annotations

import random

import pytest

from lib.config.sections import EvalConfig
from lib.errors import CompanionError
from lib.evaluate.metrics import (bootstrap_wer_ci, english_normalizer, paired_difference,
                                  paired_wer_difference, score_asr, utterance_wer)


def test_wer_counts_by_hand():
    # ref 6 words; hyp: "sat"->"sit" (1 substitution), "the" before mat deleted (1 deletion)
    s = score_asr(["the cat sat on the mat"], ["the cat sit on mat"], normalize=False)
    assert s["wer"] == pytest.approx(2 / 6)
    assert (s["substitutions"], s["deletions"], s["insertions"]) == (1, 1, 0)
    assert s["n_ref_words"] == 6


def test_corpus_wer_is_pooled_not_averaged():
    refs, hyps = ["a b c d", "e f"], ["a b c d", "x y"]
    s = score_asr(refs, hyps, normalize=False)
    assert s["wer"] == pytest.approx(2 / 6)  # pooled; the mean of per-utterance WERs is 0.5


def test_whisper_normaliser_removes_case_punctuation_and_spelling():
    norm = english_normalizer()
    assert norm("Mr. Smith's colour, isn't it?") == norm("mister smith's color is not it")
    assert score_asr(["He said: \"Hello, World!\""], ["he said hello world"])["wer"] == 0.0


def test_cer():
    s = score_asr(["abcd"], ["abed"], normalize=False)
    assert s["cer"] == pytest.approx(1 / 4)


def test_utterance_wer():
    assert utterance_wer("the cat sat", "the cat") == pytest.approx(1 / 3)


@pytest.mark.parametrize("refs,hyps,match", [
    (["a"], ["a", "b"], "1 references but 2"),
    ([], [], "empty"),
    (["   ", "a b"], ["x", "a b"], "empty after normalisation"),
])
def test_bad_inputs_are_one_line_errors(refs, hyps, match):
    with pytest.raises(CompanionError, match=match):
        score_asr(refs, hyps)


def test_audio_reliance_is_zero_when_the_projector_is_silent():
    """A projector that outputs zeros makes every audio look alike: no reliance."""
    import torch

    from lib.config.sections import ModelConfig
    from lib.data.loaders import Utterance
    from lib.evaluate.baselines import audio_reliance
    from lib.data.features import FeatureSet
    from lib.build.speechllm import build_speechllm

    model = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                        projector_hidden=16, lora_rank=0), seed=0)
    g = torch.Generator().manual_seed(0)
    utts = [Utterance(f"u{i}", "/x.wav", t, 1.0, "v", "test", "manifest")
            for i, t in enumerate(["one two", "three four", "five"])]
    data = FeatureSet(utts, [torch.randn(25, 64, generator=g).half() for _ in utts])
    live = audio_reliance(model, data)
    assert live["own_audio_loss"] != pytest.approx(live["other_audio_loss"], abs=1e-6)
    with torch.no_grad():
        for p in model.projector.parameters():
            p.zero_()
    silent = audio_reliance(model, data)
    assert silent["own_audio_loss"] == pytest.approx(silent["other_audio_loss"], abs=1e-6)


def test_bootstrap_interval_is_exact_when_every_utterance_has_the_same_rate():
    # 1 error per 5 words in every utterance: every resample has WER 0.2 exactly.
    lo, hi = bootstrap_wer_ci([1, 2, 3], [5, 10, 15])
    assert lo == pytest.approx(0.2) and hi == pytest.approx(0.2)


def test_bootstrap_interval_matches_a_slow_resampling_loop():
    """The vectorised interval against a plain-Python percentile bootstrap of pooled WER."""
    errors = [0, 3, 1, 7, 2, 0, 5, 1, 0, 4]
    words = [8, 9, 6, 12, 7, 5, 10, 9, 4, 11]
    lo, hi = bootstrap_wer_ci(errors, words, n_boot=4000, seed=3)
    rng = random.Random(7)
    rates = []
    for _ in range(4000):
        draw = [rng.randrange(10) for _ in range(10)]
        rates.append(sum(errors[i] for i in draw) / sum(words[i] for i in draw))
    rates.sort()
    ref_lo, ref_hi = rates[int(0.025 * 4000)], rates[int(0.975 * 4000) - 1]
    # Two independent Monte Carlo estimates of the same percentiles: close, not equal.
    assert lo == pytest.approx(ref_lo, abs=0.02) and hi == pytest.approx(ref_hi, abs=0.02)
    assert lo < sum(errors) / sum(words) < hi


def test_paired_difference_is_exact_when_one_system_makes_one_error_more_everywhere():
    # b makes exactly one more error than a in every 4-word utterance: every resample has
    # WER(a) - WER(b) = -n / (4 n) = -0.25, however different the utterances are.
    d = paired_wer_difference([0, 3, 1, 4, 2], [1, 4, 2, 5, 3], [4, 4, 4, 4, 4])
    assert d["difference"] == pytest.approx(-0.25)
    assert d["difference_ci95"] == pytest.approx([-0.25, -0.25])


def test_paired_difference_matches_a_slow_resampling_loop():
    a = [0, 3, 1, 7, 2, 0, 5, 1, 0, 4]
    b = [1, 5, 1, 6, 4, 2, 5, 3, 0, 6]
    words = [8, 9, 6, 12, 7, 5, 10, 9, 4, 11]
    d = paired_wer_difference(a, b, words, n_boot=4000, seed=3)
    rng = random.Random(11)
    diffs = []
    for _ in range(4000):
        draw = [rng.randrange(10) for _ in range(10)]
        n = sum(words[i] for i in draw)
        diffs.append((sum(a[i] for i in draw) - sum(b[i] for i in draw)) / n)
    diffs.sort()
    lo, hi = diffs[int(0.025 * 4000)], diffs[int(0.975 * 4000) - 1]
    assert d["difference"] == pytest.approx((23 - 33) / 81)
    assert d["difference_ci95"] == pytest.approx([lo, hi], abs=0.02)


def test_pairing_separates_what_side_by_side_intervals_cannot():
    """Utterance difficulty varies a lot (wide WER intervals that overlap), but b is worse on
    every utterance: the unpaired rule cannot tell them apart, the paired one can."""
    from lib.report.rules import compare_wer, paired_verdict

    words = [10] * 12
    a = [0, 1, 8, 2, 9, 0, 7, 1, 6, 3, 9, 2]
    b = [x + 1 for x in a]
    sa = {"wer_ci95": bootstrap_wer_ci(a, words)}
    sb = {"wer_ci95": bootstrap_wer_ci(b, words)}
    assert compare_wer(sa, sb) == "not distinguishable from"
    d = paired_wer_difference(a, b, words)
    assert paired_verdict(d) == "lower than"
    assert paired_verdict(paired_wer_difference(b, a, words)) == "higher than"
    assert paired_verdict({"difference_ci95": [-0.01, 0.02]}) == "not distinguishable from"


def test_paired_difference_refuses_different_utterances():
    x = {"utterance_errors": [1, 2], "utterance_words": [5, 6]}
    y = {"utterance_errors": [1, 2], "utterance_words": [5, 7]}
    with pytest.raises(CompanionError, match="same test set"):
        paired_difference(x, y)
    with pytest.raises(CompanionError, match="same utterances"):
        paired_wer_difference([1, 2], [1], [5, 6])
    assert paired_difference(x, x)["difference_ci95"] == [0.0, 0.0]


def test_score_asr_reports_the_interval():
    s = score_asr(["a b c d", "e f g h"], ["a b c d", "x f g h"], normalize=False)
    assert s["wer"] == pytest.approx(1 / 8)
    lo, hi = s["wer_ci95"]
    # Resampling two utterances: WER is 0 (first twice), 1/8 or 2/8 (second twice).
    assert lo == pytest.approx(0.0) and hi == pytest.approx(0.25)


def _tiny_speechllm():
    from lib.config.sections import ModelConfig
    from lib.build.speechllm import build_speechllm

    return build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                       projector_hidden=16, lora_rank=0), seed=0)


def test_a_cached_score_is_reused_only_for_the_same_inputs(tmp_path, capsys, random_features):
    """Each input that changes a score (max_new_tokens, batch size, a clip's features, a
    transcript) misses the cache; the same inputs hit it and say which key they matched."""
    import torch

    from lib.evaluate.decode import evaluate_asr
    from lib.data.features import FeatureSet

    model = _tiny_speechllm()
    data = random_features(3, dim=64)
    first = evaluate_asr(model, data, tmp_path, "t", EvalConfig(batch_size=2, max_new_tokens=3))
    again = evaluate_asr(model, data, tmp_path, "t", EvalConfig(batch_size=2, max_new_tokens=3))
    assert again == first and f"key {first['key']}" in capsys.readouterr().out
    changed_feats = [f.clone() for f in data.feats]
    changed_feats[1][0, 0] += 1
    other_text = [u.__class__(**{**u.__dict__, "text": "other words"}) if i == 2 else u
                  for i, u in enumerate(data.utterances)]
    variants = [
        (data, dict(batch_size=2, max_new_tokens=4)),
        (data, dict(batch_size=3, max_new_tokens=3)),
        (FeatureSet(data.utterances, changed_feats), dict(batch_size=2, max_new_tokens=3)),
        (FeatureSet(other_text, data.feats), dict(batch_size=2, max_new_tokens=3)),
    ]
    keys = {first["key"]}
    for fs, kw in variants:
        rec = evaluate_asr(model, fs, tmp_path, "t", EvalConfig(**kw))
        assert "cached result reused" not in capsys.readouterr().out, kw
        keys.add(rec["key"])
    assert len(keys) == 1 + len(variants)
    assert torch.equal(data.feats[1], random_features(3, dim=64).feats[1])  # untouched


def test_the_run_folder_changes_with_the_training_data(random_features):
    from lib.config.resolve import resolve
    from lib.data.features import FeatureSet
    from lib.recipes.pipeline import run_dir

    cfg = resolve(1, preset="tiny")
    data = random_features(3, dim=64, split="train")
    feats = [f.clone() for f in data.feats]
    feats[0][0, 0] += 1
    a = run_dir(cfg.models[0], cfg, data)
    assert run_dir(cfg.models[0], cfg, FeatureSet(data.utterances, data.feats)) == a
    assert run_dir(cfg.models[0], cfg, FeatureSet(data.utterances, feats)) != a


def test_per_utterance_errors_are_counted_by_hand():
    import jiwer

    from lib.evaluate.metrics import utterance_errors

    refs = ["the cat sat on the mat", "a b c", "one two"]
    hyps = ["the cat sit on mat", "a x b c", ""]  # S+D = 2; one insertion; two deletions
    assert utterance_errors(jiwer.process_words(refs, hyps)) == [2, 1, 2]


def _worded(random_features):
    """Three utterances of 3 + 4 + 2 = 9 plain words (no numbers for the normaliser to
    fold), random features of 12, 19 and 26 frames."""
    from lib.data.features import FeatureSet

    data = random_features(3, dim=64)
    texts = ["the cat sat", "a dog ran far", "birds sing"]
    return FeatureSet([u.__class__(**{**u.__dict__, "text": t})
                       for u, t in zip(data.utterances, texts)], data.feats)


def _fake_generate(model, calls):
    """A decoder stand-in: exact transcripts in float32, the first one missing its last
    word under bf16 autocast; ``calls`` records whether autocast was on."""
    import torch

    refs = {}

    def generate(feats, lengths, max_new_tokens, num_beams=1):
        bf16 = torch.is_autocast_enabled("cpu")
        calls.append(bf16)
        # longest-first batches: identify each utterance by its frame count
        out = [refs[int(n)] for n in lengths]
        return [" ".join(t.split()[:-1]) if bf16 and int(n) == min(refs) else t
                for t, n in zip(out, lengths)]

    return generate, refs


def test_bf16_decoding_runs_under_autocast_with_its_own_key(tmp_path, random_features):
    from lib.evaluate.decode import EVAL_VERSION, evaluate_asr
    from lib.fileio import config_hash

    model, data, calls = _tiny_speechllm(), _worded(random_features), []
    model.generate, refs = _fake_generate(model, calls)
    refs.update({f.shape[0]: u.text for u, f in zip(data.utterances, data.feats)})
    fp32 = evaluate_asr(model, data, tmp_path, "t",
                        EvalConfig(batch_size=2, max_new_tokens=3, precision="fp32"))
    assert calls == [False, False] and fp32["precision"] == "fp32" and fp32["wer"] == 0
    bf16 = evaluate_asr(model, data, tmp_path, "t",
                        EvalConfig(batch_size=2, max_new_tokens=3, precision="bf16"))
    assert calls[2:] == [True, True] and bf16["precision"] == "bf16"
    assert bf16["wer"] == pytest.approx(1 / 9)  # one deletion in 9 reference words
    # float32 keeps the key it had before decoding had a precision
    assert fp32["key"] == config_hash({"data": data.digest(), "max_new_tokens": 3,
                                       "batch_size": 2, "prompt": model.prompt,
                                       "version": EVAL_VERSION})
    assert bf16["key"] != fp32["key"]


def test_precision_check_pairs_bf16_against_fp32(tmp_path, random_features):
    from lib.evaluate.decode import precision_check

    model, data, calls = _tiny_speechllm(), _worded(random_features), []
    model.generate, refs = _fake_generate(model, calls)
    refs.update({f.shape[0]: u.text for u, f in zip(data.utterances, data.feats)})
    ev = EvalConfig(batch_size=3, max_new_tokens=3, precision="bf16")
    c = precision_check(model, data, tmp_path, "t", ev)
    assert c["difference"] == pytest.approx(1 / 9)  # bf16 minus fp32, by hand
    lo, hi = c["difference_ci95"]
    assert 0 <= lo <= 1 / 9 <= hi  # the one utterance that differs, resampled
    assert c["fp32"]["wer"] == 0 and c["speedup"] > 0
    n = len(calls)
    # a run that decodes in float32 gets the same comparison, both scores read back
    again = precision_check(model, data, tmp_path, "t",
                            EvalConfig(batch_size=3, max_new_tokens=3, precision="fp32"))
    assert len(calls) == n and again["difference"] == c["difference"]


def test_a_bad_eval_precision_is_one_line():
    from lib.config.resolve import resolve

    with pytest.raises(CompanionError, match="eval_precision.*'fp16'.*auto, bf16, fp32"):
        resolve(1, preset="tiny", changes={"eval_precision": "fp16"})


@pytest.mark.parametrize("speedup, diff_ci, verdict", [
    (2.0, None, "pays"),                       # training: a ratio alone
    (1.15, [-0.01, 0.02], "pays"),             # at the threshold, WER not distinguishable
    (1.14, [-0.01, 0.02], "buys nothing"),     # within timing noise
    (0.89, [-0.015, 0.021], "buys nothing"),   # slower (measured on an EPYC)
    (3.0, [0.001, 0.02], "costs accuracy"),    # fast, but its WER is higher
    (float("nan"), None, "buys nothing"),      # no timing: no gain to count on
])
def test_bf16_verdict_says_yes_and_no(speedup, diff_ci, verdict):
    from lib.report.rules import bf16_verdict

    check = None if diff_ci is None else {"difference": sum(diff_ci) / 2,
                                          "difference_ci95": diff_ci}
    assert bf16_verdict(speedup, check) == verdict


@pytest.mark.parametrize("rounds, verdict", [
    ([1.10, 1.23, 1.31], "undecided"),         # this Xeon's three runs, as rounds of one
    ([1.16, 1.23, 1.31], "pays"),              # every round at or above 1.15
    ([1.15, 1.20, 1.18], "pays"),              # the threshold itself counts as paying
    ([0.95, 1.02, 1.14], "buys nothing"),      # every round below
])
def test_rounds_on_both_sides_of_the_threshold_decide_nothing(rounds, verdict):
    from lib.report.rules import bf16_verdict

    median = sorted(rounds)[1]
    assert bf16_verdict(median, rounds=rounds) == verdict
    # a WER cost outweighs any speed
    assert bf16_verdict(median, {"difference": 0.01, "difference_ci95": [0.002, 0.02]},
                        rounds=rounds) == "costs accuracy"


def test_a_choice_of_auto_stands_only_where_the_measurement_agrees():
    from lib.recipes.bf16 import precision_sentence

    ok = precision_sentence("bf16", "fp32", (2.31, "pays", [2.2, 2.31, 2.4]),
                            (0.951, 1.02, {"buys nothing"}), (0.99, "buys nothing"))
    assert ok == ("a training step ran 2.31 times as fast in bf16 as in float32 (rounds "
                  "2.20-2.40; bf16 pays), decoding 0.95-1.02 times as fast (bf16 buys nothing; "
                  "the decoders together 0.99: buys nothing); for training auto's choice (bf16) "
                  "stands; for decoding auto's choice (fp32) stands")
    no = precision_sentence("bf16", "bf16", (1.05, "buys nothing", [1.0, 1.05, 1.1]),
                            (1.3, 1.3, {"pays", "costs accuracy"}), (1.3, "costs accuracy"))
    assert "decoding 1.30 times as fast (bf16 costs accuracy and pays;" in no
    assert "for training auto's choice (bf16) does not stand: -p precision fp32" in no
    assert "for decoding auto's choice (bf16) does not stand: -p eval_precision fp32" in no
    assert "-p eval_precision bf16 would" in precision_sentence(
        "bf16", "fp32", (2.0, "pays", [2.0]), (1.4, 1.5, {"pays"}), (1.45, "pays"))
    # the record's case: one decoder gains little, the other much; the run's decoding pays
    mixed = precision_sentence("fp32", "bf16", (1.03, "buys nothing", [0.9, 1.03, 1.1]),
                               (1.10, 1.45, {"buys nothing", "pays"}), (1.27, "pays"))
    assert "the decoders together 1.27: pays); for training auto's choice (fp32) stands; " \
        "for decoding auto's choice (bf16) stands" in mixed
    torn = precision_sentence("bf16", "fp32", (1.23, "undecided", [1.1, 1.23, 1.31]),
                              (0.9, 1.0, {"buys nothing"}), (0.95, "buys nothing"))
    assert "(rounds 1.10-1.31; bf16 undecided)" in torn
    assert ("for training the rounds fall on both sides of 1.15, so this run cannot say "
            "whether auto's choice (bf16) stands; for decoding auto's choice (fp32) stands") in torn


def test_the_run_s_decoding_as_a_whole_weighs_each_decoder_by_its_time():
    """Two decoders at 10 and 2 utterances per second in float32, 11 and 4 in bf16: the run
    spends 0.1 + 0.5 = 0.6 s per utterance in float32 and 1/11 + 1/4 in bf16 (ratio 1.76, by
    hand); a WER cost on either decoder outweighs the speed."""
    from lib.recipes.bf16 import run_decoding

    level = {"difference": 0.0, "difference_ci95": [-0.01, 0.01]}
    checks = {"a": {"fp32": {"decode_utterances_per_s": 10.0},
                    "bf16": {"decode_utterances_per_s": 11.0}, **level},
              "b": {"fp32": {"decode_utterances_per_s": 2.0},
                    "bf16": {"decode_utterances_per_s": 4.0}, **level}}
    ratio, verdict = run_decoding(checks)
    assert ratio == pytest.approx(0.6 / (1 / 11 + 1 / 4)) and verdict == "pays"
    checks["a"] = {**checks["a"], "difference": 0.02, "difference_ci95": [0.01, 0.03]}
    assert run_decoding(checks)[1] == "costs accuracy"
