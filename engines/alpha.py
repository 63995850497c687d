"""Alpha: Lean's RSI and EMA-cross alpha models, emitting insights as `AlphaSignal`s.

Consumes: `bar`. Produces: `alpha_signal`.

Semantics follow Lean's Algorithm.Framework (master):

* RsiAlphaModel(14): state TRIPPED_HIGH above 70, TRIPPED_LOW below 30; back to MIDDLE only above 35
  (from low) or below 65 (from high). Entering TRIPPED_LOW emits UP, entering TRIPPED_HIGH emits DOWN,
  only once the RSI is ready (15 values). The state machine also runs on the RSI's values before it is
  ready, as Lean's does, so a state reached during warm-up emits nothing when the RSI becomes ready.
  Insight period: 14 bars.
* EmaCrossAlphaModel(12, 26): when both EMAs are ready, if fast was over slow and slow > fast now ->
  DOWN; else if fast was not over slow and fast > slow now -> UP. The flag is updated on every bar with
  the EMAs' current values, which Lean keeps at 0 until ready (see `EmaCrossAlphaConfig`). Insight
  period: 12 bars (the fast period).
* MacdAlphaModel(12, 26, 9): normalised = MACD signal line / close; above 0.01 -> UP, below -0.01 ->
  DOWN, else FLAT. Nothing when the direction is unchanged; FLAT cancels the model's open insight
  (an AlphaSignal with `cancel`, sent only if one is open) and emits nothing else; a close of 0 is
  skipped. No readiness check, as in Lean: the signal EMA reads 0 until ready, i.e. FLAT. Lean's MACD
  seeds its fast EMA with the first 12 values (`Macd(lean=True)`). Insight period: 12 bars (the fast
  period).

The seed's two strategies, off by default (`alpha.mean_reversion`, `alpha.trend_following`), emit UP or
DOWN on entry and a cancel on exit:
* mean_reversion (intraday): z = (close - session VWAP) / its rolling standard deviation; enter against
  the stretch when |z| >= 2 and RSI confirms (below 30 for UP, above 70 for DOWN); exit when |z| < 0.5,
  at a 1.5 x ATR stop from the entry, or from the session's flatten time on.
* trend_following (swing): an EMA 20/50 cross with ADX > 20 arms its direction; a pullback to the fast
  EMA enters; a 3 x ATR trailing stop or the opposite cross exits.

Lean's models give no magnitude and no confidence; the signals leave both unset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
from numba import njit

from utp.core.columns import formatted, take
from utp.core.config import AlphaConfig
from utp.core.indicators import Adx, Atr, Ema, Macd, Rsi, SessionVwap, Stddev
from utp.core.kernels import entry
from utp.core.kinds import KINDS
from utp.core.runtime import Engine, EngineContext, Input
from utp.core.universe import Universe
from utp.v1 import events_pb2 as pb

_MIDDLE, _TRIPPED_LOW, _TRIPPED_HIGH = 0, 1, 2
_UP, _DOWN, _FLAT = pb.DIRECTION_UP, pb.DIRECTION_DOWN, pb.DIRECTION_FLAT
_CANCEL = -1  # kernel output: withdraw the model's open insight


@entry
@njit(cache=True)
def _rsi_insights(sid, rsi, ready, state, upper, lower, upper_reset, lower_reset, out):  # noqa: ANN001
    for i in range(rsi.shape[0]):
        s = sid[i]
        v = rsi[i]
        previous = state[s]
        if v > upper:
            current = _TRIPPED_HIGH
        elif v < lower:
            current = _TRIPPED_LOW
        elif previous == _TRIPPED_LOW and v > lower_reset:
            current = _MIDDLE
        elif previous == _TRIPPED_HIGH and v < upper_reset:
            current = _MIDDLE
        else:
            current = previous
        out[i] = 0
        if current != previous and ready[i]:
            if current == _TRIPPED_LOW:
                out[i] = _UP
            elif current == _TRIPPED_HIGH:
                out[i] = _DOWN
        state[s] = current


@entry
@njit(cache=True)
def _ema_cross_insights(sid, fast, fast_ready, slow, slow_ready, fast_over_slow, started, lean, out):  # noqa: ANN001
    for i in range(fast.shape[0]):
        s = sid[i]
        both_ready = fast_ready[i] and slow_ready[i]
        out[i] = 0
        if both_ready and (lean or started[s]):
            if fast_over_slow[s]:
                if slow[i] > fast[i]:
                    out[i] = _DOWN
            elif fast[i] > slow[i]:
                out[i] = _UP
        if lean or both_ready:
            fast_over_slow[s] = fast[i] > slow[i]
            started[s] = started[s] or both_ready


@entry
@njit(cache=True)
def _macd_insights(sid, signal, close, previous, open_insight, threshold, out):  # noqa: ANN001
    for i in range(signal.shape[0]):
        s = sid[i]
        out[i] = 0
        if close[i] == 0.0:
            continue
        normalized = signal[i] / close[i]
        direction = _FLAT
        if normalized > threshold:
            direction = _UP
        elif normalized < -threshold:
            direction = _DOWN
        if direction == previous[s]:
            continue
        previous[s] = direction
        if direction == _FLAT:
            if open_insight[s]:
                out[i] = _CANCEL
                open_insight[s] = False
            continue
        out[i] = direction
        open_insight[s] = True


@entry
@njit(cache=True)
def _mean_reversion_insights(  # noqa: ANN001, PLR0913
    sid, close, z, rsi, atr, flatten, position, entry, stop, entry_z, exit_z, rsi_upper, rsi_lower, stop_atr, out
):
    """The seed's intraday mean reversion. `z` is (close - session VWAP) over its rolling deviation;
    `flatten` marks bars at or after the session's flatten time. Per symbol: position (+1/-1/0), entry
    price and stop distance (stop_atr x ATR at entry)."""
    for i in range(close.shape[0]):
        s = sid[i]
        out[i] = 0
        if np.isnan(z[i]) or np.isnan(rsi[i]) or np.isnan(atr[i]):
            continue
        if position[s] != 0:
            stopped = close[i] <= entry[s] - stop[s] if position[s] > 0 else close[i] >= entry[s] + stop[s]
            if abs(z[i]) < exit_z or stopped or flatten[i]:
                out[i] = _CANCEL
                position[s] = 0
            continue
        if flatten[i]:
            continue  # no new positions at the end of the session
        if z[i] <= -entry_z and rsi[i] < rsi_lower:
            out[i], position[s] = _UP, 1
        elif z[i] >= entry_z and rsi[i] > rsi_upper:
            out[i], position[s] = _DOWN, -1
        else:
            continue
        entry[s] = close[i]
        stop[s] = stop_atr * atr[i]


@entry
@njit(cache=True)
def _trend_following_insights(  # noqa: ANN001, PLR0913
    sid, close, high, low, fast, slow, adx, atr, fast_over_slow, armed, position, extreme, adx_min, trail_atr, out
):
    """The seed's swing trend following. A cross of the fast over the slow EMA with ADX above `adx_min`
    arms that direction; a pullback (the bar reaches the fast EMA while the close stays beyond the slow
    one) enters; a trailing stop `trail_atr` x ATR from the best close since entry, or the opposite
    cross, exits."""
    for i in range(close.shape[0]):
        s = sid[i]
        out[i] = 0
        if np.isnan(fast[i]) or np.isnan(slow[i]) or np.isnan(adx[i]) or np.isnan(atr[i]):
            continue
        above = fast[i] > slow[i]
        cross_up = above and not fast_over_slow[s]
        cross_down = fast_over_slow[s] and slow[i] > fast[i]
        fast_over_slow[s] = above
        if position[s] != 0:
            if position[s] > 0:
                extreme[s] = max(extreme[s], close[i])
                exit_now = close[i] < extreme[s] - trail_atr * atr[i] or cross_down
            else:
                extreme[s] = min(extreme[s], close[i])
                exit_now = close[i] > extreme[s] + trail_atr * atr[i] or cross_up
            if exit_now:
                out[i] = _CANCEL
                position[s] = 0
        if cross_up or cross_down:
            armed[s] = (1 if cross_up else -1) if adx[i] > adx_min else 0
        if position[s] == 0 and out[i] == 0 and armed[s] != 0:
            if armed[s] > 0 and low[i] <= fast[i] and close[i] > slow[i]:
                out[i], position[s] = _UP, 1
            elif armed[s] < 0 and high[i] >= fast[i] and close[i] < slow[i]:
                out[i], position[s] = _DOWN, -1
            if position[s] != 0:
                armed[s] = 0
                extreme[s] = close[i]


class AlphaEngine(Engine):
    name = "alpha"
    inputs = (Input("bar"),)
    outputs = ("alpha_signal",)

    def __init__(self, config: AlphaConfig, universe: Universe) -> None:
        self.config = config
        self.universe = universe
        n = len(universe)
        self.rsi = Rsi(n, config.rsi.period, lean=True)
        self.rsi_state = np.zeros(n, np.int64)
        self.fast = Ema(n, config.ema_cross.fast)
        self.slow = Ema(n, config.ema_cross.slow)
        self.fast_over_slow = np.zeros(n, np.bool_)
        self.ema_started = np.zeros(n, np.bool_)
        m = config.macd
        self.macd = Macd(n, m.fast, m.slow, m.signal, lean=True)
        self.macd_previous = np.zeros(n, np.int64)  # 0 = no direction yet (Lean's None)
        self.macd_open = np.zeros(n, np.bool_)
        r = config.mean_reversion
        self.mr_vwap = SessionVwap(n)
        self.mr_deviation = Stddev(n, r.deviation_period)
        self.mr_rsi = Rsi(n, r.rsi_period)
        self.mr_atr = Atr(n, r.atr_period)
        self.mr_position = np.zeros(n, np.int64)
        self.mr_entry = np.zeros(n)
        self.mr_stop = np.zeros(n)
        t = config.trend_following
        self.tf_fast = Ema(n, t.fast)
        self.tf_slow = Ema(n, t.slow)
        self.tf_adx = Adx(n, t.adx_period)
        self.tf_atr = Atr(n, t.atr_period)
        self.tf_fast_over_slow = np.zeros(n, np.bool_)
        self.tf_armed = np.zeros(n, np.int64)
        self.tf_position = np.zeros(n, np.int64)
        self.tf_extreme = np.zeros(n)

    def insights(self, bars: pl.DataFrame, sid: np.ndarray | None = None) -> pl.DataFrame:
        """Alpha signals caused by bars (sorted by time, symbols in the universe), advancing the models' state."""
        sid = self.universe.indices(bars["symbol"]) if sid is None else sid
        close = bars["close"].to_numpy()
        per_model: list[tuple[str, np.ndarray, int]] = []
        if self.config.rsi.enabled:
            c = self.config.rsi
            update = self.rsi.update_current(sid, close)
            out = np.empty(close.shape[0], np.int64)
            _rsi_insights(
                sid, update.value, update.ready, self.rsi_state, c.upper, c.lower, c.upper_reset, c.lower_reset, out
            )
            per_model.append(("rsi", out, c.period))
        if self.config.ema_cross.enabled:
            c = self.config.ema_cross
            f, s = self.fast.update_current(sid, close), self.slow.update_current(sid, close)
            out = np.empty(close.shape[0], np.int64)
            _ema_cross_insights(
                sid, f.value, f.ready, s.value, s.ready, self.fast_over_slow, self.ema_started, c.lean_first_ready, out
            )
            per_model.append(("ema_cross", out, c.fast))
        if self.config.macd.enabled:
            c = self.config.macd
            update = self.macd.update_current(sid, close)
            out = np.empty(close.shape[0], np.int64)
            _macd_insights(sid, update.signal, close, self.macd_previous, self.macd_open, c.bounce_threshold, out)
            per_model.append(("macd", out, c.fast))
        if self.config.mean_reversion.enabled or self.config.trend_following.enabled:
            high, low = bars["high"].to_numpy(), bars["low"].to_numpy()
        if self.config.mean_reversion.enabled:
            per_model.append(("mean_reversion", self._mean_reversion(bars, sid, close, high, low),
                              self.config.mean_reversion.period_bars))  # fmt: skip
        if self.config.trend_following.enabled:
            c = self.config.trend_following
            out = np.empty(close.shape[0], np.int64)
            _trend_following_insights(
                sid, close, high, low, self.tf_fast.update(sid, close), self.tf_slow.update(sid, close),
                self.tf_adx.update(sid, high, low, close).adx, self.tf_atr.update(sid, high, low, close),
                self.tf_fast_over_slow, self.tf_armed, self.tf_position, self.tf_extreme, c.adx_min, c.trail_atr, out,
            )  # fmt: skip
            per_model.append(("trend_following", out, c.period_bars))
        # Each model's signals in row order, then by bar row and the models' order.
        parts = [(np.flatnonzero(direction), order) for order, (_, direction, _) in enumerate(per_model)]
        rows = np.concatenate([r for r, _ in parts]) if parts else np.empty(0, np.int64)
        if not rows.size:
            return KINDS["alpha_signal"].empty_frame()
        model_of = np.concatenate([np.full(r.size, order) for r, order in parts])
        signal = np.concatenate([per_model[order][1][r] for r, order in parts])
        period = np.concatenate([np.full(r.size, per_model[order][2]) for r, order in parts])
        by_row = np.lexsort((model_of, rows))
        rows, model_of, signal, period = rows[by_row], model_of[by_row], signal[by_row], period[by_row]
        cancel = signal == _CANCEL
        source_model = take(pl.Series("source_model", [model for model, _, _ in per_model], pl.Utf8), model_of)
        correlation = take(bars.get_column("correlation_id"), rows)
        return KINDS["alpha_signal"].frame({
            "event_id": formatted("event_id", "alpha_signal/{}/{}", source_model, correlation),
            "correlation_id": correlation,
            "event_time_ns": bars.get_column("event_time_ns").to_numpy()[rows],
            "symbol": take(bars.get_column("symbol"), rows),
            "source_model": source_model,
            "direction": np.where(cancel, _FLAT, signal),
            "magnitude": None,
            "confidence": None,
            "period_bars": np.where(cancel, 0, period),
            "reference_price": close[rows],
            "cancel": cancel,
        }, rows.size)

    def _mean_reversion(
        self, bars: pl.DataFrame, sid: np.ndarray, close: np.ndarray, high: np.ndarray, low: np.ndarray
    ) -> np.ndarray:
        c = self.config.mean_reversion
        times = bars["event_time_ns"].to_numpy()
        vwap = self.mr_vwap.update(sid, times, high, low, close, bars["volume"].to_numpy())
        stretch = close - vwap
        deviation = self.mr_deviation.update(sid, stretch)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(deviation > 0.0, stretch / deviation, np.where(np.isnan(deviation), np.nan, 0.0))
        minute_of_day = (times // 60_000_000_000) % 1440
        out = np.empty(close.shape[0], np.int64)
        _mean_reversion_insights(
            sid, close, z, self.mr_rsi.update(sid, close), self.mr_atr.update(sid, high, low, close),
            minute_of_day >= c.flatten_minute_utc, self.mr_position, self.mr_entry, self.mr_stop,
            c.entry_z, c.exit_z, c.rsi_upper, c.rsi_lower, c.stop_atr, out,
        )  # fmt: skip
        return out

    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        bars, sid, unknown = self.universe.split(frames["bar"])
        if unknown:
            ctx.log.warning("dropped %d bars of symbols outside the universe", unknown)
            ctx.count_rejected(unknown)
        ctx.emit("alpha_signal", self.insights(bars, sid))

    _STATE = (
        "rsi", "rsi_state", "fast", "slow", "fast_over_slow", "ema_started", "macd", "macd_previous", "macd_open",
        "mr_vwap", "mr_deviation", "mr_rsi", "mr_atr", "mr_position", "mr_entry", "mr_stop",
        "tf_fast", "tf_slow", "tf_adx", "tf_atr", "tf_fast_over_slow", "tf_armed", "tf_position", "tf_extreme",
    )  # fmt: skip

    def snapshot(self) -> Any:
        return {k: getattr(self, k) for k in self._STATE}

    def restore(self, state: Any) -> None:
        for key, value in state.items():
            setattr(self, key, value)

