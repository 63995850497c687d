"""Data quality: corporate-action adjustment, freshness and outlier quarantine, on hand-made and real bars."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl
import pytest

from utp.core.filters import day_to_ns
from utp.core.quality import (
    MINUTE_NS,
    OUTLIER_INVALID,
    OUTLIER_PRICE_JUMP,
    OUTLIER_VOLUME_SPIKE,
    CorporateActions,
    OutlierDetector,
    OutlierReason,
    adjust_bars,
    reason_text,
    stale_symbols,
)
from utp.core.universe import Universe
from utp.storage.datasets import dataset, synthetic_bars


def daily_bars(symbol: str, days: list[date], closes: list[float], volumes: list[float] | None = None) -> pl.DataFrame:
    closes_f = [float(c) for c in closes]
    return pl.DataFrame({
        "event_time_ns": [day_to_ns(d) for d in days],
        "symbol": [symbol] * len(days),
        "open": closes_f, "high": [c * 1.01 for c in closes_f], "low": [c * 0.99 for c in closes_f], "close": closes_f,
        "volume": [float(v) for v in (volumes or [100.0] * len(days))],
    }, schema_overrides={"event_time_ns": pl.Int64})  # fmt: skip


JAN = [date(2024, 1, d) for d in (2, 3, 4, 5, 8, 9)]


# --------------------------------------------------------------------------------------------------------------
# Corporate actions: loading and validation
# --------------------------------------------------------------------------------------------------------------


def test_actions_load_csv_and_parquet_with_blank_meaning_none(tmp_path):
    csv = tmp_path / "actions.csv"
    csv.write_text("symbol,ex_date,split_ratio,cash_dividend\nAAPL,2020-08-31,4,\nMSFT,2024-02-14,,0.75\n")
    actions = CorporateActions.load(csv)
    assert actions.frame.to_dicts() == [
        {"symbol": "AAPL", "ex_date": date(2020, 8, 31), "split_ratio": 4.0, "cash_dividend": 0.0},
        {"symbol": "MSFT", "ex_date": date(2024, 2, 14), "split_ratio": 1.0, "cash_dividend": 0.75},
    ]
    parquet = tmp_path / "actions.parquet"
    actions.frame.write_parquet(parquet)
    assert CorporateActions.load(parquet).frame.equals(actions.frame)
    # Only a dividend column: the split defaults to none.
    only_div = CorporateActions(
        pl.DataFrame({"symbol": ["KO"], "ex_date": [date(2024, 3, 1)], "cash_dividend": [0.49]})
    )
    assert only_div.frame["split_ratio"].to_list() == [1.0]


def test_actions_name_every_bad_row(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text(
        "symbol,ex_date,split_ratio,cash_dividend\n"
        "AAPL,2020-08-31,4,\n"       # row 1 fine
        "AAPL,2020-13-01,2,\n"       # row 2 bad date
        "TSLA,2022-08-25,-3,\n"      # row 3 negative split
        "KO,2024-03-01,,abc\n"       # row 4 dividend not a number
        ",2024-03-01,2,\n"           # row 5 no symbol
    )  # fmt: skip
    with pytest.raises(ValueError) as err:
        CorporateActions.load(csv)
    text = str(err.value)
    assert "row 2: ex_date '2020-13-01' is not a date" in text
    assert "row 4: cash_dividend 'abc' is not a number" in text
    assert "row 5: symbol is missing" in text
    csv.write_text("symbol,ex_date,split_ratio,cash_dividend\nTSLA,2022-08-25,-3,\nKO,2024-03-01,,nan\n")
    with pytest.raises(ValueError) as err:
        CorporateActions.load(csv)
    assert "row 1 (TSLA 2022-08-25): split_ratio -3.0 must be > 0" in str(err.value)
    assert "row 2 (KO 2024-03-01): cash_dividend nan must be >= 0" in str(err.value)


def test_actions_refuse_duplicates_missing_columns_and_unknown_files(tmp_path):
    dup = pl.DataFrame({"symbol": ["A", "A"], "ex_date": ["2024-01-02", "2024-01-02"], "split_ratio": [2.0, 1.0]})
    with pytest.raises(ValueError, match="another row has the same symbol and ex_date"):
        CorporateActions(dup)
    with pytest.raises(ValueError, match="missing column.*ex_date"):
        CorporateActions(pl.DataFrame({"symbol": ["A"], "split_ratio": [2.0]}))
    with pytest.raises(ValueError, match="no such file"):
        CorporateActions.load(tmp_path / "nope.csv")
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(ValueError, match="unsupported file type"):
        CorporateActions.load(tmp_path / "a.json")


# --------------------------------------------------------------------------------------------------------------
# Adjustment
# --------------------------------------------------------------------------------------------------------------


def test_adjust_hand_checked_split_then_dividend():
    # 2-for-1 split with ex-date Jan 4, then a 0.50 dividend with ex-date Jan 9 (previous close Jan 8 = 50).
    bars = daily_bars("X", JAN, [100, 102, 51, 50, 50, 49.5], [10, 10, 20, 20, 20, 20])
    actions = CorporateActions(pl.DataFrame({
        "symbol": ["X", "X"], "ex_date": [date(2024, 1, 4), date(2024, 1, 9)],
        "split_ratio": [2.0, 1.0], "cash_dividend": [0.0, 0.5],
    }))  # fmt: skip
    out = adjust_bars(bars, actions)
    # Dividend factor 1 - 0.5 / 50 = 0.99 on every bar before Jan 9; the split halves bars before Jan 4.
    assert out["close"].to_list() == pytest.approx([49.5, 50.49, 50.49, 49.5, 49.5, 49.5])
    assert out["high"].to_list() == pytest.approx([c * 1.01 for c in [49.5, 50.49, 50.49, 49.5, 49.5, 49.5]])
    assert out["volume"].to_list() == [20.0, 20.0, 20.0, 20.0, 20.0, 20.0]
    assert out.columns == bars.columns and out["event_time_ns"].equals(bars["event_time_ns"])
    # The ex-date bar and later ones keep traded prices (no dividend pending after Jan 9).
    assert out["close"][-1] == 49.5


def test_adjust_keeps_row_order_other_symbols_and_respects_as_of():
    x = daily_bars("X", JAN, [100, 102, 51, 50, 50, 49.5])
    y = daily_bars("Y", JAN, [10, 11, 12, 13, 14, 15])
    bars = pl.concat([x, y]).sort("event_time_ns", maintain_order=True)  # interleaved X, Y, X, Y ...
    actions = CorporateActions(pl.DataFrame({
        "symbol": ["X", "X", "Z"], "ex_date": [date(2024, 1, 4), date(2030, 1, 2), date(2024, 1, 3)],
        "split_ratio": [2.0, 3.0, 5.0], "cash_dividend": [0.0, 0.0, 0.0],
    }))  # fmt: skip
    out = adjust_bars(bars, actions, as_of=date(2024, 12, 31))  # the 2030 split is not known yet
    assert out["symbol"].to_list() == bars["symbol"].to_list()
    assert out.filter(pl.col("symbol") == "Y").equals(y)
    assert out.filter(pl.col("symbol") == "X")["close"].to_list() == pytest.approx([50, 51, 51, 50, 50, 49.5])
    # Without as_of the announced 2030 split applies to every bar (all are before it).
    every = adjust_bars(bars, actions).filter(pl.col("symbol") == "X")["close"].to_list()
    assert every == pytest.approx([50 / 3, 51 / 3, 51 / 3, 50 / 3, 50 / 3, 49.5 / 3])


def test_adjust_without_applicable_actions_returns_bars_unchanged():
    bars = daily_bars("X", JAN, [1, 2, 3, 4, 5, 6])
    assert adjust_bars(bars, CorporateActions.empty()).equals(bars)
    before_data = CorporateActions(pl.DataFrame({"symbol": ["X"], "ex_date": [date(2020, 1, 2)], "split_ratio": [2.0]}))
    assert adjust_bars(bars, before_data).equals(bars)


def test_adjust_refuses_a_dividend_as_large_as_the_price():
    bars = daily_bars("X", JAN, [10, 10, 10, 10, 10, 10])
    actions = CorporateActions(pl.DataFrame({"symbol": ["X"], "ex_date": [date(2024, 1, 4)], "cash_dividend": [10.0]}))
    with pytest.raises(ValueError, match="X dividend 10.0 on 2024-01-04 is not below the previous close 10.0"):
        adjust_bars(bars, actions)


def test_adjust_intraday_bars_use_the_exchange_date():
    # 2024-01-04 00:30 UTC is 19:30 ET on Jan 3 (after-hours before the ex-date): adjusted.
    # 2024-01-04 14:30 UTC is the ex-date's open: unchanged.
    times = [day_to_ns(date(2024, 1, 3)) + 20 * 60 * MINUTE_NS, day_to_ns(date(2024, 1, 4)) + 30 * MINUTE_NS,
             day_to_ns(date(2024, 1, 4)) + (14 * 60 + 30) * MINUTE_NS]  # fmt: skip
    bars = pl.DataFrame({"event_time_ns": times, "symbol": ["X"] * 3, "open": [100.0, 100.0, 50.0],
                         "high": [100.0, 100.0, 50.0], "low": [100.0, 100.0, 50.0], "close": [100.0, 100.0, 50.0],
                         "volume": [1.0, 1.0, 2.0]})  # fmt: skip
    actions = CorporateActions(pl.DataFrame({"symbol": ["X"], "ex_date": [date(2024, 1, 4)], "split_ratio": [2.0]}))
    assert adjust_bars(bars, actions)["close"].to_list() == [50.0, 50.0, 50.0]


@pytest.mark.parametrize("seed", range(5))
def test_adjusted_returns_are_continuous_across_splits_and_dividends(seed):
    """Property: make a random walk, impose splits (prices / ratio, volume x ratio from the ex-date on) and a
    dividend drop; the adjusted series' returns equal the walk's own returns everywhere."""
    rng = np.random.default_rng(seed)
    n = 300
    days = np.busday_offset(np.datetime64("2015-01-02"), np.arange(n), roll="forward")
    true_close = 50.0 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    ratios = rng.choice([2.0, 3.0, 1.5, 0.1, 4.0], size=2)
    ex = np.sort(rng.choice(np.arange(10, n - 10), size=3, replace=False))
    raw = true_close.copy()
    volume = np.full(n, 1000.0)
    for k, ratio in zip(ex[:2], ratios, strict=True):
        raw[k:] /= ratio
        volume[k:] *= ratio
    # A dividend: the raw price drops by exactly the dividend on top of the walk's move.
    dividend = 0.03 * raw[ex[2] - 1]
    walk_return = raw[ex[2]] / raw[ex[2] - 1]
    raw[ex[2]:] = raw[ex[2]:] * (raw[ex[2] - 1] - dividend) * walk_return / raw[ex[2]]  # fmt: skip
    bars = daily_bars("S", [d.astype(object) for d in days], raw.tolist(), volume.tolist())
    actions = CorporateActions(pl.DataFrame({
        "symbol": ["S"] * 3, "ex_date": [days[k].astype(object) for k in ex],
        "split_ratio": [*ratios.tolist(), 1.0], "cash_dividend": [0.0, 0.0, dividend],
    }))  # fmt: skip
    out = adjust_bars(bars, actions)
    adjusted = out["close"].to_numpy()
    raw_returns, adj_returns, true_returns = (np.diff(np.log(a)) for a in (raw, adjusted, true_close))
    assert np.abs(raw_returns[ex[0] - 1]) > 0.3  # the raw series does jump at the split
    mask = np.ones(n - 1, bool)
    mask[ex[2] - 1] = False  # the dividend ex-date: its adjusted return is the walk's return exactly
    np.testing.assert_allclose(adj_returns[mask], true_returns[mask], atol=1e-12)
    assert adj_returns[ex[2] - 1] == pytest.approx(np.log(walk_return), abs=1e-12)
    np.testing.assert_allclose(out["volume"].to_numpy(), volume[-1])  # volumes in today's shares
    assert adjusted[-1] == raw[-1]


def test_adjust_recovers_real_goog_after_an_imposed_split():
    goog = dataset("goog").bars()
    ex = date(2008, 6, 2)
    after = pl.col("event_time_ns") >= day_to_ns(ex)
    raw = goog.with_columns(
        *(pl.when(after).then(pl.col(c) / 2).otherwise(pl.col(c)).alias(c) for c in ("open", "high", "low", "close")),
        pl.when(after).then(pl.col("volume") * 2).otherwise(pl.col("volume")).alias("volume"),
    )
    actions = CorporateActions(pl.DataFrame({"symbol": ["GOOG"], "ex_date": [ex], "split_ratio": [2.0]}))
    out = adjust_bars(raw, actions)
    for c in ("open", "high", "low", "close"):
        np.testing.assert_allclose(out[c].to_numpy(), goog[c].to_numpy() / 2)
    np.testing.assert_allclose(out["volume"].to_numpy(), goog["volume"].to_numpy() * 2)


# --------------------------------------------------------------------------------------------------------------
# Freshness
# --------------------------------------------------------------------------------------------------------------


def test_stale_at_and_either_side_of_the_limit_and_never_seen():
    now = day_to_ns(date(2024, 5, 1)) + 15 * 60 * MINUTE_NS
    last = {"FRESH": now - 30 * MINUTE_NS + 1, "EDGE": now - 30 * MINUTE_NS, "OLD": now - 3 * 60 * MINUTE_NS}
    stale = stale_symbols(last, now, symbols=["FRESH", "NEVER"])
    assert [s.symbol for s in stale] == ["EDGE", "NEVER", "OLD"]
    by_symbol = {s.symbol: s for s in stale}
    assert by_symbol["EDGE"].age_ns == 30 * MINUTE_NS
    assert by_symbol["NEVER"].age_ns is None and by_symbol["NEVER"].message == "NEVER: no bar seen"
    assert by_symbol["OLD"].message == "OLD: last bar 2024-05-01 12:00:00 UTC is 3.0 h old (limit 30.0 min)"


def test_stale_from_a_bar_frame_uses_each_symbols_newest_bar():
    bars = synthetic_bars(100, symbol="A").vstack(synthetic_bars(50, symbol="B"))
    newest_a = int(bars.filter(pl.col("symbol") == "A")["event_time_ns"].max())
    stale = stale_symbols(bars, newest_a + 5 * MINUTE_NS, 10 * MINUTE_NS)
    assert [s.symbol for s in stale] == ["B"] and stale[0].age_ns == (50 + 5) * MINUTE_NS
    with pytest.raises(ValueError, match="max_age_ns must be > 0"):
        stale_symbols({}, 0, 0)


# --------------------------------------------------------------------------------------------------------------
# Outliers
# --------------------------------------------------------------------------------------------------------------


def _walk(n: int, seed: int, sigma: float = 0.01, start: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = start * np.exp(np.cumsum(rng.normal(0, sigma, n)))
    volume = rng.lognormal(np.log(1e5), 0.3, n)
    return close, volume


def _multi_symbol(n_per: int, n_symbols: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interleaved bars of several symbols with bad ticks, volume spikes, invalid rows and a level shift."""
    closes, volumes = zip(*(_walk(n_per, seed + s) for s in range(n_symbols)), strict=True)
    close = np.stack(closes, axis=1)
    volume = np.stack(volumes, axis=1)
    close[50, 0] *= 10
    close[120, 1] /= 10
    volume[200, 2] *= 500
    close[300, 0] = np.nan
    close[400:, 1] *= 3  # a lasting new level
    sid = np.tile(np.arange(n_symbols), n_per)
    return sid, close.ravel(), volume.ravel()


