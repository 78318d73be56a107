"""Agreement of two d(l, n) surfaces within each block size, and its chance level, on
constructed surfaces whose answer is known (issue 8, part 2)."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest

from lib.report.rules import agreement_verdict
from lib.score.agreement import overlap_gain, surface_agreement
from lib.errors import CompanionError


def _surface(big_l: int, seed: int = 0, trend: float = 0.0) -> np.ndarray:
    """A random (L+1) x (L+1) surface, NaN outside 1 <= n, l + n <= L; d grows with n by
    ``trend`` per layer (as real distances do)."""
    rng = np.random.default_rng(seed)
    s = np.full((big_l + 1, big_l + 1), np.nan)
    for n in range(1, big_l + 1):
        s[: big_l - n + 1, n] = trend * n + rng.random(big_l - n + 1)
    return s


def _reverse_in_l(s: np.ndarray) -> np.ndarray:
    big_l = s.shape[0] - 1
    r = s.copy()
    for n in range(1, big_l + 1):
        r[: big_l - n + 1, n] = s[: big_l - n + 1, n][::-1]
    return r


def _exact_chance_overlap(big_l: int) -> Fraction:
    """Mean over n of E|[a, a+n) & [b, b+n)| / n for a, b uniform on 0..L-n: enumeration."""
    per_n = []
    for n in range(1, big_l + 1):
        starts = range(big_l - n + 1)
        tot = sum(Fraction(len(set(range(a, a + n)) & set(range(b, b + n))), n)
                  for a, b in itertools.product(starts, starts))
        per_n.append(tot / len(starts) ** 2)
    return sum(per_n) / big_l


def test_identical_surfaces_agree_fully_and_beat_chance():
    s = _surface(8, seed=1, trend=0.3)
    agr = surface_agreement(s, s.copy(), draws=2000, seed=0)
    # every n with at least 3 start layers (n = 1 .. 6 of L = 8) has rho = 1
    assert sorted(agr["spearman_per_n"]) == list(range(1, 7))
    assert all(v == pytest.approx(1.0) for v in agr["spearman_per_n"].values())
    assert agr["spearman_per_n_mean"] == pytest.approx(1.0)
    assert agr["overlap_mean"] == 1.0 and agr["blocks_a"] == agr["blocks_b"]
    c = agr["chance"]
    assert abs(c["spearman_per_n_mean"]) < 0.05 and c["p_spearman"] < 0.01
    assert c["p_overlap"] < 0.05
    assert overlap_gain(agr) == pytest.approx(1.0)
    assert agreement_verdict(agr, rho_min=0.8, gain_min=0.5) == "the same blocks"


def test_a_surface_against_its_reverse_in_l_has_rho_minus_one():
    """d rising with l in every column; its reverse falls with l: opposite rankings."""
    s = _surface(7, seed=2, trend=0.5)
    for n in range(1, 8):
        s[: 8 - n, n] = np.sort(s[: 8 - n, n])
    agr = surface_agreement(s, _reverse_in_l(s), draws=500)
    assert all(v == pytest.approx(-1.0) for v in agr["spearman_per_n"].values())
    assert agr["spearman_per_n_mean"] == pytest.approx(-1.0)
    assert agr["chance"]["p_spearman"] == 1.0  # every draw is at least -1
    assert agreement_verdict(agr, 0.8, 0.5) != "the same blocks"


def test_pooling_over_n_misleads_but_per_n_does_not():
    """Two independent surfaces that both grow with n: pooled rho is high, per-n is not."""
    a, b = _surface(12, seed=3, trend=1.0), _surface(12, seed=4, trend=1.0)
    from lib.score.agreement import spearman_rho

    ok = np.isfinite(a)
    assert spearman_rho(a[ok], b[ok]) > 0.9
    agr = surface_agreement(a, b, draws=1000, seed=0)
    assert abs(agr["spearman_per_n_mean"]) < 0.3
    assert agr["chance"]["p_spearman"] > 0.05


@pytest.mark.parametrize("big_l", [3, 6])
def test_chance_overlap_matches_the_exact_expectation(big_l):
    # L = 3 by hand: n = 1: 3 of 9 pairs equal -> 1/3; n = 2: starts {0, 1}: (1 + 1 + 1/2 +
    # 1/2) / 4 = 3/4; n = 3: one start -> 1. Mean (1/3 + 3/4 + 1) / 3 = 25/36.
    exact = _exact_chance_overlap(big_l)
    if big_l == 3:
        assert exact == Fraction(25, 36)
    s = _surface(big_l, seed=5)
    draws = 20000
    c = surface_agreement(s, _surface(big_l, seed=6), draws=draws, seed=1)["chance"]
    # the draws' mean overlap is within 4 standard errors (sd of one draw <= 1/2)
    assert c["overlap_mean"] == pytest.approx(float(exact), abs=4 * 0.5 / np.sqrt(draws))


def test_chance_overlap_is_high_for_deep_decoders():
    """The issue's point: two random picks overlap by about 0.6 at L = 18 and L = 30."""
    for big_l in (18, 30):
        assert 0.55 < float(_exact_chance_overlap(big_l)) < 0.7


def test_chance_is_seeded_and_bad_input_is_one_line():
    a, b = _surface(6, seed=7), _surface(6, seed=8)
    assert surface_agreement(a, b, draws=50, seed=3) == surface_agreement(a, b, draws=50,
                                                                            seed=3)
    with pytest.raises(CompanionError, match="draws"):
        surface_agreement(a, b, draws=-1)
    with pytest.raises(CompanionError, match="same decoder"):
        surface_agreement(a, _surface(5))
    with pytest.raises(CompanionError, match="chance baseline"):
        overlap_gain(surface_agreement(a, b))


@pytest.mark.parametrize("name,value", [("agree_rho", 1.5), ("agree_overlap_gain", 0),
                                        ("chance_draws", 0)])
def test_bad_verdict_parameters_are_one_line(name, value):
    from lib.config.resolve import resolve

    with pytest.raises(CompanionError, match=f"parameter {name}={value!r}"):
        resolve(2, preset="default", changes={name: value})
