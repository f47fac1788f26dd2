"""Confidence intervals of the set-level metrics: Wilson for proportions, percentile bootstrap, AUROC.

Every interval is seeded (same seed, same interval) and uses N_RESAMPLES resamples unless told otherwise
(docs/persona-evaluation.md, "Scorer arithmetic").

>>> [round(x, 4) for x in wilson_ci(9, 10)]
[0.5958, 0.9821]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np

from personatune.gates import Measurement

N_RESAMPLES = 1000
"""Bootstrap resamples for every interval in this module (percentile method, seeded)."""


def _z(alpha: float) -> float:
    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


def auroc(scores: list[float], labels: list[int]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties count half). None without both classes."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=int)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def auroc_ci(
    scores: list[float], labels: list[int], n_resamples: int = N_RESAMPLES, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of `auroc`, resampling positives and negatives separately (class sizes fixed).

    Returns:
        (low, high) at level 1 - alpha, or None without both classes.
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=int)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    rng = np.random.default_rng(seed)
    ip = rng.integers(0, len(pos), size=(n_resamples, len(pos)))
    ineg = rng.integers(0, len(neg), size=(n_resamples, len(neg)))
    negs = np.sort(neg[ineg], axis=1)
    stats = np.empty(n_resamples)
    for b in range(n_resamples):  # Mann-Whitney U by binary search: O(n log n) memory-light per resample
        lo = np.searchsorted(negs[b], pos[ip[b]], side="left")
        hi = np.searchsorted(negs[b], pos[ip[b]], side="right")
        stats[b] = (lo.sum() + 0.5 * (hi - lo).sum()) / (len(pos) * len(neg))
    return float(np.quantile(stats, alpha / 2)), float(np.quantile(stats, 1 - alpha / 2))


def wilson_ci(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n.

    Args:
        k: successes (0 <= k <= n).
        n: trials.
        alpha: 1 - confidence level (0.05 -> 95%).

    Returns:
        (low, high); (0.0, 1.0) when n == 0 (nothing is known).

    Raises:
        ValueError: k outside [0, n].
    """
    if n == 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"wilson_ci needs 0 <= k <= n; got k={k}, n={n}")
    z = _z(alpha)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # k == 0 (k == n) gives exactly 0 (1) analytically; set it so rounding error does not show.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat` over the rows of `values`.

    Args:
        values: the sample, shape (n,) or (n, d); rows are resampled with replacement.
        stat: statistic of a resampled array (same shape convention as `values`).
        n_resamples: number of resamples.
        seed: seed of the numpy generator (same seed, same interval).
        alpha: 1 - confidence level.

    Returns:
        (low, high) percentiles alpha/2 and 1 - alpha/2 of the resampled statistic; (nan, nan) for an
        empty sample.
    """
    v = np.asarray(values, dtype=float)
    n = v.shape[0] if v.ndim else 0
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    if stat is np.mean and v.ndim == 1:
        stats = v[idx].mean(axis=1)  # vectorised fast path for the common case
    else:
        stats = np.array([stat(v[i]) for i in idx], dtype=float)
    lo, hi = np.nanquantile(stats, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def bootstrap_diff_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    alpha: float = 0.05,
    paired: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap interval of stat(a) - stat(b) (e.g. final minus baseline consistency rate).

    Args:
        a: first sample (e.g. 1/0 consistent flags of the final model).
        b: second sample (e.g. those of the baseline).
        stat: statistic of one sample.
        n_resamples: number of resamples.
        seed: generator seed.
        alpha: 1 - confidence level.
        paired: True when a[i] and b[i] come from the same prompt: indices are resampled jointly.
            False: a and b are resampled independently.

    Returns:
        (low, high); (nan, nan) when either sample is empty.

    Raises:
        ValueError: paired=True with samples of different lengths.
    """
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(va) == 0 or len(vb) == 0:
        return (math.nan, math.nan)
    if paired and len(va) != len(vb):
        raise ValueError(f"paired bootstrap needs equal lengths; got {len(va)} and {len(vb)}")
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(va), size=(n_resamples, len(va)))
    ib = ia if paired else rng.integers(0, len(vb), size=(n_resamples, len(vb)))
    if stat is np.mean and va.ndim == 1 and vb.ndim == 1:
        diffs = va[ia].mean(axis=1) - vb[ib].mean(axis=1)
    else:
        diffs = np.array([stat(va[i]) - stat(vb[j]) for i, j in zip(ia, ib)], dtype=float)
    lo, hi = np.nanquantile(diffs, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def rate_difference(
    a: Sequence[bool], b: Sequence[bool], paired: bool = False, seed: int = 0, n_resamples: int = N_RESAMPLES
) -> Measurement:
    """mean(a) - mean(b) of two sets of flags with its bootstrap 95% interval (persona improvement).

    Args:
        a: flags of the first set (e.g. `consistent` of the final model's responses).
        b: flags of the second set (e.g. the baseline's).
        paired: resample a[i], b[i] jointly (same prompts).
        seed: generator seed.
        n_resamples: number of resamples.

    Returns:
        Measurement(value, n=len(a) + len(b), ci); value nan when either set is empty.
    """
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(va) == 0 or len(vb) == 0:
        return Measurement(math.nan, n=len(va) + len(vb), ci=None)
    ci = bootstrap_diff_ci(va, vb, n_resamples=n_resamples, seed=seed, paired=paired)
    return Measurement(float(va.mean() - vb.mean()), n=len(va) + len(vb), ci=ci)