def test_batch_size_never_changes_a_decision():
    sid, close, volume = _multi_symbol(600, 4, seed=1)
    whole = OutlierDetector(4)
    expected = whole.check(sid, close, volume)
    assert {1, 2, 3} <= set(np.unique(expected).tolist())  # the data does exercise every code
    rng = np.random.default_rng(0)
    for sizes in ([1] * len(sid), rng.integers(1, 50, len(sid))):
        piecewise = OutlierDetector(4)
        bounds = np.r_[0, np.cumsum(sizes)]
        bounds = bounds[bounds < len(sid)].tolist() + [len(sid)]
        got = np.concatenate([piecewise.check(sid[a:b], close[a:b], volume[a:b])
                              for a, b in zip(bounds[:-1], bounds[1:], strict=True)])  # fmt: skip
        np.testing.assert_array_equal(got, expected)
        for key, value in whole.snapshot().items():
            np.testing.assert_array_equal(piecewise.snapshot()[key], value)


@pytest.mark.parametrize("factor", [10.0, 0.1])
def test_a_bad_tick_is_flagged_and_does_not_pollute_the_state(factor):
    close, volume = _walk(500, seed=3)
    clean = OutlierDetector(1).check(np.zeros(500, int), close, volume)
    assert not clean.any()
    bad = close.copy()
    bad[250] *= factor
    codes = OutlierDetector(1).check(np.zeros(500, int), bad, volume)
    assert codes[250] == OUTLIER_PRICE_JUMP
    assert codes[251] == 0  # judged against the last good close, not the bad tick
    np.testing.assert_array_equal(np.delete(codes, 250), np.delete(clean, 250))  # every other decision unchanged


