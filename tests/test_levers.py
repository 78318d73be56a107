"""Chapter 1's levers: the rule that picks the recipe of record (it can say no), the seed
spread that widens a comparison, and the table, on constructed scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib.evaluate.metrics import paired_difference, score_asr, wer_by
from lib.recipes.levers import lever_spec, lever_summary, lever_table, recipe_words
from lib.report.rules import choose_lever, seed_widened
from lib.data.spec import CorpusSpec
from lib.errors import CompanionError

REFS = [f"the cat sat on mat number {i}" for i in range(40)]


def _score(n_wrong: int) -> dict:
    """The first ``n_wrong`` utterances each with one word wrong (7 words each)."""
    hyps = [r.replace("cat", "dog") if i < n_wrong else r for i, r in enumerate(REFS)]
    return score_asr(REFS, hyps)


def test_seed_widened_takes_the_wider_side() -> None:
    d = {"difference": -0.05, "difference_ci95": [-0.08, -0.02]}
    assert seed_widened(d, 0.02)["difference_ci95"] == [-0.08, -0.02]  # utterances wider
    wide = seed_widened(d, 0.2)["difference_ci95"]  # seeds wider: -0.05 +- 0.1
    assert wide == pytest.approx([-0.15, 0.05])
    assert seed_widened(d, float("nan"))["difference_ci95"] == [-0.08, -0.02]


def test_the_rule_says_yes_and_no() -> None:
    clean, better = _score(30), _score(2)
    rows = [{"lever": "clean", "dev_wer": clean["wer"], "vs_clean": None},
            {"lever": "noise", "dev_wer": better["wer"],
             "vs_clean": seed_widened(paired_difference(better, clean), 0.01)}]
    yes = choose_lever(rows)
    assert yes["lever"] == "noise" and yes["verdict"] == "lower than"
    # the same difference, but the clean recipe moves by 20 points over seeds: no
    rows[1]["vs_clean"] = seed_widened(paired_difference(better, clean), 0.4)
    no = choose_lever(rows)
    assert no["lever"] == "clean" and no["verdict"] == "not distinguishable from"
    assert "so the recipe of record is clean" in no["sentence"]


def test_wer_by_source_is_the_slow_loop() -> None:
    hyps = [r.replace("cat", "dog") if i < 10 else r for i, r in enumerate(REFS)]
    s = score_asr(REFS, hyps)
    groups = ["a" if i % 2 else "b" for i in range(len(REFS))]
    by = wer_by(s, groups)
    for g in ("a", "b"):  # each group scored on its own by jiwer
        mine = [i for i in range(len(REFS)) if groups[i] == g]
        own = score_asr([REFS[i] for i in mine], [hyps[i] for i in mine])
        assert by[g]["wer"] == pytest.approx(own["wer"]) and by[g]["n"] == len(mine)
        assert by[g]["wer_ci95"][0] <= by[g]["wer"] <= by[g]["wer_ci95"][1]


def test_a_lever_changes_only_its_own_fields() -> None:
    base = CorpusSpec(n_train=100, n_test=10, augment=("gain",), flite_fraction=0.1)
    assert lever_spec(base, "clean") == CorpusSpec(n_train=100, n_test=10)
    assert lever_spec(base, "noise").augment == ("noise",)
    assert lever_spec(base, "piper").piper_fraction == 0.3 and lever_spec(base, "piper").augment == ()
    assert recipe_words(lever_spec(base, "clean")) == "the clean recipe"
    assert recipe_words(lever_spec(base, "text")) == "the clean recipe with text_fraction 0.5"


def test_a_lever_pulled_by_an_amount_sets_its_one_field() -> None:
    base = CorpusSpec(n_train=100, n_test=10)
    assert lever_spec(base, "text=0.25") == CorpusSpec(n_train=100, n_test=10, text_fraction=0.25)
    assert lever_spec(base, "piper=1") == CorpusSpec(n_train=100, n_test=10, piper_fraction=1.0)
    noisy = lever_spec(base, "noise=0.2")
    assert noisy.augment == ("noise",) and noisy.augment_prob == 0.2
    assert lever_spec(base, "all=1").augment_prob == 1.0 and len(lever_spec(base, "all=1").augment) == 6
    assert lever_spec(base, "text=0.5") == lever_spec(base, "text")  # the plain name's amount


def _run(lever: str, seed: int, dev: int, real: int) -> dict:
    scores = {"real:dev": _score(dev), "real": _score(real), "synthetic:test": _score(5)}
    for s in scores.values():
        s["by_source"] = {"x": {"wer": s["wer"], "wer_ci95": s["wer_ci95"], "n": 40}}
    return {"lever": lever, "seed": seed, "minutes": {"corpus": 1.0, "warm_start": 2.0},
            "scores": scores}


def test_a_lever_that_wins_at_one_seed_but_moves_more_than_that_is_not_chosen() -> None:
    """Clean moves by 3 of 280 dev words over its seeds. A lever 8 words better at seed 0:
    chosen when its own seeds agree, not when they move by 18 words (its half range, 9
    words, reaches past the 8-word gain): the larger spread widens the difference."""
    clean = [_run("clean", 0, 30, 30), _run("clean", 1, 28, 30), _run("clean", 2, 31, 30)]
    steady = [_run("text", 0, 22, 30), _run("text", 1, 23, 30), _run("text", 2, 24, 30)]
    table, extra = lever_table(clean + steady)
    assert extra["choice"]["lever"] == "text"
    assert extra["spreads"]["text"]["real:dev"] == pytest.approx(2 / 280)
    wobbly = [_run("text", 0, 22, 30), _run("text", 1, 40, 30), _run("text", 2, 30, 30)]
    table, extra = lever_table(clean + wobbly)
    assert extra["choice"]["lever"] == "clean"
    low, high = table.loc[1, "real:dev vs clean ci95"]
    assert low <= (-8 - 9) / 280 + 1e-9 and high >= (-8 + 9) / 280 - 1e-9
    # clean's spread alone (one text seed) would have chosen text
    assert lever_table(clean + wobbly[:1])[1]["choice"]["lever"] == "text"
    json.dumps(lever_summary(table, extra))  # the record: spreads without NaN


def test_the_table_reads_the_spread_from_the_clean_seeds() -> None:
    runs = [_run("clean", 0, 30, 30), _run("noise", 0, 5, 10), _run("clean", 1, 28, 26),
            _run("clean", 2, 31, 33)]
    table, extra = lever_table(runs)
    assert list(table["lever"]) == ["clean", "noise"] and list(table["minutes"]) == [3.0, 3.0]
    assert extra["seed_spread"]["real"] == pytest.approx((33 - 26) / 280)
    assert extra["choice"]["lever"] == "noise"
    assert table.loc[1, "real:dev vs clean"] == pytest.approx(-25 / 280)
    kept = lever_summary(table, extra)  # what the record keeps: JSON, no NaN intervals
    json.dumps(kept)
    assert kept["rows"][0]["real vs clean ci95"] is None
    assert kept["rows"][1]["real ci95"] == list(table.loc[1, "real ci95"])


def test_a_lever_and_the_run_read_the_same_features_whichever_encodes_the_corpus_first(
        tmp_path, monkeypatch):
    """The text lever's corpus encoded first by the lever's measurement, or first by the run
    that trains on it: the same bits either way, so the rule's choice does not depend on the
    order a cache was filled in (a splice of the changed clips onto the clean recipe's
    features once made other bits under bf16, and its CTC head another WER)."""
    from lib.config.resolve import resolve
    from lib.recipes import levers
    from lib.recipes.pipeline import prepare_features

    cfg = resolve(1, preset="tiny", changes={"text_fraction": 0.5, "corpus_recipe": "given",
                                             "precision": "bf16"})
    assert levers.lever_spec(cfg.corpus, "text") == cfg.corpus
    got = {}
    for order in ("lever-first", "run-first"):
        monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / order))
        steps = [lambda: levers.lever_run(cfg, "text", cfg.train.seed, {})["features"],
                 lambda: prepare_features(cfg)[0].digest()]
        got[order] = [step() for step in (steps if order == "lever-first" else steps[::-1])]
    assert len({d for pair in got.values() for d in pair}) == 1, got


def test_the_figure_joins_a_lever_pulled_by_several_amounts_in_amount_order() -> None:
    import pandas as pd

    from lib.report.plot_levers import _families

    table = pd.DataFrame({"lever": ["clean", "text=1", "all", "noise", "text", "text=0.25",
                                    "noise=0.2", "flite"]})
    assert sorted(_families(table)) == [[5, 4, 1], [6, 3]]  # text 0.25 < 0.5 < 1; noise 0.2 < 0.5


def test_the_trade_sentence_reads_each_widened_difference_by_its_sign() -> None:
    from lib.recipes.levers import trade_sentence

    row = {"lever": "text=1", "real vs clean": -0.08, "real vs clean ci95": (-0.12, -0.04),
           "synthetic:test vs clean": 0.02, "synthetic:test vs clean ci95": (-0.01, 0.05)}
    said = trade_sentence(row)
    assert said.startswith("text=1: on the real test set it is lower than clean (-8.0 points "
                           "[-12.0, -4.0])")
    assert "synthetic test voices it is not distinguishable from clean (+2.0" in said
    row["synthetic:test vs clean ci95"] = (0.01, 0.05)
    assert "voices it is higher than clean" in trade_sentence(row)
    assert trade_sentence({"lever": "clean"}).startswith("no lever")


def test_only_a_lever_wholly_below_clean_is_lower() -> None:
    import pandas as pd

    from lib.recipes.levers import lower_on

    table = pd.DataFrame([{"lever": "clean", "real vs clean ci95": float("nan")},
                          {"lever": "text", "real vs clean ci95": (-0.09, -0.01)},
                          {"lever": "noise", "real vs clean ci95": (-0.05, 0.01)},
                          {"lever": "band", "real vs clean ci95": (0.01, 0.04)}])
    assert lower_on(table, "real") == ["text"]
    assert lower_on(table.iloc[[0, 2, 3]], "real") == []


def test_the_page_says_whether_the_run_trained_the_recipe_of_record() -> None:
    from lib.recipes.levers import choice_trained

    clean = CorpusSpec(n_train=100, n_test=10)
    text = CorpusSpec(n_train=100, n_test=10, text_fraction=0.5)
    assert choice_trained(text, "text").startswith("This run's SpeechLLMs were trained on that")
    assert choice_trained(clean, "clean").startswith("This run's SpeechLLMs were trained on that")
    said = choice_trained(clean, "text")
    assert said.endswith("not on that recipe: a run of that recipe sets -p text_fraction 0.5")
    assert choice_trained(text, "clean").endswith("sets -p text_fraction 0")
    assert choice_trained(clean, "all").endswith(
        "sets -p augment '[speed, tempo, reverb, noise, band, gain]'")


def test_the_lever_of_the_runs_own_corpus_takes_its_features_and_warm_start(tmp_path,
                                                                             monkeypatch):
    """Chapter 1's corpus is the clean recipe with the text lever pulled: measuring that
    lever encodes nothing and trains no CTC head again (counted), and its features are the
    run's own, byte for byte."""
    from lib.build.speechllm import build_speechllm
    from lib.config.resolve import resolve
    from lib.recipes import levers
    from lib.recipes.pipeline import prepare_features, split_dev, warmstart_folder
    from lib.train.ctc import ctc_warm_start

    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path))
    cfg = resolve(1, preset="tiny", changes={"text_fraction": 0.5, "corpus_recipe": "given"})
    assert levers.lever_spec(cfg.corpus, "text") == cfg.corpus
    own, _ = prepare_features(cfg)
    mc = cfg.models[0]
    fit, _ = split_dev(own, cfg.dev_utterances)
    first = ctc_warm_start(build_speechllm(mc, seed=cfg.train.seed), fit, cfg.train,
                           warmstart_folder(mc, cfg.train, fit))
    encoded, warm = [], []
    real_extract, real_warm = levers.extract_features, levers.ctc_warm_start
    monkeypatch.setattr(levers, "extract_features",
                        lambda *a, **kw: encoded.append(a[1]) or real_extract(*a, **kw))
    monkeypatch.setattr(levers, "ctc_warm_start",
                        lambda *a, **kw: warm.append(real_warm(*a, **kw)) or warm[-1])
    out = levers.lever_run(cfg, "text", cfg.train.seed, {}, own=own)
    assert encoded == [] and out["features"] == own.digest()
    assert len(warm) == 1 and warm[0].cached
    # the first decoder's, read back: its log and its norm factor
    assert warm[0].log == first.log and warm[0].norm_factor == first.norm_factor
    # without the run's features the same lever encodes its corpus itself
    monkeypatch.setattr(levers, "cached", lambda folder, name, key, compute, **kw: compute(key))
    levers.lever_run(cfg, "text", cfg.train.seed, {})
    assert encoded, "the lever encoded nothing without the run's own features"
    # the run's corpus augmented: the text lever's clips are not the run's (same corpus
    # folder, other audio), so it does not take the run's features
    gained = resolve(1, preset="tiny", changes={"text_fraction": 0.5, "corpus_recipe": "given",
                                                "augment": ["gain"]})
    own_gained, _ = prepare_features(gained)
    out = levers.lever_run(gained, "text", cfg.train.seed, {}, own=own_gained)
    assert out["features"] != own_gained.digest()


