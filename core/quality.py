"""Data quality: corporate-action adjustment, freshness, and outlier quarantine.

* `adjust_bars` back-adjusts bars for splits and cash dividends (CRSP / Yahoo convention) so returns are
  continuous across ex-dates; the last bars keep the traded prices.
* `stale_symbols` names the symbols whose newest bar is too old (or that never had one).
* `OutlierDetector` flags bars whose close jumps or whose volume spikes far beyond the symbol's recent
  behaviour. Its per-symbol state lives in arrays a numba kernel updates row by row, so feeding the same
  bars in one call or in many small calls gives the same decisions; a flagged bar never updates the state,
  so one bad tick cannot become the reference the next good bar is judged against.

Tables (corporate actions, earnings dates) load from CSV or Parquet through `read_table` and are checked by
`coerce_columns`, which names every bad row instead of failing on the first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from numba import njit

from utp.core.kernels import entry

DAY_NS = 86_400 * 10**9
MINUTE_NS = 60 * 10**9
DEFAULT_MAX_AGE_NS = 30 * MINUTE_NS
_MAX_LISTED_PROBLEMS = 20


# --------------------------------------------------------------------------------------------------------------
# Reading and checking small tables
# --------------------------------------------------------------------------------------------------------------


def read_table(path: str | Path) -> pl.DataFrame:
    """A CSV (every column read as text, so values are checked, not guessed) or Parquet file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pl.read_parquet(path)
    if suffix in (".csv", ".txt"):
        return pl.read_csv(path, infer_schema=False)
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv or .parquet")


def _convert(raw: pl.Series, dtype: pl.DataType) -> pl.Series:
    text = raw.dtype == pl.Utf8
    if dtype == pl.Date:
        if text:
            return raw.str.strip_chars().str.to_date("%Y-%m-%d", strict=False)
        if raw.dtype == pl.Datetime:
            return raw.dt.date()
        return raw.cast(pl.Date, strict=False)
    if text:
        return raw.str.strip_chars().cast(dtype, strict=False)
    return raw.cast(dtype, strict=False)


def coerce_columns(
    frame: pl.DataFrame,
    schema: Mapping[str, Any],
    source: str,
    defaults: Mapping[str, Any] | None = None,
) -> pl.DataFrame:
    """`frame` with exactly `schema`'s columns converted to its types; a missing or blank value takes its
    column's default when there is one. ValueError naming every row that cannot be converted."""
    defaults = defaults or {}
    missing = [c for c in schema if c not in frame.columns and c not in defaults]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {', '.join(missing)}; it has {', '.join(frame.columns) or 'none'}"
        )
    problems: list[str] = []
    columns = []
    for name, dtype in schema.items():
        if name not in frame.columns:
            columns.append(pl.repeat(defaults[name], frame.height, dtype=dtype, eager=True).alias(name))
            continue
        raw = frame[name]
        blank = raw.is_null()
        if raw.dtype == pl.Utf8:
            blank = blank | (raw.str.strip_chars() == "")
        value = _convert(raw, dtype)
        if dtype == pl.Utf8:
            value = value.str.strip_chars()
        if name in defaults:
            value = pl.select(pl.when(blank).then(pl.lit(defaults[name], dtype)).otherwise(value)).to_series()
        for i in np.flatnonzero(value.is_null().to_numpy()).tolist():
            shown = "is missing" if blank[i] else f"{raw[i]!r} is not a {_type_name(dtype)}"
            problems.append(f"row {i + 1}: {name} {shown}")
        columns.append(value.alias(name))
    raise_problems(problems, source)
    return pl.DataFrame(columns)


def _type_name(dtype: Any) -> str:
    return {pl.Date: "date (YYYY-MM-DD)", pl.Float64: "number", pl.Int64: "whole number"}.get(dtype, str(dtype))


def raise_problems(problems: list[str], source: str) -> None:
    """ValueError listing the problems (the first 20 and a count), or nothing when there are none."""
    if not problems:
        return
    shown = "\n  ".join(problems[:_MAX_LISTED_PROBLEMS])
    more = f"\n  ... and {len(problems) - _MAX_LISTED_PROBLEMS} more" if len(problems) > _MAX_LISTED_PROBLEMS else ""
    raise ValueError(f"{source}: {len(problems)} bad row(s) (row 1 = first data row):\n  {shown}{more}")


# --------------------------------------------------------------------------------------------------------------
# Corporate actions
# --------------------------------------------------------------------------------------------------------------


ACTIONS_SCHEMA = {"symbol": pl.Utf8, "ex_date": pl.Date, "split_ratio": pl.Float64, "cash_dividend": pl.Float64}


