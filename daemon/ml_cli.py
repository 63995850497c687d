"""`utp train` and `utp models list|promote|rollback`: the command-line face of `daemon.train` and the
model registry (`core.ml.registry`). The registry lives under `<data dir>/mlflow` (SQLite and artifacts)
unless `--mlflow-uri` (or `models.mlflow_uri`) names an MLflow server or database."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from utp.core.config import Config, load_config, parse_assignments


def registry_root(config: Config) -> Path:
    if config.data_dir:
        return Path(config.data_dir).expanduser() / "mlflow"
    import platformdirs

    return Path(platformdirs.user_data_dir("utp")) / "mlflow"


def open_registry(config: Config) -> Any:
    from utp.core.ml.registry import ModelRegistry

    return ModelRegistry(registry_root(config), config.models.mlflow_uri or None)


def resolve_model_files(choices: list[str], config: Config) -> dict[str, str]:
    """`NAME=WHICH` choices (champion, challenger, a version, or an ONNX file) as inference.model_files:
    a registered version is fetched into the registry's cache, so the backtest serves exactly its bytes."""
    files: dict[str, str] = {}
    registry = None
    for choice in choices:
        name, _, which = choice.partition("=")
        if not name or not which:
            raise ValueError(f"--model {choice!r}: expected NAME=champion|challenger|VERSION|FILE")
        if Path(which).suffix == ".onnx":
            files[name] = which
            continue
        registry = registry or open_registry(config)
        try:
            if which in ("champion", "challenger"):
                found = registry.by_alias(name, which)
                if found is None:
                    raise ValueError(f"--model {choice}: {name} has no {which}")
                which = found.version
            files[name] = str(registry.model_file(name, which, registry_root(config) / "cache"))
        except LookupError as exc:  # no such model or version
            raise ValueError(f"--model {choice}: {exc}") from None
    return files


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument("--data-dir", metavar="DIR", help="where the local MLflow store lives (default: the user's data folder)")
    parser.add_argument("--mlflow-uri", metavar="URI", help="an MLflow tracking server or database instead of the local store")
    parser.add_argument("--json", action="store_true", help="print JSON")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a model walk-forward, gate it, log it to MLflow and register it")
    train.add_argument("--model", required=True, choices=("lgbm", "tft"))
    train.add_argument("--walk-forward", action="store_true", default=True,
                       help="validate on walk-forward folds (always on: no model is registered without it)")
    train.add_argument("--promote", action="store_true", help="make it champion when it passes the gate")
    train.add_argument("--dataset", help="goog, eurusd or sp500 (train.dataset)")
    train.add_argument("--symbols", help="comma-separated symbols (train.symbols)")
    train.add_argument("--folds", type=int, help="walk-forward folds (train.folds)")
    train.add_argument("--output", metavar="FILE", help="also write the served model's ONNX file here")
    train.add_argument("--no-registry", action="store_true", help="train and gate only: log nothing, register nothing")
    _common(train)
    train.set_defaults(log_level="WARNING")

    models = sub.add_parser("models", help="the model registry: list, promote, roll back")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    listing = models_sub.add_parser("list", help="registered versions, newest first, with aliases and gate results")
    listing.add_argument("name", nargs="?", help="one model (lgbm, tft); all when left out")
    _common(listing)
    promote = models_sub.add_parser("promote", help="make a version champion (it must have passed the gate)")
    promote.add_argument("name")
    promote.add_argument("version", nargs="?", help="default: the challenger")
    promote.add_argument("--reason", default="")
    _common(promote)
    rollback = models_sub.add_parser("rollback", help="make the previous champion champion again")
    rollback.add_argument("name")
    rollback.add_argument("--reason", default="")
    _common(rollback)
    for p in (listing, promote, rollback):
        p.set_defaults(log_level="WARNING")


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = parse_assignments(args.set)
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.mlflow_uri:
        overrides["models.mlflow_uri"] = args.mlflow_uri
    if getattr(args, "dataset", None):
        overrides["train.dataset"] = args.dataset
    if getattr(args, "symbols", None):
        overrides["train.symbols"] = [s.strip() for s in args.symbols.split(",") if s.strip()]
    if getattr(args, "folds", None):
        overrides["train.folds"] = args.folds
    return load_config(args.config, overrides=overrides)


