"""`utp data backfill` and `utp data show`: historical bars from Alpaca or Polygon into the local bar store.

A backfill walks its symbols chunk by chunk (`core.vendors.history`), stores each chunk, then records it in the
job's checkpoint (`storage.bars.BackfillCheckpoint`). When a vendor keeps failing, what was stored stays stored
and `--resume` carries on after the last recorded chunk, so nothing already stored is fetched again.

Exit codes: 0 done; 2 a usage, settings or credentials problem (nothing fetched, or the vendor refused the
credentials); 1 a vendor failure that outlasted the client's retries (rerun with --resume).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from utp.core.config import Config, ConfigError, load_config, parse_assignments


def add_parsers(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="historical bars: backfill the local bar store from a vendor, show what it has")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    backfill = data_sub.add_parser("backfill", help="fetch bars from Alpaca or Polygon into the bar store")
    backfill.add_argument("--source", required=True, choices=("alpaca", "polygon"))
    backfill.add_argument("--symbols", required=True, help="comma-separated symbols, e.g. AAPL,MSFT")
    backfill.add_argument("--from", dest="start", required=True, metavar="YYYY-MM-DD", help="first day (UTC)")
    backfill.add_argument("--to", dest="end", required=True, metavar="YYYY-MM-DD", help="last day (UTC), inclusive")
    backfill.add_argument("--timeframe", help="bar interval: 1Min, 5Min, 15Min, 1Hour, 1Day (data.timeframe)")
    backfill.add_argument("--resume", action="store_true", help="continue the job after its last stored chunk")
    backfill.add_argument("--chunk-days", type=int, metavar="N", help="days per request chunk (default: by timeframe)")
    backfill.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                          help="show a progress bar on stderr (default: when stderr is a terminal)")
    _common(backfill)

    show = data_sub.add_parser("show", help="what the bar store holds, per symbol")
    _common(show)
    for parser in (backfill, show):
        parser.set_defaults(log_level="WARNING")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", metavar="DIR", help="bar store folder (default: data.store_dir or <data dir>/bars)")
    parser.add_argument("--data-dir", metavar="DIR", help="the data folder (default: the user's data folder)")
    parser.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")


def run(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
        store_dir = store_root(config, args.store)
        if args.data_command == "show":
            return _show(store_dir)
        return _backfill(args, config, store_dir)
    except (ConfigError, ValueError) as exc:
        print(f"utp data: error: {exc}", file=sys.stderr)
        return 2


def store_root(config: Config, override: str | None = None) -> Path:
    """The bar store folder: `override`, else data.store_dir, else <data dir>/bars."""
    if override:
        return Path(override).expanduser()
    if config.data.store_dir:
        return Path(config.data.store_dir).expanduser()
    if config.data_dir:
        return Path(config.data_dir).expanduser() / "bars"
    import platformdirs

    return Path(platformdirs.user_data_dir("utp")) / "bars"


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = parse_assignments(args.set)
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if getattr(args, "timeframe", None):
        overrides["data.timeframe"] = args.timeframe
    return load_config(args.config, overrides=overrides)


def _day(flag: str, text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{flag} {text!r} is not a date YYYY-MM-DD") from None


def _backfill(args: argparse.Namespace, config: Config, store_dir: Path) -> int:
    from utp.core.vendors.history import (
        RetrySettings, Timeframe, VendorError, chunk_ranges, credentials, fetch_bar_chunks,
    )  # fmt: skip
    from utp.storage.bars import BackfillCheckpoint, BarStore

    first, last = _day("--from", args.start), _day("--to", args.end)
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    symbols = list(dict.fromkeys(s.strip().upper() for s in args.symbols.split(",") if s.strip()))
    if not symbols:
        raise ValueError("--symbols names no symbol")
    if args.chunk_days is not None and args.chunk_days < 1:
        raise ValueError("--chunk-days must be >= 1")
    timeframe = Timeframe.parse(config.data.timeframe)
    broker = config.broker
    auth = {"key_env": broker.key_env, "secret_env": broker.secret_env}
    credentials(args.source, config.data, **auth)  # fail before anything is fetched or written

    checkpoint = BackfillCheckpoint(store_dir, args.source, symbols, first, last, str(timeframe))
    if checkpoint.exists() and not args.resume:
        raise ValueError(
            f"a checkpoint of this backfill exists ({checkpoint.path}): pass --resume to continue it, "
            "or remove the file to fetch everything again"
        )
    store = BarStore(store_dir)
    start = datetime.combine(first, time(), UTC)
    end = datetime.combine(last + timedelta(days=1), time(), UTC)
    chunk_days = args.chunk_days or timeframe.default_chunk_days()
    retry = RetrySettings(retries=broker.retries, wait_s=broker.backoff_s, timeout_s=broker.timeout_s)
    resume_at = {s: _resume_start(checkpoint.done_through(s), start) for s in symbols}
    totals = {s: len(chunk_ranges(start, end, chunk_days)) for s in symbols}
    left = {s: len(chunk_ranges(resume_at[s], end, chunk_days)) if resume_at[s] < end else 0 for s in symbols}
    written = dict.fromkeys(symbols, 0)
    show_progress = sys.stderr.isatty() if args.progress is None else args.progress

    failure: VendorError | None = None
    # The bar is closed before anything else is printed, so messages never interleave with it.
    with _progress(show_progress, sum(totals.values()), sum(totals[s] - left[s] for s in symbols)) as advance:
        for symbol in (s for s in symbols if left[s]):
            chunks = fetch_bar_chunks(
                args.source, config.data, [symbol], resume_at[symbol], end, chunk_days=chunk_days, retry=retry, **auth
            )
            try:
                for chunk in chunks:
                    rows = store.write(chunk.bars)
                    checkpoint.mark_done(symbol, chunk.last_day, rows)  # only after the store has the chunk
                    written[symbol] += rows
                    advance(symbol)
            except VendorError as exc:
                failure = exc
                break
    if failure is not None:
        print(f"utp data: error: {failure}", file=sys.stderr)
        if failure.status in (401, 403):
            print("utp data: the vendor refused the credentials; fix them and rerun with --resume", file=sys.stderr)
            return 2
        stored = {s: checkpoint.done_through(s) for s in symbols}
        done = ", ".join(f"{s} through {day}" for s, day in stored.items() if day)
        print(f"utp data: stored so far: {done or 'nothing'}; the checkpoint is {checkpoint.path}. "
              "Run the same command with --resume to continue.", file=sys.stderr)  # fmt: skip
        return 1
    summary = ", ".join(f"{s} {written[s]} rows" for s in symbols)
    resumed = " (resumed)" if args.resume and any(left[s] < totals[s] for s in symbols) else ""
    print(f"backfill {args.source} {timeframe} {first}..{last}{resumed} into {store_dir}: {summary}")
    return 0


def _resume_start(done_through: date | None, start: datetime) -> datetime:
    if done_through is None:
        return start
    return max(start, datetime.combine(done_through + timedelta(days=1), time(), UTC))


@contextmanager
def _progress(enabled: bool, total: int, completed: int) -> Iterator[Any]:
    """A rich progress bar on stderr over symbols x chunks; yields `advance(symbol)`."""
    if not enabled:
        yield lambda symbol: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("backfill {task.fields[symbol]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(file=sys.stderr), transient=False) as bar:
        task = bar.add_task("backfill", total=total, completed=completed, symbol="")

        def advance(symbol: str) -> None:
            bar.update(task, advance=1, symbol=symbol)

        yield advance


def _show(store_dir: Path) -> int:
    import polars as pl

    from utp.storage.bars import BarStore

    coverage = BarStore(store_dir).coverage()
    if coverage.is_empty():
        print(f"the bar store {store_dir} holds no bars")
        return 0
    print(f"bar store {store_dir}")
    print(f"{'symbol':<10} {'first bar (UTC)':<20} {'last bar (UTC)':<20} {'days':>6} {'bars':>10}")
    stamps = coverage.with_columns(
        pl.from_epoch(pl.col(c), time_unit="ns").dt.strftime("%Y-%m-%d %H:%M").alias(c) for c in ("first_ns", "last_ns")
    )
    for row in stamps.iter_rows(named=True):
        print(f"{row['symbol']:<10} {row['first_ns']:<20} {row['last_ns']:<20} {row['days']:>6} {row['rows']:>10}")
    return 0
