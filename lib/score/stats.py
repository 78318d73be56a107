"""The numbers behind the redundancy scores: per-token angular distance, the streamed sums
that average it over a data set, and the result record.

The conventions (which hidden state is ``h_l``, which positions count, how CKA streams) are
set out in :mod:`lib.score.redundancy`, which feeds this accumulator from one forward pass per
batch. Stage: redundancy scores. Explained in chapter 2 (the redundancy of decoder layers).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from lib.errors import CompanionError


# ----------------------------------------------------------------------------------------
# Per-token distances
# ----------------------------------------------------------------------------------------


def _pair_cosines(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos[t, i, j] = cos(h_i, h_j)`` of token ``t`` for every pair of states, in float64.

    ``block`` is ``[S, n, D]`` (``S`` states of ``n`` tokens). One float64 copy laid out
    ``[n, S, D]``, one batched Gram matrix, then the Gram is divided by the norms: the
    ``D``-sized work is a single matmul. Returns ``(cos, ok)`` where ``ok[t, i]`` says state
    ``i`` of token ``t`` is a non-zero finite vector; ``cos`` is 0 (never NaN) wherever
    either vector is not ok.
    """
    x = torch.empty(block.shape[1], block.shape[0], block.shape[2], dtype=torch.float64,
                    device=block.device)
    x.copy_(block.detach().transpose(0, 1))
    gram = torch.bmm(x, x.transpose(1, 2))  # [n, S, S]
    del x
    sq = torch.diagonal(gram, dim1=1, dim2=2)  # squared norms
    ok = (sq > 0) & torch.isfinite(sq)
    inv = torch.where(ok, sq, 1.0).rsqrt() * ok
    cos = (gram * inv[:, :, None] * inv[:, None, :]).nan_to_num_(0.0).clamp_(-1.0, 1.0)
    return cos, ok


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row angular distance ``arccos(cos(a, b)) / pi`` over the last dimension.

    Returns:
        ``(d, valid)``: float64 distances in ``[0, 1]`` and a bool mask. Rows where ``a`` or
        ``b`` is a zero (or non-finite) vector have no defined angle: ``valid`` is False there
        and ``d`` holds 0.0 (never NaN); callers must drop those rows.
    """
    if a.shape != b.shape:
        raise CompanionError(f"angular_distance got shapes {tuple(a.shape)} and {tuple(b.shape)}: "
                             "pass two tensors of the same shape")
    d_model = a.shape[-1]
    cos, ok = _pair_cosines(torch.stack([a.reshape(-1, d_model), b.reshape(-1, d_model)]))
    valid = ok.all(1)
    d = torch.where(valid, torch.arccos(cos[:, 0, 1]) / math.pi, 0.0)
    return d.reshape(a.shape[:-1]), valid.reshape(a.shape[:-1])


# ----------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _none_to_nan(x: Any) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in x], dtype=float) \
        if x and isinstance(x[0], list) else np.array([np.nan if v is None else v for v in x],
                                                      dtype=float)


@dataclass
class RedundancyResult:
    """Redundancy scores of one model on one input set (see the module docstring).

    ``distance_last[l, n]`` / ``distance_all[l, n]`` are the mean ``d(l, n)``; NaN where
    ``n == 0``, ``l + n > L`` or no token was counted. ``count_last`` / ``count_all`` give the
    number of tokens behind each cell. ``cka`` maps ``(i, j)`` with ``i <= j`` to linear CKA.
    """

    n_layers: int
    distance_last: np.ndarray
    distance_all: np.ndarray
    bi: np.ndarray
    cka: dict[tuple[int, int], float]
    n_tokens: int
    n_sequences: int
    n_undefined: int
    input_kind: str
    positions: str
    count_last: np.ndarray | None = None
    count_all: np.ndarray | None = None
    provenance: dict[str, Any] | None = field(default=None, repr=False)

    def _surface(self, metric: str) -> np.ndarray:
        if metric == "angular_last":
            return self.distance_last
        if metric == "angular_all":
            return self.distance_all
        raise CompanionError(f"metric={metric!r}: use 'angular_last' or 'angular_all'")

    def to_frame(self) -> pd.DataFrame:
        """Tidy rows: layer, block_size, metric, value, input_kind, positions.

        Angular metrics: one row per valid ``(l, n)``. Block influence: ``block_size = 1``.
        CKA of pair ``(i, j)``: ``layer = i``, ``block_size = j - i``.
        """
        rows = []
        big_l = self.n_layers
        for metric, surf in (("angular_last", self.distance_last),
                             ("angular_all", self.distance_all)):
            for n in range(1, big_l + 1):
                for l in range(0, big_l - n + 1):
                    rows.append((l, n, metric, float(surf[l, n])))
        for l in range(big_l):
            rows.append((l, 1, "block_influence", float(self.bi[l])))
        for (i, j), v in sorted(self.cka.items()):
            rows.append((i, j - i, "cka", float(v)))
        df = pd.DataFrame(rows, columns=["layer", "block_size", "metric", "value"])
        df["input_kind"] = self.input_kind
        df["positions"] = self.positions
        return df

    def best_blocks(self, metric: str = "angular_last") -> pd.DataFrame:
        """For each block size n: ``l* = argmin_l d(l, n)`` and the block ``[l*, l*+n)``.

        Columns: block_size, start, end (exclusive), distance. Sizes with no valid cell are
        left out.
        """
        surf = self._surface(metric)
        rows = []
        for n in range(1, self.n_layers + 1):
            col = surf[: self.n_layers - n + 1, n]
            if not np.isfinite(col).any():
                continue
            l = int(np.nanargmin(col))
            rows.append((n, l, l + n, float(col[l])))
        return pd.DataFrame(rows, columns=["block_size", "start", "end", "distance"])

    def to_dict(self, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
        def arr(x: np.ndarray | None) -> Any:
            return None if x is None else _nan_to_none(np.asarray(x, dtype=float).tolist())

        return {
            "kind": "redundancy_result",
            "version": 1,
            "n_layers": self.n_layers,
            "distance_last": arr(self.distance_last),
            "distance_all": arr(self.distance_all),
            "bi": arr(self.bi),
            "cka": [[i, j, _nan_to_none(float(v))] for (i, j), v in sorted(self.cka.items())],
            "n_tokens": int(self.n_tokens),
            "n_sequences": int(self.n_sequences),
            "n_undefined": int(self.n_undefined),
            "input_kind": self.input_kind,
            "positions": self.positions,
            "count_last": arr(self.count_last),
            "count_all": arr(self.count_all),
            "provenance": provenance if provenance is not None else self.provenance,
        }

    def save(self, path: str | Path, provenance: dict[str, Any]) -> Path:
        """Write JSON (arrays as lists, NaN as null) with a provenance record."""
        from lib.fileio import save_cached_json

        return save_cached_json(Path(path), self.to_dict(provenance))

    @classmethod
    def load(cls, path: str | Path) -> "RedundancyResult":
        """Read a result written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            raise CompanionError(f"redundancy result {path} does not exist: run the scoring first")
        from lib.fileio import is_sealed

        d = json.loads(path.read_text())
        if d.get("kind") != "redundancy_result":
            raise CompanionError(f"{path} is not a redundancy result (no kind=redundancy_result)")
        if not is_sealed(d):
            raise CompanionError(f"{path} does not match its sha256 (edited or damaged): "
                                 "delete it and run the scoring again")

        def opt(x: Any) -> np.ndarray | None:
            return None if x is None else _none_to_nan(x)

        return cls(
            n_layers=int(d["n_layers"]),
            distance_last=_none_to_nan(d["distance_last"]),
            distance_all=_none_to_nan(d["distance_all"]),
            bi=_none_to_nan(d["bi"]),
            cka={(int(i), int(j)): (np.nan if v is None else float(v)) for i, j, v in d["cka"]},
            n_tokens=int(d["n_tokens"]),
            n_sequences=int(d["n_sequences"]),
            n_undefined=int(d["n_undefined"]),
            input_kind=d["input_kind"],
            positions=d["positions"],
            count_last=opt(d.get("count_last")),
            count_all=opt(d.get("count_all")),
            provenance=d.get("provenance"),
        )


