"""Out-of-sample validation: walk-forward and purged k-fold splits, the Probabilistic and Deflated Sharpe
Ratios, and the Probability of Backtest Overfitting (CSCV).

Conventions (all functions):

* Bars are rows of one array in time order; `times_ns` are their timestamps, int64 nanoseconds since the
  epoch, UTC (numpy datetime64 is accepted and converted). Times must be non-decreasing; equal times
  (several symbols per timestamp) are allowed.
* Splits return integer (int64, read-only) index arrays into that bar array, sorted ascending, and the
  timestamps of the first and last bar of each window (inclusive).
* Sharpe ratios are per period, never annualised: SR = mean(r) / std(r, ddof=1) of the returns as given
  (zero risk-free rate; subtract it from the returns first if wanted). Multiply by sqrt(periods per year)
  to annualise (`annualize_sharpe`); a variance of Sharpe ratios scales by periods per year.
* Skewness and kurtosis are the population moments of the returns, m3 / m2^1.5 and m4 / m2^2 with
  m_k = mean((r - mean r)^k); the kurtosis is the plain one (3 for a normal law), not the excess.
* Impossible settings raise ValueError with the reason.

Why no skfolio wrapper for the splits: `skfolio.model_selection.WalkForward` steps by the test size only
(the seed default steps 21 bars with 63-bar tests), does not give window timestamps and needs a pandas
DatetimeIndex for calendar windows; `CombinatorialPurgedCV` needs two or more test folds, purges a fixed
count of bars instead of per-observation label ends, and sizes folds differently. The splits here are
written in numpy and the tests compare them with skfolio wherever the settings coincide (and the Sharpe
statistics with `skfolio.measures`). The module itself needs only numpy and the standard library.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()


# --------------------------------------------------------------------------------------------------------------
# Walk-forward splits
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class WalkForwardFold:
    """One walk-forward fold.

    `train` and `test` are sorted int64 indices into the bar array (read-only); the `*_first_ns` /
    `*_last_ns` fields are the timestamps of the first and last bar of each window, both inclusive.
    `index` counts folds from 0 in time order among all folds that fit the data, so it stays the same
    when only the most recent folds are asked for.
    """

    index: int
    train: np.ndarray
    test: np.ndarray
    train_first_ns: int
    train_last_ns: int
    test_first_ns: int
    test_last_ns: int


def _times_array(times_ns: ArrayLike) -> np.ndarray:
    times = np.asarray(times_ns)
    if times.ndim != 1:
        raise ValueError(f"times_ns must be one-dimensional, got shape {times.shape}")
    if times.size == 0:
        raise ValueError("times_ns is empty")
    if times.dtype.kind == "M":
        if np.isnat(times).any():
            raise ValueError("times_ns contains NaT")
        times = times.astype("datetime64[ns]").astype(np.int64)
    elif times.dtype.kind in "iu":
        times = times.astype(np.int64)
    else:
        raise ValueError(f"times_ns must be int64 nanoseconds or datetime64, got dtype {times.dtype}")
    if times.size > 1 and np.any(np.diff(times) < 0):
        first = int(np.argmax(np.diff(times) < 0)) + 1
        raise ValueError(f"times_ns must be sorted (non-decreasing); bar {first} is earlier than bar {first - 1}")
    return times


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _fold(index: int, times: np.ndarray, train: tuple[int, int], test: tuple[int, int]) -> WalkForwardFold:
    return WalkForwardFold(
        index=index,
        train=_read_only(np.arange(train[0], train[1], dtype=np.int64)),
        test=_read_only(np.arange(test[0], test[1], dtype=np.int64)),
        train_first_ns=int(times[train[0]]),
        train_last_ns=int(times[train[1] - 1]),
        test_first_ns=int(times[test[0]]),
        test_last_ns=int(times[test[1] - 1]),
    )


def _most_recent(n_fit: int, n_folds: int | None, what: str) -> range:
    if n_folds is None:
        return range(n_fit)
    if n_folds > n_fit:
        raise ValueError(f"{n_folds} folds asked for but only {n_fit} fit in the data ({what}); pass n_folds=None "
                         "for all that fit or shorten the windows")  # fmt: skip
    return range(n_fit - n_folds, n_fit)


def walk_forward_bars(
    times_ns: ArrayLike,
    *,
    train_bars: int = 252,
    test_bars: int = 63,
    step_bars: int = 21,
    gap_bars: int = 0,
    anchored: bool = False,
    n_folds: int | None = None,
) -> tuple[WalkForwardFold, ...]:
    """Rolling (or anchored) walk-forward folds counted in bars.

    Fold k (k = 0, 1, ...) trains on bars [k*step, k*step + train) (anchored: [0, k*step + train)), skips
    `gap_bars` bars (purge/embargo), and tests on the next `test_bars` bars. Windows are aligned to the
    first bar, so folds stay the same as data is appended; only folds whose whole test window fits are
    made, which can leave up to step - 1 trailing bars untested. Test windows overlap when
    step < test. With step == test and the same gap this equals skfolio's
    `WalkForward(test_size, train_size, purged_size=gap, expand_train=anchored)`.

    `n_folds=None` gives every fold that fits; an integer gives the most recent `n_folds` of them and
    raises ValueError if fewer fit. Also raises for non-positive sizes, a negative gap, unsorted times,
    or fewer than train + gap + test bars.
    """
    times = _times_array(times_ns)
    train = _positive_int(train_bars, "train_bars")
    test = _positive_int(test_bars, "test_bars")
    step = _positive_int(step_bars, "step_bars")
    gap = _non_negative_int(gap_bars, "gap_bars")
    if n_folds is not None:
        n_folds = _positive_int(n_folds, "n_folds")
    n = times.size
    if train + gap + test > n:
        raise ValueError(f"one fold needs train_bars + gap_bars + test_bars = {train + gap + test} bars, "
                         f"the data has {n}")  # fmt: skip
    n_fit = (n - train - gap - test) // step + 1
    folds = []
    for k in _most_recent(n_fit, n_folds, f"{n} bars"):
        train_end = k * step + train
        test_start = train_end + gap
        folds.append(_fold(k, times, (0 if anchored else k * step, train_end), (test_start, test_start + test)))
    return tuple(folds)


def _month_start_ns(months: np.ndarray) -> np.ndarray:
    return months.astype("datetime64[ns]").astype(np.int64)


def walk_forward_months(
    times_ns: ArrayLike,
    *,
    train_months: int = 12,
    test_months: int = 1,
    step_months: int = 1,
    gap_bars: int = 0,
    anchored: bool = False,
    n_folds: int | None = 12,
) -> tuple[WalkForwardFold, ...]:
    """Walk-forward folds in calendar months (UTC) of the bar timestamps.

    Only complete months are used: a month counts if the data starts at or before its first instant
    (00:00 UTC on the 1st) and reaches the first instant of the next month, so a partial first month
    and the month of the last bar (usually still running) are never a window. Folds step through the
    complete months: fold k tests months [train + k*step, train + k*step + test) of them and trains on
    the `train_months` months just before (anchored: on every bar from the first one, partial month
    included). A month window holds the bars with start <= time < next month's start, so bars that share
    a timestamp always fall on the same side. `gap_bars` bars are dropped from the end of each training
    window (the months stay fixed). With step == test this equals skfolio's
    `WalkForward(test_months, train_months, freq="MS", purged_size=gap, expand_train=anchored)`.

    `n_folds=12` (the default) gives the 12 most recent folds that fit, since validation for promotion
    should look at the latest regime; `None` gives all; ValueError if fewer than `n_folds` fit. Also
    raises for non-positive sizes, unsorted times, a fold with no test bars (a month missing from the
    data) or no training bars left after the gap.
    """
    times = _times_array(times_ns)
    train = _positive_int(train_months, "train_months")
    test = _positive_int(test_months, "test_months")
    step = _positive_int(step_months, "step_months")
    gap = _non_negative_int(gap_bars, "gap_bars")
    if n_folds is not None:
        n_folds = _positive_int(n_folds, "n_folds")
    first_month = times[:1].astype("datetime64[ns]").astype("datetime64[M]")[0]
    last_month = times[-1:].astype("datetime64[ns]").astype("datetime64[M]")[0]
    if _month_start_ns(np.array([first_month]))[0] < times[0]:
        first_month += 1
    # Month starts that lie inside the data; consecutive pairs bound the complete months.
    starts = _month_start_ns(np.arange(first_month, last_month + 1))
    n_complete = max(starts.size - 1, 0)
    if train + test > n_complete:
        raise ValueError(f"one fold needs train_months + test_months = {train + test} complete months, the data "
                         f"has {n_complete}")  # fmt: skip
    bounds = np.searchsorted(times, starts, side="left")
    n_fit = (n_complete - train - test) // step + 1
    folds = []
    for k in _most_recent(n_fit, n_folds, f"{n_complete} complete months"):
        j = train + k * step
        test_start, test_end = int(bounds[j]), int(bounds[j + test])
        train_start, train_end = (0 if anchored else int(bounds[j - train])), test_start - gap
        month = np.datetime_as_string(starts[j].astype("datetime64[ns]"), unit="M")
        if test_end <= test_start:
            raise ValueError(f"the test window starting {month} has no bars")
        if train_end <= train_start:
            raise ValueError(f"the training window before {month} has no bars left after gap_bars={gap}")
        folds.append(_fold(k, times, (train_start, train_end), (test_start, test_end)))
    return tuple(folds)


# --------------------------------------------------------------------------------------------------------------
# Purged k-fold with embargo
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PurgedFold:
    """One purged k-fold split: sorted int64 indices (read-only) of the observations to train and test on,
    and of those taken out of training by purging (label overlaps the test labels) or by the embargo."""

    index: int
    train: np.ndarray
    test: np.ndarray
    purged: np.ndarray
    embargoed: np.ndarray


def label_end_index(times_ns: ArrayLike, label_end_ns: ArrayLike) -> np.ndarray:
    """The index of the last bar at or before each observation's label end time.

    Observation i is bar i; its label covers the closed time interval [times_ns[i], label_end_ns[i]], and
    that is the same as the bar interval [i, result[i]] for overlap tests, ties in time included. Raises
    ValueError if shapes differ or a label ends before its own bar.
    """
    times = _times_array(times_ns)
    ends = np.asarray(label_end_ns)
    ends = ends.astype("datetime64[ns]").astype(np.int64) if ends.dtype.kind == "M" else ends.astype(np.int64)
    if ends.shape != times.shape:
        raise ValueError(f"label_end_ns has shape {ends.shape}, times_ns {times.shape}")
    if np.any(ends < times):
        raise ValueError(f"label {int(np.argmax(ends < times))} ends before its own bar")
    return np.searchsorted(times, ends, side="right").astype(np.int64) - 1


def purged_kfold(
    n_observations: int,
    n_folds: int = 5,
    *,
    horizon: int = 0,
    label_end: ArrayLike | None = None,
    embargo: float = 0.01,
) -> tuple[PurgedFold, ...]:
    """Purged k-fold cross-validation with an embargo (López de Prado, AFML ch. 7).

    The observations 0..n-1 are cut into `n_folds` contiguous test folds, in order, sized as
    `np.array_split` (the first n % k folds are one longer). Observation i's label spans the closed bar
    interval [i, e_i]: e_i = i + horizon (`horizon` bars forward), or `label_end[i]` given explicitly (from
    times: `label_end_index`). For each test fold, a training observation is

    * purged if its label interval shares any bar with the label interval of any test observation (closed
      intervals, so touching at one bar counts; this is the conservative reading of AFML), and
    * embargoed if it lies within the floor(embargo * n) bars right after the last bar of the test labels
      (AFML's h = int(pct * T), counted from the end of the test labels as in AFML's PurgedKFold).

    With `horizon=h` and n divisible by k this equals skfolio's
    `CombinatorialPurgedCV(purged_size=h, embargo_size=floor(embargo * n))` with one test fold.

    Raises ValueError for n_folds < 2, fewer observations than folds, a negative horizon, both horizon and
    label_end, label ends before their own observation, an embargo outside [0, 1), or a fold left with
    nothing to train on.
    """
    n = _positive_int(n_observations, "n_observations")
    k = _positive_int(n_folds, "n_folds")
    horizon = _non_negative_int(horizon, "horizon")
    if k < 2:
        raise ValueError(f"n_folds must be at least 2, got {k}")
    if k > n:
        raise ValueError(f"{k} folds need at least {k} observations, got {n}")
    if not 0.0 <= float(embargo) < 1.0:
        raise ValueError(f"embargo is a fraction of the observations in [0, 1), got {embargo!r}")
    idx = np.arange(n, dtype=np.int64)
    if label_end is None:
        ends = np.minimum(idx + horizon, n - 1)
    else:
        if horizon:
            raise ValueError("give either horizon or label_end, not both")
        ends = np.asarray(label_end)
        if ends.shape != (n,) or ends.dtype.kind not in "iu":
            raise ValueError(f"label_end must be {n} integer bar indices, got shape {ends.shape} dtype {ends.dtype}")
        ends = ends.astype(np.int64)
        if np.any(ends < idx):
            raise ValueError(f"label_end[{int(np.argmax(ends < idx))}] is before its own observation")
        ends = np.minimum(ends, n - 1)
    n_embargo = math.floor(float(embargo) * n)
    # Bounds of the folds: as np.array_split.
    sizes = np.full(k, n // k, dtype=np.int64)
    sizes[: n % k] += 1
    edges = np.concatenate(([0], np.cumsum(sizes)))
    folds = []
    for f in range(k):
        start, stop = int(edges[f]), int(edges[f + 1])
        labels_end = int(ends[start:stop].max())
        # Labels start at their own bar, so the union of the test labels is [start, labels_end]; a training
        # label [j, e_j] meets it iff j <= labels_end and e_j >= start.
        outside = (idx < start) | (idx >= stop)
        purged = outside & (idx <= labels_end) & (ends >= start)
        embargoed = (idx > labels_end) & (idx <= labels_end + n_embargo)
        train = outside & ~purged & ~embargoed
        if not train.any():
            raise ValueError(f"fold {f} has no training observations left after purging and the embargo")
        folds.append(PurgedFold(
            index=f,
            train=_read_only(np.flatnonzero(train)),
            test=_read_only(idx[start:stop].copy()),
            purged=_read_only(np.flatnonzero(purged)),
            embargoed=_read_only(np.flatnonzero(embargoed)),
        ))  # fmt: skip
    return tuple(folds)


# --------------------------------------------------------------------------------------------------------------
# Probabilistic and Deflated Sharpe Ratios
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SharpeStats:
    """What the PSR needs of a return series: the per-period Sharpe ratio, the number of returns, and
    their skewness and (plain, not excess) kurtosis. Build it from returns with `sharpe_stats`, or by hand
    from published numbers (a normal law has skewness 0, kurtosis 3)."""

    sharpe: float
    n_obs: int
    skewness: float = 0.0
    kurtosis: float = 3.0


@dataclass(frozen=True)
class DeflatedSharpe:
    """The Deflated Sharpe Ratio of a selected strategy.

    `dsr` = PSR(`sharpe_threshold`), the probability that the true Sharpe ratio exceeds the expected
    maximum Sharpe of `n_trials` skill-less trials whose Sharpe ratios have variance `sharpe_variance`;
    `psr` = PSR(0) for comparison. All Sharpe values per period. `selected` is the column chosen by
    `deflated_sharpe_ratio_of_trials` (None otherwise).
    """

    dsr: float
    psr: float
    sharpe: float
    sharpe_threshold: float
    n_obs: int
    n_trials: float
    sharpe_variance: float
    skewness: float
    kurtosis: float
    selected: int | None = None


def annualize_sharpe(sharpe: float, periods_per_year: float) -> float:
    """A per-period Sharpe ratio times sqrt(periods_per_year) (252 for daily bars of US equities)."""
    if not periods_per_year > 0:
        raise ValueError(f"periods_per_year must be positive, got {periods_per_year!r}")
    return float(sharpe) * math.sqrt(periods_per_year)


def deannualize_sharpe(annual_sharpe: float, periods_per_year: float) -> float:
    """An annualised Sharpe ratio divided by sqrt(periods_per_year): the per-period ratio used here.
    (A variance of annualised Sharpe ratios is divided by periods_per_year.)"""
    if not periods_per_year > 0:
        raise ValueError(f"periods_per_year must be positive, got {periods_per_year!r}")
    return float(annual_sharpe) / math.sqrt(periods_per_year)


def _returns_1d(returns: ArrayLike) -> np.ndarray:
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"returns must be one-dimensional, got shape {r.shape}")
    if r.size < 2:
        raise ValueError(f"need at least 2 returns, got {r.size}")
    if not np.all(np.isfinite(r)):
        raise ValueError("returns contain NaN or infinity")
    return r


def sharpe_stats(returns: ArrayLike) -> SharpeStats:
    """Per-period Sharpe ratio (mean / std with ddof=1), count, population skewness and plain kurtosis of
    a 1-D return series. Raises ValueError for fewer than 2 returns, non-finite values or constant returns."""
    r = _returns_1d(returns)
    centred = r - r.mean()
    m2 = float(np.mean(centred**2))
    if m2 <= 0.0:
        raise ValueError("constant returns have no Sharpe ratio")
    return SharpeStats(
        sharpe=float(r.mean() / np.std(r, ddof=1)),
        n_obs=int(r.size),
        skewness=float(np.mean(centred**3) / m2**1.5),
        kurtosis=float(np.mean(centred**4) / m2**2),
    )


def _as_stats(x: SharpeStats | ArrayLike) -> SharpeStats:
    return x if isinstance(x, SharpeStats) else sharpe_stats(x)


def probabilistic_sharpe_ratio(x: SharpeStats | ArrayLike, benchmark: float = 0.0) -> float:
    """PSR(SR*) = Phi((SR - SR*) sqrt(T - 1) / sqrt(1 - skew SR + (kurt - 1) / 4 SR^2)) (Bailey & López de
    Prado 2012): the probability that the true per-period Sharpe ratio exceeds `benchmark` (SR*, per
    period), given T returns with that skewness and plain kurtosis.

    `x` is a 1-D array of per-period returns or a `SharpeStats`. Raises ValueError for T < 2, moments no
    distribution has (kurtosis < 1 + skewness^2) or a non-positive variance term.
    """
    s = _as_stats(x)
    if s.n_obs < 2:
        raise ValueError(f"need at least 2 observations, got {s.n_obs}")
    if s.kurtosis < 1.0 + s.skewness**2 - 1e-9:
        raise ValueError(f"kurtosis {s.kurtosis} < 1 + skewness^2: no distribution has these moments "
                         "(is it the excess kurtosis? add 3)")  # fmt: skip
    variance = 1.0 - s.skewness * s.sharpe + (s.kurtosis - 1.0) / 4.0 * s.sharpe**2
    if not variance > 0.0:
        raise ValueError("the Sharpe ratio's variance term is not positive")
    z = (s.sharpe - benchmark) * math.sqrt(s.n_obs - 1) / math.sqrt(variance)
    return _NORMAL.cdf(z)


def expected_max_sharpe(n_trials: float, sharpe_variance: float, mean_sharpe: float = 0.0) -> float:
    """E[max SR] of `n_trials` independent trials whose Sharpe ratios are normal with variance
    `sharpe_variance` and mean `mean_sharpe` (the DSR's null: 0), by the extreme-value approximation

        mean + sqrt(V) ((1 - g) Phi^-1(1 - 1/N) + g Phi^-1(1 - 1/(N e))),  g = Euler-Mascheroni constant.

    Per period like the variance. `n_trials` may be fractional (an effective number of trials); with one
    trial or no variance there is no selection and the mean is returned. Raises ValueError for
    n_trials < 1 or a negative variance.
    """
    if not (math.isfinite(n_trials) and n_trials >= 1):
        raise ValueError(f"n_trials must be at least 1, got {n_trials!r}")
    if not (math.isfinite(sharpe_variance) and sharpe_variance >= 0):
        raise ValueError(f"sharpe_variance must be non-negative, got {sharpe_variance!r}")
    if n_trials == 1 or sharpe_variance == 0:
        return float(mean_sharpe)
    z = (1.0 - EULER_GAMMA) * _NORMAL.inv_cdf(1.0 - 1.0 / n_trials) + EULER_GAMMA * _NORMAL.inv_cdf(
        1.0 - 1.0 / (n_trials * math.e)
    )
    return float(mean_sharpe + math.sqrt(sharpe_variance) * z)


def deflated_sharpe_ratio(x: SharpeStats | ArrayLike, n_trials: float, sharpe_variance: float) -> DeflatedSharpe:
    """DSR (Bailey & López de Prado 2014) = PSR(SR0) with SR0 = `expected_max_sharpe(n_trials, sharpe_variance)`.

    `x`: the selected strategy's 1-D per-period returns or its `SharpeStats`. `sharpe_variance`: the
    variance of the per-period Sharpe ratios across all trials (an annualised variance divided by periods
    per year). A DSR above 0.95 rejects "the best of N skill-less trials" at 5%.
    """
    s = _as_stats(x)
    threshold = expected_max_sharpe(n_trials, sharpe_variance)
    return DeflatedSharpe(
        dsr=probabilistic_sharpe_ratio(s, threshold),
        psr=probabilistic_sharpe_ratio(s, 0.0),
        sharpe=float(s.sharpe),
        sharpe_threshold=threshold,
        n_obs=int(s.n_obs),
        n_trials=float(n_trials),
        sharpe_variance=float(sharpe_variance),
        skewness=float(s.skewness),
        kurtosis=float(s.kurtosis),
    )


def deflated_sharpe_ratio_of_trials(trial_returns: ArrayLike, selected: int | None = None) -> DeflatedSharpe:
    """DSR of one column of a T x N matrix of per-period returns of N trials (all that were tried).

    The column is `selected` or, by default, the one with the highest Sharpe ratio; N = number of columns
    and the variance is the sample variance (ddof=1) of the N column Sharpe ratios. Columns must be
    finite and not constant; N >= 2.
    """
    m = _matrix(trial_returns, "trial_returns")
    if m.shape[1] < 2:
        raise ValueError("need at least 2 trials (columns)")
    std = m.std(axis=0, ddof=1)
    if np.any(std == 0):
        raise ValueError(f"trial {int(np.argmax(std == 0))} has constant returns")
    sharpes = m.mean(axis=0) / std
    chosen = int(np.argmax(sharpes)) if selected is None else int(selected)
    if not 0 <= chosen < m.shape[1]:
        raise ValueError(f"selected must be a column in [0, {m.shape[1]}), got {selected!r}")
    result = deflated_sharpe_ratio(m[:, chosen], m.shape[1], float(np.var(sharpes, ddof=1)))
    return replace(result, selected=chosen)


# --------------------------------------------------------------------------------------------------------------
# Probability of Backtest Overfitting (CSCV)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PBOResult:
    """Outcome of CSCV over all C(S, S/2) splits of S blocks into in-sample (IS) and out-of-sample (OOS) halves.

    Per split c (arrays of length `n_combinations`, in `itertools.combinations(range(S), S // 2)` order of
    the IS blocks): `chosen[c]` the variant with the best IS metric, `is_performance[c]` and
    `oos_performance[c]` its metric IS and OOS, `relative_rank[c]` = omega = its OOS rank among the N
    variants (1 = worst, average rank for ties) / (N + 1), and `logits[c]` = lambda = ln(omega / (1 - omega)).

    `pbo` = share of lambda <= 0 (the IS-best ends at or below the OOS median). `degradation_slope` and
    `degradation_intercept`: least squares of OOS on IS performance of the chosen (NaN if IS is constant);
    `prob_oos_loss`: share of splits where the chosen's OOS metric is below 0.
    """

    pbo: float
    logits: np.ndarray
    relative_rank: np.ndarray
    chosen: np.ndarray
    is_performance: np.ndarray
    oos_performance: np.ndarray
    degradation_slope: float
    degradation_intercept: float
    prob_oos_loss: float
    n_blocks: int
    n_combinations: int
    n_variants: int
    n_observations: int


def _matrix(values: ArrayLike, name: str) -> np.ndarray:
    m = np.asarray(values, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"{name} must be a T x N matrix, got shape {m.shape}")
    if m.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows, got {m.shape[0]}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} contains NaN or infinity")
    return m


Metric = Literal["sharpe", "mean"] | Callable[[np.ndarray], np.ndarray]
_CHUNK = 2048  # halves per vectorised step, to bound the temporaries at a few x 2048 x N floats


def _ranks(values: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    picked = values[np.arange(values.shape[0]), chosen][:, None]
    below = np.sum(values < picked, axis=1)
    equal = np.sum(values == picked, axis=1)
    return below + (equal + 1) / 2.0


def probability_of_backtest_overfitting(
    performance: ArrayLike, n_blocks: int = 16, metric: Metric = "sharpe"
) -> PBOResult:
    """Probability of Backtest Overfitting by combinatorially symmetric cross-validation (Bailey, Borwein,
    López de Prado & Zhu 2015).

    `performance`: T x N per-period returns (or any per-period performance) of N strategy variants, rows
    in time order. The rows are cut into `n_blocks` (S, even) contiguous blocks of T // S rows; the first
    T % S rows (the oldest) are dropped so blocks are equal as in the paper. Every choice of S/2 blocks is
    an IS set and the rest its OOS set. `metric` ranks variants on a set of rows: "sharpe" (mean / std,
    ddof=1, per period), "mean", or a function from a rows x N array to N values (called once per half,
    C(S, S/2) times, in a Python loop). NaN metric values rank lowest; ties share their average rank.

    The built-in metrics are computed from per-block sums for all halves at once; S = 16 (12,870
    splits) with N = 100, T = 2000 takes a few tens of milliseconds and holds a C(S, S/2) x N matrix
    of metric values (10 MB).

    Raises ValueError for odd or < 2 blocks, fewer than 2 rows per block, fewer than 2 variants,
    non-finite values or an unknown metric.
    """
    m = _matrix(performance, "performance")
    s = _positive_int(n_blocks, "n_blocks")
    if s < 2 or s % 2:
        raise ValueError(f"n_blocks must be even and at least 2, got {s}")
    t, n = m.shape
    if n < 2:
        raise ValueError(f"need at least 2 variants (columns), got {n}")
    size = t // s
    if size < 2:
        raise ValueError(f"{s} blocks need at least {2 * s} rows (2 per block), got {t}")
    if not (callable(metric) or metric in ("sharpe", "mean")):
        raise ValueError(f"metric must be 'sharpe', 'mean' or a function, got {metric!r}")
    m = m[t - s * size :]
    combos = np.array(list(itertools.combinations(range(s), s // 2)), dtype=np.int64)
    n_comb = combos.shape[0]
    # Every split's OOS half is another split's IS half, so the metric of each half is computed once
    # (values[c] on the blocks of combos[c]) and the OOS values of split c are values[complement[c]].
    masks = (1 << combos).sum(axis=1)
    order = np.argsort(masks)
    complement = order[np.searchsorted(masks, (1 << s) - 1 - masks, sorter=order)]
    blocks = m.reshape(s, size, n)
    values = np.empty((n_comb, n), dtype=np.float64)
    if callable(metric):
        for c in range(n_comb):
            result = np.asarray(metric(blocks[combos[c]].reshape(-1, n)), dtype=np.float64)
            if result.shape != (n,):
                raise ValueError(f"the metric must return {n} values (one per variant), got shape {result.shape}")
            values[c] = result
    else:
        # Centring each column first keeps the sum-of-squares variance accurate; the metric adds the mean back.
        centre = m.mean(axis=0)
        centred = blocks - centre
        sums = centred.sum(axis=1)  # S x N
        squares = (centred * centred).sum(axis=1)
        for lo in range(0, n_comb, _CHUNK):
            part = combos[lo : lo + _CHUNK]
            # Adding up the S/2 blocks' sums rather than a 0/1 matrix product: BLAS threads made that
            # several times slower on a busy machine.
            half_sum, half_sq = sums[part[:, 0]], squares[part[:, 0]]
            for j in range(1, s // 2):
                half_sum += sums[part[:, j]]
                half_sq += squares[part[:, j]]
            values[lo : lo + _CHUNK] = _metric_from_sums(half_sum, half_sq, size * (s // 2), centre, metric)
    values[np.isnan(values)] = -np.inf

    chosen = np.argmax(values, axis=1)
    at = np.arange(n_comb)
    is_perf = values[at, chosen]
    oos_perf = np.empty(n_comb, dtype=np.float64)
    rank = np.empty(n_comb, dtype=np.float64)
    for lo in range(0, n_comb, _CHUNK):
        oos = values[complement[lo : lo + _CHUNK]]
        best = chosen[lo : lo + _CHUNK]
        oos_perf[lo : lo + _CHUNK] = oos[np.arange(best.size), best]
        rank[lo : lo + _CHUNK] = _ranks(oos, best)

    omega = rank / (n + 1)
    logits = np.log(omega / (1.0 - omega))
    finite = np.isfinite(is_perf) & np.isfinite(oos_perf)
    slope = intercept = float("nan")
    if finite.sum() >= 2 and np.ptp(is_perf[finite]) > 0:
        slope, intercept = (float(v) for v in np.polyfit(is_perf[finite], oos_perf[finite], 1))
    return PBOResult(
        pbo=float(np.mean(logits <= 0.0)),
        logits=_read_only(logits),
        relative_rank=_read_only(omega),
        chosen=_read_only(chosen),
        is_performance=_read_only(is_perf),
        oos_performance=_read_only(oos_perf),
        degradation_slope=slope,
        degradation_intercept=intercept,
        prob_oos_loss=float(np.mean(oos_perf < 0.0)),
        n_blocks=s,
        n_combinations=n_comb,
        n_variants=n,
        n_observations=s * size,
    )


def _metric_from_sums(total: np.ndarray, squares: np.ndarray, rows: int, centre: np.ndarray, metric: str) -> np.ndarray:
    mean = total / rows + centre
    if metric == "mean":
        return mean
    variance = np.maximum(squares - total * total / rows, 0.0) / (rows - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return mean / np.sqrt(variance)
