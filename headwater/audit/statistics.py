"""Paired statistics of concept activations between chosen and rejected responses (method.md §6).

For a concept c (an SAE latent, or a cluster of them) and a pair i, the paired difference is
x_i = a_c(chosen_i) − a_c(rejected_i), with a_c the pooled activation (mean or max over the
response's tokens). Over the n pairs:

- Δ = mean x; sd = standard deviation of x (n − 1); effect size d = Δ / sd;
- z = Δ / (sd / √n), used for ranking only (pairs share prompts; the test is the paired t);
- p from the paired t-test with n − 1 degrees of freedom; a 95% confidence interval for Δ from
  the same t distribution;
- Benjamini–Hochberg q-values over the concepts tested (headwater's addition; the paper reports
  none). A concept is tested when x is not constant and the concept is active in at least
  ``min_active`` responses; the others get p = q = NaN;
- side badge: the fraction of chosen and of rejected responses in which the concept is active;
  "chosen" when only the chosen side reaches ``min_rate``, "rejected" likewise, "both", "neither";
- split-half robustness: pairs are split in two by a seeded hash of their id; the sign of Δ must
  agree between the halves.

Moments are merged block by block in float64 (Chan et al.'s parallel update), so memory is flat
in the number of pairs and the figures do not suffer from cancellation.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from scipy import stats

SIDES = ("chosen", "rejected", "both", "neither")


def split_half(pair_ids: Sequence[str], seed: int = 0) -> np.ndarray:
    """[n] bool: True for pairs in the first half (a seeded hash of each id; stable across runs)."""
    return np.array([hashlib.sha256(f"{seed}|{pid}".encode()).digest()[0] < 128 for pid in pair_ids], dtype=bool)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """q-values of the p-values ``p`` (NaN entries are not tested and stay NaN)."""
    q = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    if tested.size == 0:
        return q
    order = tested[np.argsort(p[tested], kind="stable")]
    m = order.size
    scaled = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return q


@dataclass
class PairedMoments:
    """Running paired-difference moments of m concepts, merged block by block (float64).

    ``top`` keeps the ``keep_top`` pairs with the largest and smallest difference per concept.
    """

    m: int
    keep_top: int = 5
    n: int = 0
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)
    half_sum: np.ndarray = field(init=False)
    half_n: np.ndarray = field(init=False)
    chosen_active: np.ndarray = field(init=False)
    rejected_active: np.ndarray = field(init=False)
    active_sum: np.ndarray = field(init=False)
    top_values: torch.Tensor = field(init=False)
    top_pairs: torch.Tensor = field(init=False)
    bottom_values: torch.Tensor = field(init=False)
    bottom_pairs: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.mean, self.m2 = np.zeros(self.m), np.zeros(self.m)
        self.half_sum, self.half_n = np.zeros((2, self.m)), np.zeros(2)
        self.chosen_active, self.rejected_active = np.zeros(self.m), np.zeros(self.m)
        self.active_sum = np.zeros(self.m)
        empty_v = torch.full((self.m, 0), -math.inf, dtype=torch.float64)
        self.top_values, self.bottom_values = empty_v, empty_v.clone()
        self.top_pairs = self.bottom_pairs = torch.zeros((self.m, 0), dtype=torch.long)

    def add(self, chosen: torch.Tensor, rejected: torch.Tensor, first_half: np.ndarray, positions: torch.Tensor) -> None:
        """Add r pairs: ``chosen``/``rejected`` [r, m] activations, ``first_half`` [r] bool,
        ``positions`` [r] dataset positions (for the top pairs)."""
        r = chosen.shape[0]
        if r == 0:
            return
        diff = chosen.double() - rejected.double()
        x = diff.numpy()
        block_mean = x.mean(axis=0)
        block_m2 = ((x - block_mean) ** 2).sum(axis=0)
        total = self.n + r
        delta = block_mean - self.mean
        self.mean = self.mean + delta * r / total
        self.m2 = self.m2 + block_m2 + delta ** 2 * self.n * r / total
        self.n = total
        for half, mask in enumerate((first_half, ~first_half)):
            self.half_sum[half] += x[mask].sum(axis=0)
            self.half_n[half] += mask.sum()
        self.chosen_active += (chosen > 0).sum(dim=0).numpy()
        self.rejected_active += (rejected > 0).sum(dim=0).numpy()
        self.active_sum += (chosen.double().clamp_min(0).sum(dim=0) + rejected.double().clamp_min(0).sum(dim=0)).numpy()
        k = min(self.keep_top, r)
        for sign in (1, -1):
            values, rows = (sign * diff.T).topk(k, dim=1)
            old_v, old_p = (self.top_values, self.top_pairs) if sign == 1 else (self.bottom_values, self.bottom_pairs)
            all_v = torch.cat([old_v, values], dim=1)
            all_p = torch.cat([old_p, positions[rows]], dim=1)
            best, where = all_v.topk(min(self.keep_top, all_v.shape[1]), dim=1)
            if sign == 1:
                self.top_values, self.top_pairs = best, all_p.gather(1, where)
            else:
                self.bottom_values, self.bottom_pairs = best, all_p.gather(1, where)


@dataclass
class ConceptStatistics:
    """Statistics of m concepts over n pairs (arrays of length m unless said).

    ``top_pairs``/``bottom_pairs`` [m, ≤5]: dataset positions of the pairs with the largest and
    smallest chosen − rejected difference (a concept's contributing pairs are the former when
    Δ ≥ 0, the latter otherwise).
    """

    names: list[str]
    n: int
    delta: np.ndarray
    sd: np.ndarray
    effect: np.ndarray
    z: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p: np.ndarray
    q: np.ndarray
    chosen_rate: np.ndarray
    rejected_rate: np.ndarray
    side: list[str]
    delta_halves: np.ndarray  # [2, m]
    split_agree: np.ndarray
    top_pairs: np.ndarray
    bottom_pairs: np.ndarray
    n_per_concept: np.ndarray | None = None  # [m] pairs behind each concept when families were joined
    typical: np.ndarray | None = None  # [m] mean of the concept's non-zero pooled values (both sides)

    def significant(self, alpha: float = 0.05) -> np.ndarray:
        """Indices of concepts with q < alpha and agreeing halves, by |d| descending."""
        keep = np.flatnonzero((self.q < alpha) & self.split_agree)
        return keep[np.argsort(-np.abs(self.effect[keep]), kind="stable")]

    def row(self, i: int) -> dict[str, object]:
        """Concept i as a plain dict (for tables, JSON and cards)."""
        return {
            "concept": self.names[i], "delta": float(self.delta[i]), "d": float(self.effect[i]), "z": float(self.z[i]),
            "ci95": [float(self.ci_low[i]), float(self.ci_high[i])], "p": float(self.p[i]), "q": float(self.q[i]),
            "side": self.side[i], "chosen_rate": float(self.chosen_rate[i]),
            "rejected_rate": float(self.rejected_rate[i]), "split_half_agree": bool(self.split_agree[i]),
            "delta_halves": [float(v) for v in self.delta_halves[:, i]],
            "top_pairs": [int(v) for v in (self.top_pairs if self.delta[i] >= 0 else self.bottom_pairs)[i] if v >= 0],
            "n_pairs": int(self.n_per_concept[i]) if self.n_per_concept is not None else self.n,
        }


def finish(moments: PairedMoments, names: Sequence[str], *, min_active: int = 5, min_rate: float = 0.05
           ) -> ConceptStatistics:
    """The statistics of accumulated moments (see the module docstring)."""
    n = moments.n
    if n < 2:
        raise ValueError(f"paired statistics need at least two pairs, got {n}")
    sd = np.sqrt(moments.m2 / (n - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        effect = np.where(sd > 0, moments.mean / sd, np.nan)
        se = sd / math.sqrt(n)
        z = np.where(se > 0, moments.mean / se, np.nan)
        halves = moments.half_sum / np.maximum(moments.half_n, 1)[:, None]
    active = moments.chosen_active + moments.rejected_active
    tested = (sd > 0) & (active >= min_active)
    p = np.full(moments.m, np.nan)
    p[tested] = 2 * stats.t.sf(np.abs(z[tested]), df=n - 1)
    half_width = stats.t.ppf(0.975, df=n - 1) * se
    chosen_rate, rejected_rate = moments.chosen_active / n, moments.rejected_active / n
    side = []
    for c, r in zip(chosen_rate >= min_rate, rejected_rate >= min_rate):
        side.append("both" if c and r else "chosen" if c else "rejected" if r else "neither")
    agree = (np.sign(halves[0]) == np.sign(halves[1])) & (halves[0] != 0) & (moments.half_n.min() > 0)
    typical = np.where(active > 0, moments.active_sum / np.maximum(active, 1), 0.0)
    return ConceptStatistics(
        list(names), n, moments.mean, sd, effect, z, moments.mean - half_width, moments.mean + half_width, p,
        benjamini_hochberg(p), chosen_rate, rejected_rate, side, halves, agree,
        moments.top_pairs.numpy(), moments.bottom_pairs.numpy(), typical=typical,
    )


def concatenate(parts: Sequence[ConceptStatistics]) -> ConceptStatistics:
    """One family of the concepts of ``parts`` (e.g. one per prompt topic): arrays joined, q-values
    recomputed over all of them together. ``n`` is the largest part's; ``n_per_concept`` each
    concept's own."""
    def join(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])

    width = max((p.top_pairs.shape[1] for p in parts), default=0)

    def pad(a: np.ndarray) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=-1)

    p_values = join("p")
    return ConceptStatistics(
        [name for p in parts for name in p.names], max(p.n for p in parts), join("delta"), join("sd"),
        join("effect"), join("z"), join("ci_low"), join("ci_high"), p_values, benjamini_hochberg(p_values),
        join("chosen_rate"), join("rejected_rate"), [s for p in parts for s in p.side],
        np.concatenate([p.delta_halves for p in parts], axis=1), join("split_agree"),
        np.concatenate([pad(p.top_pairs) for p in parts]), np.concatenate([pad(p.bottom_pairs) for p in parts]),
        np.concatenate([p.n_per_concept if p.n_per_concept is not None else np.full(len(p.names), p.n)
                        for p in parts]),
    )


__all__ = ["ConceptStatistics", "concatenate", "PairedMoments", "SIDES", "benjamini_hochberg", "finish", "split_half"]
