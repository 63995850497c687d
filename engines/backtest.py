"""Backtest: turns what the engines published during a run into its result.

Consumes: `bar`, `alpha_signal`, `scored_signal`, `order`, `fill`, `account_snapshot`, `rejected_bar`.
Produces: nothing on the bus; `result` holds the BacktestResult once every input has ended.

A backtest is the ordinary engine graph on the in-process bus with a simulated clock and broker (see
`utp.daemon.session.run_backtest`); this engine only listens, so what it reports is exactly what the
trading engines did. Trades are round trips rebuilt from the fills: a position opened from flat and
closed back to flat (a fill that crosses zero closes one trade and opens the next).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from utp.core.kinds import KINDS
from utp.core.features import Benchmark
from utp.core.performance import compute_metrics, simple_returns
from utp.core.runtime import Engine, EngineContext, Input, InputMode
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb


@dataclass(slots=True)
class _OpenTrade:
    side: int
    quantity: float  # absolute, still open
    total_quantity: float
    entry_time_ns: int
    entry_price: float  # average
    exit_value: float = 0.0
    exit_quantity: float = 0.0
    realized: float = 0.0
    commission: float = 0.0


def trades_from_fills(fills: list[pb.Fill]) -> list[api.Trade]:
    """Round trips from fills in time order."""
    open_trades: dict[str, _OpenTrade] = {}
    trades: list[api.Trade] = []
    for fill in fills:
        symbol = fill.header.symbol
        signed = fill.quantity if fill.side == pb.ORDER_SIDE_BUY else -fill.quantity
        remaining = abs(signed)
        commission_per_unit = fill.commission / fill.quantity if fill.quantity else 0.0
        trade = open_trades.get(symbol)
        if trade is not None and (trade.side == pb.ORDER_SIDE_BUY) != (signed > 0):
            closed = min(remaining, trade.quantity)
            direction = 1.0 if trade.side == pb.ORDER_SIDE_BUY else -1.0
            trade.realized += (fill.price - trade.entry_price) * closed * direction
            trade.exit_value += fill.price * closed
            trade.exit_quantity += closed
            trade.commission += commission_per_unit * closed
            trade.quantity -= closed
            remaining -= closed
            if trade.quantity <= 1e-12:
                pnl = trade.realized - trade.commission
                trades.append(
                    api.Trade(
                        symbol=symbol,
                        side=trade.side,
                        quantity=trade.total_quantity,
                        entry_time_ns=trade.entry_time_ns,
                        entry_price=trade.entry_price,
                        exit_time_ns=fill.header.event_time_ns,
                        exit_price=trade.exit_value / trade.exit_quantity,
                        pnl=pnl,
                        return_pct=pnl / (trade.entry_price * trade.total_quantity),
                    )
                )
                del open_trades[symbol]
                trade = None
        if remaining > 1e-12:
            if trade is None:
                side = pb.ORDER_SIDE_BUY if signed > 0 else pb.ORDER_SIDE_SELL
                open_trades[symbol] = _OpenTrade(side, remaining, remaining, fill.header.event_time_ns, fill.price)
                open_trades[symbol].commission = commission_per_unit * remaining
            else:  # adding to an open trade
                total = trade.quantity + remaining
                trade.entry_price = (trade.entry_price * trade.quantity + fill.price * remaining) / total
                trade.quantity = total
                trade.total_quantity += remaining
                trade.commission += commission_per_unit * remaining
    return trades


class BacktestEngine(Engine):
    name = "backtest"
    inputs = (
        Input("bar"),
        Input("alpha_signal"),
        Input("scored_signal"),
        Input("order"),
        Input("fill"),
        Input("account_snapshot"),
        Input("rejected_bar", InputMode.COMMAND),
    )

    def __init__(
        self,
        *,
        initial_equity: float,
        periods_per_year: float,
        include_details: bool = True,
        benchmark: Benchmark | None = None,
    ) -> None:
        self.initial_equity = initial_equity
        self.periods_per_year = periods_per_year
        self.benchmark = benchmark
        self.include_details = include_details
        self.bars = 0
        self.bars_rejected = 0
        self.signals = 0
        self.scored = 0
        self.orders = 0
        self.order_events: list[pb.Order] = []
        self.fills: list[pb.Fill] = []
        self._times: list[np.ndarray] = []
        self._equity: list[np.ndarray] = []
        self._gross: list[np.ndarray] = []
        self._commissions = 0.0
        self.result: api.BacktestResult | None = None

    def on_command(self, ctx: EngineContext, kind: str, frame: pl.DataFrame) -> None:
        self.bars_rejected += frame.height

    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        self.bars += frames["bar"].height if "bar" in frames else 0
        self.signals += frames["alpha_signal"].height if "alpha_signal" in frames else 0
        self.scored += frames["scored_signal"].height if "scored_signal" in frames else 0
        if "order" in frames:
            self.orders += frames["order"].filter(pl.col("status") == pb.ORDER_STATUS_NEW).height
            self.order_events.extend(KINDS["order"].to_messages(frames["order"]))  # type: ignore[arg-type]
        if "fill" in frames:
            self.fills.extend(KINDS["fill"].to_messages(frames["fill"]))  # type: ignore[arg-type]
        if "account_snapshot" in frames:
            account = frames["account_snapshot"]
            self._times.append(account["event_time_ns"].to_numpy())
            self._equity.append(account["equity"].to_numpy())
            self._gross.append(account["gross_exposure"].to_numpy())
            self._commissions = float(account["commissions"][-1])

    def snapshot(self) -> Any:
        times, equity = self.equity_curve
        return {
            "counts": (self.bars, self.bars_rejected, self.signals, self.scored, self.orders),
            "order_events": [o.SerializeToString() for o in self.order_events],
            "fills": [f.SerializeToString() for f in self.fills],
            "equity": (times, equity),
            "gross": np.concatenate(self._gross) if self._gross else np.empty(0),
            "commissions": self._commissions,
        }

    def restore(self, state: Any) -> None:
        self.bars, self.bars_rejected, self.signals, self.scored, self.orders = state["counts"]
        self.order_events = [pb.Order.FromString(raw) for raw in state["order_events"]]
        self.fills = [pb.Fill.FromString(raw) for raw in state["fills"]]
        times, equity = state["equity"]
        self._times, self._equity = ([times], [equity]) if times.size else ([], [])
        self._gross = [state["gross"]] if times.size else []
        self._commissions = state["commissions"]

    @property
    def equity_curve(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._times:
            return np.empty(0, np.int64), np.empty(0)
        return np.concatenate(self._times), np.concatenate(self._equity)

    def finish(self, ctx: EngineContext) -> None:
        times, equity = self.equity_curve
        trades = trades_from_fills(self.fills)
        # The first snapshot is the first bar's equity (initial cash, as nothing has filled yet); returns
        # are measured from the initial equity so a loss on the first bar counts.
        curve = np.concatenate([[self.initial_equity], equity])
        returns = simple_returns(curve)
        benchmark_returns = None
        if self.benchmark is not None and times.size:
            at = np.searchsorted(self.benchmark.times, times, side="right") - 1
            closes = np.where(at >= 0, self.benchmark.closes[np.maximum(at, 0)], np.nan)
            # The first bar's benchmark return is zero, as the strategy's is (it cannot have traded yet).
            benchmark_returns = simple_returns(np.concatenate([closes[:1], closes]))
        metrics = compute_metrics(
            returns,
            self.periods_per_year,
            benchmark=benchmark_returns,
            trade_pnls=[t.pnl for t in trades],
            traded_notional=sum(f.price * f.quantity for f in self.fills),
            equity=equity,
            invested=np.concatenate(self._gross) > 0 if self._gross else None,
        )
        summary = api.BacktestSummary(
            bars=self.bars,
            bars_rejected=self.bars_rejected,
            signals=self.signals,
            orders=self.orders,
            fills=len(self.fills),
            trades=len(trades),
            initial_equity=self.initial_equity,
            final_equity=float(curve[-1]),
            total_return=metrics.total_return if returns.size else 0.0,
            sharpe=metrics.sharpe,
            max_drawdown=-metrics.max_drawdown if returns.size else 0.0,
            start_time_ns=int(times[0]) if times.size else 0,
            end_time_ns=int(times[-1]) if times.size else 0,
            periods_per_year=self.periods_per_year,
            annual_return=metrics.annual_return,
            annual_volatility=metrics.annual_volatility,
            sortino=metrics.sortino,
            calmar=metrics.calmar,
            max_drawdown_bars=metrics.max_drawdown_duration,
            alpha=metrics.alpha,
            beta=metrics.beta,
            information_ratio=metrics.information_ratio,
            win_rate=metrics.win_rate,
            profit_factor=metrics.profit_factor,
            average_win=metrics.average_win,
            average_loss=metrics.average_loss,
            turnover=metrics.turnover,
            exposure_time=metrics.exposure_time,
            commissions=self._commissions,
        )
        result = api.BacktestResult(summary=summary)
        if self.include_details:
            result.trades.extend(trades)
            result.equity_curve.extend(
                api.EquityPoint(time_ns=int(t), equity=float(e)) for t, e in zip(times, equity, strict=True)
            )
        self.result = result
