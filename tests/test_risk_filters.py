"""The risk engine's entry filters and universe screen, through the engine: each rule at and either side of its
threshold, exits never filtered, unknown volume, the earnings file, hours on the real XNYS calendar (half day,
holiday) with minute bars, the universe refreshed once per session day, and decisions that do not depend on how
many bar times a step holds (nor on a restart)."""

from __future__ import annotations

import asyncio
import logging
import pickle
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import polars as pl
import pytest

from utp.core.config import ConfigError, RiskConfig, SignalFilterConfig, UniverseConfig, load_config
from utp.core.controls import ControlState
from utp.core.filters import day_to_ns
from utp.core.kinds import KINDS
from utp.core.screening import screen_universe
from utp.engines.risk import RiskEngine
from utp.v1 import events_pb2 as pb

NY = ZoneInfo("America/New_York")
MINUTE = 60 * 10**9
DAY = 86_400 * 10**9
APPROVED = ControlState(execution_approved=True)
#: Every filter off: each test turns on the one it is about.
OFF = SignalFilterConfig(market_hours=False, min_avg_volume=0.0, max_spread=0.0, earnings_blackout_days=0)
NO_SCREEN = UniverseConfig(enabled=False)


def et(text: str) -> int:
    """ns UTC of a New York wall-clock time."""
    return int(datetime.fromisoformat(text).replace(tzinfo=NY).timestamp()) * 10**9


def sessions(start: str, n: int) -> list[int]:
    """00:00 UTC of the first n weekdays from `start` (how daily bars are stamped)."""
    days = np.busday_offset(np.datetime64(start, "D"), np.arange(n), roll="forward")
    return [day_to_ns(d) for d in days]


def bars(rows: list[tuple], interval: int = DAY) -> pl.DataFrame:
    """Bars from (time, symbol, close, volume[, high, low]); open = close, high/low = close unless given."""
    out = []
    for t, sym, close, volume, *hl in rows:
        high, low = hl if hl else (close, close)
        header = pb.EventHeader(event_id=f"bar/{sym}@{t}", correlation_id=f"{sym}@{t}", event_time_ns=t, symbol=sym)
        out.append(pb.Bar(header=header, open=close, high=high, low=low, close=close, volume=volume,
                          interval_ns=interval))
    return KINDS["bar"].to_frame(out).sort("event_time_ns", maintain_order=True)


def targets(rows: list[tuple]) -> pl.DataFrame:
    """Portfolio targets from (time, symbol, target_percent[, reference price])."""
    out = []
    for t, sym, target, *price in rows:
        out.append(pb.PortfolioTarget(
            header=pb.EventHeader(event_id=f"portfolio_target/{sym}@{t}", correlation_id=f"{sym}@{t}",
                                  event_time_ns=t, symbol=sym),
            target_percent=target, reference_price=price[0] if price else 10.0, strategy="test"))  # fmt: skip
    return KINDS["portfolio_target"].to_frame(out).sort("event_time_ns", maintain_order=True)


def engine(filters: SignalFilterConfig = OFF, universe: UniverseConfig = NO_SCREEN, *,
           controls: ControlState = APPROVED, **risk: object) -> RiskEngine:  # fmt: skip
    config = RiskConfig(max_position_pct=0.5, filters=filters, universe=universe, **risk)  # type: ignore[arg-type]
    return RiskEngine(config, controls)


def verdict(decisions: pl.DataFrame) -> list[int]:
    return decisions["reason"].to_list()


class Context:
    """What on_step needs of an engine context: a log and a place to emit to."""

    def __init__(self) -> None:
        self.log = logging.getLogger("test")
        self.emitted: list[pl.DataFrame] = []

    def emit(self, kind: str, frame: pl.DataFrame) -> None:
        assert kind == "risk_decision"
        self.emitted.append(frame)


# --------------------------------------------------------------------------------------------------------------
# The universe screen
# --------------------------------------------------------------------------------------------------------------

SCREEN = UniverseConfig(lookback=2, min_price=5.0, max_price=500.0, min_dollar_volume=1e6, max_spread=0.005)