# ----------------------------------------------------------------------------------------
# Streaming accumulator
# ----------------------------------------------------------------------------------------


def default_cka_pairs(n_layers: int) -> list[tuple[int, int]]:
    """Adjacent pairs ``(l, l+1)`` and ``(0, l)`` over the ``L + 1`` hidden states."""
    pairs = [(l, l + 1) for l in range(n_layers)] + [(0, l) for l in range(2, n_layers + 1)]
    return pairs


def _check_pairs(pairs: Any, n_layers: int) -> list[tuple[int, int]]:
    if pairs is None:
        return []
    if isinstance(pairs, str):
        if pairs != "default":
            raise CompanionError(f"cka_pairs={pairs!r}: use None, 'default' or a list of (i, j)")
        return default_cka_pairs(n_layers)
    out = []
    for p in pairs:
        try:
            i, j = (int(v) for v in p)
        except (TypeError, ValueError):
            raise CompanionError(f"cka pair {p!r}: give two layer indices (i, j)") from None
        if not (0 <= i <= n_layers and 0 <= j <= n_layers):
            raise CompanionError(f"cka pair ({i}, {j}) out of range: hidden states are "
                                 f"0..{n_layers} for a {n_layers}-layer decoder")
        out.append((min(i, j), max(i, j)))
    return list(dict.fromkeys(out))