class CorporateActions:
    """Splits and cash dividends: one row per (symbol, ex_date).

    `split_ratio` is new shares per old share (2.0 for a 2-for-1 split, 0.1 for a 1-for-10 reverse split,
    1.0 for none); `cash_dividend` is paid per share, in the same per-share terms as the close before the
    ex-date. Either column may be absent or blank (no split / no dividend).
    """

    def __init__(self, frame: pl.DataFrame, source: str = "corporate actions") -> None:
        checked = coerce_columns(frame, ACTIONS_SCHEMA, source, defaults={"split_ratio": 1.0, "cash_dividend": 0.0})
        problems: list[tuple[int, str]] = []
        rows = checked.with_row_index("row", offset=1)

        def flag(bad: pl.Expr, what: str) -> None:
            for row in rows.filter(bad).iter_rows(named=True):
                problems.append(
                    (row["row"], f"row {row['row']} ({row['symbol']} {row['ex_date']}): " + what.format(**row))
                )

        flag(
            ~(pl.col("split_ratio").is_finite() & (pl.col("split_ratio") > 0)), "split_ratio {split_ratio} must be > 0"
        )
        flag(~(pl.col("cash_dividend").is_finite() & (pl.col("cash_dividend") >= 0)),
             "cash_dividend {cash_dividend} must be >= 0")  # fmt: skip
        flag(pl.struct("symbol", "ex_date").is_duplicated(),
             "another row has the same symbol and ex_date; give the split and the dividend in one row")  # fmt: skip
        raise_problems([text for _, text in sorted(problems)], source)
        self.frame: pl.DataFrame = checked.sort("symbol", "ex_date")

    @classmethod
    def load(cls, path: str | Path) -> CorporateActions:
        """From a CSV or Parquet file with columns symbol, ex_date (YYYY-MM-DD), split_ratio, cash_dividend."""
        return cls(read_table(path), str(path))

    @classmethod
    def empty(cls) -> CorporateActions:
        return cls(pl.DataFrame(schema=ACTIONS_SCHEMA))

    def __len__(self) -> int:
        return self.frame.height

    def __repr__(self) -> str:
        return f"CorporateActions({self.frame.height} actions, {self.frame['symbol'].n_unique()} symbols)"


def trading_date(tz: str = "America/New_York") -> pl.Expr:
    """The date a bar trades on, from `event_time_ns`: its start's date in the exchange's zone, except that
    a bar starting exactly at 00:00 UTC is a date-stamped daily bar (the data sets' convention) and keeps
    that UTC date."""
    utc = pl.from_epoch("event_time_ns", "ns").dt.replace_time_zone("UTC")
    midnight = pl.col("event_time_ns") % DAY_NS == 0
    return pl.when(midnight).then(utc.dt.date()).otherwise(utc.dt.convert_time_zone(tz).dt.date())


def adjust_bars(
    bars: pl.DataFrame,
    actions: CorporateActions,
    *,
    as_of: date | None = None,
    tz: str = "America/New_York",
) -> pl.DataFrame:
    """Bars back-adjusted for every action (with ex_date <= `as_of` when given), row order and columns kept.

    A bar trading before an ex-date has its prices divided by the split ratio and multiplied by the
    dividend factor 1 - dividend / previous close (the close of the symbol's last bar before the ex-date),
    and its volume multiplied by the split ratio; factors of several later actions multiply. Bars on or
    after an ex-date are unchanged, so the newest prices are the traded ones.
    """
    if as_of is not None:
        actions_frame = actions.frame.filter(pl.col("ex_date") <= as_of)
    else:
        actions_frame = actions.frame
    if bars.is_empty() or actions_frame.is_empty():
        return bars
    dated = bars.with_row_index("_row").with_columns(trading_date(tz).alias("_date"))
    # The close each dividend is measured against: the last close of the last trading date before ex_date.
    last_close = (
        dated.group_by("symbol", "_date")
        .agg(pl.col("close").sort_by("event_time_ns").last().alias("_previous_close"))
        .sort("_date")
    )
    acts = (
        actions_frame.filter(pl.col("symbol").is_in(dated["symbol"].unique().implode()))
        .sort("ex_date")
        .join_asof(
            last_close,
            left_on="ex_date",
            right_on="_date",
            by="symbol",
            strategy="backward",
            allow_exact_matches=False,
            check_sortedness=False,
        )  # fmt: skip
        .with_columns(
            pl.when(pl.col("_previous_close").is_null())
            .then(1.0)  # no bar before it: nothing to adjust, whatever the factor
            .otherwise(1.0 - pl.col("cash_dividend") / pl.col("_previous_close"))
            .alias("_dividend_factor")
        )
    )
    impossible = acts.filter(pl.col("_dividend_factor") <= 0)
    if impossible.height:
        row = impossible.row(0, named=True)
        raise ValueError(
            f"{row['symbol']} dividend {row['cash_dividend']} on {row['ex_date']} is not below the previous close "
            f"{row['_previous_close']}: check the corporate actions"
        )
    # Cumulative factor of each action and every later one of its symbol (a reversed cumulative product).
    acts = (
        acts.sort("symbol", "ex_date")
        .with_columns(
            (pl.col("_dividend_factor") / pl.col("split_ratio"))
            .reverse()
            .cum_prod()
            .reverse()
            .over("symbol")
            .alias("_price_factor"),
            pl.col("split_ratio").reverse().cum_prod().reverse().over("symbol").alias("_volume_factor"),
        )  # fmt: skip
        .select("symbol", "ex_date", "_price_factor", "_volume_factor")
        .sort("ex_date")
    )
    # Each bar takes the cumulative factor of the first action strictly after its trading date.
    joined = (
        dated.sort("_date")
        .join_asof(
            acts,
            left_on="_date",
            right_on="ex_date",
            by="symbol",
            strategy="forward",
            allow_exact_matches=False,
            check_sortedness=False,
        )  # fmt: skip
        .sort("_row")
    )
    price = pl.col("_price_factor").fill_null(1.0)
    adjusted = joined.with_columns(
        *((pl.col(c) * price).alias(c) for c in ("open", "high", "low", "close")),
        (pl.col("volume") * pl.col("_volume_factor").fill_null(1.0)).alias("volume"),
    )
    return adjusted.select(bars.columns)