@pytest.mark.parametrize(
    ("close", "volume", "eligible", "text"),
    [
        (4.99, 1e6, False, "price 4.99 below 5.00"), (5.0, 1e6, True, ""), (5.01, 1e6, True, ""),
        (499.99, 1e4, True, ""), (500.0, 1e4, True, ""), (500.01, 1e4, False, "price 500.01 above 500.00"),
        # dollar volume 10 x volume against 1M
        (10.0, 99_999.0, False, "average dollar volume 1000.0k below 1.0M"), (10.0, 100_000.0, True, ""),
        (10.0, 100_001.0, True, ""),
    ],
)  # fmt: skip
def test_the_screen_price_and_dollar_volume_at_and_either_side_of_their_limits(close, volume, eligible, text):
    t = sessions("2024-01-02", 3)
    risk = engine(universe=SCREEN)
    decisions = risk.decide(targets([(t[2], "AAA", 0.1, close)]),
                            bars([(ti, "AAA", close, volume) for ti in t]))  # fmt: skip
    assert verdict(decisions) == [pb.RISK_REASON_APPROVED if eligible else pb.RISK_REASON_NOT_IN_UNIVERSE]
    if not eligible:
        assert decisions["message"][0] == f"AAA: not in the universe screened for the 2024-01-04 session: {text}"


def test_the_screen_spread_at_and_either_side_of_its_limit():
    t = sessions("2024-01-02", 4)
    rows = [(t[0], "AAA", 10.0, 1e6, 10.2, 9.9), (t[1], "AAA", 10.1, 1e6, 10.3, 9.95),
            (t[2], "AAA", 10.0, 1e6, 10.1, 9.8), (t[3], "AAA", 10.05, 1e6, 10.2, 9.9)]  # fmt: skip
    frame = bars(rows)
    estimate = screen_universe(frame, t[3], lookback=3, max_spread=1.0)["spread"][0]
    assert 0.001 < estimate < 0.1  # the bars do carry a spread estimate

    def reason(limit: float) -> int:
        universe = msgspec.structs.replace(SCREEN, lookback=3, max_estimated_spread=limit)
        return verdict(engine(universe=universe).decide(targets([(t[3], "AAA", 0.1)]), frame))[0]

    assert reason(estimate * 0.999) == pb.RISK_REASON_NOT_IN_UNIVERSE
    assert reason(estimate) == pb.RISK_REASON_NOT_IN_UNIVERSE  # eligible only strictly below
    assert reason(estimate * 1.001) == pb.RISK_REASON_APPROVED
    assert reason(0.0) == pb.RISK_REASON_APPROVED  # 0 = off


def test_a_symbol_needs_lookback_bars_and_is_screened_with_the_bars_up_to_the_refresh():
    t = sessions("2024-01-02", 3)
    risk = engine(universe=SCREEN)
    frame = bars([(ti, "AAA", 10.0, 1e6) for ti in t])
    first = risk.decide(targets([(t[0], "AAA", 0.1)]), frame.head(1))
    assert verdict(first) == [pb.RISK_REASON_NOT_IN_UNIVERSE] and "only 1 bars of 2" in first["message"][0]
    assert verdict(risk.decide(targets([(t[1], "AAA", 0.1)]), frame.slice(1, 1))) == [pb.RISK_REASON_APPROVED]
    # A symbol with no bar before the refresh stays out for that whole session day.
    late = risk.decide(targets([(t[1] + 1, "BBB", 0.1)]), KINDS["bar"].empty_frame())
    assert verdict(late) == [pb.RISK_REASON_NOT_IN_UNIVERSE] and late["message"][0].endswith("no bars up to as_of")


