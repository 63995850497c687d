"""The whole engine graph on real bars: batch size never changes a decision, bad bars are refused."""

from __future__ import annotations

import asyncio

import polars as pl
import pytest

from utp.core.bus import InProcessBus
from utp.core.clock import SimulatedClock
from utp.core.config import Config, load_config
from utp.core.controls import ControlState
from utp.core.universe import Universe
from utp.daemon.session import MarketData, Session
from utp.storage.datasets import dataset
from utp.v1 import events_pb2 as pb

# GOOG's unadjusted price passed the universe's $500 in 2007.
GOOG = {"market_data.dataset": "goog", "risk.max_position_pct": 0.95, "risk.universe.enabled": False}
SP500 = {"market_data.dataset": "sp500", "market_data.symbols": ["AAPL", "JPM", "XOM", "KO"],
         "market_data.start": "2004-01-01", "market_data.end": "2007-12-31", "risk.max_position_pct": 0.25}  # fmt: skip


def run(config: Config, market_data: MarketData | None = None) -> Session:
    session = Session(
        config, bus=InProcessBus(), clock=SimulatedClock(), market_data=market_data,
        controls=ControlState(execution_approved=True), collect_results=True,
    )  # fmt: skip

    async def go() -> None:
        await session.start()
        await session.run()

    asyncio.run(go())
    return session


def order_log(session: Session) -> list[bytes]:
    assert session.collector is not None
    return [m.SerializeToString() for m in (*session.collector.order_events, *session.collector.fills)]


def with_batch(overrides: dict, batch: int) -> Config:
    return load_config(environ={}, overrides={**overrides, "market_data.batch_bar_times": batch})


@pytest.fixture(scope="module")
def goog_reference() -> Session:
    return run(with_batch(GOOG, 1000))


def test_goog_backtest_trades(goog_reference: Session) -> None:
    result = goog_reference.collector.result
    s = result.summary
    assert s.bars == 2148 and s.bars_rejected == 0
    # Every order: entries, closes and the bracket legs that guard entries (most end cancelled by the other).
    assert s.orders > 10 and 0 < s.fills <= s.orders and s.trades >= 10 and s.fills >= 2 * s.trades
    assert s.final_equity == pytest.approx(result.equity_curve.equity[-1])
    assert 0 < s.max_drawdown < 1


def test_summary_statistics_are_empyricals_on_the_equity_curve(goog_reference: Session) -> None:
    """Every statistic of the summary recomputed by empyrical from what the result itself reports."""
    import empyrical
    import numpy as np

    from utp.storage.datasets import load_sp500_index

    result = goog_reference.collector.result
    s = result.summary
    equity = np.array(result.equity_curve.equity)
    times = np.array(result.equity_curve.time_ns)
    curve = np.concatenate([[s.initial_equity], equity])
    returns = curve[1:] / curve[:-1] - 1
    index = load_sp500_index().sort("event_time_ns")
    closes = index["close"].to_numpy()[np.searchsorted(index["event_time_ns"].to_numpy(), times, "right") - 1]
    bench = np.concatenate([[0.0], closes[1:] / closes[:-1] - 1])
    ppy = s.periods_per_year
    assert ppy == 252
    assert s.total_return == pytest.approx(empyrical.cum_returns_final(returns), rel=1e-9)
    assert s.annual_return == pytest.approx(empyrical.annual_return(returns, annualization=ppy), rel=1e-9)
    assert s.sharpe == pytest.approx(empyrical.sharpe_ratio(returns, annualization=ppy), rel=1e-9)
    assert s.sortino == pytest.approx(empyrical.sortino_ratio(returns, annualization=ppy), rel=1e-9)
    assert s.calmar == pytest.approx(empyrical.calmar_ratio(returns, annualization=ppy), rel=1e-9)
    assert s.max_drawdown == pytest.approx(-empyrical.max_drawdown(returns), rel=1e-9)
    assert s.beta == pytest.approx(empyrical.beta(returns, bench), rel=1e-9)
    assert s.alpha == pytest.approx(empyrical.alpha(returns, bench, annualization=ppy), rel=1e-9)
    pnls = np.array([t.pnl for t in result.trades])
    assert s.trades == pnls.size and s.win_rate == pytest.approx((pnls > 0).mean())
    assert s.profit_factor == pytest.approx(pnls[pnls > 0].sum() / -pnls[pnls < 0].sum())
    assert s.commissions == pytest.approx(sum(f.commission for f in goog_reference.collector.fills))
    assert 0 < s.exposure_time < 1 and s.turnover > 0 and s.max_drawdown_bars > 0


def test_batch_size_never_changes_a_decision_on_goog(goog_reference: Session) -> None:
    reference = order_log(goog_reference)
    assert reference
    assert order_log(run(with_batch(GOOG, 1))) == reference
    assert order_log(run(with_batch(GOOG, 37))) == reference


def test_batch_size_never_changes_a_decision_across_symbols() -> None:
    reference = order_log(run(with_batch(SP500, 1000)))
    assert len({o for o in reference}) > 20
    assert order_log(run(with_batch(SP500, 1))) == reference