def test_thresholds_after_and_during_warm_up():
    close, volume = _walk(60, seed=4, sigma=0.005)
    # During warm-up (first 20 returns) a 30% jump passes, a 70% one is absurd.
    warm_up = close.copy()
    warm_up[10:] *= 1.3
    codes = OutlierDetector(1, confirm_bars=0).check(np.zeros(60, int), warm_up, volume)
    assert codes[10] == 0
    warm_up = close.copy()
    warm_up[10] *= 1.7
    assert OutlierDetector(1).check(np.zeros(60, int), warm_up, volume)[10] == OUTLIER_PRICE_JUMP
    # After warm-up with ~0.5% daily moves, a 30% move is > 10 sigma and > min_move (0.2): flagged;
    # a 15% move is > 10 sigma but below min_move: passes.
    for jump, expected in ((1.3, OUTLIER_PRICE_JUMP), (1.15, 0)):
        series = close.copy()
        series[40] *= jump
        assert OutlierDetector(1).check(np.zeros(60, int), series, volume)[40] == expected


def test_volume_spike_and_zero_volume_history():
    close, volume = _walk(60, seed=5)
    for multiple, expected in ((80.0, OUTLIER_VOLUME_SPIKE), (20.0, 0)):
        v = volume.copy()
        v[40] = np.median(volume[20:40]) * multiple
        assert OutlierDetector(1).check(np.zeros(60, int), close, v)[40] == expected
    # No volume known (close-only data): a volume is never a spike.
    v = np.zeros(60)
    v[40] = 1e9
    assert not OutlierDetector(1).check(np.zeros(60, int), close, v).any()