def test_the_universe_is_refreshed_once_per_session_day_not_mid_session():
    """Minute bars: the price crosses $500 at 11:00; entries the rest of that session keep the morning's screen,
    the next session's screen (from the bars up to its first bar) refuses them."""
    friday = [et("2024-01-12 15:58"), et("2024-01-12 15:59")]  # Monday the 15th is a holiday
    day1 = [et("2024-01-16 09:30") + i * MINUTE for i in range(390)]
    day2 = [et("2024-01-17 09:30") + i * MINUTE for i in range(3)]
    price = [490.0] * 2 + [490.0 if t < et("2024-01-16 11:00") else 510.0 for t in day1] + [510.0] * 3
    frame = bars([(t, "AAA", p, 1e5) for t, p in zip(friday + day1 + day2, price, strict=True)], MINUTE)
    wanted = [et("2024-01-16 10:59"), et("2024-01-16 11:00"), et("2024-01-16 15:59"), day2[0], day2[2]]
    risk = engine(universe=SCREEN)
    decisions = risk.decide(targets([(t, "AAA", 0.1) for t in wanted]), frame)
    ok, out = pb.RISK_REASON_APPROVED, pb.RISK_REASON_NOT_IN_UNIVERSE
    assert verdict(decisions) == [ok, ok, ok, out, out]
    assert decisions["message"][3] == ("AAA: not in the universe screened for the 2024-01-17 session: "
                                       "price 510.00 above 500.00")  # fmt: skip


def test_bars_after_the_close_refresh_the_next_sessions_screen():
    risk = engine(universe=SCREEN)
    frame = bars([(et("2024-01-12 15:59"), "AAA", 490.0, 1e5), (et("2024-01-16 15:59"), "AAA", 490.0, 1e5),
                  (et("2024-01-16 17:00"), "AAA", 510.0, 1e5)], MINUTE)  # fmt: skip
    decisions = risk.decide(targets([(et("2024-01-16 15:59"), "AAA", 0.1), (et("2024-01-16 17:00"), "AAA", 0.1)]),
                            frame)  # fmt: skip
    assert verdict(decisions) == [pb.RISK_REASON_APPROVED, pb.RISK_REASON_NOT_IN_UNIVERSE]
    assert "2024-01-17 session" in decisions["message"][1]


# --------------------------------------------------------------------------------------------------------------
# Market hours (intraday bars only), on the real calendar
# --------------------------------------------------------------------------------------------------------------

HOURS = msgspec.structs.replace(OFF, market_hours=True)


@pytest.mark.parametrize(
    ("bar_start", "allowed"),
    [
        # An entry is decided at its bar's close: the 09:29 bar closes at 09:30, the 15:44 bar at 15:45.
        ("2024-01-16 09:28", False), ("2024-01-16 09:29", True), ("2024-01-16 15:43", True),
        ("2024-01-16 15:44", False),
        # Half day (the day after Thanksgiving closes 13:00): entries end 12:45.
        ("2024-11-29 12:43", True), ("2024-11-29 12:44", False), ("2024-11-29 14:00", False),
        # Holiday (Thanksgiving) and a Saturday: no session.
        ("2024-11-28 11:00", False), ("2024-11-30 11:00", False),
    ],
)  # fmt: skip
def test_market_hours_with_minute_bars(bar_start, allowed):
    t = et(bar_start)
    decisions = engine(HOURS).decide(targets([(t, "AAA", 0.1)]), bars([(t, "AAA", 10.0, 1e5)], MINUTE))
    assert verdict(decisions) == [pb.RISK_REASON_APPROVED if allowed else pb.RISK_REASON_MARKET_CLOSED]
    if not allowed:
        message = decisions["message"][0]
        assert message.startswith("AAA: ")
        if bar_start.startswith("2024-11-28"):
            assert "no XNYS session on Thu 2024-11-28" in message
        elif bar_start.startswith("2024-11-29"):
            assert "outside entry hours 09:30-12:45" in message


def test_market_hours_do_not_judge_daily_bars_and_can_be_turned_off():
    t = day_to_ns(date(2024, 11, 28))  # a daily bar stamped 00:00 UTC (even on a holiday: it is the data's date)
    assert verdict(engine(HOURS).decide(targets([(t, "AAA", 0.1)]), bars([(t, "AAA", 10.0, 1e5)]))) == [
        pb.RISK_REASON_APPROVED]  # fmt: skip
    minute = et("2024-11-28 11:00")
    assert verdict(engine(OFF).decide(targets([(minute, "AAA", 0.1)]), bars([(minute, "AAA", 10.0, 1e5)], MINUTE))) == [
        pb.RISK_REASON_APPROVED]  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Volume, spread, earnings