# --------------------------------------------------------------------------------------------------------------
# Freshness
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Staleness:
    """A symbol whose data is too old: `age_ns` is None when no bar was ever seen."""

    symbol: str
    age_ns: int | None
    message: str


def _duration(ns: int) -> str:
    seconds = ns / 1e9
    if abs(seconds) < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if abs(seconds) < 2 * 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


def stale_symbols(
    last_bar_ns: Mapping[str, int] | pl.DataFrame,
    now_ns: int,
    max_age_ns: int = DEFAULT_MAX_AGE_NS,
    *,
    symbols: Iterable[str] = (),
) -> list[Staleness]:
    """Symbols whose newest bar is at least `max_age_ns` old at `now_ns`, sorted by symbol.

    `last_bar_ns` maps symbol -> newest bar time, or is a frame with symbol and event_time_ns (bars: the
    newest per symbol counts). `symbols` are those expected: one absent from `last_bar_ns` is stale.
    Age is measured from the bar's own time (its start), so a minute bar is judged a minute early: safe side.
    """
    if max_age_ns <= 0:
        raise ValueError(f"max_age_ns must be > 0, got {max_age_ns}")
    if isinstance(last_bar_ns, pl.DataFrame):
        newest = last_bar_ns.group_by("symbol").agg(pl.col("event_time_ns").max())
        last = dict(zip(newest["symbol"].to_list(), newest["event_time_ns"].to_list(), strict=True))
    else:
        last = dict(last_bar_ns)
    stale = []
    for symbol in sorted(set(last) | set(symbols)):
        seen = last.get(symbol)
        if seen is None:
            stale.append(Staleness(symbol, None, f"{symbol}: no bar seen"))
            continue
        age = int(now_ns) - int(seen)
        if age >= max_age_ns:
            when = str(np.datetime64(int(seen), "ns").astype("datetime64[s]")).replace("T", " ")
            stale.append(Staleness(symbol, age, f"{symbol}: last bar {when} UTC is {_duration(age)} old "
                                                f"(limit {_duration(max_age_ns)})"))  # fmt: skip
    return stale


# --------------------------------------------------------------------------------------------------------------
# Outliers
# --------------------------------------------------------------------------------------------------------------


class OutlierReason(IntEnum):
    OK = 0
    PRICE_JUMP = 1
    VOLUME_SPIKE = 2
    INVALID = 3


OUTLIER_OK = OutlierReason.OK
OUTLIER_PRICE_JUMP = OutlierReason.PRICE_JUMP
OUTLIER_VOLUME_SPIKE = OutlierReason.VOLUME_SPIKE
OUTLIER_INVALID = OutlierReason.INVALID

_OUTLIER_TEXT = {
    OutlierReason.OK: "ok",
    OutlierReason.PRICE_JUMP: "close jumped far beyond the symbol's recent volatility",
    OutlierReason.VOLUME_SPIKE: "volume far above the symbol's recent median volume",
    OutlierReason.INVALID: "close is not a positive number or volume is negative / not finite",
}


