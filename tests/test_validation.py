"""Out-of-sample validation: splits against skfolio and brute-force definitions, PSR/DSR against the paper's
worked example, skfolio.measures and Monte Carlo, PBO against a plain loop over the CSCV splits."""

from __future__ import annotations

import itertools
import math
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st
from skfolio import measures as skm
from skfolio.model_selection import CombinatorialPurgedCV, WalkForward

from utp.core import validation as v
from utp.storage.datasets import dataset, load_sp500_index


@pytest.fixture(scope="module")
def goog_times() -> np.ndarray:
    return dataset("goog").bars()["event_time_ns"].to_numpy()


@pytest.fixture(scope="module")
def goog_returns() -> np.ndarray:
    return dataset("goog").bars()["close"].pct_change().drop_nulls().to_numpy()


@pytest.fixture(scope="module")
def index_times() -> np.ndarray:
    """S&P 500 index days, 1990-01-02 .. 2022-12-28."""
    return load_sp500_index()["event_time_ns"].to_numpy()


def ns(year: int, month: int, day: int = 1) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp()) * 10**9


def month_of(t_ns: int) -> tuple[int, int]:
    d = datetime.fromtimestamp(t_ns / 1e9, UTC)
    return d.year, d.month


def skfolio_folds(cv: WalkForward, x: object) -> list[tuple[list[int], list[int]]]:
    return [(list(train), list(test)) for train, test in cv.split(x)]


def our_folds(folds: tuple[v.WalkForwardFold, ...]) -> list[tuple[list[int], list[int]]]:
    return [(list(f.train), list(f.test)) for f in folds]


# ---------------------------------------------------------------------------------------------------------------
# Walk-forward in bars
# ---------------------------------------------------------------------------------------------------------------


def test_walk_forward_bars_seed_defaults_on_real_bars(goog_times: np.ndarray) -> None:
    folds = v.walk_forward_bars(goog_times)
    n = goog_times.size
    assert n == 2148 and len(folds) == (n - 252 - 63) // 21 + 1 == 88
    for k, f in enumerate(folds):
        assert f.index == k
        assert f.train.tolist() == list(range(21 * k, 21 * k + 252))
        assert f.test.tolist() == list(range(21 * k + 252, 21 * k + 315))
        assert (f.train_first_ns, f.train_last_ns) == (goog_times[f.train[0]], goog_times[f.train[-1]])
        assert (f.test_first_ns, f.test_last_ns) == (goog_times[f.test[0]], goog_times[f.test[-1]])
    # The last fold ends within one step of the data's end.
    assert n - 21 < folds[-1].test[-1] + 1 <= n


@pytest.mark.parametrize(("gap", "anchored"), [(0, False), (5, False), (0, True), (3, True)])
def test_walk_forward_bars_equal_skfolio_when_step_is_test(goog_times: np.ndarray, gap: int, anchored: bool) -> None:
    ours = v.walk_forward_bars(goog_times, train_bars=252, test_bars=63, step_bars=63, gap_bars=gap, anchored=anchored)
    theirs = skfolio_folds(WalkForward(63, 252, purged_size=gap, expand_train=anchored), np.zeros((goog_times.size, 1)))
    assert len(ours) > 20 and our_folds(ours) == theirs


def test_walk_forward_bars_gap_anchoring_and_most_recent_folds() -> None:
    times = np.arange(100, dtype=np.int64) * 60 * 10**9
    every = v.walk_forward_bars(times, train_bars=30, test_bars=10, step_bars=7, gap_bars=2, anchored=True)
    assert len(every) == (100 - 30 - 2 - 10) // 7 + 1 == 9
    f = every[2]
    assert f.train.tolist() == list(range(44)) and f.test.tolist() == list(range(46, 56))
    last3 = v.walk_forward_bars(times, train_bars=30, test_bars=10, step_bars=7, gap_bars=2, anchored=True, n_folds=3)
    assert [f.index for f in last3] == [6, 7, 8]
    assert our_folds(last3) == our_folds(every[-3:])
    with pytest.raises(ValueError, match="10 folds asked for but only 9 fit"):
        v.walk_forward_bars(times, train_bars=30, test_bars=10, step_bars=7, gap_bars=2, n_folds=10)


