"""Chapter 3's decodes and verdicts: a decode capped by its audio against one stopped there,
the full model's WER from chapter 1's decodes against jiwer on the capped strings, the cuts
decoded to confirm the rule, the baseline sentence both ways, and the record rendered."""

from __future__ import annotations

import jiwer
import pytest
import torch

from lib.build.speechllm import build_speechllm
from lib.config.sections import EvalConfig, ModelConfig
from lib.data.features import FeatureSet
from lib.evaluate import decode
from lib.evaluate.decode import CAP_SLACK_TOKENS, CAP_TOKENS_PER_SECOND, audio_caps, cap_text
from lib.prune.curves import full_capped
from lib.prune.loss_curves import BEATS, LOSES, SAME, UNDECIDED
from lib.recipes.ch03 import baseline_sentence, confirm_sizes


@pytest.fixture(scope="module")
def model():
    return build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                       projector_stack=1, projector_hidden=32, lora_rank=4,
                                       lora_alpha=8), seed=5).eval()


def _with_durations(data: FeatureSet, seconds: list[float]) -> FeatureSet:
    from dataclasses import replace

    return FeatureSet([replace(u, duration=d) for u, d in zip(data.utterances, seconds)],
                      data.feats)


def test_caps_by_hand(random_features):
    data = _with_durations(random_features(3), [0.25, 1.0, 30.0])
    want = [int(0.25 * CAP_TOKENS_PER_SECOND) + CAP_SLACK_TOKENS,
            int(1.0 * CAP_TOKENS_PER_SECOND) + CAP_SLACK_TOKENS, 40]
    assert audio_caps(data, 40) == want


def test_a_capped_decode_is_what_a_decode_stopped_at_the_cap_writes(model, random_features):
    """The reference: each utterance decoded alone with max_new_tokens at its own cap."""
    data = _with_durations(random_features(4, dim=64, seed=3), [0.2, 0.4, 1.0, 0.3])
    ev = EvalConfig(batch_size=4, max_new_tokens=14, precision="fp32")
    caps = audio_caps(data, ev.max_new_tokens)
    assert len(set(caps)) > 1 and min(caps) < ev.max_new_tokens  # the caps bite
    got = decode.transcribe(model, data, ev, capped=True)
    for i in range(len(data)):
        feats, lengths, _ = data.batch([i])
        with torch.no_grad():
            alone = model.generate(feats, lengths, caps[i])[0]
        assert got[i] == alone


def test_cap_text_cuts_a_kept_transcript_to_its_first_word_pieces(model):
    text = "the cat sat on the mat and then it sat again"
    ids = model.tokenizer(" " + text, add_special_tokens=False).input_ids
    assert cap_text(model, text, len(ids)) == text
    short = cap_text(model, text, 5)
    assert short == model.tokenizer.decode(ids[:5], skip_special_tokens=True).strip()
    assert len(short) < len(text)


def test_the_full_models_wer_reuses_chapter_1s_decodes_capped(model, random_features,
                                                              tmp_path, monkeypatch):
    data = _with_durations(random_features(5, dim=64, seed=7), [0.3, 0.5, 2.0, 0.2, 1.0])
    ev = EvalConfig(batch_size=8, max_new_tokens=12, precision="fp32")
    first = decode.evaluate_asr(model, data, tmp_path, "set", ev)  # chapter 1's decode
    monkeypatch.setattr(decode, "transcribe", lambda *a, **k: pytest.fail("decoded again"))
    got = full_capped(model, data, tmp_path, "set", ev)
    assert got["reused"] == first["hypotheses"]
    caps = audio_caps(data, ev.max_new_tokens)
    rows = [line for line in (tmp_path / first["hypotheses"]).read_text().splitlines()]
    import json

    hyps = [cap_text(model, json.loads(r)["hyp"], c) for r, c in zip(rows, caps)]
    refs = [u.text for u in data.utterances]
    norm = [" ".join(x.lower().split()) for x in hyps]
    if all(h.strip() for h in norm):  # jiwer on the strings, the independent reference
        out = jiwer.process_words(refs, norm)
        assert got["insertion_rate"] == pytest.approx(out.insertions / sum(
            len(r.split()) for r in refs), abs=0.05)
    assert got["n_utterances"] == 5 and 0 <= got["wer_ci95"][0] <= got["wer"]


@pytest.mark.parametrize("sizes,n,want", [
    ([1, 2, 3, 5, 9], 3, [2, 3, 5]), ([1, 2, 3, 5, 9], 1, [1, 2]),
    ([1, 2, 3, 5, 9], 9, [5, 9]), ([1, 2, 3, 5, 9], 0, [1])])
def test_the_cuts_decoded_to_confirm_the_rule(sizes, n, want):
    assert confirm_sizes(sizes, n) == want


@pytest.mark.parametrize("verdicts,says", [
    ([BEATS, BEATS, SAME], "angular beats the baseline"),
    ([LOSES, UNDECIDED], "the baseline beats angular"),
    ([BEATS, LOSES], "neither wins at every cut"),
    ([UNDECIDED, SAME], "angular does not beat the baseline")])
def test_the_baseline_sentence_says_either_way(verdicts, says):
    s = baseline_sentence("m", [{"verdict": v} for v in verdicts])
    assert s.startswith(f"m: {says} (")


