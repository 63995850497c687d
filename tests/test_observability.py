"""Observability: Prometheus metrics from real events, scraped over HTTP; the alert rules and dashboards
against what is exported; the rules checked and unit-tested by promtool; JSON logs.

promtool comes from PATH, else ~/.cache/utp/promtool/<version>/promtool, else Debian's `prometheus` package
fetched there without root (`apt-get download`, `dpkg-deb -x`). The tests fail, never skip, without it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from utp.core.kinds import KINDS
from utp.core.logs import TEXT_FORMAT, JsonFormatter, configure_logging
from utp.core.metrics import (
    CONFIDENCE_BUCKETS,
    DEFAULT_METRICS_LISTEN,
    METRIC_KINDS,
    PlatformMetrics,
    _BatchHistogram,
    parse_listen,
)
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = REPO / "configs" / "prometheus"
GRAFANA_DIR = REPO / "configs" / "grafana"
DASHBOARDS = ("pipeline_health.json", "risk.json", "signal_quality.json", "equity.json", "models.json")
ALERTS = {
    "ConsumerLagHigh", "ConsumerLagCritical", "AgentDown", "KillSwitchActivated", "DailyLossWarning",
    "DailyLossCritical", "ModelConfidenceDrop", "AlpacaAPIErrors", "PipelineStale", "SlippageAbnormal",
    "ModelOOSSharpeLow",
}  # fmt: skip

NS = 10**9
MINUTE = 60 * NS
# Tuesday 2024-03-05 15:00 UTC = 10:00 in New York: inside a NYSE session.
SESSION_NOW = int(datetime(2024, 3, 5, 15, 0, tzinfo=UTC).timestamp()) * NS
SATURDAY = int(datetime(2024, 3, 9, 15, 0, tzinfo=UTC).timestamp()) * NS


# -- promtool --------------------------------------------------------------------------------------------------
class PromtoolUnavailable(RuntimeError):
    pass


def _promtool_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "utp" / "promtool"


def _cached_promtool() -> Path | None:
    cache = _promtool_cache()
    if not cache.is_dir():
        return None
    found = [d / "promtool" for d in cache.iterdir() if not d.name.startswith(".") and (d / "promtool").is_file()]
    return max(found, default=None, key=lambda p: p.stat().st_mtime)


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, check=True)
    except FileNotFoundError as exc:
        raise PromtoolUnavailable(f"{command[0]} is not installed") from exc
    except subprocess.CalledProcessError as exc:
        raise PromtoolUnavailable(f"`{' '.join(command)}` failed: {exc.stderr.strip()[-800:]}") from exc


def _download_deb(folder: Path) -> Path:
    """Debian's prometheus package into `folder`, as any user. Without the machine's package lists (a fresh
    container never ran `apt-get update`) it reads lists of its own into `folder`."""
    try:
        _run(["apt-get", "-q", "download", "prometheus"], folder)
    except PromtoolUnavailable as plain:
        lists, cache = folder / "lists", folder / "cache"
        for d in (lists / "partial", cache / "archives" / "partial"):
            d.mkdir(parents=True)
        private = ["-o", f"Dir::State::Lists={lists}", "-o", f"Dir::Cache={cache}", "-o", "Debug::NoLocking=1"]
        try:
            _run(["apt-get", "-q", *private, "update"], folder)
            _run(["apt-get", "-q", *private, "download", "prometheus"], folder)
        except PromtoolUnavailable as private_lists:
            raise PromtoolUnavailable(f"{plain}; with private package lists: {private_lists}") from None
    debs = sorted(folder.glob("prometheus_*.deb"))
    if not debs:
        raise PromtoolUnavailable("apt-get download prometheus left no prometheus_*.deb")
    return debs[-1]


def _install_promtool() -> Path:
    cache = _promtool_cache()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        deb = _download_deb(folder)
        version = _run(["dpkg-deb", "-f", str(deb), "Version"], folder).stdout.strip()
        _run(["dpkg-deb", "-x", str(deb), str(folder / "root")], folder)
        binary = folder / "root" / "usr" / "bin" / "promtool"
        if not binary.is_file():
            raise PromtoolUnavailable(f"{deb.name} holds no usr/bin/promtool")
        target = cache / version.replace("/", "_")
        # Staged under a dot name and renamed: a concurrent run sees the whole binary or none.
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache))
        staging.chmod(0o755)  # mkdtemp's 0700 would hide it from the machine's other users
        shutil.copy2(binary, staging / "promtool")
        try:
            staging.rename(target)
        except OSError:  # another run installed the same version first
            shutil.rmtree(staging, ignore_errors=True)
    return target / "promtool"


def find_promtool() -> Path:
    """promtool from PATH, the cache, or Debian's package fetched into the cache."""
    on_path = shutil.which("promtool")
    if on_path:
        return Path(on_path)
    return _cached_promtool() or _install_promtool()