def test_folds_are_read_only(goog_times: np.ndarray) -> None:
    fold = v.walk_forward_bars(goog_times)[0]
    with pytest.raises(ValueError, match="read-only"):
        fold.train[0] = 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_bars": 0}, "train_bars must be a positive integer"),
        ({"test_bars": -1}, "test_bars must be a positive integer"),
        ({"step_bars": 2.5}, "step_bars must be a positive integer"),
        ({"gap_bars": -1}, "gap_bars must be a non-negative integer"),
        ({"train_bars": 80, "test_bars": 20, "gap_bars": 1}, "needs .* = 101 bars, the data has 100"),
        ({"n_folds": 0}, "n_folds must be a positive integer"),
    ],
)  # fmt: skip
def test_walk_forward_bars_refuses_impossible_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        v.walk_forward_bars(np.arange(100), **kwargs)


def test_times_must_be_sorted_one_dimensional_integers() -> None:
    with pytest.raises(ValueError, match="bar 3 is earlier than bar 2"):
        v.walk_forward_bars(np.array([1, 2, 3, 2, 5]), train_bars=2, test_bars=1, step_bars=1)
    with pytest.raises(ValueError, match="one-dimensional"):
        v.walk_forward_bars(np.zeros((10, 2), np.int64))
    with pytest.raises(ValueError, match="dtype float64"):
        v.walk_forward_bars(np.arange(10.0))
    with pytest.raises(ValueError, match="empty"):
        v.walk_forward_months(np.array([], np.int64))
    # datetime64 is accepted and means the same instants.
    days = np.arange("2020-01-01", "2021-06-01", dtype="datetime64[D]")
    assert our_folds(v.walk_forward_months(days, n_folds=None)) == our_folds(
        v.walk_forward_months(days.astype("datetime64[ns]").astype(np.int64), n_folds=None)
    )


# ---------------------------------------------------------------------------------------------------------------
# Walk-forward in calendar months
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("train", "test", "gap", "anchored"), [(12, 1, 0, False), (6, 2, 3, True), (12, 3, 0, False), (24, 1, 5, False)]
)
def test_walk_forward_months_equal_skfolio_monthly(
    index_times: np.ndarray, train: int, test: int, gap: int, anchored: bool
) -> None:
    ours = v.walk_forward_months(index_times, train_months=train, test_months=test, step_months=test, gap_bars=gap,
                                 anchored=anchored, n_folds=None)  # fmt: skip
    frame = pd.DataFrame({"r": 0.0}, index=pd.to_datetime(index_times))
    cv = WalkForward(test, train, freq="MS", purged_size=gap, expand_train=anchored)
    assert len(ours) > 100 and our_folds(ours) == skfolio_folds(cv, frame)