# --------------------------------------------------------------------------------------------------------------

VOLUME = msgspec.structs.replace(OFF, min_avg_volume=400.0, volume_period=3)


@pytest.mark.parametrize(("last", "reason"), [(999.0, pb.RISK_REASON_LOW_VOLUME), (1000.0, pb.RISK_REASON_APPROVED),
                                              (1001.0, pb.RISK_REASON_APPROVED)])  # fmt: skip
def test_average_volume_at_and_either_side_of_the_limit_including_the_decision_bar(last, reason):
    """volume_period 3: the bar 4 sessions back (1e9) is out of the window; the decision bar's is in."""
    t = sessions("2024-01-02", 4)
    frame = bars([(t[0], "AAA", 10.0, 1e9), (t[1], "AAA", 10.0, 100.0), (t[2], "AAA", 10.0, 100.0),
                  (t[3], "AAA", 10.0, last)])  # fmt: skip
    decisions = engine(VOLUME).decide(targets([(t[3], "AAA", 0.1)]), frame)
    assert verdict(decisions) == [reason]
    if reason == pb.RISK_REASON_LOW_VOLUME:
        assert decisions["message"][0] == "AAA: average volume 400 below 400"  # 399.67 shown rounded


def test_unknown_volume_passes_the_volume_filter_and_the_dollar_volume_criterion(caplog):
    """sp500-like bars: close only, volume 0 = unknown. A symbol with a real but tiny volume is refused."""
    t = sessions("2024-01-02", 3)
    rows = [(ti, sym, 10.0, 0.0 if sym == "ZERO" else 1.0) for ti in t for sym in ("ZERO", "TINY")]
    risk = engine(VOLUME, msgspec.structs.replace(SCREEN, min_dollar_volume=1e6))
    with caplog.at_level(logging.INFO, logger="utp.engine.risk"):
        first = risk.decide(targets([(t[2], "ZERO", 0.1), (t[2], "TINY", 0.1)]), bars(rows))
        risk.decide(targets([(t[2] + 1, "ZERO", 0.1)]))
    assert verdict(first) == [pb.RISK_REASON_APPROVED, pb.RISK_REASON_NOT_IN_UNIVERSE]
    assert "average dollar volume 10 below 1.0M" in first["message"][1]
    logged = [r.getMessage() for r in caplog.records if "volume unknown" in r.getMessage()]
    assert len(logged) == 1 and logged[0].startswith("ZERO:")  # once per symbol
    # With the screen off, the tiny volume meets the volume filter instead.
    alone = engine(VOLUME).decide(targets([(t[2], "ZERO", 0.1), (t[2], "TINY", 0.1)]), bars(rows))
    assert verdict(alone) == [pb.RISK_REASON_APPROVED, pb.RISK_REASON_LOW_VOLUME]


def test_the_spread_filter_applies_only_with_quotes():
    t = day_to_ns(date(2024, 1, 2))
    risk = engine(msgspec.structs.replace(OFF, max_spread=0.01))
    wanted = targets([(t, "AAA", 0.1), (t, "BBB", 0.1), (t, "CCC", 0.1)])
    assert verdict(risk.decide(wanted, bars([(t, s, 10.0, 1e5) for s in ("AAA", "BBB", "CCC")]))) == [
        pb.RISK_REASON_APPROVED] * 3  # no quote stream: NaN, the filter does not apply  # fmt: skip
    # relative spread (ask - bid) / mid: 0.0099.., exactly 0.01, 0.0100..
    risk.observe_quotes(pl.DataFrame({"symbol": ["AAA", "BBB", "CCC"], "bid": [99.505, 99.5, 99.495],
                                      "ask": [100.495, 100.5, 100.505]}))  # fmt: skip
    decisions = risk.decide(wanted)
    assert verdict(decisions) == [pb.RISK_REASON_APPROVED, pb.RISK_REASON_WIDE_SPREAD, pb.RISK_REASON_WIDE_SPREAD]
    assert decisions["message"][1] == "BBB: spread 1.0000% not below 1.0000%"