def _number(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def run_train(args: argparse.Namespace) -> int:
    from utp.daemon.train import train_walk_forward

    config = _config(args)
    registry = None if args.no_registry else open_registry(config)

    def progress(stage: str, info: dict[str, Any]) -> None:
        if args.json:
            return
        if stage == "fold":
            print(f"  fold {info['fold']}: IC {_number(info['ic'])}  Rank IC {_number(info['rank_ic'])}  "
                  f"ICIR {_number(info['icir'])}", file=sys.stderr, flush=True)  # fmt: skip
        else:
            print(f"{stage}: {info}", file=sys.stderr, flush=True)

    report = train_walk_forward(config, args.model, registry=registry, promote=args.promote, progress=progress,
                                actor="utp train")  # fmt: skip
    if args.output:
        Path(args.output).write_bytes(report.onnx)
    g = report.gate
    if args.json:
        print(json.dumps({
            "model": report.model_name, "version": report.version, "run_id": report.run_id, "promoted": report.promoted,
            "gate": {"passed": g.passed, "oos_sharpe": g.oos_sharpe, "oos_win_rate": g.oos_win_rate,
                     "min_fold_sharpe": g.min_fold_sharpe, "deflated_sharpe": g.deflated_sharpe, "reasons": g.reasons},
            "folds": [f.row() for f in report.folds], "platt": list(report.platt),
            "ensemble_platt": list(report.ensemble_platt), "ensemble_signals": report.ensemble_signals,
            "seconds": report.seconds,
        }, default=float))  # fmt: skip
        return 0
    print(f"\n{report.model_kind} walk-forward on {config.train.dataset}: {len(report.folds)} folds, "
          f"{report.oos_trades} OOS trades, {report.seconds:.0f} s")  # fmt: skip
    print(f"{'fold':>4} {'train':>23} {'test':>23} {'IC':>7} {'RankIC':>7} {'ICIR':>7} {'Sharpe':>7} {'win':>6} {'trades':>6}")
    for f in report.folds:
        row = f.row()
        print(f"{f.fold:>4} {row['in_sample_start']}..{row['in_sample_end']} {row['oos_start']}..{row['oos_end']} "
              f"{_number(f.ic):>7} {_number(f.rank_ic):>7} {_number(f.icir):>7} {_number(f.sharpe):>7} "
              f"{_number(f.win_rate):>6} {f.trades:>6}")  # fmt: skip
    verdict = "PASSED" if g.passed else "FAILED: " + "; ".join(g.reasons)
    print(f"OOS Sharpe {_number(g.oos_sharpe)}, win rate {_number(g.oos_win_rate)}, worst fold Sharpe "
          f"{_number(g.min_fold_sharpe)}, deflated Sharpe {_number(g.deflated_sharpe)}; gate {verdict}")  # fmt: skip
    a, b = report.ensemble_platt
    print(f"ensemble calibration on {report.ensemble_signals} OOS signals: --set 'ensemble.platt=[{a:.6g}, {b:.6g}]'")
    if report.version:
        state = "champion" if report.promoted else ("challenger" if g.passed else "not promotable")
        print(f"registered {report.model_name} version {report.version} ({state}); MLflow run {report.run_id}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    from utp.core.ml.registry import PromotionRefused

    config = _config(args)
    registry = open_registry(config)
    if args.models_command == "list":
        versions = registry.versions(args.name)
        if args.json:
            print(json.dumps([{"name": v.name, "version": v.version, "aliases": list(v.aliases), "run_id": v.run_id,
                               "created_ms": v.created_ms, "tags": v.tags} for v in versions]))  # fmt: skip
            return 0
        if not versions:
            print("no registered models")
        for v in versions:
            t = v.tags
            print(f"{v.name:6} v{v.version:<4} {','.join(v.aliases) or '-':20} gate {'passed' if v.gate_passed else 'failed':6} "
                  f"OOS Sharpe {t.get('oos_sharpe', '?'):>8} win {t.get('oos_win_rate', '?'):>8} "
                  f"worst fold {t.get('min_fold_sharpe', '?'):>8} DSR {t.get('deflated_sharpe', '?')}")  # fmt: skip
        return 0
    try:
        if args.models_command == "promote":
            info = registry.promote(args.name, args.version, actor="utp models", reason=args.reason)
            print(f"{info.name} version {info.version} is champion")
        else:
            info = registry.rollback(args.name, actor="utp models", reason=args.reason)
            print(f"{info.name} rolled back: version {info.version} is champion")
    except PromotionRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    return 0
