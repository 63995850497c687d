"""Risk: checks every target position before execution.

Consumes: `portfolio_target` and `bar` (joined by bar time), `control_command` (on arrival). Produces:
`risk_decision` (approved or rejected, with a reason code), whose intent is a *target*: the position wanted
as a signed share of equity.

Portfolio construction (engines/portfolio.py) decides the weights; risk caps each at `max_position_pct`
of equity and refuses a short unless `allow_short`. Execution turns a target into an order from the
portfolio as it stands when it places it; so risk needs no portfolio state and the engine graph has no
cycle: every engine processes a whole batch of bar times in one step, live and in a backtest alike.

Checks, in order (the first that fails is the reason): a sane target (finite weight, positive reference
price); no short unless allowed; not halted; execution approved by the operator; then, for ENTRIES only
(a non-zero target: a target of 0 closes, and a position must always be able to close):

1. NOT_IN_UNIVERSE: the symbol failed the universe screen in force (`risk.universe`, core/screening);
2. MARKET_CLOSED: intraday bars only, the entry is decided (at the bar's close) outside the entry window
   of an exchange session (`risk.filters.market_hours`, core/filters.MarketHours);
3. LOW_VOLUME: the average volume of the symbol's last `volume_period` bars is below `min_avg_volume`;
4. WIDE_SPREAD: the latest quoted spread is not below `max_spread` (no quote stream exists yet: NaN, the
   filter does not apply; `observe_quotes` is the hook a quote stream would feed);
5. EARNINGS_BLACKOUT: within `earnings_blackout_days` sessions of an earnings date (`earnings_file`).

A target beyond `max_position_pct` that passes everything is approved at the cap, and its message says so.
A threshold of 0 (or False / "") turns its filter off (earnings: earnings_file "" or earnings_blackout_days 0;
universe: max_price or max_spread 0 = no upper limit); `universe.enabled: false` turns the screen off.

Market state, per symbol, comes from the bars in time order (a numba walk over each step's bars and
targets together), so a target at bar time T sees exactly the bars up to and including T whatever the
number of bar times in a step: the last max(universe.lookback, volume_period) bars in a ring. The universe
is screened once per exchange session day (`UniverseRefresh`): the screen in force at T is the one taken at
the first bar time of T's session day with the bars up to then, so a symbol whose price crosses a limit
mid-session stays eligible until the next session. Screens cost milliseconds each, so a screen is only
computed for a session day that has an entry to judge (the window it needs is kept until then).

A symbol whose volumes are all 0 (unknown, like the close-only sp500 data set) is judged neither by
the volume filter nor by the screen's dollar-volume criterion (logged once per symbol).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
from numba import njit

from utp.core.columns import formatted, take
from utp.core.config import ConfigError, RiskConfig
from utp.core.controls import ControlState
from utp.core.filters import DAY_NS, FilterReason, MarketHours, SignalFilters, load_earnings
from utp.core.kernels import entry
from utp.core.kinds import KINDS
from utp.core.runtime import Engine, EngineContext, Input, InputMode
from utp.core.screening import UniverseRefresh, screen_universe
from utp.v1 import events_pb2 as pb

log = logging.getLogger("utp.engine.risk")

_REASON_TEXT = {
    pb.RISK_REASON_APPROVED: "approved",
    pb.RISK_REASON_HALTED: "trading is halted",
    pb.RISK_REASON_EXECUTION_NOT_APPROVED: "execution is not approved by the operator",
    pb.RISK_REASON_INVALID_INTENT: "invalid intent",
    pb.RISK_REASON_SHORT_NOT_ALLOWED: "a short position is not allowed (risk.allow_short is off)",
}

_FILTER_REASON = {
    FilterReason.LOW_VOLUME: pb.RISK_REASON_LOW_VOLUME,
    FilterReason.WIDE_SPREAD: pb.RISK_REASON_WIDE_SPREAD,
    FilterReason.EARNINGS_BLACKOUT: pb.RISK_REASON_EARNINGS_BLACKOUT,
}

#: Joins a symbol and a screen slot into one screening key: one `screen_universe` call screens many days.
_KEY_SEPARATOR = "\x1f"


@entry
@njit(cache=True)
def _walk(b_sid, b_time, b_close, b_high, b_low, b_volume, b_interval,  # noqa: ANN001 - numba kernel
          r_time, r_close, r_high, r_low, r_volume, count, interval,
          refresh_time, refresh_slot, lookback,
          q_sid, q_time, volume_period, q_avg, q_known, q_interval,
          w_slot, w_sid, w_time, w_close, w_high, w_low, w_volume):  # fmt: skip
    """Walk one step's bars (sorted by time) and queries (entries, sorted by time) in time order.

    Bars go into each symbol's ring (row s, position count[s] % ring length). A query at T is answered
    after every bar at or before T: the mean volume of its symbol's last `volume_period` bars, whether
    any of them had volume (else the volume is unknown), and the bar interval. At a refresh time with a
    slot >= 0, every symbol's last `lookback` bars are copied out as that screen's window. Returns the
    number of window rows written."""
    ring = r_time.shape[1]
    n_symbols = count.shape[0]
    nb, nq, nr = b_time.shape[0], q_time.shape[0], refresh_time.shape[0]
    i = q = k = w = 0
    while i < nb or q < nq:
        if i < nb and (q >= nq or b_time[i] <= q_time[q]):
            t = b_time[i]
            while i < nb and b_time[i] == t:
                s = b_sid[i]
                p = count[s] % ring
                r_time[s, p], r_close[s, p], r_high[s, p] = t, b_close[i], b_high[i]
                r_low[s, p], r_volume[s, p] = b_low[i], b_volume[i]
                count[s] += 1
                interval[s] = b_interval[i]
                i += 1
            while k < nr and refresh_time[k] <= t:
                if refresh_time[k] == t and refresh_slot[k] >= 0:
                    for s in range(n_symbols):
                        m = min(count[s], lookback)
                        for j in range(m):
                            p = (count[s] - m + j) % ring
                            w_slot[w], w_sid[w], w_time[w] = refresh_slot[k], s, r_time[s, p]
                            w_close[w], w_high[w], w_low[w], w_volume[w] = (
                                r_close[s, p], r_high[s, p], r_low[s, p], r_volume[s, p])
                            w += 1
                k += 1
        else:
            s = q_sid[q]
            m = min(count[s], volume_period)
            total = 0.0
            known = False
            for j in range(m):
                v = r_volume[s, (count[s] - 1 - j) % ring]
                total += v
                known = known or v > 0.0
            q_avg[q] = total / m if m > 0 else np.nan
            q_known[q] = known
            q_interval[q] = interval[s]
            q += 1
    return w


class _BarRings:
    """The last `ring` bars of every symbol seen, as (symbols x ring) arrays; symbols get rows on first sight."""

    FIELDS = ("time", "close", "high", "low", "volume")

    def __init__(self, ring: int) -> None:
        self.ring = ring
        self.symbols: list[str] = []
        self.index: dict[str, int] = {}
        self.time = np.zeros((0, ring), np.int64)
        self.close = np.zeros((0, ring))
        self.high = np.zeros((0, ring))
        self.low = np.zeros((0, ring))
        self.volume = np.zeros((0, ring))
        self.count = np.zeros(0, np.int64)
        self.interval = np.zeros(0, np.int64)

    def ids(self, symbols: pl.Series) -> np.ndarray:
        """Row of each symbol, adding rows for new ones."""
        names = symbols.to_list()
        index = self.index
        new = [s for s in dict.fromkeys(names) if s not in index]
        if new:
            for s in new:
                self.index[s] = len(self.symbols)
                self.symbols.append(s)
            grow = len(new)
            for name in self.FIELDS:
                setattr(self, name, np.concatenate([getattr(self, name), np.zeros((grow, self.ring),
                                                                                   getattr(self, name).dtype)]))
            self.count = np.concatenate([self.count, np.zeros(grow, np.int64)])
            self.interval = np.concatenate([self.interval, np.zeros(grow, np.int64)])
        return np.fromiter((index[s] for s in names), np.int64, len(names))

    def snapshot(self) -> dict[str, Any]:
        return {"ring": self.ring, "symbols": list(self.symbols), "count": self.count.copy(),
                "interval": self.interval.copy(), **{f: getattr(self, f).copy() for f in self.FIELDS}}  # fmt: skip

    def restore(self, state: dict[str, Any]) -> None:
        self.ring, self.symbols = state["ring"], list(state["symbols"])
        self.index = {s: i for i, s in enumerate(self.symbols)}
        self.count, self.interval = state["count"].copy(), state["interval"].copy()
        for f in self.FIELDS:
            setattr(self, f, state[f].copy())


class RiskEngine(Engine):
    name = "risk"
    inputs = (Input("portfolio_target"), Input("bar"), Input("control_command", InputMode.COMMAND))
    outputs = ("risk_decision",)

    def __init__(self, config: RiskConfig, controls: ControlState) -> None:
        """Raises ConfigError for a filter or screen setting that cannot work (bad calendar, clock times,
        limits) or an earnings file that cannot be read: at start, not at the first entry."""
        self.config = config
        self.controls = controls
        f, u = config.filters, config.universe
        self.universe_on = bool(u.enabled)
        try:
            self.hours = MarketHours(f.calendar, f.entry_start, f.entry_end) if f.market_hours else None
            earnings = None
            if f.earnings_file and f.earnings_blackout_days > 0:
                try:
                    earnings = load_earnings(f.earnings_file)
                except ValueError as exc:
                    raise ValueError(f"earnings_file: {exc}") from exc
            self.volume_on = f.min_avg_volume > 0
            if self.volume_on and f.volume_period < 1:
                raise ValueError(f"volume_period must be >= 1, got {f.volume_period}")
            spread_on = f.max_spread > 0
            self.filters = (
                SignalFilters(min_avg_volume=f.min_avg_volume if self.volume_on else None,
                              max_spread=f.max_spread if spread_on else None,
                              earnings_blackout_days=max(f.earnings_blackout_days, 0), earnings=earnings,
                              calendar=f.calendar)
                if self.volume_on or spread_on or earnings is not None else None
            )  # fmt: skip
        except ValueError as exc:
            raise ConfigError(f"risk.filters: {exc}") from exc
        self.screen_limits: dict[str, Any] = {}
        if self.universe_on:
            # No quote stream feeds the screen yet: its spread is the high-low estimate, which has a limit of its own.
            self.screen_limits = {
                "lookback": u.lookback, "min_price": u.min_price, "max_price": u.max_price or math.inf,
                "min_dollar_volume": u.min_dollar_volume, "max_spread": u.max_estimated_spread or math.inf,
                "tiers": tuple(u.tiers),
            }  # fmt: skip
            try:  # the screen checks its own limits: a dry run says now what would fail at the first entry
                screen_universe(KINDS["bar"].empty_frame(), 0, **self.screen_limits)
                self.refresh = UniverseRefresh(f.calendar)
            except ValueError as exc:
                raise ConfigError(f"risk.universe: {exc}") from exc
        self.volume_period = max(int(f.volume_period), 1)
        self.lookback = int(u.lookback) if self.universe_on else 2
        self.rings = _BarRings(max(self.lookback, self.volume_period))
        # The screen in force since the latest refresh: its session day, its window (kept until an entry
        # needs it screened) and, once screened, the verdict per symbol.
        self.screen_day: str | None = None
        self.screen_window: dict[str, np.ndarray] | None = None
        self.screen_verdict: dict[str, tuple[bool, str]] | None = None
        self.quote_spread: dict[str, float] = {}
        self.unknown_volume_logged: set[str] = set()

    # -- inputs ----------------------------------------------------------------------------------------
    def on_command(self, ctx: EngineContext, kind: str, frame: pl.DataFrame) -> None:
        for command in KINDS[kind].to_messages(frame):
            self.controls = self.controls.apply(command)  # type: ignore[arg-type]
            ctx.log.info("control %s -> %s", pb.ControlAction.Name(command.action), self.controls)  # type: ignore[attr-defined]

    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        targets = frames.get("portfolio_target")
        decisions = self.decide(targets if targets is not None else KINDS["portfolio_target"].empty_frame(),
                                frames.get("bar"))  # fmt: skip
        if decisions.height:
            ctx.emit("risk_decision", decisions)

    def observe_quotes(self, quotes: pl.DataFrame) -> None:
        """The hook for a quote stream (columns symbol, bid, ask): the latest relative spread per symbol,
        judged by filters.max_spread. Nothing feeds it yet; a stream would join like `bar` so that a
        backtest sees the quotes as of each target."""
        mid = (pl.col("bid") + pl.col("ask")) / 2.0
        latest = quotes.group_by("symbol").agg(((pl.col("ask") - pl.col("bid")) / mid).last().alias("spread"))
        self.quote_spread.update(zip(latest["symbol"].to_list(), latest["spread"].to_list(), strict=True))

    # -- the checks ------------------------------------------------------------------------------------
    def check(
        self,
        target: np.ndarray,
        reference_price: np.ndarray,
        filtered: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(reason code, message) per target; RISK_REASON_APPROVED where every check passes. `filtered`:
        the entry filters' (code, message) per target (code 0 = passed), applied after halted/approval."""
        n = reference_price.shape[0]
        sane = np.isfinite(reference_price) & (reference_price > 0) & np.isfinite(target)
        short_ok = self.config.allow_short | (target >= 0)
        code, text = self._gate()
        codes = np.where(sane, np.where(short_ok, code, pb.RISK_REASON_SHORT_NOT_ALLOWED), pb.RISK_REASON_INVALID_INTENT)
        messages = np.full(n, text, dtype=object)
        if not short_ok.all():
            messages[~short_ok] = _REASON_TEXT[pb.RISK_REASON_SHORT_NOT_ALLOWED]
        if filtered is not None:
            hit = (codes == pb.RISK_REASON_APPROVED) & (filtered[0] != 0)
            codes[hit], messages[hit] = filtered[0][hit], filtered[1][hit]
        capped = (codes == pb.RISK_REASON_APPROVED) & (np.abs(np.nan_to_num(target)) > self.config.max_position_pct)
        if capped.any():
            messages[capped] = [f"approved at the cap: {t:+.4f} of equity > max_position_pct "
                                f"{self.config.max_position_pct:g}" for t in target[capped]]  # fmt: skip
        if not sane.all():
            messages[~sane] = [f"target {t} at reference price {p}: not a finite weight and a positive price"
                               for t, p in zip(target[~sane], reference_price[~sane], strict=True)]  # fmt: skip
        return codes.astype(np.int32), messages

    def _gate(self) -> tuple[int, str]:
        if self.controls.halted:
            return pb.RISK_REASON_HALTED, self.controls.halt_reason or _REASON_TEXT[pb.RISK_REASON_HALTED]
        if not self.controls.execution_approved:
            return pb.RISK_REASON_EXECUTION_NOT_APPROVED, _REASON_TEXT[pb.RISK_REASON_EXECUTION_NOT_APPROVED]
        return pb.RISK_REASON_APPROVED, _REASON_TEXT[pb.RISK_REASON_APPROVED]

    def decide(self, targets: pl.DataFrame, bars: pl.DataFrame | None = None) -> pl.DataFrame:
        """Risk decisions for portfolio targets (one per target), after taking in `bars` (the step's bars,
        any number of bar times): each target is judged on the market state as of its own time. Without
        bars, targets are judged on the state already held (with no bar ever seen: no screen is in force
        and no volume is known, so only the target checks apply)."""
        wanted = targets["target_percent"].to_numpy()
        price = targets["reference_price"].to_numpy()
        # Only entries that every earlier check approves are worth the market filters (and their screens).
        sane = np.isfinite(price) & (price > 0) & np.isfinite(wanted)
        entry = sane & (wanted != 0.0) & (self.config.allow_short | (wanted >= 0))
        if self._gate()[0] != pb.RISK_REASON_APPROVED:
            entry[:] = False
        filtered = self._advance(bars, targets, np.flatnonzero(entry))
        if not targets.height:
            return KINDS["risk_decision"].empty_frame()
        codes, messages = self.check(wanted, price, filtered)
        return self._decisions(targets, wanted, codes, messages)

    # -- market state ----------------------------------------------------------------------------------
    def _advance(
        self, bars: pl.DataFrame | None, targets: pl.DataFrame, entries: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Take in the step's bars and judge the entry rows of `targets` as of their times: (code, message)
        per target, code 0 where it passes (or is not an entry)."""
        rings = self.rings
        if bars is not None and bars.height:
            if not bars["event_time_ns"].is_sorted():
                bars = bars.sort("event_time_ns", maintain_order=True)
            b_sid = rings.ids(bars["symbol"])
            b_time = bars["event_time_ns"].to_numpy()
            b_cols = [bars[c].to_numpy().astype(np.float64, copy=False) for c in ("close", "high", "low", "volume")]
            b_interval = bars["interval_ns"].to_numpy()
        else:
            b_sid, b_time, b_interval = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
            b_cols = [np.zeros(0)] * 4
        entry_symbols = None
        if entries.size:
            entries = entries[np.argsort(targets.get_column("event_time_ns").to_numpy()[entries], kind="stable")]
            entry_symbols = take(targets.get_column("symbol"), entries)
            q_sid = rings.ids(entry_symbols)
            q_time = targets.get_column("event_time_ns").to_numpy()[entries]
        else:
            q_sid, q_time = np.zeros(0, np.int64), np.zeros(0, np.int64)

        # Universe refreshes: the first bar time of each new session day. An entry is judged by the latest
        # refresh at or before it (slot >= 0: copy that screen's window out), or by the one carried over.
        refresh_time, refresh_day = self._refreshes(b_time)
        in_force = np.searchsorted(refresh_time, q_time, side="right") - 1
        slot = np.full(refresh_time.size, -1, np.int64)
        if self.universe_on and refresh_time.size:
            needed = np.union1d(in_force[in_force >= 0], [refresh_time.size - 1])
            slot[needed] = np.arange(needed.size)

        nq, n_symbols = q_time.size, len(rings.symbols)
        q_avg, q_known, q_interval = np.empty(nq), np.zeros(nq, np.bool_), np.zeros(nq, np.int64)
        size = int((slot >= 0).sum()) * n_symbols * self.lookback
        w_slot, w_sid, w_time = (np.empty(size, np.int64) for _ in range(3))
        w_close, w_high, w_low, w_volume = (np.empty(size) for _ in range(4))
        written = _walk(b_sid, b_time, *b_cols, b_interval,
                        rings.time, rings.close, rings.high, rings.low, rings.volume, rings.count, rings.interval,
                        refresh_time, slot, self.lookback,
                        q_sid, q_time, self.volume_period, q_avg, q_known, q_interval,
                        w_slot, w_sid, w_time, w_close, w_high, w_low, w_volume)  # fmt: skip
        window_columns = {"slot": w_slot[:written], "sid": w_sid[:written], "event_time_ns": w_time[:written],
                          "close": w_close[:written], "high": w_high[:written], "low": w_low[:written],
                          "volume": w_volume[:written]}  # fmt: skip

        codes = np.zeros(targets.height, np.int32)
        messages = np.full(targets.height, "", dtype=object)
        verdicts: dict[int, dict[str, tuple[bool, str]]] = {}
        if nq:
            assert entry_symbols is not None
            entry_slot = slot[in_force] if slot.size else np.full(nq, -1, np.int64)
            entry_slot[in_force < 0] = -1
            day_of_slot = {int(slot[k]): str(refresh_day[k]) for k in np.flatnonzero(slot >= 0).tolist()}
            fresh = np.unique(entry_slot[entry_slot >= 0])
            if fresh.size:
                keep = np.isin(window_columns["slot"], fresh)
                verdicts = self._verdicts(self._window_frame({k: v[keep] for k, v in window_columns.items()}),
                                          fresh.tolist())  # fmt: skip
            q_code, q_message = self._judge(entry_symbols, q_time, q_avg, q_known, q_interval,
                                            entry_slot, verdicts, day_of_slot)  # fmt: skip
            codes[entries], messages[entries] = q_code, q_message
        if self.universe_on and refresh_time.size:  # carry the latest refresh into later steps
            last = int(slot[-1])
            self.screen_day = str(refresh_day[-1])
            keep = window_columns["slot"] == last
            self.screen_window = {k: v[keep] for k, v in window_columns.items() if k != "slot"}
            self.screen_verdict = verdicts.get(last)
            self.refresh.mark_done(int(refresh_time[-1]))
        return codes, messages

    def _refreshes(self, bar_time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(time, session day) of each universe refresh due among these bar times (sorted)."""
        if not self.universe_on or not bar_time.size:
            return np.zeros(0, np.int64), np.zeros(0, "datetime64[D]")
        times = np.unique(bar_time)
        days = self.refresh.sessions.session_day(times)
        previous = self.refresh.last_session if self.refresh.last_session is not None else np.datetime64("NaT")
        new_day = days != np.r_[np.array([previous], "datetime64[D]"), days[:-1]]
        return times[new_day], days[new_day]

    def _judge(
        self,
        symbols: pl.Series,
        time_ns: np.ndarray,
        avg_volume: np.ndarray,
        volume_known: np.ndarray,
        interval_ns: np.ndarray,
        entry_slot: np.ndarray,
        verdicts: dict[int, dict[str, tuple[bool, str]]],
        day_of_slot: dict[int, str],
    ) -> tuple[np.ndarray, np.ndarray]:
        """The entry filters, in order, for entries (sorted by time): (RiskReason or 0, message) each.
        `entry_slot`: the screen in force per entry (-1: the one carried from an earlier step)."""
        n = time_ns.size
        codes = np.zeros(n, np.int32)
        messages = np.full(n, "", dtype=object)
        names = symbols.to_list()
        if self.universe_on:
            for r, (s, name) in enumerate(zip(entry_slot.tolist(), names, strict=True)):
                if s >= 0:
                    verdict, day = verdicts.get(s, {}), day_of_slot[s]
                else:
                    if self.screen_window is None:  # no bar seen yet: no screen is in force
                        continue
                    if self.screen_verdict is None:  # screened only now that an entry needs it
                        window = self._window_frame(self.screen_window).with_columns(slot=pl.lit(-1, pl.Int64))
                        self.screen_verdict = self._verdicts(window, [-1]).get(-1, {})
                    verdict, day = self.screen_verdict, self.screen_day
                eligible, reason = verdict.get(name, (False, "no bars up to as_of"))
                if not eligible:
                    codes[r] = pb.RISK_REASON_NOT_IN_UNIVERSE
                    messages[r] = f"{name}: not in the universe screened for the {day} session: {reason}"
        if self.hours is not None:
            decided = time_ns + interval_ns  # the target is decided, and the entry placed, at the bar's close
            rows = np.flatnonzero((codes == 0) & (interval_ns > 0) & (interval_ns < DAY_NS))
            closed = rows[~self.hours.allows(decided[rows])] if rows.size else rows
            if closed.size:
                codes[closed] = pb.RISK_REASON_MARKET_CLOSED
                explained = self.hours.explain_many(decided[closed])
                messages[closed] = [f"{names[r]}: {x}" for r, x in zip(closed.tolist(), explained, strict=True)]
        rows = np.flatnonzero(codes == 0)
        if self.filters is not None and rows.size:
            volume = avg_volume[rows].copy()
            unknown = ~volume_known[rows]
            if self.volume_on and unknown.any():
                self._log_unknown_volume(take(symbols, rows[unknown]).to_list())
            volume[unknown] = np.inf  # unknown volume: the filter does not apply
            spread = np.array([self.quote_spread.get(names[r], np.nan) for r in rows.tolist()])
            reason, text = self.filters.check(take(symbols, rows), time_ns[rows], volume, spread)
            failed = reason != FilterReason.OK
            codes[rows[failed]] = [_FILTER_REASON[FilterReason(r)] for r in reason[failed].tolist()]
            messages[rows[failed]] = text[failed]
        return codes, messages

    def _window_frame(self, columns: dict[str, np.ndarray]) -> pl.DataFrame:
        """Window rows (symbol rows as ids) as a frame with symbol names, for the screen."""
        names = pl.Series("symbol", self.rings.symbols, dtype=pl.Utf8).gather(columns["sid"])
        return pl.DataFrame({k: v for k, v in columns.items() if k != "sid"}).with_columns(names)

    def _verdicts(self, windows: pl.DataFrame, slots: list[int]) -> dict[int, dict[str, tuple[bool, str]]]:
        """(eligible, reason) per symbol of each slot's window, every slot screened as if alone but in one
        or two `screen_universe` calls (the key joins slot and symbol). A window whose volume is unknown
        (all 0) is screened without the dollar-volume criterion."""
        keyed = windows.filter(pl.col("slot").is_in(slots)).with_columns(
            pl.concat_str(pl.col("slot").cast(pl.Utf8), pl.lit(_KEY_SEPARATOR), "symbol").alias("key")
        )
        known = keyed.group_by("key").agg((pl.col("volume") > 0).any().alias("known"))
        keyed = keyed.join(known, on="key")
        out: dict[int, dict[str, tuple[bool, str]]] = {}
        for has_volume in (True, False):
            rows = keyed.filter(pl.col("known") == has_volume)
            if not rows.height:
                continue
            limits = dict(self.screen_limits)
            if not has_volume:
                limits["min_dollar_volume"] = 0.0
                if self.screen_limits["min_dollar_volume"] > 0:
                    self._log_unknown_volume(rows["symbol"].unique().to_list())
            result = screen_universe(rows.drop("symbol").rename({"key": "symbol"}), int(rows["event_time_ns"].max()),
                                     **limits)  # fmt: skip
            for key, eligible, reason in result.select("symbol", "eligible", "reason").iter_rows():
                s, name = key.split(_KEY_SEPARATOR, 1)
                out.setdefault(int(s), {})[name] = (eligible, reason)
        return out

    def _log_unknown_volume(self, symbols: list[str]) -> None:
        for symbol in sorted(set(symbols) - self.unknown_volume_logged):
            self.unknown_volume_logged.add(symbol)
            log.info("%s: volume unknown (all 0): the volume filter and the universe's dollar-volume "
                     "criterion do not apply to it", symbol)  # fmt: skip

    # -- output ----------------------------------------------------------------------------------------
    def _decisions(self, targets: pl.DataFrame, wanted: np.ndarray, codes: np.ndarray,
                   messages: np.ndarray) -> pl.DataFrame:  # fmt: skip
        cap = self.config.max_position_pct
        target = np.clip(np.nan_to_num(wanted), -cap, cap)
        reason = np.where(target != 0.0, pb.INTENT_REASON_ENTRY, pb.INTENT_REASON_SIGNAL_EXIT).astype(np.int32)
        correlation = targets.get_column("correlation_id")
        intent_id = formatted("event_id", "order_intent/risk/{}", correlation)
        time, symbol = targets.get_column("event_time_ns"), targets.get_column("symbol")
        return KINDS["risk_decision"].frame({
            "event_id": formatted("event_id", "risk_decision/{}", intent_id),
            "correlation_id": correlation, "event_time_ns": time, "symbol": symbol,
            "intent": {
                "header": {"event_id": intent_id, "correlation_id": correlation, "event_time_ns": time, "symbol": symbol},
                "side": np.where(target > 0, pb.ORDER_SIDE_BUY, pb.ORDER_SIDE_SELL).astype(np.int32),
                "quantity": 0.0, "order_type": pb.ORDER_TYPE_MARKET, "reason": reason,
                "reference_price": targets.get_column("reference_price"), "reduce_only": target == 0.0,
                "source": "risk", "target_percent": target, "limit_price": 0.0, "stop_price": 0.0,
                "time_in_force": pb.TIME_IN_FORCE_UNSPECIFIED, "parent_intent_id": "", "oco_group": "",
                "strategy": targets.get_column("strategy"), "rebalance_band": targets.get_column("rebalance_band"),
            },
            "approved": codes == pb.RISK_REASON_APPROVED,
            "reason": codes,
            "message": pl.Series("message", messages.tolist(), pl.Utf8),
        }, targets.height)  # fmt: skip

    # -- state -----------------------------------------------------------------------------------------
    def snapshot(self) -> Any:
        return {
            "controls": self.controls,
            "rings": self.rings.snapshot(),
            "refresh": self.refresh.snapshot() if self.universe_on else None,
            "screen": (self.screen_day, self.screen_window, self.screen_verdict),
            "quote_spread": dict(self.quote_spread),
            "unknown_volume_logged": set(self.unknown_volume_logged),
        }

    def restore(self, state: Any) -> None:
        self.controls = state["controls"]
        if "rings" not in state:  # a checkpoint from before the filters: no market state yet
            return
        self.rings.restore(state["rings"])
        if self.universe_on:
            self.refresh.restore(state["refresh"])
        self.screen_day, self.screen_window, verdict = state["screen"]
        self.screen_verdict = None if verdict is None else dict(verdict)
        self.quote_spread = dict(state["quote_spread"])
        self.unknown_volume_logged = set(state["unknown_volume_logged"])