@pytest.fixture
def earnings_file(tmp_path: Path) -> Path:
    path = tmp_path / "earnings.csv"
    path.write_text("symbol,date\nAAA,2024-01-10\nBBB,2024-01-02\n")
    return path


@pytest.mark.parametrize(
    ("day", "blocked"),
    [("2024-01-05", False), ("2024-01-08", True), ("2024-01-10", True), ("2024-01-12", True), ("2024-01-16", False)],
)  # fmt: skip
def test_earnings_blackout_counts_exchange_sessions(earnings_file, day, blocked):
    """2 sessions either side of Wed 2024-01-10: Mon 8th .. Fri 12th; Mon 15th is a holiday (MLK), 16th is 3 away."""
    filters = msgspec.structs.replace(OFF, earnings_blackout_days=2, earnings_file=str(earnings_file))
    t = day_to_ns(date.fromisoformat(day))
    decisions = engine(filters).decide(targets([(t, "AAA", 0.1), (t, "AAA", 0.0)]), bars([(t, "AAA", 10.0, 1e5)]))
    expected = pb.RISK_REASON_EARNINGS_BLACKOUT if blocked else pb.RISK_REASON_APPROVED
    assert verdict(decisions) == [expected, pb.RISK_REASON_APPROVED]  # the exit always goes
    if blocked:
        assert decisions["message"][0] == f"AAA: {day} is within 2 trading days of earnings on 2024-01-10"


@pytest.mark.parametrize(
    ("content", "name", "says"),
    [("symbol,date\nAAA,2024-13-01\n", "bad.csv", "date"), (None, "missing.csv", "no such file"),
     ("symbol,day\nAAA,2024-01-02\n", "columns.csv", "date")],
)  # fmt: skip
def test_a_bad_earnings_file_is_a_clear_error_at_start(tmp_path, content, name, says):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match="risk.filters") as error:
        engine(msgspec.structs.replace(OFF, earnings_file=str(path), earnings_blackout_days=2))
    assert says in str(error.value) and name in str(error.value)


@pytest.mark.parametrize(
    ("filters", "universe", "says"),
    [(msgspec.structs.replace(OFF, calendar="NOPE"), SCREEN, "unknown exchange calendar"),
     (msgspec.structs.replace(OFF, market_hours=True, entry_start="9h30"), NO_SCREEN, "entry_start"),
     (OFF, msgspec.structs.replace(SCREEN, lookback=1), "lookback must be >= 2"),
     (OFF, msgspec.structs.replace(SCREEN, min_price=10.0, max_price=5.0), "min_price <= max_price")],
)  # fmt: skip
def test_bad_filter_settings_fail_at_start(filters, universe, says):
    with pytest.raises(ConfigError, match=says):
        engine(filters, universe)


# --------------------------------------------------------------------------------------------------------------
# Order of the checks, exits, switches
# --------------------------------------------------------------------------------------------------------------

ALL_ON = SignalFilterConfig(min_avg_volume=1e9, volume_period=2)