def _lever_runs(dev_errors: dict[str, list[int]]) -> list[dict]:
    """Constructed lever measurements: 40 dev prompts of 10 words, each lever's errors per
    prompt given (clean at seeds 0 and 1); the test sets as the dev set."""
    from lib.recipes.levers import LEVER_TESTS

    def score(errors: list[int]) -> dict:
        words = [10] * len(errors)
        wer = sum(errors) / sum(words)
        return {"wer": wer, "wer_ci95": (wer - 0.05, wer + 0.05), "utterance_errors": errors,
                "utterance_words": words, "by_source": {"asterisk": {"wer": wer}}}

    runs = [{"lever": lever, "seed": seed, "minutes": {"warm_start": 1.0},
             "scores": {t: score(errors) for t in LEVER_TESTS}}
            for lever, errors in dev_errors.items() for seed in (0,)]
    runs.append({**runs[0], "seed": 1})  # clean again: no seed spread
    return runs


def test_the_rule_chooses_the_training_corpus_before_the_speechllms_train(tmp_path,
                                                                          monkeypatch):
    """corpus_recipe rule: the lever that wins on the dev prompts is the corpus every chapter
    trains on, and the clean recipe when none is wholly below clean (the rule saying no)."""
    from lib.config.resolve import resolve
    from lib.data.spec import CorpusSpec
    from lib.recipes import levers, pipeline

    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path))
    cfg = resolve(1, preset="tiny")
    assert cfg.corpus_recipe == "rule" and cfg.corpus.text_fraction == 0.0
    wins = {"clean": [5] * 40, "text": [2] * 40, "flite": [5] * 40}
    monkeypatch.setattr(levers, "measure_levers", lambda *a, **kw: _lever_runs(wins))
    assert levers.training_corpus(cfg) == levers.lever_spec(cfg.corpus, "text")
    loaded: list[CorpusSpec] = []

    def load(name, spec):
        loaded.append(spec)
        raise KeyboardInterrupt  # stop before encoding: the corpus asked for is the point

    monkeypatch.setattr(pipeline, "load_source", load)
    with pytest.raises(KeyboardInterrupt):
        pipeline.prepare_features(cfg)
    assert loaded == [levers.lever_spec(cfg.corpus, "text")] and loaded[0].text_fraction == 0.5
    # text lower on half the prompts, higher on the other half: not below clean, clean stays
    mixed = {"clean": [5] * 40, "text": [2] * 20 + [8] * 20, "flite": [6] * 40}
    monkeypatch.setattr(levers, "measure_levers", lambda *a, **kw: _lever_runs(mixed))
    monkeypatch.setattr(levers, "_CHOSEN", {})  # another process (the levers measured anew)
    assert levers.training_corpus(cfg) == levers.clean_spec(cfg.corpus)
    # given: the corpus as set, nothing measured
    monkeypatch.setattr(levers, "measure_levers", lambda *a, **kw: pytest.fail("measured"))
    given = resolve(1, preset="tiny", changes={"corpus_recipe": "given", "text_fraction": 0.5})
    assert levers.training_corpus(given) == given.corpus
    assert levers.training_corpus(resolve(1, preset="tiny", changes={"levers": []})) == cfg.corpus