@pytest.fixture(scope="session")
def promtool() -> Path:
    try:
        path = find_promtool()
        _run([str(path), "--version"], REPO)
    except PromtoolUnavailable as exc:
        pytest.fail(
            f"promtool is needed to check the alert rules and could not be had: {exc}. Put promtool on PATH "
            f"(Debian: apt-get install prometheus) or into {_promtool_cache()}/<version>/promtool",
            pytrace=False,
        )
    return path


def run_promtool(promtool: Path, *args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    result = subprocess.run([str(promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


# -- events ----------------------------------------------------------------------------------------------------
def header(time_ns: int, symbol: str = "") -> pb.EventHeader:
    return pb.EventHeader(event_id=f"e/{time_ns}/{symbol}", correlation_id="c", event_time_ns=time_ns, symbol=symbol)


def bars(time_ns: int, symbols: tuple[str, ...] = ("AAPL", "MSFT", "SPY")) -> list[pb.Bar]:
    return [pb.Bar(header=header(time_ns, s), open=100, high=101, low=99, close=100.5, volume=1e4, interval_ns=MINUTE)
            for s in symbols]  # fmt: skip


def status(engine: str, through_ns: int, counts: tuple[int, int, int], sent_ns: int,
           state: int = pb.ENGINE_STATE_RUNNING) -> pb.EngineStatus:  # fmt: skip
    events_in, events_out, rejected = counts
    return pb.EngineStatus(header=header(sent_ns), engine=engine, state=state, through_time_ns=through_ns,
                           events_in=events_in, events_out=events_out, events_rejected=rejected)  # fmt: skip


def decision(approved: bool, reason: int) -> pb.RiskDecision:
    return pb.RiskDecision(header=header(SESSION_NOW, "AAPL"), intent=pb.OrderIntent(reference_price=100.0),
                           approved=approved, reason=reason)  # fmt: skip


def fill(symbol: str, quantity: float, price: float, slippage: float) -> pb.Fill:
    return pb.Fill(header=header(SESSION_NOW, symbol), client_order_id="o", fill_id=f"f/{symbol}/{quantity}",
                   side=pb.ORDER_SIDE_BUY, quantity=quantity, price=price, slippage=slippage)  # fmt: skip


CONFIDENCES = [0.12, 0.5, 0.55, 0.61, 0.95, 1.0]
BAR_1 = SESSION_NOW - 3 * MINUTE
BAR_2 = SESSION_NOW - 2 * MINUTE


def feed(metrics: PlatformMetrics) -> None:
    """Every kind of METRIC_KINDS and every method, so that every metric has samples."""
    now = SESSION_NOW
    metrics.observe("bar", bars(BAR_1), now - 2 * MINUTE)
    # features: cumulative counts 10 then 25 in; a restart counts afresh from 4.
    metrics.observe("engine_status", [status("features", BAR_1, (10, 8, 1), now - 100 * NS)], now - 100 * NS)
    metrics.observe("engine_status", [status("features", BAR_1, (25, 20, 1), now - NS)], now)
    metrics.observe("engine_status", [status("features", BAR_1, (4, 3, 2), now - NS // 2)], now)
    metrics.observe("bar", bars(BAR_2), now)
    metrics.observe("engine_status", [
        status("market_data", BAR_2, (0, 6, 0), now - NS // 4),
        status("execution", BAR_1 - 10 * MINUTE, (7, 2, 0), now - NS, state=pb.ENGINE_STATE_FAILED),
    ], now)  # fmt: skip
    metrics.observe("rejected_bar", [pb.RejectedBar(header=header(BAR_2, "XYZ"),
                                                    reason=pb.BAR_REJECT_REASON_OUTLIER_PRICE)], now)  # fmt: skip
    metrics.observe("account_snapshot", [
        pb.AccountSnapshot(header=header(BAR_1), equity=99_000, cash=50_000, day_pnl=-1_000, gross_exposure=49_000,
                           net_exposure=30_000, open_positions=2),
        pb.AccountSnapshot(header=header(BAR_2), equity=96_000, cash=40_000, day_pnl=-4_000, gross_exposure=56_000,
                           net_exposure=20_000, open_positions=3),
    ], now)  # fmt: skip
    metrics.observe("risk_decision", [decision(True, pb.RISK_REASON_APPROVED),
                                      decision(False, pb.RISK_REASON_MAX_POSITION),
                                      decision(False, pb.RISK_REASON_MAX_POSITION),
                                      decision(False, pb.RISK_REASON_DAILY_LOSS)], now)  # fmt: skip
    metrics.observe("risk_event", [pb.RiskEvent(header=header(BAR_2), reason=pb.RISK_REASON_KILL_SWITCH,
                                                action=pb.RISK_ACTION_KILL_SWITCH, value=0.11, threshold=0.1)],
                    now)  # fmt: skip
    metrics.observe("scored_signal", [pb.ScoredSignal(header=header(BAR_2, f"S{i}"), confidence=c)
                                      for i, c in enumerate(CONFIDENCES)], now)  # fmt: skip
    metrics.observe("prediction", [pb.Prediction(header=header(BAR_2, "AAPL"), model_name="tft", confidence=0.7),
                                   pb.Prediction(header=header(BAR_2, "MSFT"), model_name="tft", confidence=0.8),
                                   pb.Prediction(header=header(BAR_2, "AAPL"), model_name="lgbm", confidence=0.3)],
                    now)  # fmt: skip
    metrics.observe("order", [pb.Order(header=header(BAR_2, "AAPL"), status=pb.ORDER_STATUS_NEW),
                              pb.Order(header=header(BAR_2, "AAPL"), status=pb.ORDER_STATUS_FILLED),
                              pb.Order(header=header(BAR_2, "MSFT"), status=pb.ORDER_STATUS_NEW)], now)  # fmt: skip
    # 15 bps and 5 bps of the filled value (1000 and 2000 dollars); a zero-quantity fill has no value to measure.
    metrics.observe("fill", [fill("AAPL", 10, 100.0, 1.5), fill("AAPL", 20, 100.0, 1.0), fill("MSFT", 0, 100.0, 1.0)],
                    now)  # fmt: skip
    metrics.observe("data_alert", [pb.DataAlert(header=header(BAR_2, "AAPL"), kind=pb.DATA_ALERT_KIND_STALE)], now)
    metrics.observe("model_alert", [pb.ModelAlert(header=header(BAR_2), model_name="tft", model_version="7",
                                                  kind=pb.MODEL_ALERT_KIND_CONFIDENCE_DRIFT)], now)  # fmt: skip
    metrics.observe("operator_alert", [
        pb.OperatorAlert(header=header(BAR_2), severity=pb.ALERT_SEVERITY_CRITICAL, source="watchdog:broker"),
        pb.OperatorAlert(header=header(BAR_2), severity=pb.ALERT_SEVERITY_CRITICAL, source="watchdog:broker",
                         resolved=True),
    ], now)  # fmt: skip
    metrics.observe("feature_vector", [pb.FeatureVector(header=header(BAR_2, "AAPL"))], now)  # not a metric kind
    metrics.observe_latency("risk", 0.004)
    metrics.observe_fill_slippage("MSFT", 2.5)
    metrics.observe_rpc("GetStatus", "OK", 0.002)
    metrics.observe_rpc("GetStatus", "OK", 0.003)
    metrics.observe_rpc("Halt", "PERMISSION_DENIED", 0.001)
    metrics.observe_broker_error("timeout")
    metrics.observe_broker_error("timeout")
    metrics.observe_broker_error("http_500")
    metrics.observe_backtest(api.BacktestSummary(sharpe=1.25, total_return=0.18, max_drawdown=0.07))
    metrics.set_models([("tft", "6", "registry"), ("lgbm", "3", "registry")])
    metrics.set_models([("tft", "7", "registry"), ("lgbm", "3", "registry")])  # hot reload: 6 is gone
    metrics.set_model_oos_sharpe("tft", 0.8)
    metrics.set_model_oos_sharpe("lgbm", -0.2)
    metrics.set_expected_slippage_bps(1.0)
    metrics.set_controls(halted=True, execution_approved=True, entries_paused=False)
    metrics.tick(now)


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """GET /metrics -> sample name -> {sorted labels: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[PlatformMetrics, dict[str, dict[tuple[tuple[str, str], ...], float]]]]:
    metrics = PlatformMetrics(live=True, calendar="XNYS")
    feed(metrics)
    metrics.set_consumer_lags({"features": 0.5, "execution": 3.0})
    metrics.serve("127.0.0.1", 0)
    try:
        assert metrics.port
        yield metrics, scrape(metrics.port)
    finally:
        metrics.close()


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


# -- metrics ---------------------------------------------------------------------------------------------------
def test_metric_kinds_are_event_kinds() -> None:
    assert METRIC_KINDS <= KINDS.keys()
    assert {"engine_status", "account_snapshot", "risk_decision", "scored_signal", "fill", "bar"} <= METRIC_KINDS


def test_consumer_lag_is_what_the_daemon_measured_in_wall_seconds() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    metrics = PlatformMetrics(calendar=None)
    metrics.set_consumer_lags({"features": 0.25, "execution": 12.0, "risk": -1.0})
    lags = {s.labels["engine"]: s.value for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
            if f.name == "consumer_lag_seconds" for s in f.samples}  # fmt: skip
    assert lags == {"features": 0.25, "execution": 12.0, "risk": 0.0}


def test_engine_status_counts_become_counters(served: tuple) -> None:
    _, samples = served
    # 10, then +15, then a restart that counted 4 afresh.
    assert value(samples, "events_processed_total", engine="features") == 29
    assert value(samples, "events_emitted_total", engine="features") == 23
    assert value(samples, "events_failed_total", engine="features") == 3
    assert value(samples, "events_emitted_total", engine="market_data") == 6
    assert value(samples, "engine_up", engine="features") == 1
    assert value(samples, "engine_up", engine="execution") == 0
    assert value(samples, "engine_last_status_timestamp_seconds", engine="features") == SESSION_NOW / NS
    # live: wall time of observation minus the status's own time (0 s, 1 s, 0.5 s) for features.
    assert value(samples, "event_latency_seconds_count", engine="features") == 3
    assert value(samples, "event_latency_seconds_sum", engine="features") == pytest.approx(1.5)
    assert value(samples, "event_latency_seconds_sum", engine="risk") == pytest.approx(0.004)


def test_bars_and_wall_clock_gauges(served: tuple) -> None:
    _, samples = served
    assert value(samples, "bars_total") == 6
    assert value(samples, "bars_rejected_total", reason="outlier_price") == 1
    assert value(samples, "last_bar_timestamp_seconds") == BAR_2 / NS
    assert value(samples, "last_bar_age_seconds") == 120
    assert value(samples, "bar_interval_seconds") == 60
    assert value(samples, "market_session_open") == 1


def test_account_risk_and_controls(served: tuple) -> None:
    _, samples = served
    # The newest snapshot of the batch.
    assert value(samples, "equity_usd") == 96_000
    assert value(samples, "cash_usd") == 40_000
    assert value(samples, "daily_pnl_usd") == -4_000
    assert value(samples, "gross_exposure_usd") == 56_000
    assert value(samples, "net_exposure_usd") == 20_000
    assert value(samples, "position_count") == 3
    assert value(samples, "risk_decisions_total", outcome="approved", reason="approved") == 1
    assert value(samples, "risk_decisions_total", outcome="rejected", reason="max_position") == 2
    assert value(samples, "risk_decisions_total", outcome="rejected", reason="daily_loss") == 1
    assert value(samples, "risk_events_total", reason="kill_switch", action="kill_switch") == 1
    # Halted: the kill switch stays on until trading resumes.
    assert value(samples, "kill_switch_active") == 1
    assert value(samples, "trading_halted") == 1
    assert value(samples, "execution_approved") == 1
    assert value(samples, "entries_paused") == 0


def test_signals_models_and_execution(served: tuple) -> None:
    _, samples = served
    assert value(samples, "model_confidence_score_count", model="ensemble") == len(CONFIDENCES)
    assert value(samples, "model_confidence_score_sum", model="ensemble") == pytest.approx(sum(CONFIDENCES))
    # le is inclusive: 0.5 and 0.55 fall in their own buckets.
    assert value(samples, "model_confidence_score_bucket", model="ensemble", le="0.5") == 2
    assert value(samples, "model_confidence_score_bucket", model="ensemble", le="0.55") == 3
    assert value(samples, "model_confidence_score_bucket", model="ensemble", le="0.6") == 3
    assert value(samples, "model_confidence_score_bucket", model="ensemble", le="1.0") == 6
    assert value(samples, "model_confidence_score_count", model="tft") == 2
    assert value(samples, "model_confidence_score_sum", model="lgbm") == pytest.approx(0.3)
    assert value(samples, "model_version_info", model="tft", version="7", source="registry") == 1
    assert sorted(dict(labels)["version"] for labels in samples["model_version_info"]) == ["3", "7"]
    assert value(samples, "model_oos_sharpe", model="lgbm") == -0.2
    assert value(samples, "model_alerts_total", model="tft", kind="confidence_drift") == 1
    assert value(samples, "backtest_sharpe_ratio") == 1.25
    assert value(samples, "backtest_total_return") == 0.18
    assert value(samples, "backtest_max_drawdown") == 0.07
    assert value(samples, "orders_total", status="new") == 2
    assert value(samples, "orders_total", status="filled") == 1
    assert value(samples, "execution_slippage_bps_count", symbol="AAPL") == 2
    assert value(samples, "execution_slippage_bps_sum", symbol="AAPL") == pytest.approx(20.0)
    assert value(samples, "execution_slippage_bps_bucket", symbol="AAPL", le="5.0") == 1
    assert value(samples, "execution_slippage_bps_count", symbol="MSFT") == 1  # observe_fill_slippage only
    assert value(samples, "execution_expected_slippage_bps") == 1.0


def test_alerts_rpcs_and_broker_errors(served: tuple) -> None:
    _, samples = served
    assert value(samples, "data_alerts_total", kind="stale") == 1
    assert value(samples, "operator_alerts_total", source="watchdog:broker", severity="critical") == 1
    assert value(samples, "grpc_requests_total", method="GetStatus", code="OK") == 2
    assert value(samples, "grpc_requests_total", method="Halt", code="PERMISSION_DENIED") == 1
    assert value(samples, "grpc_request_seconds_count", method="GetStatus") == 2
    assert value(samples, "broker_api_errors_total", kind="timeout") == 2


def test_resume_clears_kill_switch_and_close_stops_serving() -> None:
    metrics = PlatformMetrics(calendar="XNYS")
    metrics.observe("risk_event", [pb.RiskEvent(header=header(BAR_2), action=pb.RISK_ACTION_KILL_SWITCH)], SESSION_NOW)
    metrics.serve("127.0.0.1", 0)
    port = metrics.port
    assert port
    try:
        assert value(scrape(port), "kill_switch_active") == 1
        with pytest.raises(RuntimeError, match="already served"):
            metrics.serve("127.0.0.1", 0)
        metrics.set_controls(halted=False, execution_approved=False, entries_paused=True)
        metrics.tick(SATURDAY)
        samples = scrape(port)
        assert value(samples, "kill_switch_active") == 0
        assert value(samples, "entries_paused") == 1
        assert value(samples, "market_session_open") == 0
        # Not live: a replay's bar times are history, so no age is published.
        assert value(samples, "last_bar_age_seconds") == 0
    finally:
        metrics.close()
    metrics.close()
    assert metrics.port is None
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_last_bar_age_before_any_bar_counts_from_the_first_tick() -> None:
    metrics = PlatformMetrics(live=True, calendar=None)
    metrics.tick(SESSION_NOW)
    metrics.tick(SESSION_NOW + 400 * NS)
    samples = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    assert samples["last_bar_age_seconds"].samples[0].value == 400
    assert samples["market_session_open"].samples[0].value == 0  # no calendar: never set


def test_fills_without_slippage_of_their_own_leave_it_to_the_caller() -> None:
    metrics = PlatformMetrics(fill_slippage=False, calendar=None)
    metrics.observe("fill", [fill("AAPL", 10, 100.0, 0.0)], SESSION_NOW)
    metrics.observe_fill_slippage("AAPL", 4.0)
    text = generate_latest(metrics.registry).decode()
    assert 'execution_slippage_bps_count{symbol="AAPL"} 1.0' in text
    assert 'execution_slippage_bps_sum{symbol="AAPL"} 4.0' in text


def test_batch_histogram_matches_prometheus_client_histogram() -> None:
    """Counted a batch at a time, the exposition is the one prometheus_client's own Histogram gives."""
    values = np.random.default_rng(7).uniform(-0.1, 1.2, 1000)
    values[[3, 9]] = [0.5, 0.05]  # on bucket bounds
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = _BatchHistogram("confidence", "c", ["model"], CONFIDENCE_BUCKETS, ours)
    reference = Histogram("confidence", "c", ["model"], buckets=CONFIDENCE_BUCKETS, registry=theirs)
    batch.observe(("m",), values[:400])
    batch.observe(("m",), values[400:])
    batch.observe(("m",), [float("nan")])  # dropped: NaN has no bucket
    for v in values:
        reference.labels("m").observe(v)

    def samples(registry: CollectorRegistry) -> dict:
        text = generate_latest(registry).decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text)
                for s in f.samples if not s.name.endswith("_created")}  # fmt: skip

    got, want = samples(ours), samples(theirs)
    assert got.keys() == want.keys()
    for key, expected in want.items():
        assert got[key] == pytest.approx(expected), key


def test_parse_listen() -> None:
    assert parse_listen(DEFAULT_METRICS_LISTEN) == ("127.0.0.1", 9101)
    assert parse_listen("[::1]:9200") == ("::1", 9200)
    for bad in ("9101", "localhost:", "host:99999", ":9101"):
        with pytest.raises(ValueError, match="host:port"):
            parse_listen(bad)


# -- rules and dashboards against the exported names ---------------------------------------------------------
_PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Names of the metrics a PromQL expression (Grafana variables allowed) reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range windows
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\boffset\s+\S+", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in _PROMQL_KEYWORDS:
            continue  # a function or an operator
        names.add(match.group())
    return names


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs(path: Path) -> list[str]:
    model = json.loads(path.read_text())
    exprs = [t["expr"] for p in model["panels"] for t in p.get("targets", [])]
    for variable in model["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable["definition"]).group(1))
    return exprs


def test_metric_names_of_promql() -> None:
    expr = ('histogram_quantile(0.95, sum by (symbol, le) (rate(execution_slippage_bps_bucket{symbol=~"$s"}[1h])))'
            ' > on() group_left() 3 * max(x_bps) and time() - y offset 1d > 1e4')  # fmt: skip
    assert metric_names(expr) == {"execution_slippage_bps_bucket", "x_bps", "y"}


def test_alert_rules_are_the_seeds_and_complete() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} == ALERTS and len(rules) == len(ALERTS)
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_rules_and_dashboards_use_only_exported_metrics(served: tuple) -> None:
    _, samples = served
    exported = set(samples)
    used: dict[str, set[str]] = {"alerts.yml": set().union(*(metric_names(r["expr"]) for r in alert_rules()))}
    for name in DASHBOARDS:
        exprs = dashboard_exprs(GRAFANA_DIR / name)
        assert exprs, name
        used[name] = set().union(*(metric_names(e) for e in exprs))
    for where, names in used.items():
        assert names, where
        assert names <= exported, f"{where} uses metrics nobody exports: {sorted(names - exported)}"
    assert {"consumer_lag_seconds", "engine_up", "model_confidence_score_bucket"} <= used["alerts.yml"]


def test_dashboards_are_grafana_models_on_a_datasource_variable() -> None:
    uids = set()
    for name in DASHBOARDS:
        model = json.loads((GRAFANA_DIR / name).read_text())
        uids.add(model["uid"])
        variables = {v["name"]: v for v in model["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        panels = [p for p in model["panels"] if p["type"] != "row"]
        assert panels, name
        for panel in panels:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
    assert len(uids) == len(DASHBOARDS)


# -- promtool --------------------------------------------------------------------------------------------------
def test_promtool_checks_rules_and_config(promtool: Path) -> None:
    out = run_promtool(promtool, "check", "rules", "alerts.yml")
    assert f"{len(ALERTS)} rules found" in out
    run_promtool(promtool, "check", "config", "prometheus.yml")


def test_promtool_unit_tests_cover_every_rule(promtool: Path) -> None:
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    cases = [case for group in tests for case in group["alert_rule_test"]]
    assert {c["alertname"] for c in cases if c["exp_alerts"]} == ALERTS  # every rule fires somewhere
    assert {c["alertname"] for c in cases if not c["exp_alerts"]} == ALERTS  # and is quiet somewhere
    out = run_promtool(promtool, "test", "rules", "alerts_test.yml")
    assert "SUCCESS" in out


def test_dashboard_queries_are_promql(promtool: Path, tmp_path: Path) -> None:
    """Every panel query, with Grafana's variables filled in, parses as PromQL (as a recording rule)."""
    fill_in = {"$__rate_interval": "5m", "$__range": "6h", "$engine": ".*", "$model": ".*"}
    rules = []
    for name in DASHBOARDS:
        for i, expr in enumerate(dashboard_exprs(GRAFANA_DIR / name)):
            for variable, text in fill_in.items():
                expr = expr.replace(variable, text)
            assert "$" not in expr, f"{name}: unknown variable in {expr}"
            rules.append({"record": f"dashboard:{Path(name).stem}:{i}", "expr": expr})
    (tmp_path / "dashboards.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = run_promtool(promtool, "check", "rules", "dashboards.yml", cwd=tmp_path)
    assert f"{len(rules)} rules found" in out


# -- logs ------------------------------------------------------------------------------------------------------
@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_formatter_writes_one_object_per_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("utp.test.json")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("halt by %s", "ops", extra={"actor": "ops", "method": "Halt", "path": Path("/x")})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed\nover two lines")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "halt by ops" and first["level"] == "WARNING" and first["logger"] == "utp.test.json"
    assert first["actor"] == "ops" and first["method"] == "Halt" and first["path"] == "/x"
    assert "exception" not in first
    time = datetime.fromisoformat(first["time"])
    assert time.utcoffset() is not None and time.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - time).total_seconds()) < 60
    assert second["message"] == "failed\nover two lines" and second["level"] == "ERROR"
    assert "ValueError: boom" in second["exception"] and "Traceback" in second["exception"]


def test_configure_logging_replaces_root_handlers(root_logger: logging.Logger,
                                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    configure_logging("debug", json_logs=True)
    configure_logging("info", json_logs=True)  # again: still one handler
    assert len(root_logger.handlers) == 1 and root_logger.level == logging.INFO
    handler = root_logger.handlers[0]
    assert isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr
    logging.getLogger("utp.daemon").info("GetStatus", extra={"actor": "console", "method": "GetStatus"})
    logging.getLogger("utp.daemon").debug("not at info")
    entry = json.loads(capsys.readouterr().err.strip())
    assert entry["actor"] == "console" and entry["method"] == "GetStatus" and entry["message"] == "GetStatus"

    configure_logging("WARNING", json_logs=False)
    assert root_logger.handlers[0].formatter._fmt == TEXT_FORMAT  # type: ignore[union-attr]
    logging.getLogger("utp.daemon").warning("plain text")
    assert capsys.readouterr().err.rstrip().endswith("WARNING utp.daemon: plain text")
    with pytest.raises(ValueError, match="log level"):
        configure_logging("loud", json_logs=False)
