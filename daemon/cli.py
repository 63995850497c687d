"""The `utp` command: core daemon, console, demo and backtests."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import logging
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np

from utp.core.config import Config, ConfigError, load_config, parse_assignments
from utp.v1 import core_service_pb2 as api

log = logging.getLogger("utp")


def version() -> str:
    try:
        return metadata.version("utp")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def packaged_config(name: str) -> Path:
    """Path of a configuration file shipped in `configs/` (installed as `utp.configs`)."""
    return Path(str(resources.files("utp.configs").joinpath(name)))


# -- configuration from flags ------------------------------------------------------------------------
def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config (repeatable)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting, e.g. risk.max_position_pct=0.2"
    )
    parser.add_argument("--dataset", help="goog, eurusd or sp500")
    parser.add_argument("--symbols", help="comma-separated symbols of the data set")
    parser.add_argument("--log-level", default="INFO")


def _overrides(args: argparse.Namespace, flags: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = parse_assignments(args.set)
    for attr, key in flags.items():
        value = getattr(args, attr, None)
        if value is not None:
            out[key] = value
    if getattr(args, "symbols", None):
        out["market_data.symbols"] = [s.strip() for s in args.symbols.split(",") if s.strip()]
    return out


def _config(args: argparse.Namespace, flags: dict[str, str], base_files: Sequence[Path] = ()) -> Config:
    return load_config([*base_files, *args.config], overrides=_overrides(args, flags))


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


# -- utp core ----------------------------------------------------------------------------------------
def _default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("utp"))


async def _run_core(config: Config) -> int:
    from utp.daemon.core import CoreDaemon
    from utp.daemon.server import serve, shutdown

    from utp.core.broker import BrokerError
    from utp.daemon.core import SessionMismatch

    from utp.daemon.operations import Operations

    data_dir = Path(config.data_dir).expanduser() if config.data_dir else _default_data_dir()
    daemon = CoreDaemon(config, data_dir, version=version())
    try:
        await daemon.start()
    except (SessionMismatch, BrokerError) as exc:  # a live endpoint without every gate open, missing credentials
        print(f"utp: error: {exc}", file=sys.stderr)
        return 2
    operations = Operations(daemon)
    await operations.start()
    server, health = await serve(daemon, config.server.listen, on_call=operations.observe_rpc)
    operations.ready(config.server.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    controls = daemon.controls
    data = (f"live {config.data.timeframe} bars from {config.data.primary}"
            f"{' (then ' + config.data.secondary + ')' if config.data.secondary else ''} for "
            f"{','.join(config.market_data.symbols)}" if config.data.primary
            else f"{config.market_data.dataset} at {config.market_data.replay_rate:g} bar times/s")  # fmt: skip
    broker = "simulated broker" if config.broker.name == "simulated" else (
        f"{config.broker.name}{' DRY RUN' if config.broker.dry_run else ''}")  # fmt: skip
    print(
        f"utp core {version()}: session on the {daemon.bus.name} bus, {data}, {broker}; "
        f"gRPC on {config.server.listen}; state in {data_dir}; "
        f"execution {'APPROVED' if controls.execution_approved else 'REVOKED'}"
        f"{', HALTED' if controls.halted else ''}. Watch it with: utp console --target {config.server.listen}",
        flush=True,
    )
    await stop.wait()
    log.info("shutting down")
    await operations.stop()
    await shutdown(server, health, daemon)
    return 0


# -- utp demo and utp backtest -----------------------------------------------------------------------
def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d")


def format_summary(title: str, result: api.BacktestResult, equity_path: Path | None) -> str:
    s = result.summary
    lines = [
        title,
        f"  period         {_iso(s.start_time_ns)} .. {_iso(s.end_time_ns)}",
        f"  bars           {s.bars}  (rejected {s.bars_rejected})",
        f"  signals        {s.signals}",
        f"  orders         {s.orders}",
        f"  trades         {s.trades}",
        f"  total return   {s.total_return:.2%}  (annual {s.annual_return:.2%}, volatility {s.annual_volatility:.2%})",
        f"  sharpe         {s.sharpe:.2f}  (sortino {s.sortino:.2f}, calmar {s.calmar:.2f})",
        f"  max drawdown   {s.max_drawdown:.2%}  (longest {s.max_drawdown_bars} bars)",
        f"  vs benchmark   alpha {s.alpha:.2%}, beta {s.beta:.2f}, information ratio {s.information_ratio:.2f}",
        f"  win rate       {s.win_rate:.2%}  (profit factor {s.profit_factor:.2f})",
        f"  exposure       {s.exposure_time:.2%} of bars, turnover {s.turnover:.2f}/year",
        f"  commissions    {s.commissions:,.2f}",
        f"  final equity   {s.final_equity:,.2f}",
    ]
    if equity_path is not None:
        lines.append(f"  equity curve   {equity_path}")
    return "\n".join(lines)


def summary_dict(summary: api.BacktestSummary) -> dict[str, float | int | None]:
    """Plain numbers for scripts: protobuf's JSON mapping would quote 64-bit integers, and strict JSON
    has no NaN (an undefined statistic becomes null)."""
    values = {f.name: getattr(summary, f.name) for f in summary.DESCRIPTOR.fields}
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}


def write_equity_curve(result: api.BacktestResult, path: Path) -> Path:
    import polars as pl

    frame = pl.DataFrame(
        {
            "time": np.asarray(result.equity_curve.time_ns, np.int64),
            "equity": np.asarray(result.equity_curve.equity, np.float64),
        },
        schema={"time": pl.Int64, "equity": pl.Float64},
    ).with_columns(pl.col("time").cast(pl.Datetime("ns", "UTC")))
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(path)
    return path.resolve()


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-") or "run"


def _backtest(
    runs: Sequence[Any], title: str, out: Path | None, as_json: bool, *, report: Path | None = None,
    progress: bool = False,
) -> int:  # fmt: skip
    """Run each of `runs` (session.NamedRun: one, or one per compared value) and print, save and report them."""
    from utp.daemon.session import MarketData, backtest

    loaded: dict[tuple, Any] = {}

    def market_data_of(config: Config) -> Any:
        md = config.market_data
        key = (md.dataset, md.symbols, md.start, md.end)
        if key not in loaded:
            loaded[key] = MarketData.from_config(config)
        return loaded[key]

    results: list[tuple[str, api.BacktestResult, Any]] = []
    for run in runs:
        market_data = market_data_of(run.config)
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            label = f"backtest {run.name}".strip()
            columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("bars"), TimeElapsedColumn())
            with Progress(*columns, transient=True) as bar:
                task = bar.add_task(label, total=market_data.bars.height)

                def on_progress(p: api.BacktestProgress, bar: Any = bar, task: Any = task) -> None:
                    bar.update(task, completed=p.bars_processed, total=p.bars_total)

                result = backtest(run.config, market_data=market_data, on_progress=on_progress)
        else:
            result = backtest(run.config, market_data=market_data)
        result.name = run.name
        results.append((run.name, result, market_data))
    paths: list[Path | None] = []
    for name, result, _ in results:
        if out is None:
            paths.append(None)
        else:
            path = out if len(results) == 1 else out.with_name(f"{out.stem}-{_slug(name)}{out.suffix}")
            paths.append(write_equity_curve(result, path))
    if report is not None:
        index = write_backtest_report(report, title, results)
        print(f"report: {index.resolve()}", file=sys.stderr)
    if as_json:
        # Plain numbers for scripts (protobuf's JSON mapping would quote the 64-bit integers).
        if len(results) == 1:
            print(json.dumps(summary_dict(results[0][1].summary)))
        else:
            print(json.dumps({"runs": {name: summary_dict(r.summary) for name, r, _ in results}}))
    else:
        print("\n\n".join(format_summary(f"{title}  [{name}]" if name else title, result, path)
                           for (name, result, _), path in zip(results, paths, strict=True)))  # fmt: skip
    return 0


def write_backtest_report(directory: Path, title: str, results: Sequence[tuple[str, api.BacktestResult, Any]]) -> Path:
    """The HTML report of one run or several side by side (named), benchmarked on the S&P 500 index, trades
    marked on their symbols' prices."""
    from utp.daemon.report import ReportRun, write_report
    from utp.storage.datasets import load_sp500_index

    index = load_sp500_index().sort("event_time_ns")
    benchmark = (index["event_time_ns"].to_numpy(), index["close"].to_numpy().astype(np.float64))
    runs = []
    for name, result, market_data in results:
        prices = {
            str(symbol): (rows["event_time_ns"].to_numpy(), rows["close"].to_numpy().astype(np.float64))
            for (symbol,), rows in market_data.bars.group_by("symbol", maintain_order=True)
        }
        runs.append(ReportRun(name or market_data.dataset.name, result, benchmark=benchmark, prices=prices))
    return write_report(directory, runs, title=title)