def test_exits_are_never_filtered_and_entries_meet_the_first_failing_rule():
    t = et("2024-11-28 11:00")  # a holiday, thin, a price above the universe's limit
    frame = bars([(t - MINUTE, "AAA", 900.0, 1.0), (t, "AAA", 900.0, 1.0)], MINUTE)
    risk = engine(ALL_ON, SCREEN)
    decisions = risk.decide(targets([(t, "AAA", 0.1, 900.0), (t, "AAA", 0.0, 900.0)]), frame)
    assert verdict(decisions) == [pb.RISK_REASON_NOT_IN_UNIVERSE, pb.RISK_REASON_APPROVED]
    assert decisions["approved"].to_list() == [False, True]
    intent = decisions.unnest("intent", separator=".")
    assert intent["intent.reason"].to_list() == [pb.INTENT_REASON_ENTRY, pb.INTENT_REASON_SIGNAL_EXIT]
    # Without the screen the next rule names it, then the next.
    assert verdict(engine(ALL_ON).decide(targets([(t, "AAA", 0.1)]), frame)) == [pb.RISK_REASON_MARKET_CLOSED]
    no_hours = msgspec.structs.replace(ALL_ON, market_hours=False)
    assert verdict(engine(no_hours).decide(targets([(t, "AAA", 0.1)]), frame)) == [pb.RISK_REASON_LOW_VOLUME]


def test_the_target_checks_come_first_and_an_approved_entry_is_still_capped():
    t = et("2024-11-28 11:00")
    frame = bars([(t, "AAA", 900.0, 1.0)], MINUTE)
    halted = engine(ALL_ON, SCREEN, controls=ControlState(halted=True, execution_approved=True))
    assert verdict(halted.decide(targets([(t, "AAA", 0.1)]), frame)) == [pb.RISK_REASON_HALTED]
    assert verdict(engine(ALL_ON, SCREEN, controls=ControlState()).decide(targets([(t, "AAA", 0.1)]), frame)) == [
        pb.RISK_REASON_EXECUTION_NOT_APPROVED]  # fmt: skip
    both = engine(ALL_ON, SCREEN).decide(targets([(t, "AAA", -0.1), (t, "AAA", 0.1, float("nan"))]), frame)
    assert verdict(both) == [pb.RISK_REASON_SHORT_NOT_ALLOWED, pb.RISK_REASON_INVALID_INTENT]
    day = day_to_ns(date(2024, 1, 2))
    capped = engine(VOLUME).decide(targets([(day, "AAA", 0.9)]), bars([(day, "AAA", 10.0, 1e6)]))
    assert verdict(capped) == [pb.RISK_REASON_APPROVED] and "approved at the cap" in capped["message"][0]


def test_zero_thresholds_turn_the_filters_off():
    t = et("2024-11-28 11:00")
    frame = bars([(t, "AAA", 900.0, 1.0)], MINUTE)
    off = engine(SignalFilterConfig(market_hours=False, min_avg_volume=0.0, max_spread=0.0, earnings_file=""),
                 UniverseConfig(enabled=False))  # fmt: skip
    assert verdict(off.decide(targets([(t, "AAA", 0.1)]), frame)) == [pb.RISK_REASON_APPROVED]
    # Each universe limit at 0 is off too (max_price 0 = no upper limit).
    open_screen = UniverseConfig(lookback=2, min_price=0.0, max_price=0.0, min_dollar_volume=0.0, max_spread=0.0)
    two = bars([(t - DAY, "AAA", 900.0, 1.0), (t, "AAA", 900.0, 1.0)], MINUTE)  # the 27th and the 29th's screen
    assert verdict(engine(OFF, open_screen).decide(targets([(t, "AAA", 0.1)]), two)) == [pb.RISK_REASON_APPROVED]


# --------------------------------------------------------------------------------------------------------------
# Batches and restarts
# --------------------------------------------------------------------------------------------------------------


def _minute_scenario() -> tuple[pl.DataFrame, pl.DataFrame]:
    """Two symbols over three sessions (one a half day), entries and exits at many times, prices crossing the
    universe's limit, volume thinning out, an entry whose screen comes from a step before its own."""
    rng = np.random.default_rng(3)
    rows, wanted = [], []
    for day in ("2024-11-27", "2024-11-29", "2024-12-02"):
        start = et(f"{day} 09:25")
        for i in range(0, 420, 7):
            t = start + i * MINUTE
            for sym, base in (("AAA", 480.0), ("BBB", 20.0)):
                price = base * (1.0 + 0.0004 * i) * float(np.exp(rng.normal(0, 0.002)))
                volume = float(rng.choice([0.0, 50.0, 5e5]))
                rows.append((t, sym, price, volume, price * 1.002, price * 0.998))
                if rng.random() < 0.4:
                    wanted.append((t, sym, float(rng.choice([0.0, 0.1, 0.3])), price))
    return bars(rows, 7 * MINUTE), targets(wanted)