def test_a_lasting_new_level_is_accepted_after_confirm_bars():
    close, volume = _walk(80, seed=6, sigma=0.003)
    close[40:] *= 2.0
    codes = OutlierDetector(1, confirm_bars=3).check(np.zeros(80, int), close, volume)
    assert codes[40:42].tolist() == [OUTLIER_PRICE_JUMP, OUTLIER_PRICE_JUMP]
    assert not codes[42:].any()
    never = OutlierDetector(1, confirm_bars=0).check(np.zeros(80, int), close, volume)
    assert (never[40:] == OUTLIER_PRICE_JUMP).all()


def test_invalid_rows_are_flagged_and_leave_the_state_alone():
    close, volume = _walk(50, seed=7)
    det = OutlierDetector(1)
    det.check(np.zeros(30, int), close[:30], volume[:30])
    before = det.snapshot()
    codes = det.check(np.zeros(4, int), np.array([np.nan, -1.0, close[30], np.inf]),
                      np.array([1.0, 1.0, -5.0, 1.0]))  # fmt: skip
    assert codes.tolist() == [OUTLIER_INVALID] * 4
    for key, value in before.items():
        np.testing.assert_array_equal(det.snapshot()[key], value)


def test_snapshot_restore_continues_exactly():
    sid, close, volume = _multi_symbol(500, 3, seed=9)
    whole = OutlierDetector(3).check(sid, close, volume)
    first = OutlierDetector(3)
    head = first.check(sid[:400], close[:400], volume[:400])
    second = OutlierDetector(3)
    second.restore(first.snapshot())
    tail = second.check(sid[400:], close[400:], volume[400:])
    np.testing.assert_array_equal(np.r_[head, tail], whole)
    with pytest.raises(ValueError, match="shape"):
        OutlierDetector(5).restore(first.snapshot())
    with pytest.raises(ValueError, match="needs keys"):
        OutlierDetector(3).restore({"last_close": np.zeros(3)})