def test_equity_recomputed_from_the_fill_log_agrees_to_the_cent(goog_reference: Session) -> None:
    collector = goog_reference.collector
    cash, quantity = collector.initial_equity, 0.0
    for fill in collector.fills:
        signed = fill.quantity if fill.side == pb.ORDER_SIDE_BUY else -fill.quantity
        cash -= signed * fill.price + fill.commission
        quantity += signed
    last_close = dataset("goog").bars()["close"][-1]
    assert round(cash + quantity * last_close, 2) == round(collector.result.summary.final_equity, 2)


def _inject_bad_bars(bars: pl.DataFrame) -> tuple[pl.DataFrame, dict[int, int]]:
    """Bad rows placed where a feed would deliver them; none of them may change a decision."""
    rows = bars.to_dicts()
    day = 86_400 * 10**9
    noon = day // 2

    def at(i: int, **change: float) -> dict:
        return {**rows[i], **change}

    bad = {
        40: (at(40, event_time_ns=rows[40]["event_time_ns"] + noon, close=float("nan")), pb.BAR_REJECT_REASON_NON_FINITE),
        90: (at(90, event_time_ns=rows[90]["event_time_ns"] + noon, open=-5.0), pb.BAR_REJECT_REASON_NON_POSITIVE_PRICE),
        150: (at(150, event_time_ns=rows[150]["event_time_ns"] + noon, high=1.0, low=2.0), pb.BAR_REJECT_REASON_HIGH_BELOW_LOW),
        200: (at(200), pb.BAR_REJECT_REASON_DUPLICATE),  # the same bar twice
        260: (at(100), pb.BAR_REJECT_REASON_OUT_OF_ORDER),  # an old bar arriving late
        300: (at(300, symbol="NOPE", event_time_ns=rows[300]["event_time_ns"] + noon), pb.BAR_REJECT_REASON_UNKNOWN_SYMBOL),
        350: (at(350, event_time_ns=rows[350]["event_time_ns"] + noon, volume=-1.0), pb.BAR_REJECT_REASON_NEGATIVE_VOLUME),
        400: (at(400, event_time_ns=rows[400]["event_time_ns"] + noon, open=rows[400]["high"] * 2, high=rows[400]["high"]),
              pb.BAR_REJECT_REASON_OUTSIDE_RANGE),
    }  # fmt: skip
    out: list[dict] = []
    for i, row in enumerate(rows):
        out.append(row)
        if i in bad:
            out.append(bad[i][0])
    expected: dict[int, int] = {}
    for _, reason in bad.values():
        expected[reason] = expected.get(reason, 0) + 1
    return pl.DataFrame(out, schema=bars.schema), expected


def test_bad_bars_are_refused_with_a_reason_and_the_run_goes_on(goog_reference: Session) -> None:
    config = with_batch(GOOG, 1000)
    clean = MarketData.from_config(config)
    dirty_bars, expected = _inject_bad_bars(clean.bars)
    session = run(config, MarketData(clean.dataset, Universe(["GOOG"]), dirty_bars))
    assert session.collector.result.summary.bars_rejected == sum(expected.values())
    assert session.source.bars_rejected == sum(expected.values())
    assert order_log(session) == order_log(goog_reference)
    expected_summary = pb_copy(goog_reference.collector.result.summary)
    expected_summary.bars_rejected = sum(expected.values())
    assert session.collector.result.summary == expected_summary


def pb_copy(message):  # noqa: ANN001, ANN201
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def test_rejected_bars_carry_their_reason(goog_reference: Session) -> None:
    config = with_batch(GOOG, 1)
    clean = MarketData.from_config(config)
    dirty_bars, expected = _inject_bad_bars(clean.bars.head(500))
    session = Session(config, bus=InProcessBus(), clock=SimulatedClock(),
                      market_data=MarketData(clean.dataset, Universe(["GOOG"]), dirty_bars))  # fmt: skip
    seen: dict[int, int] = {}
    messages: list[str] = []

    async def go() -> None:
        async def on_rejected(kind: str, events: list) -> None:
            for e in events:
                seen[e.reason] = seen.get(e.reason, 0) + 1
                messages.append(e.message)

        await session.bus.tap(on_rejected, lambda kind: kind == "rejected_bar")
        await session.start()
        await session.run()

    asyncio.run(go())
    assert seen == expected
    assert any("high 1.0 < low 2.0" in m for m in messages)
    assert session.completed


def test_eurusd_hourly_bars_run_through_the_graph() -> None:
    config = load_config(environ={}, overrides={
        "market_data.dataset": "eurusd", "market_data.batch_bar_times": 1000, "risk.max_position_pct": 1.0,
        # A currency pair around 1.1 with tick volumes, round the clock: no stock universe, hours or volume filter.
        "risk.universe.enabled": False, "risk.filters.market_hours": False, "risk.filters.min_avg_volume": 0.0,
        "execution.commission_per_share": 0.0, "execution.commission_min": 0.0, "execution.commission_bps": 0.2,
        "execution.fractional_shares": True})  # fmt: skip
    result = run(config).collector.result
    s = result.summary
    assert s.bars == 5000 and s.orders > 20 and s.periods_per_year == 24 * 5 * 52
    hours = {(t.entry_time_ns // 3_600_000_000_000) % 24 for t in result.trades}
    assert len(hours) > 5  # trades at many hours of the day: hourly bars, not daily
    assert all(t.quantity != int(t.quantity) for t in result.trades[:5])  # fractional units