def test_the_recipe_of_record_is_measured_once_per_process_and_cache(tmp_path, monkeypatch):
    """A chapter resolves the recipe of record several times: the levers are read once per
    process and cache; another cache, or other lever settings, measure again."""
    from lib.config.resolve import resolve
    from lib.recipes import levers

    calls = []

    def measure(*a, **kw):
        calls.append(a[1:])
        return _lever_runs({"clean": [5] * 40, "text": [2] * 40, "flite": [5] * 40})

    monkeypatch.setattr(levers, "measure_levers", measure)
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / "a"))
    cfg = resolve(1, preset="tiny")
    text = levers.lever_spec(cfg.corpus, "text")
    assert levers.training_corpus(cfg) == text == levers.training_corpus(cfg)
    assert len(calls) == 1
    fewer = resolve(1, preset="tiny", changes={"lever_seeds": 1})
    assert levers.training_corpus(fewer) == text and len(calls) == 2
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / "b"))
    assert levers.training_corpus(cfg) == text and len(calls) == 3


def test_a_corpus_set_by_hand_under_the_rule_is_one_line() -> None:
    from lib.config.resolve import resolve

    with pytest.raises(CompanionError, match=r"corpus_recipe='rule'.*text_fraction=0.5 sets it "
                       r"by hand: add -p corpus_recipe given"):
        resolve(1, preset="tiny", changes={"text_fraction": 0.5})
    with pytest.raises(CompanionError, match=r"augment=\['noise'\]"):
        resolve(1, preset="tiny", changes={"augment": ["noise"]})
    with pytest.raises(CompanionError, match=r"corpus_recipe='sometimes': use one of rule, given"):
        resolve(1, preset="tiny", changes={"corpus_recipe": "sometimes"})