def reason_text(code: int) -> str:
    """What an outlier code means."""
    try:
        return _OUTLIER_TEXT[OutlierReason(int(code))]
    except ValueError:
        return f"unknown outlier code {code}"


# The median of |x| times 1 / Phi^-1(3/4), or the mean of |x| times sqrt(pi / 2), estimates sigma for a normal
# law. The median ignores the odd big move but reads 0 when most returns are 0 (coarse ticks, quiet minutes);
# the larger of the two is used. Flagged moves never enter either.
_MAD_TO_SIGMA = 1.4826
_MEAN_ABS_TO_SIGMA = math.sqrt(math.pi / 2.0)


@njit(cache=True)
def _median_of(values, count, scratch):  # noqa: ANN001, ANN202
    """Median of values[:count] (insertion sort in a reused scratch buffer: no allocation per row)."""
    for k in range(count):
        x = values[k]
        j = k - 1
        while j >= 0 and scratch[j] > x:
            scratch[j + 1] = scratch[j]
            j -= 1
        scratch[j + 1] = x
    half = count // 2
    if count % 2 == 1:
        return scratch[half]
    return 0.5 * (scratch[half - 1] + scratch[half])


@njit(cache=True)
def _median_below(values, count, threshold, scratch):  # noqa: ANN001, ANN202
    """Whether median(values[:count]) < threshold; one counting pass decides unless the count is a tie."""
    below = 0
    for k in range(count):
        if values[k] < threshold:
            below += 1
    if 2 * below > count:
        return True  # both middle values are below
    if 2 * below < count:
        return False
    return _median_of(values, count, scratch) < threshold


@njit(cache=True)
def _push(buf, n, s, value):  # noqa: ANN001, ANN202
    buf[s, n[s] % buf.shape[1]] = value
    n[s] += 1


@entry
@njit(cache=True)
def _check_outliers(sid, close, volume, last_close, abs_ret, ret_n, vol_buf, vol_n, pending_close, streak,
                    max_move_sigma, min_move, max_volume_multiple, warmup_max_move, confirm_bars,
                    scratch, out):  # fmt: skip  # noqa: ANN001
    """Outlier code per row (OutlierReason values); accepted rows update their symbol's state, flagged rows
    only the pending-level streak."""
    window = abs_ret.shape[1]
    for i in range(sid.shape[0]):
        s = sid[i]
        c = close[i]
        v = volume[i]
        if not (np.isfinite(c) and c > 0.0 and np.isfinite(v) and v >= 0.0):
            out[i] = 3
            continue
        previous = last_close[s]
        if not previous > 0.0:  # the symbol's first bar: nothing to compare with
            last_close[s] = c
            _push(vol_buf, vol_n, s, v)
            out[i] = 0
            continue
        r = math.log(c / previous)
        warm = ret_n[s] >= window
        code = 0
        if warm:
            if abs(r) > min_move:  # the cheap test first: both limits must be exceeded
                sigma = max(
                    _MAD_TO_SIGMA * _median_of(abs_ret[s], window, scratch), _MEAN_ABS_TO_SIGMA * np.mean(abs_ret[s])
                )
                if abs(r) > max_move_sigma * sigma:
                    code = 1
        elif abs(r) > warmup_max_move:
            code = 1
        if code == 0 and vol_n[s] >= window and v > 0.0:
            # v > multiple x median, with a zero median (no volume known) never a spike
            if _median_below(vol_buf[s], window, v / max_volume_multiple, scratch):
                if _median_of(vol_buf[s], window, scratch) > 0.0:
                    code = 2
        if code != 0:
            # A level (or volume) that holds for confirm_bars flagged bars in a row is real, not a bad tick:
            # accept it, measuring its return from the previous flagged close.
            limit = min_move if warm else warmup_max_move
            if streak[s] > 0 and abs(math.log(c / pending_close[s])) <= limit:
                streak[s] += 1
            else:
                streak[s] = 1
            if confirm_bars > 0 and streak[s] >= confirm_bars:
                r = math.log(c / pending_close[s])
                code = 0
            else:
                pending_close[s] = c
                out[i] = code
                continue
        _push(abs_ret, ret_n, s, abs(r))
        _push(vol_buf, vol_n, s, v)
        last_close[s] = c
        streak[s] = 0
        out[i] = 0


