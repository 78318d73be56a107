"""Figures show the numbers they are given."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from lib.report.plotting import plot_distance_change
from lib.score.stats import RedundancyAccumulator


def _result(seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    acc = RedundancyAccumulator(3)
    acc.update([torch.randn(2, 4, 5, generator=g) for _ in range(4)],
               torch.ones(2, 4, dtype=torch.bool))
    return acc.result("text", "all")


def test_distance_change_shows_b_minus_a_on_a_centred_scale():
    a, b, c = _result(0), _result(1), _result(2)
    fig = plot_distance_change({"one": (a, b), "two": (a, c)})
    axes = [ax for ax in fig.axes if ax.get_title() in ("one", "two")]
    assert [ax.get_title() for ax in axes] == ["one", "two"]
    want = (b.distance_last - a.distance_last)[:, 1:].T  # rows n = 1..L, columns l
    mesh = axes[0].collections[0]
    shown = np.ma.filled(mesh.get_array().reshape(want.shape), np.nan)
    np.testing.assert_allclose(shown, want, equal_nan=True)
    lo, hi = mesh.get_clim()
    lim = max(np.nanmax(np.abs(want)),
              np.nanmax(np.abs((c.distance_last - a.distance_last)[:, 1:])))
    assert lo == -hi and np.isclose(hi, lim)
