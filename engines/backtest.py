"""Backtest: turns what the engines published during a run into its result.

Consumes: `bar`, `alpha_signal`, `scored_signal`, `order`, `fill`, `account_snapshot`, `rejected_bar`.
Produces: nothing on the bus; `result` holds the BacktestResult once every input has ended.

A backtest is the ordinary engine graph on the in-process bus with a simulated clock and broker (see
`utp.daemon.session.run_backtest`); this engine only listens, so what it reports is exactly what the
trading engines did. It keeps the frames it receives and does the work once, at the end:

* trades are round trips rebuilt from the fills: a position opened from flat and closed back to flat (a
  fill that crosses zero closes one trade and opens the next); a position still open at the end is a
  trade marked `open`, valued at the symbol's last close;
* the statistics are `utp.core.performance.compute_metrics` on the bar-to-bar returns of equity, against
  the benchmark's returns on the same bars;
* attribution: the P&L of the trades (net of commissions) by symbol and by strategy (the alpha sources
  behind each entry).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
from google.protobuf.message import Message
from numba import njit

from utp.core.features import Benchmark
from utp.core.kernels import entry
from utp.core.kinds import KINDS
from utp.core.performance import compute_metrics, simple_returns
from utp.core.runtime import Engine, EngineContext, Input, InputMode
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb


@entry
@njit(cache=True)
def _round_trips(sym, qty, price, commission, time, strategy, n_symbols, last_close, last_time, out_f, out_i):  # noqa: ANN001
    """Round trips from fills in time order (qty signed). Rows of out_f: quantity, entry price, exit price,
    pnl, commission; of out_i: symbol, side, entry time, exit time, strategy, open. Returns the row count."""
    side = np.zeros(n_symbols, np.int64)
    open_q = np.zeros(n_symbols)
    total_q = np.zeros(n_symbols)
    entry_t = np.zeros(n_symbols, np.int64)
    entry_px = np.zeros(n_symbols)
    exit_value = np.zeros(n_symbols)
    exit_q = np.zeros(n_symbols)
    realized = np.zeros(n_symbols)
    paid = np.zeros(n_symbols)
    tag = np.zeros(n_symbols, np.int64)
    n = 0
    for f in range(sym.shape[0]):
        s = sym[f]
        remaining = abs(qty[f])
        per_unit = commission[f] / remaining if remaining > 0 else 0.0
        direction = 1 if qty[f] > 0 else -1
        if side[s] != 0 and side[s] != direction:
            closed = min(remaining, open_q[s])
            realized[s] += (price[f] - entry_px[s]) * closed * side[s]
            exit_value[s] += price[f] * closed
            exit_q[s] += closed
            paid[s] += per_unit * closed
            open_q[s] -= closed
            remaining -= closed
            if open_q[s] <= 1e-12:
                out_f[n, 0], out_f[n, 1] = total_q[s], entry_px[s]
                out_f[n, 2], out_f[n, 3], out_f[n, 4] = exit_value[s] / exit_q[s], realized[s] - paid[s], paid[s]
                out_i[n, 0], out_i[n, 1], out_i[n, 2] = s, side[s], entry_t[s]
                out_i[n, 3], out_i[n, 4], out_i[n, 5] = time[f], tag[s], 0
                n += 1
                side[s] = 0
        if remaining > 1e-12:
            if side[s] == 0:
                side[s], open_q[s], total_q[s], entry_t[s], entry_px[s] = direction, remaining, remaining, time[f], price[f]
                exit_value[s], exit_q[s], realized[s], paid[s], tag[s] = 0.0, 0.0, 0.0, per_unit * remaining, strategy[f]
            else:  # adding to the open trade
                total = open_q[s] + remaining
                entry_px[s] = (entry_px[s] * open_q[s] + price[f] * remaining) / total
                open_q[s] = total
                total_q[s] += remaining
                paid[s] += per_unit * remaining
    for s in range(n_symbols):  # trades still open, valued at the last close
        if side[s] != 0:
            unrealized = (last_close[s] - entry_px[s]) * open_q[s] * side[s]
            out_f[n, 0], out_f[n, 1], out_f[n, 2] = total_q[s], entry_px[s], last_close[s]
            out_f[n, 3], out_f[n, 4] = realized[s] + unrealized - paid[s], paid[s]
            out_i[n, 0], out_i[n, 1], out_i[n, 2] = s, side[s], entry_t[s]
            out_i[n, 3], out_i[n, 4], out_i[n, 5] = last_time[s], tag[s], 1
            n += 1
    return n


@njit(cache=True)
def _write_varint(out, n, value):  # noqa: ANN001
    """Protobuf base-128 varint of `value` (an int64; negatives take ten bytes) at out[n:]; returns the end."""
    v = np.uint64(value)
    while v >= 0x80:
        out[n] = np.uint8((v & np.uint64(0x7F)) | np.uint64(0x80))
        v >>= np.uint64(7)
        n += 1
    out[n] = np.uint8(v)
    return n + 1


@njit(cache=True)
def _varint_size(value):  # noqa: ANN001
    v = np.uint64(value)
    n = 1
    while v >= 0x80:
        v >>= np.uint64(7)
        n += 1
    return n


@entry
@njit(cache=True)
def _pack_curve(time_key, times, equity_key, equity):  # noqa: ANN001
    """`api.EquityCurve` in wire form: the packed varint field of `times`, then the packed double field of
    `equity` (little-endian float64 bytes)."""
    body = 0
    for t in times:
        body += _varint_size(t)
    out = np.empty(2 * 20 + body + equity.shape[0], np.uint8)
    n = _write_varint(out, _write_varint(out, 0, time_key), body)
    for t in times:
        n = _write_varint(out, n, t)
    n = _write_varint(out, _write_varint(out, n, equity_key), equity.shape[0])
    out[n : n + equity.shape[0]] = equity
    return out[: n + equity.shape[0]]


@entry
@njit(cache=True)
def _pack_messages(key, doubles, double_keys, varints, varint_keys, texts, text_blob, text_starts, out):  # noqa: ANN001
    """Rows as one repeated message field (`key` = field number << 3 | 2) of flat messages: per row the
    double fields (`doubles[r]`: the row's float64s as little-endian bytes, under `double_keys`), the varint
    fields (int64) and the text fields, which are indices into pre-encoded fields
    (`text_blob[text_starts[i]:text_starts[i + 1]]`, key and length included). Fields go in that order
    whatever their numbers: a parser does not mind. Returns the length written into `out`."""
    n = 0
    scratch = np.empty(doubles.shape[1] + 10 * double_keys.shape[0] + 20 * varints.shape[1], np.uint8)
    for r in range(doubles.shape[0]):
        m = 0
        for j in range(double_keys.shape[0]):
            m = _write_varint(scratch, m, double_keys[j])
            scratch[m : m + 8] = doubles[r, 8 * j : 8 * j + 8]
            m += 8
        for j in range(varints.shape[1]):
            m = _write_varint(scratch, _write_varint(scratch, m, varint_keys[j]), varints[r, j])
        size = m
        for j in range(texts.shape[1]):
            size += text_starts[texts[r, j] + 1] - text_starts[texts[r, j]]
        n = _write_varint(out, _write_varint(out, n, key), size)
        out[n : n + m] = scratch[:m]
        n += m
        for j in range(texts.shape[1]):
            lo, hi = text_starts[texts[r, j]], text_starts[texts[r, j] + 1]
            out[n : n + hi - lo] = text_blob[lo:hi]
            n += hi - lo
    return n


def _field_key(message: type[Message], name: str, wire_type: int) -> int:
    return message.DESCRIPTOR.fields_by_name[name].number << 3 | wire_type


def packed_equity_curve(times: np.ndarray, equity: np.ndarray) -> bytes:
    """`api.EquityCurve` in wire form (packed fields), for `MergeFromString`: a million points take
    milliseconds, where extending the repeated fields from Python lists takes a tenth of a second."""
    return _pack_curve(_field_key(api.EquityCurve, "time_ns", 2), np.ascontiguousarray(times, np.int64),
                       _field_key(api.EquityCurve, "equity", 2),
                       np.ascontiguousarray(equity, "<f8").view(np.uint8)).tobytes()  # fmt: skip


def packed_trades(trades: pl.DataFrame, field: int) -> bytes:
    """The rows of a `trades_from_fills` frame as the repeated `api.Trade` field number `field` of the
    message they go into, in wire form (for `MergeFromString`); the same messages as building each
    `api.Trade` in Python, without a Python object per trade."""
    if not trades.height:
        return b""
    t = api.Trade
    quantity, entry_price, pnl = (trades[c].to_numpy().astype(np.float64) for c in ("quantity", "entry_price", "pnl"))
    with np.errstate(divide="ignore", invalid="ignore"):
        return_pct = pnl / (entry_price * quantity)
    doubles = np.column_stack([quantity, entry_price, trades["exit_price"].to_numpy(), pnl, return_pct,
                               trades["commission"].to_numpy()]).astype("<f8")  # fmt: skip
    double_keys = np.array([_field_key(t, name, 1) for name in
                            ("quantity", "entry_price", "exit_price", "pnl", "return_pct", "commission")], np.int64)  # fmt: skip
    side = np.where(trades["side"].to_numpy() > 0, pb.ORDER_SIDE_BUY, pb.ORDER_SIDE_SELL)
    varints = np.column_stack([side, trades["entry_time"].to_numpy(), trades["exit_time"].to_numpy(),
                               trades["open"].to_numpy()]).astype(np.int64)  # fmt: skip
    varint_keys = np.array([_field_key(t, name, 0) for name in ("side", "entry_time_ns", "exit_time_ns", "open")],
                           np.int64)  # fmt: skip
    # Text fields: each distinct (field, value) encoded once; rows point at them.
    encoded: list[bytes] = []
    columns = []
    for column, name in (("symbol", "symbol"), ("strategy", "strategy")):
        values = trades[column].unique(maintain_order=True).to_list()
        key = _field_key(t, name, 2)
        columns.append(trades[column].replace_strict(values, list(range(len(encoded), len(encoded) + len(values))),
                                                     return_dtype=pl.Int64).to_numpy())  # fmt: skip
        for v in values:
            data = v.encode()
            head = np.empty(20, np.uint8)
            h = _write_varint(head, _write_varint(head, 0, key), len(data))
            encoded.append(head[:h].tobytes() + data)
    starts = np.zeros(len(encoded) + 1, np.int64)
    starts[1:] = np.cumsum([len(e) for e in encoded])
    blob = np.frombuffer(b"".join(encoded), np.uint8)
    size = trades.height * (20 + 18 * doubles.shape[1] + 20 * varints.shape[1] + max(map(len, encoded)) * len(columns))
    out = np.empty(size, np.uint8)
    n = _pack_messages(field << 3 | 2, doubles.view(np.uint8), double_keys, varints, varint_keys,
                       np.column_stack(columns), blob, starts, out)  # fmt: skip
    return out[:n].tobytes()


def trades_from_fills(fills: pl.DataFrame, last_close: Mapping[str, tuple[int, float]] | None = None) -> pl.DataFrame:
    """Round trips from a frame of fills in time order: one row per trade with the columns of `api.Trade`
    (side +1 long / -1 short). `last_close` (symbol -> (time, close)) values trades still open; without it
    they are left out."""
    if not fills.height:
        return _empty_trades()
    symbols = fills["symbol"].unique(maintain_order=True).to_list()
    strategies = fills["strategy"].unique(maintain_order=True).to_list()
    sym = fills["symbol"].replace_strict(symbols, list(range(len(symbols))), return_dtype=pl.Int64).to_numpy()
    tag = fills["strategy"].replace_strict(strategies, list(range(len(strategies))), return_dtype=pl.Int64).to_numpy()
    sign = np.where(fills["side"].to_numpy() == pb.ORDER_SIDE_BUY, 1.0, -1.0)
    close = np.array([(last_close or {}).get(s, (0, np.nan))[1] for s in symbols], np.float64)
    when = np.array([(last_close or {}).get(s, (0, 0))[0] for s in symbols], np.int64)
    rows = fills.height + len(symbols)
    out_f, out_i = np.zeros((rows, 5)), np.zeros((rows, 6), np.int64)
    n = _round_trips(sym, sign * fills["quantity"].to_numpy(), fills["price"].to_numpy(), fills["commission"].to_numpy(),
                     fills["event_time_ns"].to_numpy(), tag, len(symbols), close, when, out_f, out_i)  # fmt: skip
    f, i = out_f[:n], out_i[:n]
    trades = pl.DataFrame({
        "symbol": [symbols[k] for k in i[:, 0]], "side": i[:, 1], "quantity": f[:, 0], "entry_time": i[:, 2],
        "entry_price": f[:, 1], "exit_time": i[:, 3], "exit_price": f[:, 2], "pnl": f[:, 3], "commission": f[:, 4],
        "strategy": [strategies[k] for k in i[:, 4]], "open": i[:, 5].astype(bool),
    }, schema_overrides={"symbol": pl.Utf8, "strategy": pl.Utf8})  # fmt: skip
    if last_close is None:
        trades = trades.filter(~pl.col("open"))
    return trades.sort("exit_time", "entry_time", maintain_order=True)


def _empty_trades() -> pl.DataFrame:
    return pl.DataFrame(schema={"symbol": pl.Utf8, "side": pl.Int64, "quantity": pl.Float64, "entry_time": pl.Int64,
                                "entry_price": pl.Float64, "exit_time": pl.Int64, "exit_price": pl.Float64,
                                "pnl": pl.Float64, "commission": pl.Float64, "strategy": pl.Utf8, "open": pl.Boolean})  # fmt: skip


def attribution(trades: pl.DataFrame, by: str) -> list[api.Attribution]:
    """P&L of trades (closed and open) grouped by `by` ("symbol" or "strategy"), largest first."""
    if not trades.height:
        return []
    total = float(trades["pnl"].sum())
    groups = trades.group_by(by).agg(
        pl.col("pnl").sum(),
        pl.len().alias("trades"),
        (pl.col("pnl").filter(~pl.col("open")) > 0).mean().alias("win_rate"),
    ).sort("pnl", by, descending=[True, False])  # fmt: skip
    return [
        api.Attribution(key=key or "(none)", pnl=pnl, trades=n, win_rate=win if win is not None else float("nan"),
                        share=pnl / total if total else float("nan"))  # fmt: skip
        for key, pnl, n, win in groups.select(by, "pnl", "trades", "win_rate").iter_rows()
    ]


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
        self._frames: dict[str, list[pl.DataFrame]] = {"order": [], "fill": [], "account_snapshot": [], "last_bar": []}
        self.result: api.BacktestResult | None = None

    def on_command(self, ctx: EngineContext, kind: str, frame: pl.DataFrame) -> None:
        self.bars_rejected += frame.height

    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        if "bar" in frames:
            bars = frames["bar"]
            self.bars += bars.height
            last = bars.select("symbol", "event_time_ns", "close")
            if last.height > 1000:  # the last bar of a symbol ends a run of its bars: hash only the runs' ends
                last = last.filter(pl.col("symbol").ne_missing(pl.col("symbol").shift(-1)))
            self._frames["last_bar"].append(last.unique("symbol", keep="last"))
        self.signals += frames["alpha_signal"].height if "alpha_signal" in frames else 0
        self.scored += frames["scored_signal"].height if "scored_signal" in frames else 0
        for kind in ("order", "fill", "account_snapshot"):
            if kind in frames:
                self._frames[kind].append(frames[kind])

    def _all(self, kind: str) -> pl.DataFrame:
        frames = [f for f in self._frames[kind] if f.height]
        if not frames:
            return KINDS[kind].empty_frame() if kind in KINDS else pl.DataFrame()
        if len(frames) > 1:  # keep one frame: snapshots and later calls stay cheap
            self._frames[kind] = [pl.concat(frames)]
        return self._frames[kind][0]

    # -- what tests and callers read ----------------------------------------------------------------
    @property
    def orders(self) -> int:
        """Orders placed (NEW or HELD events; a bracket leg counts once)."""
        frame = self._all("order")
        return frame.filter(pl.col("status").is_in([pb.ORDER_STATUS_NEW, pb.ORDER_STATUS_HELD])).select(
            pl.col("client_order_id").n_unique()).item() if frame.height else 0  # fmt: skip

    @property
    def order_events(self) -> list[pb.Order]:
        return KINDS["order"].to_messages(self._all("order"))  # type: ignore[return-value]

    @property
    def fills(self) -> list[pb.Fill]:
        return KINDS["fill"].to_messages(self._all("fill"))  # type: ignore[return-value]

    @property
    def fill_frame(self) -> pl.DataFrame:
        return self._all("fill")

    @property
    def equity_curve(self) -> tuple[np.ndarray, np.ndarray]:
        account = self._all("account_snapshot")
        return account["event_time_ns"].to_numpy(), account["equity"].to_numpy()

    def last_closes(self) -> dict[str, tuple[int, float]]:
        last = self._all("last_bar")
        if not last.height:
            return {}
        last = last.unique("symbol", keep="last", maintain_order=True)
        return {s: (t, c) for s, t, c in last.iter_rows()}

    def snapshot(self) -> Any:
        return {"counts": (self.bars, self.bars_rejected, self.signals, self.scored),
                "frames": {k: self._all(k) for k in self._frames}}  # fmt: skip

    def restore(self, state: Any) -> None:
        self.bars, self.bars_rejected, self.signals, self.scored = state["counts"]
        self._frames = {k: [f] for k, f in state["frames"].items()}

    # -- the result ---------------------------------------------------------------------------------
    def finish(self, ctx: EngineContext) -> None:
        account = self._all("account_snapshot")
        times, equity = account["event_time_ns"].to_numpy(), account["equity"].to_numpy()
        fills = self._all("fill")
        trades = trades_from_fills(fills, self.last_closes())
        closed = trades.filter(~pl.col("open"))
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
            trade_pnls=closed["pnl"].to_numpy(),
            # fsum: exact, so the figure does not depend on how the fills were split into batches.
            traded_notional=math.fsum((fills["price"] * fills["quantity"]).to_numpy()) if fills.height else 0.0,
            equity=equity,
            invested=account["gross_exposure"].to_numpy() > 0 if account.height else None,
        )
        summary = api.BacktestSummary(
            bars=self.bars,
            bars_rejected=self.bars_rejected,
            signals=self.signals,
            orders=self.orders,
            fills=fills.height,
            trades=closed.height,
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
            commissions=float(account["commissions"][-1]) if account.height else 0.0,
        )
        result = api.BacktestResult(summary=summary)
        result.by_symbol.extend(attribution(trades, "symbol"))
        result.by_strategy.extend(attribution(trades, "strategy"))
        if self.include_details:
            # In wire form: a Python object per trade and per point would cost more than the whole run's trading.
            result.MergeFromString(packed_trades(trades, api.BacktestResult.DESCRIPTOR.fields_by_name["trades"].number))
            result.equity_curve.MergeFromString(packed_equity_curve(times, equity))
        self.result = result
