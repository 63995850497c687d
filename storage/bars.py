"""The local bar store: Parquet files by symbol and day, and the checkpoints of backfills into it.

Layout: `<root>/<symbol>/<YYYY-MM-DD>.parquet`, the day being the UTC day of the bar start, each file sorted by
time with one row per bar time. Symbols are escaped for paths (`BRK/B` -> `BRK%2FB`); only upper-case letters,
digits, `.`, `-` and `_` stay as they are, so two symbols can never share a folder on a case-insensitive disk,
and a folder name never starts with `.` or `_` (names starting with `_`, like `_checkpoints`, are the store's).

Every file is replaced atomically (written beside it, then renamed over it): a crash leaves the old day or the
new one, never half a file. One writer at a time per store; readers may run alongside.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl

from utp.storage.datasets import BAR_COLUMNS, DAY_NS

BAR_DTYPES: dict[str, pl.DataType] = {
    "event_time_ns": pl.Int64(), "symbol": pl.String(), "open": pl.Float64(), "high": pl.Float64(),
    "low": pl.Float64(), "close": pl.Float64(), "volume": pl.Float64(),
}  # fmt: skip
_KEPT = re.compile(r"[A-Z0-9.\-_]")
_DAY_FILE = re.compile(r"\d{4}-\d{2}-\d{2}\.parquet")
CHECKPOINT_DIR = "_checkpoints"


def encode_symbol(symbol: str) -> str:
    """A folder name for `symbol` that round-trips through `decode_symbol` and is safe on any file system."""
    out = []
    for i, char in enumerate(symbol):
        if _KEPT.fullmatch(char) and not (i == 0 and char in "._"):
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)


def decode_symbol(name: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(name):
        if name[i] == "%":
            raw.append(int(name[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(name[i].encode())
            i += 1
    return raw.decode("utf-8")


def validate_bars(bars: pl.DataFrame) -> None:
    """ValueError naming the first column that is missing, extra, of the wrong type, or null where it may not be."""
    for name, dtype in BAR_DTYPES.items():
        if name not in bars.columns:
            raise ValueError(f"bars have no column {name!r}; expected {', '.join(BAR_COLUMNS)}")
        if bars.schema[name] != dtype:
            raise ValueError(f"bars column {name!r} is {bars.schema[name]}, expected {dtype}")
    extra = [c for c in bars.columns if c not in BAR_DTYPES]
    if extra:
        raise ValueError(f"bars have an unexpected column {extra[0]!r}; expected {', '.join(BAR_COLUMNS)}")
    for name in ("event_time_ns", "symbol"):
        if bars[name].null_count():
            raise ValueError(f"bars column {name!r} has nulls")
    if (bars["symbol"] == "").any():
        raise ValueError("bars column 'symbol' has an empty symbol")


class BarStore:
    """Bars (BAR_COLUMNS) on disk by symbol and UTC day; see the module docstring for the layout."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def write(self, bars: pl.DataFrame) -> int:
        """Merge `bars` into the store: per (symbol, day) the stored bars and these, one row per bar time with
        the newest write winning, sorted. Returns the rows written (distinct bar times of `bars`)."""
        validate_bars(bars)
        if bars.is_empty():
            return 0
        bars = bars.select(BAR_COLUMNS).unique(["symbol", "event_time_ns"], keep="last", maintain_order=True)
        keyed = bars.with_columns((pl.col("event_time_ns") // DAY_NS).alias("_day"))
        for (symbol, day), part in keyed.group_by("symbol", "_day", maintain_order=True):
            self._merge_day(str(symbol), int(day), part.drop("_day"))  # type: ignore[call-overload]
        return bars.height

    def _merge_day(self, symbol: str, day: int, bars: pl.DataFrame) -> None:
        path = self._day_path(symbol, day)
        if path.exists():
            bars = pl.concat([pl.read_parquet(path), bars]).unique("event_time_ns", keep="last", maintain_order=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            bars.sort("event_time_ns").write_parquet(temporary, statistics=True)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    def _day_path(self, symbol: str, day: int) -> Path:
        return self.root / encode_symbol(symbol) / f"{date.fromordinal(_EPOCH_ORDINAL + day).isoformat()}.parquet"

    def read(
        self, symbols: Sequence[str] | None = None, start_ns: int | None = None, end_ns: int | None = None
    ) -> pl.DataFrame:
        """Bars of `symbols` (all when None) starting in [start_ns, end_ns), sorted by (event_time_ns, symbol).
        Only the day files that can hold such bars are opened."""
        files = self._files(symbols, start_ns, end_ns)
        if not files:
            return pl.DataFrame(schema=BAR_DTYPES)
        scan = pl.scan_parquet(files)
        if start_ns is not None:
            scan = scan.filter(pl.col("event_time_ns") >= start_ns)
        if end_ns is not None:
            scan = scan.filter(pl.col("event_time_ns") < end_ns)
        return scan.sort(["event_time_ns", "symbol"]).collect()

    def _files(self, symbols: Sequence[str] | None, start_ns: int | None, end_ns: int | None) -> list[Path]:
        first = None if start_ns is None else _day_name(start_ns // DAY_NS)
        last = None if end_ns is None else _day_name((end_ns - 1) // DAY_NS)
        folders = [self.root / encode_symbol(s) for s in dict.fromkeys(symbols)] if symbols is not None else [
            self.root / encode_symbol(s) for s in self.symbols()
        ]
        files = []
        for folder in folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if not _DAY_FILE.fullmatch(path.name):
                    continue
                day = path.name[:10]
                if (first is None or day >= first) and (last is None or day <= last):
                    files.append(path)
        return files

    def symbols(self) -> list[str]:
        """The stored symbols, sorted."""
        if not self.root.is_dir():
            return []
        names = [p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))]
        return sorted(decode_symbol(name) for name in names)

    def coverage(self) -> pl.DataFrame:
        """Per symbol: first and last bar start (ns), days with bars, and bars stored."""
        rows = []
        for symbol in self.symbols():
            files = self._files([symbol], None, None)
            if not files:
                continue
            stats = pl.scan_parquet(files).select(
                pl.col("event_time_ns").min().alias("first_ns"), pl.col("event_time_ns").max().alias("last_ns"),
                pl.len().alias("rows"),
            ).collect()  # fmt: skip
            rows.append({"symbol": symbol, "first_ns": stats["first_ns"][0], "last_ns": stats["last_ns"][0],
                         "days": len(files), "rows": int(stats["rows"][0])})  # fmt: skip
        schema = {"symbol": pl.String, "first_ns": pl.Int64, "last_ns": pl.Int64, "days": pl.Int64, "rows": pl.Int64}
        return pl.DataFrame(rows, schema=schema)


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def _day_name(day: int) -> str:
    return date.fromordinal(_EPOCH_ORDINAL + day).isoformat()


class BackfillCheckpoint:
    """How far one backfill job got: per symbol the last day (inclusive) whose bars are stored.

    The job is (source, symbols as a set, from, to, timeframe); its file is `<store>/_checkpoints/<key>.json`,
    replaced atomically after every stored chunk, so it never claims a day that is not in the store.
    """

    def __init__(
        self, store_root: Path, source: str, symbols: Sequence[str], start: date, end: date, timeframe: str
    ) -> None:
        self.job: dict[str, Any] = {"source": source, "symbols": sorted(set(symbols)), "from": start.isoformat(),
                                    "to": end.isoformat(), "timeframe": timeframe}  # fmt: skip
        digest = hashlib.sha256(json.dumps(self.job, sort_keys=True).encode()).hexdigest()[:12]
        self.key = f"{source}-{timeframe}-{start.isoformat()}-{end.isoformat()}-{digest}"
        self.path = Path(store_root) / CHECKPOINT_DIR / f"{self.key}.json"
        self._done: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            saved = json.loads(self.path.read_text())
            if saved["job"] != self.job:
                raise ValueError("it belongs to another job")
            self._done = {str(s): dict(v) for s, v in saved["symbols"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"checkpoint {self.path} is unreadable ({exc}); remove it to start over") from None

    def exists(self) -> bool:
        return self.path.exists()

    def done_through(self, symbol: str) -> date | None:
        """The last day of `symbol` that is fully stored, or None when nothing is."""
        entry = self._done.get(symbol)
        return date.fromisoformat(entry["through"]) if entry else None

    def rows(self, symbol: str) -> int:
        entry = self._done.get(symbol)
        return int(entry["rows"]) if entry else 0

    @property
    def complete(self) -> bool:
        end = self.job["to"]
        return all(self._done.get(s, {}).get("through") == end for s in self.job["symbols"])

    def mark_done(self, symbol: str, through: date, rows: int) -> None:
        """Record that `symbol` is stored through `through` (inclusive), `rows` more bars with it; call after the
        store has the chunk."""
        if symbol not in self.job["symbols"]:
            raise ValueError(f"{symbol} is not a symbol of backfill job {self.key}")
        self._done[symbol] = {"through": through.isoformat(), "rows": self.rows(symbol) + rows}
        state = {"job": self.job, "symbols": self._done, "updated": datetime.now(UTC).isoformat()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        try:
            temporary.write_text(json.dumps(state, indent=2, sort_keys=True))
            os.replace(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self._done = {}