class OutlierDetector:
    """Flags bars whose close jumps or whose volume spikes beyond each symbol's recent behaviour.

    Per symbol it keeps the last accepted close, the absolute log returns and the volumes of the last
    `window` accepted bars. A close is a PRICE_JUMP when |log return| exceeds both `max_move_sigma` x the
    robust volatility (the larger of 1.4826 x median and 1.2533 x mean |log return|) and `min_move`; a
    bar is a VOLUME_SPIKE when its volume exceeds `max_volume_multiple` x the median volume (a zero median,
    volume unknown, never spikes). Until `window` returns are known only |log return| > `warmup_max_move`
    is flagged, and volumes are not judged. Moves are log returns: 0.2 is +22% / -18%.

    Flagged bars leave the state alone, so the next bar is judged against the last good close. A genuine new
    level (a takeover bid, an unadjusted split) is accepted when `confirm_bars` flagged bars in a row agree
    with each other (0 = never); those before it stay flagged.
    """

    def __init__(
        self,
        n_symbols: int,
        *,
        window: int = 20,
        max_move_sigma: float = 10.0,
        min_move: float = 0.2,
        max_volume_multiple: float = 50.0,
        warmup_max_move: float = 0.5,
        confirm_bars: int = 3,
    ) -> None:
        if n_symbols < 1:
            raise ValueError(f"n_symbols must be >= 1, got {n_symbols}")
        if window < 3:
            raise ValueError(f"window must be >= 3, got {window}")
        positive = {"max_move_sigma": max_move_sigma, "min_move": min_move,
                    "max_volume_multiple": max_volume_multiple, "warmup_max_move": warmup_max_move}  # fmt: skip
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a number > 0, got {value}")
        if confirm_bars < 0 or confirm_bars == 1:
            raise ValueError(f"confirm_bars must be 0 (never) or >= 2, got {confirm_bars}")
        self.n_symbols, self.window = n_symbols, window
        self.max_move_sigma, self.min_move = float(max_move_sigma), float(min_move)
        self.max_volume_multiple, self.warmup_max_move = float(max_volume_multiple), float(warmup_max_move)
        self.confirm_bars = int(confirm_bars)
        self._scratch = np.empty(window, np.float64)
        self._state = self._fresh_state()

    def _fresh_state(self) -> dict[str, np.ndarray]:
        n, w = self.n_symbols, self.window
        return {
            "last_close": np.full(n, np.nan),
            "abs_ret": np.zeros((n, w)),
            "ret_n": np.zeros(n, np.int64),
            "vol_buf": np.zeros((n, w)),
            "vol_n": np.zeros(n, np.int64),
            "pending_close": np.full(n, np.nan),
            "streak": np.zeros(n, np.int64),
        }

    def check(self, sid: np.ndarray, close: np.ndarray, volume: np.ndarray) -> np.ndarray:
        """int8 OutlierReason per row, rows in time order per symbol; advances the state with accepted rows."""
        sid = np.ascontiguousarray(sid, dtype=np.int64)
        close = np.ascontiguousarray(close, dtype=np.float64)
        volume = np.ascontiguousarray(volume, dtype=np.float64)
        if not (sid.shape == close.shape == volume.shape and sid.ndim == 1):
            raise ValueError(
                f"sid, close and volume must be 1-D of one length: {sid.shape}, {close.shape}, {volume.shape}"
            )
        if sid.size and (int(sid.min()) < 0 or int(sid.max()) >= self.n_symbols):
            bad = sid[(sid < 0) | (sid >= self.n_symbols)][0]
            raise ValueError(f"symbol index {bad} outside 0..{self.n_symbols - 1}")
        out = np.empty(sid.size, np.int8)
        st = self._state
        _check_outliers(
            sid, close, volume,
            st["last_close"], st["abs_ret"], st["ret_n"], st["vol_buf"], st["vol_n"], st["pending_close"], st["streak"],
            self.max_move_sigma, self.min_move, self.max_volume_multiple, self.warmup_max_move, self.confirm_bars,
            self._scratch, out,
        )  # fmt: skip
        return out

    def snapshot(self) -> dict[str, np.ndarray]:
        """A copy of the per-symbol state (for checkpoints)."""
        return {k: v.copy() for k, v in self._state.items()}

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from a snapshot taken with the same n_symbols and window."""
        fresh = self._fresh_state()
        if set(state) != set(fresh):
            raise ValueError(f"outlier state needs keys {sorted(fresh)}, got {sorted(state)}")
        for key, template in fresh.items():
            value = np.asarray(state[key])
            if value.shape != template.shape:
                raise ValueError(f"outlier state {key} has shape {value.shape}, this detector needs {template.shape}")
            fresh[key] = value.astype(template.dtype, copy=True)
        self._state = fresh