def test_walk_forward_months_default_is_the_last_12_complete_months(index_times: np.ndarray) -> None:
    folds = v.walk_forward_months(index_times)
    assert len(folds) == 12
    # The data ends 2022-12-28, so December 2022 is still running: the last test month is November.
    test_months = [month_of(f.test_first_ns) for f in folds]
    assert test_months == [(2021, 12)] + [(2022, m) for m in range(1, 12)]
    for f in folds:
        y, m = month_of(f.test_first_ns)
        assert month_of(f.test_last_ns) == (y, m)
        # Every bar of the month is in the test, and the training window is the 12 months before.
        in_month = (index_times >= ns(y, m)) & (index_times < ns(y + m // 12, m % 12 + 1))
        assert f.test.tolist() == np.flatnonzero(in_month).tolist()
        in_train = (index_times >= ns(y - 1, m)) & (index_times < ns(y, m))
        assert f.train.tolist() == np.flatnonzero(in_train).tolist()
    # Indices go on from all folds that fit (Feb 1990 .. Nov 2022 is 394 complete months).
    assert folds[-1].index == 394 - 12 - 1


def test_walk_forward_months_skip_a_partial_first_month(goog_times: np.ndarray) -> None:
    # GOOG starts 2004-08-19: August 2004 is partial, so the first training month is September.
    first = v.walk_forward_months(goog_times, n_folds=None)[0]
    assert month_of(first.train_first_ns) == (2004, 9) and month_of(first.test_first_ns) == (2005, 9)
    # Anchored training starts at the first bar, partial month included.
    anchored = v.walk_forward_months(goog_times, anchored=True, n_folds=None)[0]
    assert anchored.train[0] == 0 and anchored.test.tolist() == first.test.tolist()


def test_walk_forward_months_count_a_month_whose_first_instant_has_a_bar() -> None:
    # Bars from 2020-01-01 00:00 to 2021-01-01 00:00: all 12 months of 2020 are complete.
    days = np.arange("2020-01-01", "2021-01-02", dtype="datetime64[D]").astype("datetime64[ns]").astype(np.int64)
    (only,) = v.walk_forward_months(days, train_months=11, n_folds=None)
    assert only.train[0] == 0 and month_of(only.test_first_ns) == (2020, 12) and only.test.size == 31
    with pytest.raises(ValueError, match="the data has 11"):
        v.walk_forward_months(days[1:], train_months=11)


def test_walk_forward_months_keep_equal_timestamps_together() -> None:
    bars = dataset("sp500").bars(["KO", "PEP"])
    times = bars["event_time_ns"].to_numpy()
    folds = v.walk_forward_months(times, train_months=6, test_months=1, step_months=1, gap_bars=0)
    for f in folds:
        assert f.train.size % 2 == 0 and f.test.size % 2 == 0
        assert times[f.train[-1]] < times[f.test[0]]
        assert bars["symbol"].to_numpy()[f.test].tolist().count("KO") == f.test.size // 2


def test_walk_forward_months_refuse_impossible_settings(index_times: np.ndarray) -> None:
    # From 2019-12-02 to 2021-02-26: December 2019 is partial, February 2021 the last month, 13 complete months.
    year = index_times[(index_times >= ns(2019, 12)) & (index_times < ns(2021, 3))]
    assert len(v.walk_forward_months(year, n_folds=1)) == 1
    with pytest.raises(ValueError, match="needs train_months \\+ test_months = 14 complete months, the data has 13"):
        v.walk_forward_months(year, test_months=2)
    with pytest.raises(ValueError, match="2 folds asked for but only 1 fit"):
        v.walk_forward_months(year, n_folds=2)
    with pytest.raises(ValueError, match="train_months must be a positive integer"):
        v.walk_forward_months(year, train_months=0)
    with pytest.raises(ValueError, match="no bars left after gap_bars=300"):
        v.walk_forward_months(year, gap_bars=300, n_folds=1)
    holed = index_times[(index_times < ns(2019, 1)) | (index_times >= ns(2019, 2))]
    with pytest.raises(ValueError, match="the test window starting 2019-01 has no bars"):
        v.walk_forward_months(holed, train_months=3, n_folds=None)


# ---------------------------------------------------------------------------------------------------------------
# Purged k-fold
# ---------------------------------------------------------------------------------------------------------------


def brute_force_purged(n: int, k: int, ends: np.ndarray, n_embargo: int) -> list[tuple[set, set, set, set]]:
    """AFML's definition, literally: purge every training label that overlaps a test label; embargo the
    n_embargo observations after the end of the test labels."""
    out = []
    for test in np.array_split(np.arange(n), k):
        test_set = set(test.tolist())
        test_end = max(int(ends[i]) for i in test)
        purged = {j for j in range(n) if j not in test_set
                  and any(max(j, i) <= min(ends[j], ends[i]) for i in test)}  # fmt: skip
        embargoed = {j for j in range(n) if test_end < j <= test_end + n_embargo}
        train = set(range(n)) - test_set - purged - embargoed
        out.append((train, test_set, purged, embargoed))
    return out


def test_purged_kfold_equals_the_brute_force_definition() -> None:
    rng = np.random.default_rng(11)
    for _ in range(40):
        n = int(rng.integers(30, 120))
        k = int(rng.integers(2, 7))
        embargo = float(rng.choice([0.0, 0.03, 0.1]))
        if rng.random() < 0.5:
            horizon = int(rng.integers(0, 4))
            folds = v.purged_kfold(n, k, horizon=horizon, embargo=embargo)
            ends = np.minimum(np.arange(n) + horizon, n - 1)
        else:
            ends = np.arange(n) + rng.integers(0, 6, n) * (rng.random(n) < 0.7)
            folds = v.purged_kfold(n, k, label_end=ends, embargo=embargo)
            ends = np.minimum(ends, n - 1)
        expected = brute_force_purged(n, k, ends, math.floor(embargo * n))
        assert len(folds) == k
        for f, (train, test, purged, embargoed) in zip(folds, expected, strict=True):
            assert set(f.train.tolist()) == train and set(f.test.tolist()) == test
            assert set(f.purged.tolist()) == purged and set(f.embargoed.tolist()) == embargoed
            assert all(np.all(np.diff(a) > 0) for a in (f.train, f.test, f.purged, f.embargoed))


@pytest.mark.parametrize(("horizon", "embargo"), [(0, 0.0), (1, 0.0), (3, 0.0), (0, 0.02), (2, 0.025)])
def test_purged_kfold_equals_skfolio_with_one_test_fold(horizon: int, embargo: float) -> None:
    n, k = 200, 5
    cv = CombinatorialPurgedCV(n_folds=k, n_test_folds=2, purged_size=horizon, embargo_size=math.floor(embargo * n))
    # skfolio refuses one test fold in its constructor, but its split is written for any count: with one it
    # is the purged k-fold (the same fold sizes when n is a multiple of k).
    cv.n_test_folds = 1
    theirs = [(train.tolist(), tests[0].tolist()) for train, tests in cv.split(np.zeros((n, 1)))]
    ours = [(f.train.tolist(), f.test.tolist()) for f in v.purged_kfold(n, k, horizon=horizon, embargo=embargo)]
    assert ours == theirs


def test_label_end_index_makes_time_overlap_index_overlap() -> None:
    rng = np.random.default_rng(3)
    times = np.sort(rng.integers(0, 40, 60)) * 10**9  # many equal timestamps
    label_end = times + rng.integers(0, 8, 60) * 10**9
    ends = v.label_end_index(times, label_end)
    for i, j in itertools.combinations(range(60), 2):
        in_time = max(times[i], times[j]) <= min(label_end[i], label_end[j])
        in_bars = max(i, j) <= min(ends[i], ends[j])
        assert in_time == in_bars, (i, j)
    folds = v.purged_kfold(60, 4, label_end=ends, embargo=0.0)
    for f in folds:  # no training label overlaps a test label in time
        for j in f.train:
            assert not any(max(times[i], times[j]) <= min(label_end[i], label_end[j]) for i in f.test)
    with pytest.raises(ValueError, match="label 5 ends before its own bar"):
        v.label_end_index(times, np.where(np.arange(60) == 5, times - 1, label_end))


def test_purged_kfold_parts_cover_every_observation_once() -> None:
    folds = v.purged_kfold(1003, 7, horizon=5)  # seed embargo: 1% = 10 bars
    assert [f.test.size for f in folds] == [144] * 2 + [143] * 5
    assert np.array_equal(np.concatenate([f.test for f in folds]), np.arange(1003))
    for f in folds[:-1]:
        assert f.embargoed.size == 10 and f.embargoed[0] == f.test[-1] + 6
        parts = np.concatenate([f.train, f.test, f.purged, f.embargoed])
        assert np.array_equal(np.sort(parts), np.arange(1003))
    assert folds[-1].embargoed.size == 0 and folds[0].purged.tolist() == list(range(144, 149))


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((100, 1), {}, "n_folds must be at least 2"),
        ((3, 4), {}, "4 folds need at least 4 observations"),
        ((100,), {"horizon": -1}, "horizon must be a non-negative integer"),
        ((100,), {"embargo": 1.0}, "embargo is a fraction"),
        ((100,), {"embargo": -0.1}, "embargo is a fraction"),
        ((10,), {"horizon": 1, "label_end": np.arange(10)}, "either horizon or label_end"),
        ((10,), {"label_end": np.arange(9)}, "label_end must be 10 integer bar indices"),
        ((10,), {"label_end": np.arange(10) - 1}, "label_end\\[0\\] is before its own observation"),
        ((10, 2), {"horizon": 9}, "fold 0 has no training observations"),
    ],
)
def test_purged_kfold_refuses_impossible_settings(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        v.purged_kfold(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Probabilistic and Deflated Sharpe Ratios
# ---------------------------------------------------------------------------------------------------------------


def test_deflated_sharpe_matches_the_papers_worked_example() -> None:
    # Bailey & López de Prado (2014): best of N = 100 trials, annualised SR 2.5 over 5 years of daily returns
    # (T = 1250, 250 a year), variance of the trials' annualised SRs 1/2, skewness -3, kurtosis 10.
    best = v.SharpeStats(sharpe=v.deannualize_sharpe(2.5, 250), n_obs=1250, skewness=-3.0, kurtosis=10.0)
    result = v.deflated_sharpe_ratio(best, n_trials=100, sharpe_variance=0.5 / 250)
    assert result.sharpe == pytest.approx(0.1581, abs=5e-5)
    assert result.sharpe_threshold == pytest.approx(0.1132, abs=5e-5)
    assert v.annualize_sharpe(result.sharpe_threshold, 250) == pytest.approx(1.7894, abs=5e-4)
    assert result.dsr == pytest.approx(0.9004, abs=5e-5)
    assert result.psr > 0.999 and result.n_trials == 100 and result.kurtosis == 10.0


def test_sharpe_stats_use_population_moments_and_plain_kurtosis(goog_returns: np.ndarray) -> None:
    s = v.sharpe_stats(goog_returns)
    assert s.n_obs == goog_returns.size
    assert s.sharpe == pytest.approx(goog_returns.mean() / goog_returns.std(ddof=1), rel=1e-12)
    assert s.skewness == pytest.approx(st.skew(goog_returns), rel=1e-10)
    assert s.kurtosis == pytest.approx(st.kurtosis(goog_returns, fisher=False), rel=1e-10)


def test_psr_and_dsr_equal_skfolio_on_real_returns(goog_returns: np.ndarray) -> None:
    for benchmark in (0.0, 0.02, 0.08):
        ours = v.probabilistic_sharpe_ratio(goog_returns, benchmark)
        assert ours == pytest.approx(skm.probabilistic_sharpe_ratio(goog_returns, benchmark), abs=1e-12)
    trials = np.random.default_rng(5).normal(0.0, 0.03, 40)
    dsr = v.deflated_sharpe_ratio(goog_returns, n_trials=40, sharpe_variance=float(np.var(trials, ddof=1)))
    assert dsr.dsr == pytest.approx(skm.deflated_sharpe_ratio(goog_returns, trials), abs=1e-12)
    for n in (1, 2, 7.5, 1000):
        assert v.expected_max_sharpe(n, 0.04, 0.01) == pytest.approx(skm.expected_max_sharpe_ratio(n, 0.2, 0.01))


def test_dsr_of_trials_picks_the_best_column_and_uses_the_sample_variance() -> None:
    m = np.random.default_rng(8).normal(0.0, 1.0, (500, 30))
    m[:, 17] += 0.3
    result = v.deflated_sharpe_ratio_of_trials(m)
    sharpes = m.mean(axis=0) / m.std(axis=0, ddof=1)
    assert result.selected == 17 and result.n_trials == 30
    assert result.sharpe_variance == pytest.approx(np.var(sharpes, ddof=1))
    assert result.dsr == pytest.approx(skm.deflated_sharpe_ratio(m[:, 17], sharpes), abs=1e-12)
    assert v.deflated_sharpe_ratio_of_trials(m, selected=3).sharpe == pytest.approx(sharpes[3])
    with pytest.raises(ValueError, match="selected must be a column"):
        v.deflated_sharpe_ratio_of_trials(m, selected=30)


def test_expected_max_sharpe_approximates_the_monte_carlo_maximum() -> None:
    rng = np.random.default_rng(21)
    for n_trials, rtol in ((100, 0.015), (1000, 0.01)):
        simulated = (0.05 * rng.standard_normal((4000, n_trials))).max(axis=1).mean()
        assert v.expected_max_sharpe(n_trials, 0.05**2) == pytest.approx(simulated, rel=rtol)


def test_the_sharpe_variance_term_matches_monte_carlo_for_skewed_returns() -> None:
    # r = 1.2 - Exp(1): mean 0.2, std 1, skewness -2, kurtosis 9. The PSR's standard error of SR should
    # match the spread of SR over simulated samples; ignoring the skew and fat tails understates it.
    rng = np.random.default_rng(4)
    t = 500
    r = 1.2 - rng.exponential(1.0, (4000, t))
    spread = (r.mean(axis=1) / r.std(axis=1, ddof=1)).std()
    with_moments = math.sqrt((1 + 2 * 0.2 + (9 - 1) / 4 * 0.2**2) / (t - 1))
    normal_only = math.sqrt((1 + (3 - 1) / 4 * 0.2**2) / (t - 1))
    assert spread == pytest.approx(with_moments, rel=0.04)
    assert spread / normal_only - 1 > 0.12


def test_psr_is_calibrated_when_the_true_sharpe_is_the_benchmark() -> None:
    # At SR* = the true SR the PSR is uniform, so it passes 0.95 in about 5% of samples; for skewed returns
    # only when the skewness and kurtosis are used.
    rng = np.random.default_rng(9)
    t, reps = 250, 4000

    def stats(r: np.ndarray) -> list[v.SharpeStats]:
        c = r - r.mean(axis=1, keepdims=True)
        m2 = (c**2).mean(axis=1)
        sr = r.mean(axis=1) / r.std(axis=1, ddof=1)
        skew, kurt = (c**3).mean(axis=1) / m2**1.5, (c**4).mean(axis=1) / m2**2
        return [v.SharpeStats(float(a), t, float(b), float(c)) for a, b, c in zip(sr, skew, kurt, strict=True)]

    normal = stats(rng.normal(0.1, 1.0, (reps, t)))
    share = np.mean([v.probabilistic_sharpe_ratio(s, 0.1) > 0.95 for s in normal])
    assert 0.04 < share < 0.06
    skewed = stats(1.2 - rng.exponential(1.0, (reps, t)))
    share = np.mean([v.probabilistic_sharpe_ratio(s, 0.2) > 0.95 for s in skewed])
    naive = np.mean([v.probabilistic_sharpe_ratio(v.SharpeStats(s.sharpe, t), 0.2) > 0.95 for s in skewed])
    assert 0.035 < share < 0.07 and naive > 0.09


def test_dsr_rejects_the_best_of_many_noise_strategies_where_psr_does_not() -> None:
    rng = np.random.default_rng(17)
    results = [v.deflated_sharpe_ratio_of_trials(rng.standard_normal((250, 50))) for _ in range(200)]
    assert np.mean([r.psr > 0.95 for r in results]) > 0.8
    assert np.mean([r.dsr > 0.95 for r in results]) < 0.05
    # A real edge survives the deflation.
    m = rng.standard_normal((1000, 50))
    m[:, 0] += 0.25
    assert v.deflated_sharpe_ratio_of_trials(m).dsr > 0.99


def test_annualisation_helpers_round_trip() -> None:
    assert v.annualize_sharpe(0.1, 252) == pytest.approx(0.1 * math.sqrt(252))
    assert v.deannualize_sharpe(v.annualize_sharpe(0.0731, 52), 52) == pytest.approx(0.0731)
    with pytest.raises(ValueError, match="periods_per_year must be positive"):
        v.annualize_sharpe(1.0, 0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: v.probabilistic_sharpe_ratio(v.SharpeStats(0.1, 100, 0.0, 0.0)), "excess kurtosis"),
        (lambda: v.probabilistic_sharpe_ratio(v.SharpeStats(0.1, 1)), "at least 2 observations"),
        (lambda: v.probabilistic_sharpe_ratio([0.01]), "at least 2 returns"),
        (lambda: v.probabilistic_sharpe_ratio([0.01, 0.01, 0.01]), "constant returns"),
        (lambda: v.probabilistic_sharpe_ratio([0.01, np.nan, 0.02]), "NaN or infinity"),
        (lambda: v.probabilistic_sharpe_ratio(np.zeros((3, 2))), "one-dimensional"),
        (lambda: v.expected_max_sharpe(0.5, 0.1), "n_trials must be at least 1"),
        (lambda: v.expected_max_sharpe(10, -0.1), "sharpe_variance must be non-negative"),
        (lambda: v.deflated_sharpe_ratio_of_trials(np.ones((10, 1))), "at least 2 trials"),
        (lambda: v.deflated_sharpe_ratio_of_trials(np.c_[np.ones(10), np.arange(10.0)]), "trial 0 has constant"),
    ],
)
def test_sharpe_statistics_refuse_impossible_inputs(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


# ---------------------------------------------------------------------------------------------------------------
# Probability of Backtest Overfitting
# ---------------------------------------------------------------------------------------------------------------


def brute_force_pbo(m: np.ndarray, s: int) -> tuple[list[int], list[float], list[float], list[float]]:
    """CSCV as the paper states it: for every half of the blocks, the IS-best by Sharpe, its OOS rank."""
    blocks = np.array_split(m[m.shape[0] % s :], s)
    chosen, logits, is_perf, oos_perf = [], [], [], []
    for combo in itertools.combinations(range(s), s // 2):
        is_rows = np.concatenate([blocks[b] for b in combo])
        oos_rows = np.concatenate([blocks[b] for b in range(s) if b not in combo])
        is_sr = is_rows.mean(axis=0) / is_rows.std(axis=0, ddof=1)
        oos_sr = oos_rows.mean(axis=0) / oos_rows.std(axis=0, ddof=1)
        best = int(np.argmax(is_sr))
        omega = st.rankdata(oos_sr)[best] / (m.shape[1] + 1)
        chosen.append(best)
        logits.append(math.log(omega / (1 - omega)))
        is_perf.append(is_sr[best])
        oos_perf.append(oos_sr[best])
    return chosen, logits, is_perf, oos_perf


def test_pbo_equals_a_plain_loop_over_the_splits() -> None:
    m = np.random.default_rng(2).normal(0.0005, 0.01, (203, 7))  # 203 = 6 * 33 + 5: the 5 oldest rows go
    m[:, 5] = m[:, 2]  # identical variants tie: average ranks
    result = v.probability_of_backtest_overfitting(m, n_blocks=6)
    chosen, logits, is_perf, oos_perf = brute_force_pbo(m, 6)
    assert result.n_combinations == 20 and result.n_observations == 198 and result.n_variants == 7
    assert result.chosen.tolist() == chosen
    np.testing.assert_allclose(result.logits, logits, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.is_performance, is_perf, rtol=1e-10)
    np.testing.assert_allclose(result.oos_performance, oos_perf, rtol=1e-10)
    assert result.pbo == np.mean(np.array(logits) <= 0)
    slope, intercept = np.polyfit(is_perf, oos_perf, 1)
    assert (result.degradation_slope, result.degradation_intercept) == pytest.approx((slope, intercept))
    assert result.prob_oos_loss == np.mean(np.array(oos_perf) < 0)


def test_pbo_with_a_metric_function_equals_the_built_in_metrics() -> None:
    m = np.random.default_rng(6).normal(0.0, 1.0, (240, 12))
    sharpe = v.probability_of_backtest_overfitting(m, 8)
    by_function = v.probability_of_backtest_overfitting(m, 8, lambda x: x.mean(axis=0) / x.std(axis=0, ddof=1))
    assert by_function.chosen.tolist() == sharpe.chosen.tolist()
    np.testing.assert_allclose(by_function.logits, sharpe.logits, atol=1e-12)
    mean = v.probability_of_backtest_overfitting(m, 8, "mean")
    assert mean.chosen.tolist() == v.probability_of_backtest_overfitting(m, 8, lambda x: x.mean(axis=0)).chosen.tolist()
    # The first split has blocks 0-3 (rows 0-119) in sample.
    first = mean.chosen[0]
    assert mean.is_performance[0] == pytest.approx(m[:120, first].mean())
    assert mean.oos_performance[0] == pytest.approx(m[120:, first].mean())


def test_identical_variants_rank_at_the_median() -> None:
    # Copies of one variant (parameters that change nothing) tie everywhere: omega = 1/2, lambda = 0, and
    # lambda <= 0 counts as overfit, as nothing was learnt in sample.
    m = np.repeat(np.random.default_rng(4).normal(0.0, 1.0, (160, 1)), 5, axis=1)
    result = v.probability_of_backtest_overfitting(m, 8)
    assert np.all(result.relative_rank == 0.5) and np.all(result.logits == 0.0) and result.pbo == 1.0


def test_variants_without_a_metric_value_rank_lowest() -> None:
    # A variant that never trades has no Sharpe ratio (0 / 0): it is never chosen and ranks below all others.
    m = np.random.default_rng(5).normal(0.0, 1.0, (320, 6))
    m[:, 2] = 0.0
    result = v.probability_of_backtest_overfitting(m, 8)
    assert 2 not in result.chosen.tolist()
    with np.errstate(invalid="ignore"):
        by_function = v.probability_of_backtest_overfitting(m, 8, lambda x: x.mean(axis=0) / x.std(axis=0, ddof=1))
    assert by_function.chosen.tolist() == result.chosen.tolist()
    np.testing.assert_allclose(by_function.logits, result.logits, atol=1e-12)


def test_pbo_of_pure_noise_is_one_half_on_average() -> None:
    # One data set's PBO varies a lot (its splits share the data), so average over seeds: for noise the
    # IS-best variant's OOS rank is uniform, and with N even exactly half the ranks give lambda <= 0.
    pbos = [v.probability_of_backtest_overfitting(np.random.default_rng(seed).normal(0, 1, (400, 20)), 8).pbo
            for seed in range(300)]  # fmt: skip
    assert np.mean(pbos) == pytest.approx(0.5, abs=0.04)


def test_pbo_is_zero_when_one_variant_has_an_edge_in_every_block() -> None:
    m = np.random.default_rng(12).normal(0.0, 1.0, (1600, 50))
    m[:, 31] += 0.3
    result = v.probability_of_backtest_overfitting(m)
    assert result.n_blocks == 16 and result.n_combinations == 12870
    assert result.pbo == 0.0 and set(result.chosen.tolist()) == {31}
    np.testing.assert_allclose(result.logits, math.log(50), rtol=1e-12)
    assert result.prob_oos_loss == 0.0


def test_pbo_is_high_when_in_sample_winners_were_lucky_regimes() -> None:
    # Variant k earns only in block k and loses a little elsewhere: the IS-best is whichever variant had its
    # block in sample, and out of sample it is among the worst.
    s, size = 16, 50
    rng = np.random.default_rng(13)
    m = rng.normal(-0.05, 1.0, (s * size, s))
    for k in range(s):
        m[k * size : (k + 1) * size, k] += 1.0
    result = v.probability_of_backtest_overfitting(m, s)
    assert result.pbo > 0.95 and result.degradation_slope < 0 and result.prob_oos_loss > 0.9


def test_pbo_runs_well_under_a_second_for_the_seed_size() -> None:
    m = np.random.default_rng(1).normal(0.0, 0.01, (2000, 100))
    v.probability_of_backtest_overfitting(m[:64, :4])  # first call pays for imports and caches
    start = time.perf_counter()
    result = v.probability_of_backtest_overfitting(m)
    assert time.perf_counter() - start < 1.0
    assert result.logits.shape == result.chosen.shape == (12870,)


@pytest.mark.parametrize(
    ("shape", "kwargs", "message"),
    [
        ((100, 5), {"n_blocks": 7}, "n_blocks must be even"),
        ((100, 5), {"n_blocks": 0}, "n_blocks must be a positive integer"),
        ((31, 5), {"n_blocks": 16}, "16 blocks need at least 32 rows"),
        ((100, 1), {}, "at least 2 variants"),
        ((100,), {}, "T x N matrix"),
        ((100, 5), {"metric": "sortino"}, "metric must be"),
        ((100, 5), {"metric": lambda x: x.mean()}, "must return 5 values"),
    ],
)
def test_pbo_refuses_bad_inputs(shape: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        v.probability_of_backtest_overfitting(np.random.default_rng(0).normal(size=shape), **kwargs)


def test_pbo_refuses_non_finite_values() -> None:
    m = np.zeros((64, 3))
    m[5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        v.probability_of_backtest_overfitting(m, 4)