class RedundancyAccumulator:
    """Running sums of ``d(l, n)``, ``cos(h_l, h_{l+1})`` and CKA statistics, batch by batch.

    Feed it the ``L + 1`` hidden states of one batch with :meth:`update` (padded ``[B, T, D]``
    plus a counted-positions mask) or :meth:`update_tokens` (already gathered ``[N, D]``);
    call :meth:`result` at the end.
    """

    def __init__(self, n_layers: int, cka_pairs: Any = None, chunk_tokens: int = 64) -> None:
        if n_layers < 1:
            raise CompanionError(f"n_layers={n_layers}: a decoder has at least one layer")
        if chunk_tokens < 1:
            raise CompanionError(f"chunk_tokens={chunk_tokens}: use a positive integer")
        self.chunk_tokens = int(chunk_tokens)
        self.n_layers = big_l = n_layers
        self.sum_all = np.zeros((big_l + 1, big_l + 1))
        self.cnt_all = np.zeros((big_l + 1, big_l + 1), dtype=np.int64)
        self.sum_last = np.zeros((big_l + 1, big_l + 1))
        self.cnt_last = np.zeros((big_l + 1, big_l + 1), dtype=np.int64)
        self.sum_cos1 = np.zeros(big_l)
        self.n_tokens = 0
        self.n_sequences = 0
        self.n_undefined = 0
        self.cka_pairs = _check_pairs(cka_pairs, big_l)
        self.cka_layers = sorted({i for p in self.cka_pairs for i in p})
        self._cka_n = 0
        self._cka_sum: dict[int, torch.Tensor] = {}
        self._cka_cross: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def needed_layers(self) -> set[int]:
        return set(range(self.n_layers + 1))

    def update(self, states: Sequence[torch.Tensor], counted: torch.Tensor) -> None:
        """Add one batch: ``L + 1`` states ``[B, T, D]`` and a bool mask ``[B, T]``.

        The "last" token of a sequence is its last counted position; sequences without a
        counted position add nothing.
        """
        if counted.dim() != 2:
            raise CompanionError(f"counted mask must be [B, T], got shape {tuple(counted.shape)}")
        counted = counted.bool()
        tokens = [s[counted] for s in states]
        self.update_tokens(tokens, last_flat_index(counted), n_sequences=counted.shape[0])

    def update_tokens(self, tokens: Sequence[torch.Tensor] | torch.Tensor,
                      last_index: torch.Tensor, n_sequences: int) -> None:
        """Add one batch of gathered counted tokens: ``L + 1`` tensors ``[N, D]``.

        ``tokens`` is a list of ``L + 1`` tensors or one ``[L + 1, N, D]`` tensor, in any
        floating dtype (the model's own is best: nothing is copied). ``last_index`` selects,
        among the ``N`` rows, the last counted token of each sequence. The float64 work runs
        on ``chunk_tokens`` tokens at a time, so the extra memory is the states themselves
        plus one ``chunk_tokens x (L + 1) x D`` float64 block.
        """
        big_l = self.n_layers
        if len(tokens) != big_l + 1:
            raise CompanionError(f"expected {big_l + 1} hidden states (layers 0..{big_l}), "
                                 f"got {len(tokens)}")
        n_tok = int(tokens[0].shape[0])
        if n_tok == 0:
            raise CompanionError("a batch has no counted tokens (only padding, or no position "
                                 "of the requested kind): check the inputs and `positions`")
        self.n_tokens += n_tok
        self.n_sequences += int(n_sequences)
        if self.cka_pairs:
            self._update_cka(tokens)
        is_last = torch.zeros(n_tok, dtype=torch.bool, device=tokens[0].device)
        is_last[last_index.to(is_last.device)] = True
        size = big_l + 1
        s_all = torch.zeros(size, size, dtype=torch.float64, device=is_last.device)
        s_last, cos1 = torch.zeros_like(s_all), torch.zeros_like(s_all)
        c_all = torch.zeros(size, size, dtype=torch.int64, device=is_last.device)
        c_last = torch.zeros_like(c_all)
        stacked = tokens if isinstance(tokens, torch.Tensor) else None
        for a in range(0, n_tok, self.chunk_tokens):
            b = min(a + self.chunk_tokens, n_tok)
            block = (stacked[:, a:b] if stacked is not None
                     else torch.stack([t[a:b] for t in tokens]))
            cos, ok = _pair_cosines(block)  # [n, L+1, L+1], [n, L+1]
            valid = ok[:, :, None] & ok[:, None, :]
            dist = torch.where(valid, torch.arccos(cos) / math.pi, 0.0)
            last = is_last[a:b]
            s_all += dist.sum(0)
            c_all += valid.sum(0)
            s_last += dist[last].sum(0)
            c_last += valid[last].sum(0)
            cos1 += torch.where(valid, cos, 0.0).sum(0)
        # (i, j) with j > i is the block [l, l + n) with l = i, n = j - i.
        ii, jj = np.triu_indices(size, k=1)
        nn_ = jj - ii
        s_all, c_all = s_all.cpu().numpy(), c_all.cpu().numpy()
        self.sum_all[ii, nn_] += s_all[ii, jj]
        self.cnt_all[ii, nn_] += c_all[ii, jj]
        self.sum_last[ii, nn_] += s_last.cpu().numpy()[ii, jj]
        self.cnt_last[ii, nn_] += c_last.cpu().numpy()[ii, jj]
        self.n_undefined += int((n_tok - c_all[ii, jj]).sum())
        ls = np.arange(big_l)
        self.sum_cos1 += cos1.cpu().numpy()[ls, ls + 1]

    def _update_cka(self, tokens: Sequence[torch.Tensor]) -> None:
        self._cka_n += int(tokens[0].shape[0])
        xs = {i: tokens[i].double() for i in self.cka_layers}
        for i, x in xs.items():
            s = x.sum(0)
            self._cka_sum[i] = self._cka_sum[i] + s if i in self._cka_sum else s
            key = (i, i)
            c = x.T @ x
            self._cka_cross[key] = self._cka_cross[key] + c if key in self._cka_cross else c
        for i, j in self.cka_pairs:
            if i == j:
                continue
            c = xs[j].T @ xs[i]
            key = (i, j)
            self._cka_cross[key] = self._cka_cross[key] + c if key in self._cka_cross else c

    def _centred(self, i: int, j: int) -> torch.Tensor:
        n = self._cka_n
        return self._cka_cross[(i, j)] - torch.outer(self._cka_sum[j], self._cka_sum[i]) / n

    def cka(self) -> dict[tuple[int, int], float]:
        out = {}
        if not self._cka_n:
            return out
        for i, j in self.cka_pairs:
            xx = float(torch.linalg.matrix_norm(self._centred(i, i)))
            yy = float(torch.linalg.matrix_norm(self._centred(j, j)))
            yx = float(torch.linalg.matrix_norm(self._centred(i, j))) ** 2
            out[(i, j)] = yx / (xx * yy) if xx > 0 and yy > 0 else float("nan")
        return out

    def result(self, input_kind: str, positions: str) -> RedundancyResult:
        if self.n_tokens == 0:
            raise CompanionError("no tokens were scored: give at least one non-empty input")
        with np.errstate(invalid="ignore", divide="ignore"):
            dall = np.where(self.cnt_all > 0, self.sum_all / np.maximum(self.cnt_all, 1), np.nan)
            dlast = np.where(self.cnt_last > 0, self.sum_last / np.maximum(self.cnt_last, 1),
                             np.nan)
            c1 = self.cnt_all[np.arange(self.n_layers), 1]
            bi = np.where(c1 > 0, 1.0 - self.sum_cos1 / np.maximum(c1, 1), np.nan)
        return RedundancyResult(
            n_layers=self.n_layers, distance_last=dlast, distance_all=dall, bi=bi,
            cka=self.cka(), n_tokens=self.n_tokens, n_sequences=self.n_sequences,
            n_undefined=self.n_undefined, input_kind=input_kind, positions=positions,
            count_last=self.cnt_last.copy(), count_all=self.cnt_all.copy(),
        )


def last_flat_index(counted: torch.Tensor) -> torch.Tensor:
    """Row index (within ``counted``'s True entries, row-major) of each row's last True."""
    flat = counted.reshape(-1).long()
    order = torch.cumsum(flat, 0).reshape(counted.shape) - 1
    has = counted.any(1)
    t = counted.shape[1]
    last_pos = (t - 1) - torch.flip(counted.long(), [1]).argmax(1)
    idx = order[torch.arange(counted.shape[0], device=counted.device), last_pos]
    return idx[has]


# ----------------------------------------------------------------------------------------
