"""Chapter 2's agreement table and figures of record, on constructed results (no model)."""

from __future__ import annotations

import json

from lib.fileio import figures_digest

import numpy as np

from lib.recipes.ch02 import COMPARISONS as CH02_COMPARISONS, agreement_table
from lib.recipes.ch02 import headline as headline_ch02
from lib.score.stats import RedundancyResult
from lib.report.readme import render


def _result(surface: np.ndarray) -> RedundancyResult:
    big_l = surface.shape[0] - 1
    return RedundancyResult(n_layers=big_l, distance_last=surface, distance_all=surface,
                            bi=np.zeros(big_l), cka={}, n_tokens=10, n_sequences=2,
                            n_undefined=0, input_kind="text", positions="transcript")


def _surface(big_l: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = np.full((big_l + 1, big_l + 1), np.nan)
    for n in range(1, big_l + 1):
        s[: big_l - n + 1, n] = n + rng.random(big_l - n + 1)
    return s


def test_agreement_table_headline_and_readme_block(tmp_path):
    same = _surface(8, 0)
    res = {"text, pretrained LLM": _result(same), "text, SpeechLLM decoder": _result(same),
           "speech, transcript": _result(same.copy()), "speech, audio": _result(_surface(8, 1))}
    table = agreement_table({"dec": res}, draws=500, rho_min=0.8, gain_min=0.5)
    assert list(table["comparison"]) == list(CH02_COMPARISONS)
    by = table.set_index("comparison")
    assert by.loc["text vs speech, transcript tokens", "Spearman per n"] == 1.0
    assert by.loc["text vs speech, transcript tokens", "verdict"] == "the same blocks"
    assert abs(by.loc["text vs speech, audio positions", "chance Spearman"]) < 0.1
    rec = headline_ch02(table, {"dec": {"block_size": 2, "spearman": 0.5, "n_blocks": 7,
                                        "chosen_start": 3, "chosen_delta": 0.25,
                                        "chosen_rank": 1, "best_start": 3,
                                        "best_delta": 0.25}},
                        {"dec": {"2": {"rho": 0.9, "top_k_overlap": 1.0, "k": 3,
                                       "rho_ceiling": 0.95,
                                       "nulls": {"noise audio": {"rho_null": 0.88, "index": 0.2,
                                                                 "index_ci95": [0.0, 0.4]}},
                                       "stricter_null": "noise audio", "index": 0.2,
                                       "index_ci95": [0.0, 0.4],
                                       "verdict": "the same blocks, as any input marks them"}}},
                        {"agree_rho": 0.8, "agree_overlap_gain": 0.5, "specific_min": 0.5})
    c = rec["decoders"]["dec"]["comparisons"]["text vs speech, transcript tokens"]
    assert set(c) == {"spearman_per_n_mean", "overlap_mean", "chance", "verdict"}
    assert set(c["chance"]) == {"spearman_per_n_mean", "overlap_mean"}
    path = tmp_path / "demo" / "ch02.json"
    path.parent.mkdir()
    full = {"chapter": "ch02", "preset": "demo", **rec}
    full["digest"] = figures_digest(full)
    path.write_text(json.dumps({**full, "provenance": {"date": "2026-11-23"}}))
    out = render("<!-- results: demo/ch02 -->\n<!-- end results -->", tmp_path)
    assert "| dec | text vs speech, transcript tokens | 1.00 (" in out
    assert "raises the loss by 0.25 nats, rank 1 of 7" in out
    assert ("dec, blocks of 2 removed in turn: Spearman text–speech 0.90 (split-half ceiling "
            "0.95, noise audio 0.88); specificity 0.20 [0.00, 0.40] against noise audio: the "
            "same blocks, as any input marks them") in out


def test_gguf_decoders_are_the_offline_quantised_ones():
    from lib.recipes.ch02 import gguf_decoders

    assert gguf_decoders(["smollm2-135m", "tiny-llama", "gemma3-270m", "org/other"]) == [
        "smollm2-135m", "gemma3-270m"]


def test_the_agreement_table_fits_the_page_with_each_figure_beside_its_chance():
    """Six named columns (the page's content column holds them at 1280 pixels); the figures
    and the verdict read against a null input, as in the full table."""
    import pandas as pd

    from lib.recipes.ch02 import agreement_view

    full = pd.DataFrame([{"decoder": "d", "comparison": "text vs speech",
                          "Spearman per n": 0.704, "chance Spearman": 0.021, "overlap": 1.0,
                          "chance overlap": 0.66, "overlap gain": 1.0,
                          "verdict": "the same blocks", "null share": 0.9,
                          "beyond null": "the same blocks, as a null input does"}])
    view = agreement_view(full)
    assert list(view.columns) == ["decoder", "comparison", "Spearman per n (chance)",
                                  "block overlap (chance)", "null share", "verdict"]
    row = view.iloc[0]
    assert row["Spearman per n (chance)"] == "0.70 (0.02)"
    assert row["block overlap (chance)"] == "1.00 (0.66)"
    assert row["verdict"] == "the same blocks, as a null input does"
    assert row["null share"] == "0.90"
    assert agreement_view(full.assign(**{"null share": float("nan")})).iloc[0]["null share"] \
        == "–"
    no_nulls = agreement_view(full.drop(columns=["null share", "beyond null"]))
    assert "null share" not in no_nulls and no_nulls.iloc[0]["verdict"] == "the same blocks"