def _run_in_steps(risk: RiskEngine, bar_frame: pl.DataFrame, target_frame: pl.DataFrame, bar_times_per_step: int,
                  *, restart: bool = False) -> pl.DataFrame:  # fmt: skip
    times = np.unique(bar_frame["event_time_ns"].to_numpy())
    edges = [*times[bar_times_per_step - 1 :: bar_times_per_step].tolist(), int(times[-1])]
    ctx, previous = Context(), -1
    for through in dict.fromkeys(edges):
        step = {k: f.filter((pl.col("event_time_ns") > previous) & (pl.col("event_time_ns") <= through))
                for k, f in (("bar", bar_frame), ("portfolio_target", target_frame))}  # fmt: skip
        risk.on_step(ctx, through, step)  # type: ignore[arg-type]
        if restart:  # a fresh engine from the checkpoint, as after a crash
            state = pickle.loads(pickle.dumps(risk.snapshot()))
            risk = RiskEngine(risk.config, risk.controls)
            risk.restore(state)
        previous = through
    return pl.concat(ctx.emitted)


def test_decisions_do_not_depend_on_the_bar_times_per_step_nor_on_restarts():
    bar_frame, target_frame = _minute_scenario()
    universe = UniverseConfig(lookback=5, min_price=5.0, max_price=500.0, min_dollar_volume=1e6, max_spread=0.01)
    filters = SignalFilterConfig(min_avg_volume=1e5, volume_period=4)
    whole = _run_in_steps(engine(filters, universe), bar_frame, target_frame, 10**6)
    reasons = set(whole["reason"].to_list())
    assert {pb.RISK_REASON_APPROVED, pb.RISK_REASON_NOT_IN_UNIVERSE, pb.RISK_REASON_MARKET_CLOSED,
            pb.RISK_REASON_LOW_VOLUME} <= reasons  # the scenario exercises every rule  # fmt: skip
    for per_step in (1, 7, 100):
        assert _run_in_steps(engine(filters, universe), bar_frame, target_frame, per_step).equals(whole)
    assert _run_in_steps(engine(filters, universe), bar_frame, target_frame, 3, restart=True).equals(whole)


def test_the_graph_decides_the_same_in_one_bar_time_steps_and_in_large_ones():
    """The whole session on GOOG 2007 (it crossed $500 that year) with the default filters and screen."""
    from utp.core.bus import InProcessBus
    from utp.core.clock import SimulatedClock
    from utp.daemon.session import Session

    async def decisions(batch: int) -> list[tuple[int, str, bool, int, str]]:
        config = load_config(environ={}, overrides={
            "market_data.dataset": "goog", "market_data.start": "2007-01-01", "market_data.end": "2007-12-31",
            "market_data.batch_bar_times": batch, "risk.max_position_pct": 0.95})  # fmt: skip
        bus, seen = InProcessBus(), []

        async def collect(kind: str, messages: list) -> None:  # noqa: ARG001 - tap signature
            seen.extend((m.header.event_time_ns, m.header.symbol, m.approved, m.reason, m.message) for m in messages)

        session = Session(config, bus=bus, clock=SimulatedClock(), controls=APPROVED, model_sources=[])
        await bus.tap(collect, lambda kind: kind == "risk_decision")
        await session.start()
        await session.run()
        return seen

    large = asyncio.run(decisions(500))
    assert pb.RISK_REASON_NOT_IN_UNIVERSE in {d[3] for d in large} and any(d[2] for d in large)
    assert asyncio.run(decisions(1)) == large


def test_a_checkpoint_of_the_old_shape_restores():
    risk = engine(ALL_ON, SCREEN)
    risk.restore({"controls": ControlState(halted=True)})
    assert risk.controls.halted and not risk.rings.symbols