def test_arguments_and_reason_texts():
    with pytest.raises(ValueError, match="symbol index 3 outside 0..2"):
        OutlierDetector(3).check(np.array([3]), np.array([1.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="1-D of one length"):
        OutlierDetector(3).check(np.array([0, 1]), np.array([1.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="confirm_bars"):
        OutlierDetector(1, confirm_bars=1)
    with pytest.raises(ValueError, match="min_move"):
        OutlierDetector(1, min_move=float("nan"))
    assert reason_text(OUTLIER_PRICE_JUMP).startswith("close jumped")
    assert reason_text(OutlierReason.VOLUME_SPIKE).startswith("volume far above")
    assert reason_text(0) == "ok" and reason_text(99) == "unknown outlier code 99"


def test_real_data_gives_no_or_very_few_flags():
    goog = dataset("goog").bars()
    assert not OutlierDetector(1).check(np.zeros(goog.height, int), goog["close"].to_numpy(),
                                        goog["volume"].to_numpy()).any()  # fmt: skip
    sp500 = dataset("sp500")
    universe = Universe(sp500.symbols)
    for start, end in ((date(2007, 6, 1), date(2009, 12, 31)), (date(2019, 6, 1), date(2020, 12, 31))):
        bars = sp500.bars(start=start, end=end)
        codes = OutlierDetector(len(universe)).check(universe.indices(bars["symbol"]), bars["close"].to_numpy(),
                                                     bars["volume"].to_numpy())  # fmt: skip
        assert not codes.any(), bars.filter(pl.Series(codes != 0))
    # 33 years of 20 stocks: only real one-day shocks (e.g. AAPL -52% on 2000-09-29) and the day after.
    bars = sp500.bars()
    codes = OutlierDetector(len(universe)).check(universe.indices(bars["symbol"]), bars["close"].to_numpy(),
                                                 bars["volume"].to_numpy())  # fmt: skip
    assert 0 < np.count_nonzero(codes) < 1e-3 * bars.height


def test_bad_ticks_injected_into_real_sp500_bars_are_caught():
    sp500 = dataset("sp500")
    universe = Universe(sp500.symbols)
    bars = sp500.bars(start=date(2019, 6, 1), end=date(2020, 12, 31))
    close = bars["close"].to_numpy().copy()
    rows = np.flatnonzero((bars["symbol"] == "JPM").to_numpy())[[100, 200]]
    close[rows[0]] *= 10
    close[rows[1]] /= 10
    codes = OutlierDetector(len(universe)).check(universe.indices(bars["symbol"]), close, bars["volume"].to_numpy())
    assert np.flatnonzero(codes).tolist() == sorted(rows.tolist())