def _record() -> dict:
    """A chapter 3 record of the loss curves, written by hand."""
    rule = {"n_removed": 3, "n_removed_ci95": [2, 3], "removed_fraction": 0.1, "grid_steps": 1,
            "cost": 0.06, "floor_gap": 1.5}
    return {
        "decoders": {"m": {
            "full": {"t": {"loss": 1.0, "loss_floor": 2.5, "n_utterances": 100}},
            "strategies": {"angular": {"curve": {}, "loss_rule": rule},
                           "gromov": {"curve": {}, "loss_rule": {**rule, "n_removed": 2,
                                                                  "removed_fraction": 0.07}}},
            "baseline": {"strategy": "gromov", "against": [
                {"n_removed": 2, "delta": 0.3, "delta_ci95": [0.1, 0.5],
                 "verdict": LOSES}]},
            "chosen": {"strategy": "angular", "n_removed": 3, "layers": [20, 21, 22],
                       "removed_fraction": 0.1, "tests": {"t": {
                           "wer_full": 0.4, "wer_full_ci95": [0.35, 0.45],
                           "insertion_rate_full": 0.01, "n_utterances": 100, "ruled": True,
                           "at": [{"n_removed": 3, "wer": 0.45, "wer_ci95": [0.4, 0.5],
                                   "insertion_rate": 0.03, "relative": 0.125, "within": True,
                                   "cost": 0.06}]}}}}},
        "settings": {"curve": "loss", "loss_threshold": 0.1, "threshold": 0.25,
                     "fractions": [0.1], "ruled_on": "t", "calibration_utterances": 16,
                     "bootstrap_draws": 1000},
        "provenance": {"git_hash": "abcdef1234", "date": "2026-12-04"}}


def test_the_record_of_the_loss_curves_renders_what_it_holds():
    from lib.report.blocks import render_ch03
    from lib.report.summary import found_ch03

    text = render_ch03(_record())
    assert "| m | angular | 3 [2, 3] | 10 | 1 | 0.06 |" in text
    assert "m, angular against gromov (paired loss difference per cut): 2 layers: " \
           "higher loss" in text
    assert "WER 40.0 % -> 45.0 % [40.0, 50.0], 0.03 insertions per word" in text
    assert "within 0.1 on every utterance of t" in text
    assert found_ch03(_record()).startswith("m: 3 layers (10 %) by angular (loss cost ≤ 0.1")
    one = _record()
    one["decoders"]["m"]["chosen"].update(n_removed=1, removed_fraction=1 / 18)
    assert found_ch03(one).startswith("m: 1 layer (6 %) by angular")


# ------------------------------------------------------------------ chapter 2's answers


@pytest.mark.parametrize("verdicts,starts", [
    (["the same blocks, specific to the inputs"] * 2, "text and speech mark the same blocks, "
                                                       "and more than any input does"),
    (["not the same blocks"] * 2, "text and speech do not mark the same blocks"),
    (["the same blocks, as any input marks them", "the same blocks, specific to the inputs"],
     "text and speech mark the same blocks, but so does an input that carries no task"),
    (["not the same blocks", "the same blocks, specific to the inputs"],
     "the profiles agree for some decoders or block sizes and not for others")])
def test_chapter_2s_profile_sentence_says_each_answer(verdicts, starts):
    from lib.recipes.profiles import profile_sentence

    assert profile_sentence(verdicts).startswith(starts)


def test_chapter_2s_surface_sentence_does_not_count_what_a_null_input_reaches():
    import pandas as pd

    from lib.recipes.ch02 import surface_sentence

    raw = pd.DataFrame({"verdict": ["the same blocks"] * 2,
                        "beyond null": ["the same blocks, as a null input does"] * 2})
    assert "but so does a null input" in surface_sentence(raw)
    kept = raw.assign(**{"beyond null": ["the same blocks, beyond a null input"] * 2})
    assert surface_sentence(kept).startswith("the same blocks stand out")
    mixed = raw.assign(**{"beyond null": ["the same blocks, beyond a null input",
                                          "no more than chance"]})
    assert "only in part" in surface_sentence(mixed)


def test_the_readmes_summary_reads_chapter_2s_specific_verdicts():
    from lib.report.summary import found_ch02

    rec = {"decoders": {"m": {"comparisons": {
        "a": {"verdict": "the same blocks", "beyond_null": "the same blocks, as a null input does"},
        "b": {"verdict": "the same blocks", "beyond_null": "the same blocks, beyond a null input"}},
        "profiles": {"3": {"verdict": "the same blocks, as any input marks them"}}}},
        "thresholds": {"agree_rho": 0.8, "agree_overlap_gain": 0.5, "specific_min": 0.5}}
    assert found_ch02(rec).startswith(
        "m: the same blocks beyond a null input in 1 of 2 comparisons; by removal cost, "
        "n = 3: the same blocks, as any input marks them (")


def test_the_cost_table_puts_each_decoder_s_cuts_in_order_and_leaves_others_empty():
    """Two decoders of different depths cut at different sizes: one row per decoder and
    strategy, the sizes in increasing order whichever decoder has them, and an empty cell
    (not "nan") where a decoder was not cut at that size."""
    import pandas as pd

    from lib.recipes.ch03 import cost_table

    def wide(costs):
        return pd.DataFrame(costs, index=pd.Index(["angular", "random"], name="strategy"))

    table = cost_table({"deep": wide({2: ["a2", "r2"], 6: ["a6", "r6"]}),
                        "shallow": wide({1: ["a1", "r1"], 2: ["b2", "s2"]})})
    assert list(table.columns) == ["decoder", "strategy", "1 removed", "2 removed", "6 removed"]
    assert table.values.tolist() == [["deep", "angular", "", "a2", "a6"],
                                     ["deep", "random", "", "r2", "r6"],
                                     ["shallow", "angular", "a1", "b2", ""],
                                     ["shallow", "random", "r1", "s2", ""]]
