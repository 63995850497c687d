"""Portfolio construction: Lean's weighting rules, skfolio's optimisers on the right window, resizing held
positions through execution (brackets included), and the whole graph comparing methods side by side."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import polars as pl
import pytest

from tests.test_engines import DAY, FakeContext, bars, execution, header
from tests.test_graph import order_log, run, with_batch
from utp.core.config import ExitConfig, PortfolioConfig, RiskConfig
from utp.core.controls import ControlState
from utp.core.kinds import KINDS
from utp.core.universe import Universe
from utp.engines.exit import ExitEngine
from utp.engines.portfolio import PortfolioConstructionEngine
from utp.engines.risk import RiskEngine
from utp.storage.datasets import dataset
from utp.v1 import events_pb2 as pb

SYMBOLS = ("AAPL", "JPM", "XOM", "KO")
APPROVED = ControlState(execution_approved=True)


def signal(symbol: str, t: int, direction: int, price: float = 10.0, confidence: float = 1.0,
           components: tuple[tuple[str, int, float, float], ...] = ()) -> pb.ScoredSignal:  # fmt: skip
    return pb.ScoredSignal(
        header=header("scored_signal", symbol, t), direction=direction, confidence=confidence, score=confidence,
        reference_price=price, active_alphas=[c[0] for c in components] or ["ema_cross"],
        components=[pb.ComponentSignal(source=s, direction=d, confidence=c, weight=w) for s, d, c, w in components],
    )  # fmt: skip


def construct(method: str, signals: list[pb.ScoredSignal], *, symbols: tuple[str, ...] = SYMBOLS,
              risk: RiskConfig | None = None, bar_frame: pl.DataFrame | None = None, **config: object) -> pl.DataFrame:  # fmt: skip
    engine = PortfolioConstructionEngine(PortfolioConfig(method=method, **config), risk or RiskConfig(max_position_pct=1.0),  # type: ignore[arg-type]
                                         Universe(symbols))  # fmt: skip
    ctx = FakeContext()
    frames = {"scored_signal": KINDS["scored_signal"].to_frame(signals)}
    if bar_frame is not None:
        frames["bar"] = bar_frame
    engine.on_step(ctx, max(s.header.event_time_ns for s in signals), frames)
    out = ctx.emitted.get("portfolio_target", [])
    return pl.concat(out) if out else KINDS["portfolio_target"].empty_frame()


def weights_at(frame: pl.DataFrame, t: int) -> dict[str, float]:
    rows = frame.filter(pl.col("event_time_ns") == t)
    return dict(zip(rows["symbol"].to_list(), rows["target_percent"].to_list(), strict=True))


# -- Lean's weighting rules ------------------------------------------------------------------------
def test_equal_weight_splits_the_portfolio_and_resizes_the_others_as_signals_come_and_go() -> None:
    targets = construct("equal", [signal("AAPL", DAY, pb.DIRECTION_UP), signal("JPM", 2 * DAY, pb.DIRECTION_UP),
                                  signal("XOM", 2 * DAY, pb.DIRECTION_UP), signal("KO", 3 * DAY, pb.DIRECTION_FLAT),
                                  signal("JPM", 4 * DAY, pb.DIRECTION_DOWN)], gross=0.9)  # fmt: skip
    assert weights_at(targets, DAY) == {"AAPL": pytest.approx(0.9)}
    assert weights_at(targets, 2 * DAY) == {s: pytest.approx(0.3) for s in ("AAPL", "JPM", "XOM")}
    assert weights_at(targets, 3 * DAY) == {}  # FLAT leaves everything where it was
    # DOWN without shorts takes JPM out; the other two grow back to half each.
    assert weights_at(targets, 4 * DAY) == {"AAPL": 0.45, "JPM": 0.0, "XOM": 0.45}
    resized = targets.filter((pl.col("event_time_ns") == 2 * DAY) & (pl.col("symbol") == "AAPL"))
    assert resized["correlation_id"][0] == f"rebalance/AAPL/{2 * DAY}" and resized["reference_price"][0] == 10.0
    assert set(targets["rebalance_band"].to_list()) == {0.02} and set(targets["method"].to_list()) == {"equal"}


def test_confidence_weighting_follows_leans_rule() -> None:
    # Lean: weights are the confidences, scaled down only when they sum to more than one.
    one = construct("confidence", [signal("AAPL", DAY, pb.DIRECTION_UP, confidence=0.7)])
    assert weights_at(one, DAY) == {"AAPL": pytest.approx(0.7)}
    two = construct("confidence", [signal("AAPL", DAY, pb.DIRECTION_UP, confidence=0.9),
                                   signal("KO", DAY, pb.DIRECTION_UP, confidence=0.6)])  # fmt: skip
    assert weights_at(two, DAY) == {"AAPL": pytest.approx(0.6), "KO": pytest.approx(0.4)}
    shorts = construct("confidence", [signal("AAPL", DAY, pb.DIRECTION_UP, confidence=0.3),
                                      signal("KO", DAY, pb.DIRECTION_DOWN, confidence=0.5)],
                       risk=RiskConfig(max_position_pct=1.0, allow_short=True))  # fmt: skip
    assert weights_at(shorts, DAY) == {"AAPL": pytest.approx(0.3), "KO": pytest.approx(-0.5)}


def test_insight_weighting_uses_the_share_of_the_vote_behind_the_direction() -> None:
    split = (("ema_cross", pb.DIRECTION_UP, 1.0, 0.5), ("rsi", pb.DIRECTION_UP, 0.8, 0.25),
             ("macd", pb.DIRECTION_DOWN, 1.0, 0.25))  # fmt: skip
    unanimous = (("ema_cross", pb.DIRECTION_UP, 1.0, 0.6), ("rsi", pb.DIRECTION_UP, 1.0, 0.4))
    targets = construct("insight", [signal("AAPL", DAY, pb.DIRECTION_UP, confidence=0.45, components=split),
                                    signal("KO", DAY, pb.DIRECTION_UP, confidence=1.0, components=unanimous)])  # fmt: skip
    backing = {"AAPL": 0.5 * 1.0 + 0.25 * 0.8, "KO": 1.0}
    total = sum(backing.values())
    assert weights_at(targets, DAY) == {s: pytest.approx(w / total) for s, w in backing.items()}


def test_fixed_keeps_one_target_per_signal_and_never_resizes() -> None:
    targets = construct("fixed", [signal("AAPL", DAY, pb.DIRECTION_UP), signal("JPM", 2 * DAY, pb.DIRECTION_UP)],
                        risk=RiskConfig(max_position_pct=0.3))  # fmt: skip
    assert targets["symbol"].to_list() == ["AAPL", "JPM"] and targets["target_percent"].to_list() == [0.3, 0.3]
    assert targets["rebalance_band"].to_list() == [0.0, 0.0]


# -- skfolio's optimisers on the window up to the decision ------------------------------------------
@pytest.fixture(scope="module")
def real_bars() -> pl.DataFrame:
    ds = dataset("sp500")
    from datetime import date

    return ds.bars(list(SYMBOLS), date(2012, 1, 1), date(2013, 12, 31))


def _skfolio_weights(method: str, returns: np.ndarray, views: list[str] | None = None) -> np.ndarray:
    from skfolio import RiskMeasure
    from skfolio.optimization import HierarchicalRiskParity, MeanRisk, ObjectiveFunction, RiskBudgeting
    from skfolio.prior import BlackLitterman

    frame = pd.DataFrame(returns, columns=[f"a{i}" for i in range(returns.shape[1])])
    model = {
        "hrp": lambda: HierarchicalRiskParity(),
        "risk_parity": lambda: RiskBudgeting(risk_measure=RiskMeasure.VARIANCE),
        "mean_variance": lambda: MeanRisk(risk_measure=RiskMeasure.VARIANCE,
                                          objective_function=ObjectiveFunction.MINIMIZE_RISK),
        "black_litterman": lambda: MeanRisk(risk_measure=RiskMeasure.VARIANCE,
                                            objective_function=ObjectiveFunction.MINIMIZE_RISK,
                                            prior_estimator=BlackLitterman(views=views)),
    }[method]()  # fmt: skip
    return model.fit(frame).weights_


@pytest.mark.parametrize("method", ["hrp", "risk_parity", "mean_variance", "black_litterman"])
def test_optimisers_are_skfolio_fitted_on_the_lookback_up_to_the_decision(real_bars: pl.DataFrame, method: str) -> None:
    times = np.unique(real_bars["event_time_ns"].to_numpy())
    t = int(times[300])
    confidence = {"AAPL": 0.9, "JPM": 0.6, "XOM": 0.8}
    signals = [signal(s, t, pb.DIRECTION_UP if s != "XOM" else pb.DIRECTION_DOWN, confidence=c)
               for s, c in confidence.items()]  # fmt: skip
    risk = RiskConfig(max_position_pct=1.0, allow_short=True)
    targets = construct(method, signals, risk=risk, bar_frame=real_bars, objective="min_risk", lookback=120)
    got = weights_at(targets, t)
    wide = real_bars.pivot(on="symbol", index="event_time_ns", values="close").sort("event_time_ns")
    window = wide.filter(pl.col("event_time_ns") <= t).tail(121)
    closes = window.select(list(confidence)).to_numpy()
    returns = (closes[1:] / closes[:-1] - 1.0) * np.array([1.0, 1.0, -1.0])  # XOM short: negated returns
    views = [f"a{i} == {0.10 / 252 * c:.12g}" for i, c in enumerate(confidence.values())]
    expected = _skfolio_weights(method, returns, views)
    expected = np.clip(expected, 0, None) / np.clip(expected, 0, None).sum()
    assert got == {"AAPL": pytest.approx(expected[0], abs=1e-9), "JPM": pytest.approx(expected[1], abs=1e-9),
                   "XOM": pytest.approx(-expected[2], abs=1e-9)}  # fmt: skip
    # No look-ahead: the bars after the decision change nothing.
    later = real_bars.with_columns(
        pl.when(pl.col("event_time_ns") > t).then(pl.col("close") * 3.0).otherwise(pl.col("close")).alias("close"))
    again = construct(method, signals, risk=risk, bar_frame=later, objective="min_risk", lookback=120)
    assert weights_at(again, t) == got


def test_too_little_history_falls_back_to_equal_weights_and_says_so(real_bars: pl.DataFrame, caplog) -> None:  # noqa: ANN001
    t = int(np.unique(real_bars["event_time_ns"].to_numpy())[10])
    targets = construct("hrp", [signal("AAPL", t, pb.DIRECTION_UP), signal("KO", t, pb.DIRECTION_UP)],
                        bar_frame=real_bars)  # fmt: skip
    assert weights_at(targets, t) == {"AAPL": 0.5, "KO": 0.5}
    assert "min_history" in caplog.text


# -- execution resizes held positions ------------------------------------------------------------
def resize_step(engine, ctx, bar_rows, targets: list[tuple[str, int, float, float]], exits: ExitConfig) -> None:  # noqa: ANN001
    """Execute (symbol, time, target, band) portfolio targets through risk and exit with the bars."""
    frames = {"bar": bars(bar_rows)}
    if targets:
        frame = pl.DataFrame(
            {"event_id": [f"portfolio_target/{s}@{t}" for s, t, _, _ in targets],
             "correlation_id": [f"{s}@{t}" for s, t, _, _ in targets], "event_time_ns": [t for _, t, _, _ in targets],
             "symbol": [s for s, _, _, _ in targets], "target_percent": [w for _, _, w, _ in targets],
             "reference_price": [10.0] * len(targets), "direction": [pb.DIRECTION_UP] * len(targets),
             "confidence": [1.0] * len(targets), "strategy": ["ema_cross"] * len(targets),
             "method": ["equal"] * len(targets), "rebalance_band": [b for _, _, _, b in targets]},
        ).cast(KINDS["portfolio_target"].schema)  # fmt: skip
        decisions = RiskEngine(RiskConfig(max_position_pct=1.0), APPROVED).decide(frame)
        frames["risk_decision"] = decisions
        frames["order_intent"] = ExitEngine(exits).legs_for(decisions)
    engine.on_step(ctx, bar_rows[-1][0], frames)


def test_a_moved_target_resizes_the_position_beyond_the_band_only() -> None:
    engine, ctx = execution(), FakeContext()
    no_exits = ExitConfig(take_profit_pct=0.0, stop_loss_pct=0.0)
    resize_step(engine, ctx, [(DAY, "AAA", 10, 10, 10, 10)], [("AAA", DAY, 0.5, 0.02)], no_exits)
    resize_step(engine, ctx, [(2 * DAY, "AAA", 10, 10, 10, 10)], [("AAA", 2 * DAY, 0.51, 0.02)], no_exits)  # inside
    resize_step(engine, ctx, [(3 * DAY, "AAA", 10, 10, 10, 10)], [("AAA", 3 * DAY, 0.25, 0.02)], no_exits)  # down
    resize_step(engine, ctx, [(4 * DAY, "AAA", 10, 10, 10, 10)], [("AAA", 4 * DAY, 0.8, 0.02)], no_exits)  # up
    resize_step(engine, ctx, [(5 * DAY, "AAA", 10, 10, 10, 10)], [], no_exits)
    assert [(f.side, f.quantity) for f in ctx.messages("fill")] == [
        (pb.ORDER_SIDE_BUY, 500), (pb.ORDER_SIDE_SELL, 250), (pb.ORDER_SIDE_BUY, 550)]  # fmt: skip
    assert engine.portfolio.positions["AAA"].quantity == 800
    assert engine.portfolio.cash == pytest.approx(10_000 - 800 * 10)


def test_a_resize_moves_the_bracket_to_the_whole_position() -> None:
    engine, ctx = execution(), FakeContext()
    exits = ExitConfig(take_profit_pct=0.5, stop_loss_pct=0.2)
    resize_step(engine, ctx, [(DAY, "AAA", 10, 10, 10, 10)], [("AAA", DAY, 0.5, 0.02)], exits)
    resize_step(engine, ctx, [(2 * DAY, "AAA", 10, 10, 10, 10)], [("AAA", 2 * DAY, 0.8, 0.02)], exits)
    # The old legs went with the resize; the new ones guard all 800 shares, not only the 300 added.
    resize_step(engine, ctx, [(3 * DAY, "AAA", 10, 10, 10, 10), (4 * DAY, "AAA", 9, 9, 7, 7)], [], exits)
    fills = [(f.side, f.quantity, f.reason) for f in ctx.messages("fill")]
    assert fills == [(pb.ORDER_SIDE_BUY, 500, pb.INTENT_REASON_ENTRY), (pb.ORDER_SIDE_BUY, 300, pb.INTENT_REASON_ENTRY),
                     (pb.ORDER_SIDE_SELL, 800, pb.INTENT_REASON_STOP_LOSS)]  # fmt: skip
    assert engine.portfolio.positions == {} and engine.broker.open_orders() == []


def test_a_resize_down_shrinks_the_bracket_so_a_stop_never_reverses_the_position() -> None:
    engine, ctx = execution(), FakeContext()
    exits = ExitConfig(take_profit_pct=0.5, stop_loss_pct=0.2)
    resize_step(engine, ctx, [(DAY, "AAA", 10, 10, 10, 10)], [("AAA", DAY, 0.8, 0.02)], exits)
    resize_step(engine, ctx, [(2 * DAY, "AAA", 10, 10, 10, 10)], [("AAA", 2 * DAY, 0.3, 0.02)], exits)
    resize_step(engine, ctx, [(3 * DAY, "AAA", 10, 10, 10, 10), (4 * DAY, "AAA", 9, 9, 7, 7)], [], exits)
    fills = [(f.side, f.quantity, f.reason) for f in ctx.messages("fill")]
    assert fills == [(pb.ORDER_SIDE_BUY, 800, pb.INTENT_REASON_ENTRY), (pb.ORDER_SIDE_SELL, 500, pb.INTENT_REASON_ENTRY),
                     (pb.ORDER_SIDE_SELL, 300, pb.INTENT_REASON_STOP_LOSS)]  # fmt: skip
    assert engine.portfolio.positions == {} and engine.broker.open_orders() == []


# -- the whole graph ---------------------------------------------------------------------------------
SP500 = {"market_data.dataset": "sp500", "market_data.symbols": list(SYMBOLS), "market_data.start": "2010-01-01",
         "market_data.end": "2012-12-31", "risk.max_position_pct": 0.6, "portfolio.lookback": 120}  # fmt: skip


@pytest.mark.parametrize("method", ["equal", "hrp"])
def test_batch_size_never_changes_a_weighted_portfolios_orders(method: str) -> None:
    settings = {**SP500, "portfolio.method": method}
    one, many = run(with_batch(settings, 1)), run(with_batch(settings, 1000))
    assert order_log(one) == order_log(many)
    result = many.collector.result
    assert result.summary.orders > 20 and result.summary.trades > 5
    # Resizes happened: more entries (buys on a long-only book) than round trips opened.
    buys = [f for f in many.collector.fills if f.side == pb.ORDER_SIDE_BUY]
    assert len(buys) > result.summary.trades


def test_compare_runs_every_method_into_one_report(tmp_path, capsys) -> None:  # noqa: ANN001
    from utp.daemon.cli import main

    methods = "fixed,equal,risk_parity"
    sets = [a for key, value in SP500.items() if key != "market_data.symbols" for a in ("--set", f"{key}={value}")]
    code = main(["backtest", *sets, "--symbols", ",".join(SYMBOLS), "--compare", f"portfolio.method={methods}",
                 "--report", str(tmp_path / "report"), "--json", "--no-progress"])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    names = [f"portfolio.method={m}" for m in methods.split(",")]
    assert list(printed["runs"]) == names
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert list(metrics["runs"]) == names
    for name in names:
        assert metrics["runs"][name]["final_equity"] == pytest.approx(printed["runs"][name]["final_equity"])
    html = (tmp_path / "report" / "index.html").read_text()
    assert all(name in html for name in names)
    finals = {printed["runs"][n]["final_equity"] for n in names}
    assert len(finals) == 3 and all(math.isfinite(f) for f in finals)  # three different portfolios


def test_an_unknown_method_is_a_clear_configuration_error(capsys) -> None:  # noqa: ANN001
    from utp.daemon.cli import main

    assert main(["backtest", "--portfolio", "kelly", "--no-progress"]) == 2
    assert "portfolio.method must be one of" in capsys.readouterr().err