# -- entry point -------------------------------------------------------------------------------------
def _add_client_args(parser: argparse.ArgumentParser) -> None:
    """How a client reaches a daemon: address, token, TLS."""
    parser.add_argument("--target", default="127.0.0.1:50051", metavar="HOST:PORT",
                        help="the daemon (through an SSH tunnel for a remote one: see the README)")
    parser.add_argument("--token", help="bearer token (default: $UTP_TOKEN, else <data dir>/auth/admin.token)")
    parser.add_argument("--data-dir", metavar="DIR", help="the daemon's data folder, for its token file when on the same machine")
    parser.add_argument("--tls-ca", default="", metavar="PEM", help="TLS: the CA that signed the daemon's certificate")
    parser.add_argument("--tls-cert", default="", metavar="PEM", help="mutual TLS: this client's certificate")
    parser.add_argument("--tls-key", default="", metavar="PEM", help="mutual TLS: this client's key")
    parser.add_argument("--tls-server-name", default="", metavar="NAME", help="the name on the daemon's certificate")


def client_token(args: argparse.Namespace) -> str:
    from utp.daemon.auth import resolve_token

    data_dir = Path(args.data_dir).expanduser() if args.data_dir else _default_data_dir()
    return resolve_token(args.token, data_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="utp", description="Unified Trading Platform")
    parser.add_argument("--version", action="version", version=f"utp {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    core = sub.add_parser("core", help="run the core daemon (a paper session and the gRPC API)")
    _add_config_args(core)
    core.add_argument("--nats", metavar="URL", help="run the engines over NATS JetStream, e.g. nats://127.0.0.1:4222")
    core.add_argument("--listen", metavar="HOST:PORT", help="gRPC address (default 127.0.0.1:50051)")
    core.add_argument("--data-dir", metavar="DIR", help="hot state folder (default: the user's data folder)")
    core.add_argument("--replay-rate", type=float, metavar="N", help="bar times per second (0 = as fast as possible)")
    core.add_argument("--broker", choices=("simulated", "alpaca-paper", "alpaca-live"),
                      help="where orders go (default simulated); alpaca-live also needs broker.live_enabled")
    core.add_argument("--data", metavar="SOURCE[,SECONDARY]",
                      help="live bars from alpaca or polygon (a second source takes over when the first goes quiet); "
                           "needs --symbols")  # fmt: skip

    console = sub.add_parser("console", help="watch and steer a daemon")
    _add_client_args(console)
    from utp.daemon import ctl

    ctl.add_parsers(sub, _add_client_args)

    demo = sub.add_parser("demo", help="backtest the whole engine graph on real GOOG bars, no servers needed")
    demo.add_argument("--out", default="utp-demo-equity.csv", metavar="FILE", help="equity curve CSV")
    demo.add_argument("--log-level", default="WARNING")

    backtest = sub.add_parser("backtest", help="backtest the engine graph on a packaged data set")
    _add_config_args(backtest)
    backtest.add_argument("--start", metavar="YYYY-MM-DD")
    backtest.add_argument("--end", metavar="YYYY-MM-DD")
    backtest.add_argument("--weights", metavar="SRC=W,...", help="ensemble weights, e.g. rsi=0.5,ema_cross=0.5")
    backtest.add_argument("--initial-cash", type=float)
    backtest.add_argument("--batch-bar-times", type=int, default=1000)
    backtest.add_argument("--out", metavar="FILE", help="write the equity curve as CSV")
    backtest.add_argument("--json", action="store_true", help="print the summary as JSON")
    backtest.add_argument("--report", metavar="DIR", help="write an HTML report with charts and metrics.json")
    backtest.add_argument("--compare", metavar="KEY=V1,V2,..",
                          help="one run per value of a setting, side by side, e.g. portfolio.method=equal,hrp,risk_parity")
    backtest.add_argument("--portfolio", metavar="METHOD", help="portfolio construction method (portfolio.method)")
    backtest.add_argument("--model", action="append", default=[], metavar="NAME=WHICH",
                          help="serve a registered model: champion, challenger, a version number, or an ONNX file "
                               "(repeatable), e.g. tft=champion")
    backtest.add_argument("--data-dir", metavar="DIR", help="where the model registry lives (with --model)")
    backtest.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                          help="show a progress bar (default: when stderr is a terminal)")
    backtest.set_defaults(log_level="WARNING")
    from utp.daemon import sweep as sweep_cli

    sweep_cli.add_parsers(sub)
    from utp.daemon import walkforward

    walkforward.add_parser(sub)
    from utp.daemon import replay

    replay.add_parser(sub)
    from utp.daemon import engine_cli

    engine_cli.add_parser(sub)
    from utp.daemon import ml_cli

    ml_cli.add_parsers(sub)
    from utp.daemon import data_cli

    data_cli.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "log_level", "INFO"))
    try:
        if args.command == "core":
            config = _config(
                args,
                {"nats": "bus.nats_url", "listen": "server.listen", "data_dir": "data_dir",
                 "dataset": "market_data.dataset", "replay_rate": "market_data.replay_rate", "broker": "broker.name"},
            )  # fmt: skip
            live: dict[str, object] = {}
            if args.data:
                sources = [x.strip() for x in args.data.split(",") if x.strip()]
                if not 1 <= len(sources) <= 2 or not set(sources) <= {"alpaca", "polygon"}:
                    raise ConfigError(f"--data {args.data!r}: expected alpaca, polygon, alpaca,polygon or polygon,alpaca")
                live["data.primary"] = sources[0]
                live["data.secondary"] = sources[1] if len(sources) > 1 else ""
            if live:
                config = load_config(base=config, environ={}, overrides=live)
            if config.server.json_logs:
                from utp.core.logs import configure_logging

                configure_logging(getattr(args, "log_level", "INFO"), json_logs=True)
            return asyncio.run(_run_core(config))
        if args.command == "console":
            from utp.console.app import ConsoleApp

            ConsoleApp(args.target, token=client_token(args), tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                       tls_key=args.tls_key, server_name=args.tls_server_name).run()  # fmt: skip
            return 0
        if args.command in ("ctl", "token"):
            from utp.daemon import ctl

            return ctl.main(args)
        if args.command == "demo":
            from utp.daemon.session import NamedRun

            config = load_config([packaged_config("demo.yaml")], environ={})
            return _backtest(
                [NamedRun("", config)],
                "utp demo: the engine graph over real GOOG daily bars (in-process bus, simulated broker)",
                Path(args.out), as_json=False,
            )  # fmt: skip
        if args.command == "backtest":
            from utp.daemon.session import named_runs

            flags = {"dataset": "market_data.dataset", "start": "market_data.start", "end": "market_data.end",
                     "initial_cash": "execution.initial_cash", "batch_bar_times": "market_data.batch_bar_times",
                     "portfolio": "portfolio.method"}  # fmt: skip
            overrides = _overrides(args, flags)
            if args.data_dir:
                overrides["data_dir"] = args.data_dir
            if args.model:
                from utp.daemon.ml_cli import resolve_model_files

                overrides["inference.model_files"] = resolve_model_files(args.model, load_config(args.config, overrides=overrides))
            if args.weights:
                weights = {}
                for item in args.weights.split(","):
                    source, _, weight = item.partition("=")
                    try:
                        weights[source.strip()] = float(weight)
                    except ValueError:
                        raise ConfigError(f"--weights: {item!r} is not SOURCE=NUMBER") from None
                overrides["ensemble.weights"] = weights
            runs = named_runs(args.compare or "", lambda extra: load_config(args.config, overrides={**overrides, **extra}))
            config = runs[0].config
            title = f"utp backtest: {config.market_data.dataset} {','.join(config.market_data.symbols) or 'all symbols'}"
            progress = sys.stderr.isatty() if args.progress is None else args.progress
            return _backtest(runs, title, Path(args.out) if args.out else None, args.json,
                             report=Path(args.report) if args.report else None, progress=progress)  # fmt: skip
        if args.command in ("sweep", "worker"):
            from utp.daemon import sweep as sweep_cli

            return sweep_cli.main(args)
        if args.command == "walk-forward":
            from utp.daemon import walkforward

            return walkforward.run_command(args)
        if args.command == "engine":
            from utp.daemon import engine_cli

            return engine_cli.run_command(args)
        if args.command == "replay":
            from utp.daemon import replay

            return replay.run_command(args)
        if args.command in ("train", "models"):
            from utp.daemon import ml_cli

            return ml_cli.run_train(args) if args.command == "train" else ml_cli.run_models(args)
        if args.command == "data":
            from utp.daemon import data_cli

            return data_cli.run(args)
    except (ConfigError, ValueError) as exc:
        print(f"utp: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
