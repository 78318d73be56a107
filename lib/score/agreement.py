"""Do two redundancy surfaces mark the same blocks? Agreement measures and their chance level.

Stage: redundancy scores (comparing them); the scores themselves come from
:mod:`lib.score.redundancy`. Explained in chapter 2 (book/02_where_redundancy_lies.ipynb).

Two ``d(l, n)`` surfaces (e.g. text vs speech inputs of one decoder) are compared within
each block size ``n``, never pooled over all ``(l, n)`` cells: ``d`` grows with ``n``, so two
unrelated surfaces would still correlate strongly when pooled.

* ``spearman_per_n[n]``: Spearman correlation over the start layers ``l`` valid in both
  surfaces, for each ``n`` with at least ``MIN_CELLS`` of them; ``spearman_per_n_mean`` is
  its mean over those ``n``.
* ``overlap[n] = |[l*_a, l*_a+n) & [l*_b, l*_b+n)| / n`` for the blocks each surface would
  remove (``l* = argmin_l d(l, n)``); ``overlap_mean`` its mean over ``n``.
* ``chance``: the same two figures for surfaces whose values are shuffled over ``l``
  within each ``n`` (both surfaces, independently, ``draws`` times, seeded). The argmin of a
  shuffled column is a uniformly random valid start, so the chance overlap is that of two
  random picks of a block per ``n``, and the chance Spearman is centred on 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lib.errors import CompanionError

MIN_CELLS = 3
"""Block sizes with fewer valid start layers than this have no per-n Spearman (with 2
points it is always +-1)."""


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (ties averaged); NaN for fewer than 2 points or a
    constant input."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _columns(sa: np.ndarray, sb: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]]:
    """Per block size n: the start layers valid in both surfaces and their two columns."""
    if sa.shape != sb.shape or sa.ndim != 2 or sa.shape[0] != sa.shape[1]:
        raise CompanionError(f"surfaces of shapes {sa.shape} and {sb.shape}: compare two "
                             "(L+1) x (L+1) surfaces of the same decoder")
    big_l = sa.shape[0] - 1
    out = {}
    for n in range(1, big_l + 1):
        a, b = sa[: big_l - n + 1, n], sb[: big_l - n + 1, n]
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.any():
            out[n] = (np.flatnonzero(ok), a[ok], b[ok])
    return out


def _overlap(la: np.ndarray | int, lb: np.ndarray | int, n: int) -> np.ndarray:
    return np.maximum(0, np.minimum(la, lb) + n - np.maximum(la, lb)) / n


def _rank_corr_rows(ra: np.ndarray, rb: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair of rank arrays (= Spearman of the values)."""
    ra = ra - ra.mean(1, keepdims=True)
    rb = rb - rb.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / den, np.nan)


def surface_agreement(sa: np.ndarray, sb: np.ndarray, draws: int = 0, seed: int = 0
                      ) -> dict[str, Any]:
    """Per-n Spearman, block overlap and (with ``draws``) their chance level; see the module
    docstring. ``sa`` / ``sb`` are ``(L+1) x (L+1)`` arrays indexed ``[l, n]``, NaN where
    undefined.

    Returns:
        ``spearman_per_n`` (n -> rho), ``spearman_per_n_mean``, ``overlap`` (n -> share),
        ``overlap_mean``, ``blocks_a`` / ``blocks_b`` (n -> l*), and, when ``draws > 0``,
        ``chance``: ``spearman_per_n_mean`` and ``overlap_mean`` (means over the draws),
        their 95th percentiles ``spearman_p95`` / ``overlap_p95``, ``p_spearman`` /
        ``p_overlap`` (share of draws at least as high as the observed value) and ``draws``.
    """
    from scipy.stats import rankdata

    if draws < 0:
        raise CompanionError(f"draws={draws}: use 0 (no chance baseline) or a positive count")
    cols = _columns(np.asarray(sa, dtype=float), np.asarray(sb, dtype=float))
    if not cols:
        raise CompanionError("the two surfaces have no cell valid in both: score the same "
                             "decoder on non-empty inputs")
    rho, overlap, blocks_a, blocks_b = {}, {}, {}, {}
    for n, (ls, a, b) in cols.items():
        if len(ls) >= MIN_CELLS:
            rho[n] = spearman_rho(a, b)
        blocks_a[n], blocks_b[n] = int(ls[np.argmin(a)]), int(ls[np.argmin(b)])
        overlap[n] = float(_overlap(blocks_a[n], blocks_b[n], n))
    finite = [v for v in rho.values() if np.isfinite(v)]
    out: dict[str, Any] = {
        "spearman_per_n": rho,
        "spearman_per_n_mean": float(np.mean(finite)) if finite else float("nan"),
        "overlap": overlap,
        "overlap_mean": float(np.mean(list(overlap.values()))),
        "blocks_a": blocks_a, "blocks_b": blocks_b,
    }
    if draws:
        rng = np.random.default_rng(seed)
        rho_sum, rho_k = np.zeros(draws), np.zeros(draws)
        ovl_sum = np.zeros(draws)
        for n, (ls, a, b) in cols.items():
            m = len(ls)
            pa = np.argsort(rng.random((draws, m)), 1)  # a permutation of l per draw
            pb = np.argsort(rng.random((draws, m)), 1)
            ovl_sum += _overlap(ls[np.argmin(a[pa], 1)], ls[np.argmin(b[pb], 1)], n)
            if n in rho:
                r = _rank_corr_rows(rankdata(a)[pa], rankdata(b)[pb])
                ok = np.isfinite(r)
                rho_sum += np.where(ok, r, 0.0)
                rho_k += ok
        with np.errstate(invalid="ignore", divide="ignore"):
            rho_draws = np.where(rho_k > 0, rho_sum / np.maximum(rho_k, 1), np.nan)
        ovl_draws = ovl_sum / len(cols)
        obs_r, obs_o = out["spearman_per_n_mean"], out["overlap_mean"]
        has_r = np.isfinite(rho_draws).any()
        out["chance"] = {
            "spearman_per_n_mean": float(np.nanmean(rho_draws)) if has_r else float("nan"),
            "spearman_p95": float(np.nanpercentile(rho_draws, 95)) if has_r else float("nan"),
            "p_spearman": (float(np.mean(rho_draws[np.isfinite(rho_draws)] >= obs_r - 1e-12))
                           if has_r and np.isfinite(obs_r) else float("nan")),
            "overlap_mean": float(ovl_draws.mean()),
            "overlap_p95": float(np.percentile(ovl_draws, 95)),
            "p_overlap": float(np.mean(ovl_draws >= obs_o - 1e-12)),
            "draws": int(draws), "seed": int(seed),
        }
    return out


def overlap_gain(agr: dict[str, Any]) -> float:
    """How far the observed block overlap is from chance toward perfect agreement:
    ``(overlap - chance) / (1 - chance)``; 0 at chance, 1 for the same blocks."""
    if "chance" not in agr:
        raise CompanionError("this agreement has no chance baseline: compute it with draws > 0")
    c = agr["chance"]["overlap_mean"]
    return float((agr["overlap_mean"] - c) / (1 - c)) if c < 1 else float("nan")
