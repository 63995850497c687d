"""Prometheus metrics of the platform, fed from the events the daemon taps off the bus.

`PlatformMetrics` owns its own `CollectorRegistry`, so several can live in one process (tests, a daemon and a
backtest worker) without clashing over the global registry. The daemon hands it every batch of the kinds in
`METRIC_KINDS` through `observe(kind, messages, now_ns)`, calls `tick(now_ns)` every few seconds for the gauges
that age with the wall clock, and the rest (controls, RPCs, broker errors, models, backtests) through the
`set_*` / `observe_*` methods. `serve(host, port)` exposes the registry over HTTP for Prometheus to scrape;
the alert rules in configs/prometheus/alerts.yml and the Grafana dashboards in configs/grafana use only the
names exported here (tests/test_observability.py checks that).

Label values taken from protobuf enums are the value's name without its prefix, lower-case, as the event
kinds are named: RISK_REASON_MAX_POSITION -> "max_position", DATA_ALERT_KIND_STALE -> "stale".

Histograms fed by whole batches (model confidence, slippage) are counted with numpy in one call per batch
(`_BatchHistogram`) instead of one `Histogram.observe` per message.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Mapping, Callable, Iterable, Sequence
from typing import Any

import numpy as np
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from utp.core.kinds import KINDS
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

__all__ = [
    "DEFAULT_EXPECTED_SLIPPAGE_BPS", "DEFAULT_METRICS_HOST", "DEFAULT_METRICS_LISTEN", "DEFAULT_METRICS_PORT",
    "METRIC_KINDS", "PlatformMetrics", "parse_listen",
]  # fmt: skip

DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_METRICS_PORT = 9101
DEFAULT_METRICS_LISTEN = f"{DEFAULT_METRICS_HOST}:{DEFAULT_METRICS_PORT}"
#: What SlippageAbnormal compares fills with (3x this) until `set_expected_slippage_bps` says otherwise.
DEFAULT_EXPECTED_SLIPPAGE_BPS = 5.0

#: The event kinds `observe` uses; the daemon taps only these for metrics.
METRIC_KINDS: frozenset[str] = frozenset({
    "bar", "rejected_bar", "engine_status", "account_snapshot", "risk_decision", "risk_event", "scored_signal",
    "prediction", "order", "fill", "data_alert", "model_alert", "operator_alert",
})  # fmt: skip
_unknown = METRIC_KINDS - KINDS.keys()
assert not _unknown, f"METRIC_KINDS names kinds the proto does not have: {sorted(_unknown)}"

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONFIDENCE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
SLIPPAGE_BPS_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0, 250.0)
# RPCs range from a status query to a streamed backtest of minutes.
RPC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

_NS = 1e9
# Engines in these states are doing their job (FINISHED: a replay reached the end of its data).
_UP_STATES = frozenset({pb.ENGINE_STATE_STARTING, pb.ENGINE_STATE_RUNNING, pb.ENGINE_STATE_FINISHED})


def _enum_labels(enum: Any, prefix: str) -> dict[int, str]:
    return {v.number: v.name.removeprefix(prefix).lower() for v in enum.DESCRIPTOR.values}


_RISK_REASON = _enum_labels(pb.RiskReason, "RISK_REASON_")
_RISK_ACTION = _enum_labels(pb.RiskAction, "RISK_ACTION_")
_ORDER_STATUS = _enum_labels(pb.OrderStatus, "ORDER_STATUS_")
_DATA_ALERT = _enum_labels(pb.DataAlertKind, "DATA_ALERT_KIND_")
_MODEL_ALERT = _enum_labels(pb.ModelAlertKind, "MODEL_ALERT_KIND_")
_SEVERITY = _enum_labels(pb.AlertSeverity, "ALERT_SEVERITY_")
_BAR_REJECT = _enum_labels(pb.BarRejectReason, "BAR_REJECT_REASON_")


def _label(labels: dict[int, str], number: int) -> str:
    # An enum value newer than this build still gets a series of its own.
    return labels.get(number) or str(number)


def parse_listen(address: str) -> tuple[str, int]:
    """An address such as server.metrics_listen, "host:port" (IPv6: "[::1]:9101"), as (host, port); ValueError
    when it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics address must be host:port, got {address!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


class _BatchHistogram(Collector):
    """A labelled Prometheus histogram that takes a whole array of observations in one call.

    prometheus_client's Histogram takes one value per call; a scored-signal batch of a 500-symbol universe
    would be 500 calls. Here a batch is one `searchsorted` + `bincount`, and the cumulative buckets are
    built at scrape time.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:  # fmt: skip
        bounds = sorted(float(b) for b in buckets if np.isfinite(b))
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = np.asarray(bounds, dtype=np.float64)
        self._le = [floatToGoString(b) for b in bounds] + ["+Inf"]
        # labels -> [per-bucket (not cumulative) counts, sum of observations]
        self._series: dict[tuple[str, ...], list[Any]] = {}
        self._lock = threading.Lock()  # scrapes run on the exporter's thread
        registry.register(self)

    def observe(self, labels: tuple[str, ...], values: Sequence[float] | np.ndarray) -> None:
        observed = np.asarray(values, dtype=np.float64).ravel()
        # NaN has no bucket, and NaN or an infinity would spoil _sum for good.
        observed = observed[np.isfinite(observed)]
        if not observed.size:
            return
        counts = np.bincount(np.searchsorted(self._bounds, observed, side="left"), minlength=len(self._le))
        total = float(observed.sum())
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = [np.zeros(len(self._le), dtype=np.int64), 0.0]
            series[0] += counts
            series[1] += total

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> list[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with self._lock:
            snapshot = [(labels, counts.copy(), total) for labels, (counts, total) in self._series.items()]
        for labels, counts, total in snapshot:
            cumulative = np.cumsum(counts).tolist()
            family.add_metric(list(labels), list(zip(self._le, cumulative, strict=True)), total)
        return [family]


class PlatformMetrics:
    """The platform's Prometheus metrics and their HTTP exporter.

    `live`: the clock is the wall clock, so event times can be compared with `now_ns` (engine status
    latency, last_bar_age_seconds); off for replays, whose bar times are history. `calendar`: the exchange
    calendar behind market_session_open (None = no such gauge). `fill_slippage`: take
    execution_slippage_bps from the fills' own `slippage`; turn it off where the broker reports none (Alpaca
    fills carry slippage 0: the broker knows no reference price) and feed `observe_fill_slippage` instead.
    """

    def __init__(self, *, live: bool = False, calendar: str | None = "XNYS", fill_slippage: bool = True) -> None:
        self.live = live
        self.calendar = calendar
        self.fill_slippage = fill_slippage
        self.registry = CollectorRegistry()
        r = self.registry

        # -- pipeline -----------------------------------------------------------------------------------
        self.events_processed = Counter("events_processed", "Input events an engine processed "
                                        "(EngineStatus.events_in).", ["engine"], registry=r)  # fmt: skip
        self.events_emitted = Counter("events_emitted", "Events an engine published (EngineStatus.events_out).",
                                      ["engine"], registry=r)  # fmt: skip
        self.events_failed = Counter("events_failed", "Input events an engine refused and quarantined "
                                     "(EngineStatus.events_rejected).", ["engine"], registry=r)  # fmt: skip
        self.event_latency = _BatchHistogram("event_latency_seconds", "Wall time from an event's publication "
                                             "to its observation by the daemon.", ["engine"], LATENCY_BUCKETS,
                                             r)  # fmt: skip
        self.consumer_lag = Gauge("consumer_lag_seconds", "Wall seconds since market data published the first bar "
                                  "time the engine has not processed yet (0: up to date); set by the daemon "
                                  "through set_consumer_lags.", ["engine"], registry=r)  # fmt: skip
        self.engine_up = Gauge("engine_up", "1 while the engine is starting, running or finished; 0 when it "
                               "stopped or failed.", ["engine"], registry=r)  # fmt: skip
        self.engine_last_status = Gauge("engine_last_status_timestamp_seconds", "Wall time of the engine's last "
                                        "status message.", ["engine"], registry=r)  # fmt: skip
        self.bars = Counter("bars", "Bars accepted by market data.", registry=r)
        self.bars_rejected = Counter("bars_rejected", "Bars refused and quarantined, by reason.", ["reason"],
                                     registry=r)  # fmt: skip
        self.last_bar_timestamp = Gauge("last_bar_timestamp_seconds", "Event time of the newest bar.", registry=r)
        self.last_bar_age = Gauge("last_bar_age_seconds", "Wall time since the newest bar's event time (since the "
                                  "first tick while no bar has come); live sessions only.", registry=r)  # fmt: skip
        self.bar_interval = Gauge("bar_interval_seconds", "Length of the newest bar.", registry=r)
        self.market_session_open = Gauge("market_session_open", "1 inside a session of the exchange calendar.",
                                         registry=r)  # fmt: skip
        self.data_alerts = Counter("data_alerts", "Market-data alerts, by kind.", ["kind"], registry=r)
        self.operator_alerts = Counter("operator_alerts", "Operator alerts raised (not counting their "
                                       "resolution), by source and severity.", ["source", "severity"],
                                       registry=r)  # fmt: skip

        # -- risk and controls --------------------------------------------------------------------------
        self.risk_decisions = Counter("risk_decisions", "Risk's verdicts on intents.", ["outcome", "reason"],
                                      registry=r)  # fmt: skip
        self.risk_events = Counter("risk_events", "Portfolio risk rules that acted at placement.",
                                   ["reason", "action"], registry=r)  # fmt: skip
        self.kill_switch_active = Gauge("kill_switch_active", "1 from a kill-switch risk event until trading "
                                        "resumes.", registry=r)  # fmt: skip
        self.trading_halted = Gauge("trading_halted", "1 while trading is halted.", registry=r)
        self.execution_approved = Gauge("execution_approved", "1 while the operator approves execution.",
                                        registry=r)  # fmt: skip
        self.entries_paused = Gauge("entries_paused", "1 while the operator has paused new entries.", registry=r)

        # -- account ------------------------------------------------------------------------------------
        self.equity = Gauge("equity_usd", "Equity of the account.", registry=r)
        self.cash = Gauge("cash_usd", "Cash of the account.", registry=r)
        self.daily_pnl = Gauge("daily_pnl_usd", "Equity change since the previous day's last bar.", registry=r)
        self.gross_exposure = Gauge("gross_exposure_usd", "Sum of |market value| of the positions.", registry=r)
        self.net_exposure = Gauge("net_exposure_usd", "Long minus short market value.", registry=r)
        self.position_count = Gauge("position_count", "Open positions.", registry=r)

        # -- execution ----------------------------------------------------------------------------------
        self.orders = Counter("orders", "Order status changes, by the new status.", ["status"], registry=r)
        self.slippage = _BatchHistogram("execution_slippage_bps", "Slippage of fills in basis points of the "
                                        "filled value.", ["symbol"], SLIPPAGE_BPS_BUCKETS, r)  # fmt: skip
        self.expected_slippage = Gauge("execution_expected_slippage_bps", "Slippage a fill is expected to pay; "
                                       "SlippageAbnormal fires at 3x.", registry=r)  # fmt: skip
        self.expected_slippage.set(DEFAULT_EXPECTED_SLIPPAGE_BPS)
        self.broker_api_errors = Counter("broker_api_errors", "Errors of the broker's API, by kind.", ["kind"],
                                         registry=r)  # fmt: skip

        # -- models -------------------------------------------------------------------------------------
        self.model_confidence = _BatchHistogram("model_confidence_score", "Confidence of the ensemble's scored "
                                                "signals (model=\"ensemble\") and of each model's predictions.",
                                                ["model"], CONFIDENCE_BUCKETS, r)  # fmt: skip
        self.model_version_info = Gauge("model_version_info", "1 for each model version in service.",
                                        ["model", "version", "source"], registry=r)  # fmt: skip
        self.model_oos_sharpe = Gauge("model_oos_sharpe", "Out-of-sample Sharpe ratio of the model in service.",
                                      ["model"], registry=r)  # fmt: skip
        self.model_alerts = Counter("model_alerts", "Model alerts (drift, failures, swaps), by model and kind.",
                                    ["model", "kind"], registry=r)  # fmt: skip
        self.backtest_sharpe = Gauge("backtest_sharpe_ratio", "Sharpe ratio of the last backtest.", registry=r)
        self.backtest_return = Gauge("backtest_total_return", "Total return of the last backtest.", registry=r)
        self.backtest_drawdown = Gauge("backtest_max_drawdown", "Largest drawdown of the last backtest, as a "
                                       "positive fraction.", registry=r)  # fmt: skip

        # -- API ----------------------------------------------------------------------------------------
        self.grpc_requests = Counter("grpc_requests", "gRPC calls served, by method and status code.",
                                     ["method", "code"], registry=r)  # fmt: skip
        self.grpc_seconds = _BatchHistogram("grpc_request_seconds", "Duration of gRPC calls.", ["method"],
                                            RPC_BUCKETS, r)  # fmt: skip

        # Cumulative counters of each engine's last status, to turn the next one into increments.
        self._engine_counts: dict[str, tuple[int, int, int]] = {}
        self._engine_through: dict[str, int] = {}
        self._newest_bar_ns: int | None = None
        self._first_tick_ns: int | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._handlers: dict[str, Callable[[Sequence[Any], int], None]] = {
            "bar": self._on_bars,
            "rejected_bar": self._on_rejected_bars,
            "engine_status": self._on_engine_status,
            "account_snapshot": self._on_account,
            "risk_decision": self._on_risk_decisions,
            "risk_event": self._on_risk_events,
            "scored_signal": self._on_scored_signals,
            "prediction": self._on_predictions,
            "order": self._on_orders,
            "fill": self._on_fills,
            "data_alert": self._on_data_alerts,
            "model_alert": self._on_model_alerts,
            "operator_alert": self._on_operator_alerts,
        }
        assert self._handlers.keys() == METRIC_KINDS

    # -- events -----------------------------------------------------------------------------------------
    def observe(self, kind: str, messages: Sequence[Message], now_ns: int) -> None:
        """Account for a batch of events of one kind, seen at wall time `now_ns`. Kinds outside
        METRIC_KINDS are ignored, so the daemon may hand over every batch it taps."""
        handler = self._handlers.get(kind)
        if handler is not None and messages:
            handler(messages, now_ns)

    def _on_bars(self, bars: Sequence[pb.Bar], now_ns: int) -> None:
        self.bars.inc(len(bars))
        # Batches of a watermarked kind are sorted by event time: the last bar is the newest.
        newest = bars[-1]
        if self._newest_bar_ns is None or newest.header.event_time_ns > self._newest_bar_ns:
            self._newest_bar_ns = newest.header.event_time_ns
            self.last_bar_timestamp.set(self._newest_bar_ns / _NS)
        if newest.interval_ns > 0:
            self.bar_interval.set(newest.interval_ns / _NS)

    def _on_rejected_bars(self, rejected: Sequence[pb.RejectedBar], now_ns: int) -> None:
        for reason, n in Tally(m.reason for m in rejected).items():
            self.bars_rejected.labels(_label(_BAR_REJECT, reason)).inc(n)

    def _on_engine_status(self, statuses: Sequence[pb.EngineStatus], now_ns: int) -> None:
        for status in statuses:
            engine = status.engine
            counts = (status.events_in, status.events_out, status.events_rejected)
            previous = self._engine_counts.get(engine, (0, 0, 0))
            self._engine_counts[engine] = counts
            # The first status of an engine adds all it has counted; any count below the last one means the
            # engine started counting afresh (a new session), so all it has counted is new.
            if any(now_count < before for now_count, before in zip(counts, previous, strict=True)):
                previous = (0, 0, 0)
            for counter, now_count, before in zip((self.events_processed, self.events_emitted, self.events_failed),
                                                  counts, previous, strict=True):  # fmt: skip
                counter.labels(engine).inc(now_count - before)
            self.engine_up.labels(engine).set(1 if status.state in _UP_STATES else 0)
            self.engine_last_status.labels(engine).set(now_ns / _NS)
            if self.live and status.header.event_time_ns > 0:
                latency = max(0.0, (now_ns - status.header.event_time_ns) / _NS)
                self.event_latency.observe((engine,), [latency])
            if status.through_time_ns > 0:  # NOTHING (< 0) until the engine has processed something
                self._engine_through[engine] = status.through_time_ns

    def set_consumer_lags(self, lags_s: Mapping[str, float]) -> None:
        """Each engine's lag in wall seconds behind market data (bar time would make a daily bar look a day
        late; the daemon measures it from when each bar time was published)."""
        for engine, lag in lags_s.items():
            self.consumer_lag.labels(engine).set(max(lag, 0.0))

    def _on_account(self, snapshots: Sequence[pb.AccountSnapshot], now_ns: int) -> None:
        account = snapshots[-1]  # each snapshot is the whole account: the newest says it all
        self.equity.set(account.equity)
        self.cash.set(account.cash)
        self.daily_pnl.set(account.day_pnl)
        self.gross_exposure.set(account.gross_exposure)
        self.net_exposure.set(account.net_exposure)
        self.position_count.set(account.open_positions)

    def _on_risk_decisions(self, decisions: Sequence[pb.RiskDecision], now_ns: int) -> None:
        for (approved, reason), n in Tally((m.approved, m.reason) for m in decisions).items():
            outcome = "approved" if approved else "rejected"
            self.risk_decisions.labels(outcome, _label(_RISK_REASON, reason)).inc(n)

    def _on_risk_events(self, events: Sequence[pb.RiskEvent], now_ns: int) -> None:
        for (reason, action), n in Tally((m.reason, m.action) for m in events).items():
            self.risk_events.labels(_label(_RISK_REASON, reason), _label(_RISK_ACTION, action)).inc(n)
            if action == pb.RISK_ACTION_KILL_SWITCH:
                self.kill_switch_active.set(1)

    def _on_scored_signals(self, signals: Sequence[pb.ScoredSignal], now_ns: int) -> None:
        confidence = np.fromiter((m.confidence for m in signals), dtype=np.float64, count=len(signals))
        self.model_confidence.observe(("ensemble",), confidence)

    def _on_predictions(self, predictions: Sequence[pb.Prediction], now_ns: int) -> None:
        by_model: dict[str, list[float]] = {}
        for m in predictions:
            by_model.setdefault(m.model_name, []).append(m.confidence)
        for model, confidence in by_model.items():
            self.model_confidence.observe((model,), confidence)

    def _on_orders(self, orders: Sequence[pb.Order], now_ns: int) -> None:
        for status, n in Tally(m.status for m in orders).items():
            self.orders.labels(_label(_ORDER_STATUS, status)).inc(n)

    def _on_fills(self, fills: Sequence[pb.Fill], now_ns: int) -> None:
        if not self.fill_slippage:
            return
        # Basis points of the filled value, as risk's abnormal-slippage rule measures them.
        by_symbol: dict[str, list[float]] = {}
        for m in fills:
            value = m.quantity * m.price
            if value > 0:
                by_symbol.setdefault(m.header.symbol, []).append(m.slippage / value * 1e4)
        for symbol, bps in by_symbol.items():
            self.slippage.observe((symbol,), bps)

    def _on_data_alerts(self, alerts: Sequence[pb.DataAlert], now_ns: int) -> None:
        for kind, n in Tally(m.kind for m in alerts).items():
            self.data_alerts.labels(_label(_DATA_ALERT, kind)).inc(n)

    def _on_model_alerts(self, alerts: Sequence[pb.ModelAlert], now_ns: int) -> None:
        for (model, kind), n in Tally((m.model_name, m.kind) for m in alerts).items():
            self.model_alerts.labels(model, _label(_MODEL_ALERT, kind)).inc(n)

    def _on_operator_alerts(self, alerts: Sequence[pb.OperatorAlert], now_ns: int) -> None:
        raised = Tally((m.source, m.severity) for m in alerts if not m.resolved)
        for (source, severity), n in raised.items():
            self.operator_alerts.labels(source, _label(_SEVERITY, severity)).inc(n)

    # -- the wall clock ---------------------------------------------------------------------------------
    def tick(self, now_ns: int) -> None:
        """Bring the gauges that age with the wall clock up to `now_ns`; call it every few seconds.

        The first call with a calendar builds the calendar's sessions (about a second, once per process,
        shared with the session's market-hours filter)."""
        if self._first_tick_ns is None:
            self._first_tick_ns = now_ns
        if self.live:
            since = self._newest_bar_ns if self._newest_bar_ns is not None else self._first_tick_ns
            self.last_bar_age.set(max(0, now_ns - since) / _NS)
        if self.calendar is not None:
            from utp.core.filters import exchange_sessions

            sessions = exchange_sessions(self.calendar)
            i = int(sessions.index_at(now_ns))  # the session in progress, or the next one
            self.market_session_open.set(1 if sessions.open_ns[i] <= now_ns < sessions.close_ns[i] else 0)

    # -- state pushed by the daemon ---------------------------------------------------------------------
    def set_controls(self, halted: bool, execution_approved: bool, entries_paused: bool) -> None:
        """The operator's control state; resuming (not halted) also clears kill_switch_active."""
        self.trading_halted.set(1 if halted else 0)
        self.execution_approved.set(1 if execution_approved else 0)
        self.entries_paused.set(1 if entries_paused else 0)
        if not halted:
            self.kill_switch_active.set(0)

    def set_models(self, models: Iterable[tuple[str, str, str]]) -> None:
        """The models in service as (name, version, source); replaces the previous set."""
        self.model_version_info.clear()
        for name, version, source in models:
            self.model_version_info.labels(name, version, source).set(1)

    def set_model_oos_sharpe(self, model: str, sharpe: float) -> None:
        self.model_oos_sharpe.labels(model).set(sharpe)

    def set_expected_slippage_bps(self, bps: float) -> None:
        """Slippage a fill is expected to pay (risk.expected_slippage_bps, else execution.slippage_bps)."""
        self.expected_slippage.set(bps)

    def observe_latency(self, engine: str, seconds: float) -> None:
        self.event_latency.observe((engine,), [seconds])

    def observe_fill_slippage(self, symbol: str, bps: float) -> None:
        """Slippage of one fill measured elsewhere (against the order's reference price), for brokers whose
        fills carry none; construct with fill_slippage=False so fills are not counted twice."""
        self.slippage.observe((symbol,), [bps])

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        """One gRPC call: `method` its short name ("GetStatus"), `code` the status name ("OK")."""
        self.grpc_requests.labels(method, code).inc()
        self.grpc_seconds.observe((method,), [seconds])

    def observe_broker_error(self, kind: str) -> None:
        self.broker_api_errors.labels(kind).inc()

    def observe_backtest(self, summary: api.BacktestSummary) -> None:
        self.backtest_sharpe.set(summary.sharpe)
        self.backtest_return.set(summary.total_return)
        self.backtest_drawdown.set(summary.max_drawdown)

    # -- the exporter -----------------------------------------------------------------------------------
    def serve(self, host: str = DEFAULT_METRICS_HOST, port: int = DEFAULT_METRICS_PORT) -> Any:
        """Serve the registry over HTTP on a thread of its own (port 0: any free port, see `port`).
        Returns the HTTP server."""
        if self._server is not None:
            raise RuntimeError(f"metrics are already served on port {self.port}")
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return self._server

    @property
    def port(self) -> int | None:
        """The port the exporter listens on; None when not serving."""
        return None if self._server is None else int(self._server.server_port)

    def close(self) -> None:
        """Stop the exporter (if serving); safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
