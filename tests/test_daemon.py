"""`utp core` as a process: reflection, health, the approval gate, halt, RunBacktest, RunSweep, RunWalkForward,
bad requests."""

from __future__ import annotations

import math
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from utp.core.config import load_config, to_dict
from utp.daemon import walkforward
from utp.daemon.session import backtest
from utp.daemon.sweep import load_spec, run_sweep
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def daemon(daemon_factory):  # noqa: ANN001, ANN201 - a fast paper session, execution revoked
    return daemon_factory("--replay-rate", "40", "--set", "risk.max_position_pct=0.95").start()


def collect(stub, request: api.WatchEventsRequest, seconds: float) -> list[pb.Event]:  # noqa: ANN001
    events: list[pb.Event] = []
    call = stub.WatchEvents(request)

    def stop() -> None:
        time.sleep(seconds)
        call.cancel()

    threading.Thread(target=stop, daemon=True).start()
    try:
        for response in call:
            events.append(response.event)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.CANCELLED
    return events


def test_reflection_lists_core_service_and_health_is_serving(daemon) -> None:  # noqa: ANN001
    services = ProtoReflectionDescriptorDatabase(daemon.channel).get_services()
    assert "utp.v1.CoreService" in services and "grpc.health.v1.Health" in services
    health = health_pb2_grpc.HealthStub(daemon.channel)
    for service in ("", "utp.v1.CoreService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING


def test_status_reports_session_engines_and_safe_defaults(daemon) -> None:  # noqa: ANN001
    status = daemon.wait_for(lambda s: len(s.engines) >= 7 and s.account.equity > 0, what="engine status")
    assert status.mode == "paper" and status.bus == "in_process"
    assert status.session_state == api.SESSION_STATE_RUNNING
    assert not status.execution_approved and not status.halted  # paper, revoked until the operator approves
    names = {e.engine for e in status.engines}
    assert {"market_data", "features", "alpha", "ensemble", "risk", "execution", "exit"} <= names


def test_nothing_reaches_the_broker_until_execution_is_approved(daemon) -> None:  # noqa: ANN001
    stub = daemon.stub
    events = collect(stub, api.WatchEventsRequest(kinds=[pb.EVENT_KIND_RISK_DECISION, pb.EVENT_KIND_ORDER]), 10)
    decisions = [e.risk_decision for e in events if e.WhichOneof("payload") == "risk_decision"]
    assert decisions, "expected risk decisions within 10 s"
    assert all(not d.approved and d.reason == pb.RISK_REASON_EXECUTION_NOT_APPROVED for d in decisions)
    assert not [e for e in events if e.WhichOneof("payload") == "order"]
    assert stub.ListOrders(api.ListOrdersRequest()).orders == []

    assert stub.SetExecutionApproval(api.SetExecutionApprovalRequest(approved=True, reason="test")).execution_approved
    daemon.wait_for(lambda s: s.execution_approved, what="approval")
    deadline = time.monotonic() + 60
    while not stub.ListOrders(api.ListOrdersRequest()).orders:
        assert time.monotonic() < deadline, "no order within 60 s of approval"
        time.sleep(0.2)


def test_halt_stops_orders_and_resume_lifts_it(daemon) -> None:  # noqa: ANN001
    stub = daemon.stub
    stub.SetExecutionApproval(api.SetExecutionApprovalRequest(approved=True))
    deadline = time.monotonic() + 60
    while not stub.ListOrders(api.ListOrdersRequest()).orders:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert stub.Halt(api.HaltRequest(reason="test halt", actor="pytest")).halted
    status = daemon.wait_for(lambda s: s.halted, what="halt")
    assert status.halt_reason == "test halt"
    placed_before = {o.client_order_id for o in stub.ListOrders(api.ListOrdersRequest()).orders}
    orders_at_halt = len(placed_before)
    events = collect(stub, api.WatchEventsRequest(kinds=[pb.EVENT_KIND_RISK_DECISION, pb.EVENT_KIND_ORDER]), 5)
    # Nothing new is placed (a bracket leg placed before the halt still starts working when its entry fills).
    assert not [e for e in events if e.WhichOneof("payload") == "order" and e.order.status == pb.ORDER_STATUS_NEW
                and e.order.client_order_id not in placed_before]  # fmt: skip
    assert all(e.risk_decision.reason == pb.RISK_REASON_HALTED for e in events if e.WhichOneof("payload") == "risk_decision")
    assert len([o for o in stub.ListOrders(api.ListOrdersRequest()).orders]) == orders_at_halt
    assert not stub.Resume(api.ResumeRequest(reason="done")).halted


def test_watch_events_filters_by_kind_and_symbol(daemon) -> None:  # noqa: ANN001
    events = collect(daemon.stub, api.WatchEventsRequest(kinds=[pb.EVENT_KIND_BAR], symbols=["GOOG"]), 2)
    assert events and {e.WhichOneof("payload") for e in events} == {"bar"}
    assert collect(daemon.stub, api.WatchEventsRequest(kinds=[pb.EVENT_KIND_BAR], symbols=["MSFT"]), 1) == []


def test_run_backtest_streams_progress_and_the_same_result_as_the_library(daemon) -> None:  # noqa: ANN001
    request = api.RunBacktestRequest(dataset="sp500", symbols=["AAPL", "MSFT"], start_date="2010-01-01",
                                     end_date="2012-12-31", weights={"rsi": 0.5, "ema_cross": 0.5}, include_details=True)  # fmt: skip
    responses = list(daemon.stub.RunBacktest(request, timeout=120))
    progress = [r.progress for r in responses if r.HasField("progress")]
    assert len(progress) >= 10 and progress[-1].bars_processed == progress[-1].bars_total
    result = responses[-1].result
    config = load_config(environ={}, overrides={
        "market_data.dataset": "sp500", "market_data.symbols": ["AAPL", "MSFT"], "market_data.start": "2010-01-01",
        "market_data.end": "2012-12-31", "ensemble.weights": {"rsi": 0.5, "ema_cross": 0.5},
        "market_data.batch_bar_times": 1000, "risk.max_position_pct": 0.95})  # fmt: skip
    assert result == backtest(config)
    assert result.summary.trades == len(result.trades) > 0


def test_run_backtest_takes_the_clis_options_runs_several_at_once_and_the_live_session_keeps_going(daemon) -> None:  # noqa: ANN001
    """Three RunBacktest calls at once (each in a process of its own) with YAML, --set, --compare and --report
    options, while the paper session keeps streaming bars."""
    yaml_doc = "portfolio:\n  gross: 0.9\nexecution:\n  commission_min: 0.5\n"
    compare = api.RunBacktestRequest(dataset="sp500", symbols=["AAPL", "JPM", "KO"], start_date="2011-01-01",
                                     end_date="2012-12-31", config_yaml=[yaml_doc], set=["risk.max_position_pct=0.5"],
                                     compare="portfolio.method=fixed,equal", report_dir="compare")  # fmt: skip
    plain = api.RunBacktestRequest(dataset="goog", start_date="2005-01-01", end_date="2008-12-31")
    responses: dict[str, list[api.RunBacktestResponse]] = {}

    def call(name: str, request: api.RunBacktestRequest) -> None:
        responses[name] = list(daemon.stub.RunBacktest(request, timeout=300))

    daemon.wait_for(lambda s: s.account.header.event_time_ns > 0, what="the live session's first bars")
    arrivals: list[float] = []
    watch = daemon.stub.WatchEvents(api.WatchEventsRequest(kinds=[pb.EVENT_KIND_BAR]))

    def watch_bars() -> None:
        try:
            for _ in watch:
                arrivals.append(time.monotonic())
        except grpc.RpcError:
            pass

    threading.Thread(target=watch_bars, daemon=True).start()
    calls = [threading.Thread(target=call, args=(n, r)) for n, r in (("compare", compare), ("plain", plain),
                                                                      ("plain2", plain))]  # fmt: skip
    started = time.monotonic()
    for thread in calls:
        thread.start()
    for thread in calls:
        thread.join(300)
    finished = time.monotonic()
    watch.cancel()
    during = [t for t in arrivals if started <= t <= finished]
    # The live session (40 bar times a second) never stalled for long while three backtests ran.
    assert len(during) > 20 and max(np.diff([started, *during])) < 3.0
    results = [r.result for r in responses["compare"] if r.HasField("result")]
    assert [r.name for r in results] == ["portfolio.method=fixed", "portfolio.method=equal"]
    progress = [r.progress for r in responses["compare"] if r.HasField("progress")]
    assert {p.run for p in progress} == {r.name for r in results}
    base = {"market_data.dataset": "sp500", "market_data.symbols": ["AAPL", "JPM", "KO"],
            "market_data.start": "2011-01-01", "market_data.end": "2012-12-31", "market_data.batch_bar_times": 1000,
            "risk.max_position_pct": 0.5, "portfolio.gross": 0.9, "execution.commission_min": 0.5}  # fmt: skip
    for result, method in zip(results, ("fixed", "equal"), strict=True):
        expected = backtest(load_config(environ={}, overrides={**base, "portfolio.method": method}))
        expected.name = result.name
        assert result == expected
    report = responses["compare"][-1].report_path
    assert report.endswith("index.html") and str(daemon.data_dir / "reports" / "compare") in report
    assert "portfolio.method=equal" in open(report).read()  # noqa: PTH123
    first, second = (responses[n][-1].result for n in ("plain", "plain2"))
    assert first == second and first.summary.bars > 900


MALFORMED = [
    (lambda s: list(s.RunBacktest(api.RunBacktestRequest(dataset="nasdaq"))), "dataset"),
    (lambda s: list(s.RunBacktest(api.RunBacktestRequest(start_date="2010-13-45"))), "start_date"),
    (lambda s: list(s.RunBacktest(api.RunBacktestRequest(symbols=["ZZZZ"]))), "symbols"),
    (lambda s: list(s.RunBacktest(api.RunBacktestRequest(weights={"astrology": 1.0}))), "weights"),
    (lambda s: list(s.RunBacktest(api.RunBacktestRequest(start_date="2012-01-01", end_date="2011-01-01"))), "start_date"),
    (lambda s: list(s.RunBacktest(api.RunBacktestRequest(set=["risk.max_position_pct"]))), "set"),
    (lambda s: list(s.RunBacktest(api.RunBacktestRequest(set=["risk.no_such_rule=1"]))), "no_such_rule"),
    (lambda s: list(s.RunBacktest(api.RunBacktestRequest(config_yaml=["risk: [unclosed"]))), "YAML"),
    (lambda s: list(s.RunBacktest(api.RunBacktestRequest(compare="portfolio.method"))), "compare"),
    (lambda s: list(s.RunBacktest(api.RunBacktestRequest(compare="portfolio.method=equal,kelly"))), "portfolio.method"),
    (lambda s: list(s.RunBacktest(api.RunBacktestRequest(report_dir="../../etc"))), "report_dir"),
    (lambda s: list(s.WatchEvents(api.WatchEventsRequest(kinds=[999]))), "kinds"),
    (lambda s: s.Halt(api.HaltRequest(reason="x" * 5000)), "reason"),
    (lambda s: s.ListOrders(api.ListOrdersRequest(limit=-1)), "limit"),
]


def test_malformed_requests_get_invalid_argument_and_the_daemon_stays_up(daemon) -> None:  # noqa: ANN001
    # One daemon for every case: each must leave it up and its state unchanged for the next.
    for call, field in MALFORMED:
        with pytest.raises(grpc.RpcError) as caught:
            call(daemon.stub)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in caught.value.details()
        assert not daemon.status().halted  # still up, state unchanged


def test_sigterm_shuts_down_cleanly_and_state_survives_a_restart(daemon_factory) -> None:  # noqa: ANN001
    first = daemon_factory("--replay-rate", "40", "--set", "approve_execution_on_start=true").start()
    first.wait_for(lambda s: s.account.header.event_time_ns > 0, what="first bars")
    first.stub.Halt(api.HaltRequest(reason="before restart"))
    assert first.kill(signal.SIGTERM) == 0
    second = daemon_factory("--replay-rate", "40", data_dir=first.data_dir).start()
    status = second.wait_for(lambda s: s.account.equity > 0, what="restart")
    assert status.halted and status.halt_reason == "before restart" and status.execution_approved


def test_a_data_folder_refuses_another_session(daemon_factory, tmp_path) -> None:  # noqa: ANN001
    first = daemon_factory("--replay-rate", "40").start()
    first.wait_for(lambda s: s.account.equity > 0, what="first bars")
    assert first.kill(signal.SIGTERM) == 0
    other = daemon_factory("--dataset", "sp500", data_dir=first.data_dir)
    with pytest.raises(AssertionError, match=r"(?s)exited with 2.*holds another session \(dataset: 'goog' there, 'sp500' now"):
        other.start(timeout=30)


# -- RunSweep and RunWalkForward ---------------------------------------------------------------------
#: configs/sweep-reference.yaml over five years, its grid cut to 2 x 2: the reference strategy's base file
#: goes in config_yaml (the daemon cannot read the client's files).
SWEEP_SPEC = """\
overrides:
  market_data.dataset: goog
  market_data.start: 2006-01-01
  market_data.end: 2010-12-31
grid:
  alpha.ema_cross.fast: [8, 12]
  alpha.ema_cross.slow: [26, 40]
"""
REFERENCE_YAML = (REPO / "configs" / "reference.yaml").read_text()


class BarWatch:
    """Arrival times of the live session's bars while a research call runs."""

    def __init__(self, daemon) -> None:  # noqa: ANN001
        daemon.wait_for(lambda s: s.account.header.event_time_ns > 0, what="the live session's first bars")
        self.arrivals: list[float] = []
        self.call = daemon.stub.WatchEvents(api.WatchEventsRequest(kinds=[pb.EVENT_KIND_BAR]))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for _ in self.call:
                self.arrivals.append(time.monotonic())
        except grpc.RpcError:
            pass

    def longest_gap(self, started: float, finished: float) -> float:
        self.call.cancel()
        during = [t for t in self.arrivals if started <= t <= finished]
        assert len(during) > 20
        return float(max(np.diff([started, *during, finished])))


def test_run_sweep_streams_each_variant_then_the_clis_table_dsr_and_pbo(daemon, tmp_path) -> None:  # noqa: ANN001
    bars = BarWatch(daemon)
    started = time.monotonic()
    request = api.RunSweepRequest(spec_yaml=SWEEP_SPEC, config_yaml=[REFERENCE_YAML], processes=2)
    responses = list(daemon.stub.RunSweep(request, timeout=180))
    # The live session (40 bar times a second) never stalled for long while the sweep ran.
    assert bars.longest_gap(started, time.monotonic()) < 3.0
    kinds = [r.WhichOneof("payload") for r in responses]
    assert kinds == ["started", "variant", "variant", "variant", "variant", "summary"]
    first, summary = responses[0].started, responses[-1].summary
    assert first.variants == 4 and first.processes == 2 and summary.sweep_id == first.sweep_id

    # `utp sweep` on the same spec with the reference config as its file, in this process.
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"config: [{REPO / 'configs' / 'reference.yaml'}]\n{SWEEP_SPEC}")
    spec = load_spec(spec_file)
    expected = run_sweep(spec, processes=2)
    # The daemon's configuration is the RPC's base: only its live-session settings differ from the CLI's.
    base = load_config(overrides=yaml.safe_load(first.base_config_yaml), environ={})
    cli_base = spec.base
    differing = {f"{section}.{key}" for section, values in to_dict(base).items() if isinstance(values, dict)
                 for key, value in values.items() if to_dict(cli_base)[section][key] != value}  # fmt: skip
    assert differing <= {"market_data.replay_rate", "server.listen", "server.metrics_listen"}, differing

    assert summary.metric == "sharpe" and summary.variants == 4 and summary.failed == 0
    assert list(summary.parameters) == ["alpha.ema_cross.fast", "alpha.ema_cross.slow"]
    assert [row.variant_id for row in summary.rows] == list(expected.table["variant"])
    for row, result in zip(summary.rows, expected.results, strict=True):
        assert dict(row.params) == dict(result.params) and row.summary == result.summary and not row.error
    streamed = {r.variant.variant_id: r.variant for r in responses if r.HasField("variant")}
    assert {v: s.summary for v, s in streamed.items()} == {row.variant_id: row.summary for row in summary.rows}
    assert expected.dsr is not None and expected.pbo is not None
    assert summary.dsr.variant_id == expected.dsr_variant == summary.rows[0].variant_id
    assert (summary.dsr.dsr, summary.dsr.psr, summary.dsr.n_trials, summary.dsr.n_obs) == (
        expected.dsr.dsr, expected.dsr.psr, expected.dsr.n_trials, expected.dsr.n_obs)  # fmt: skip
    assert (summary.pbo.pbo, summary.pbo.n_blocks, summary.pbo.n_combinations, summary.pbo.prob_oos_loss) == (
        expected.pbo.pbo, expected.pbo.n_blocks, expected.pbo.n_combinations, expected.pbo.prob_oos_loss)  # fmt: skip
    assert 0 <= summary.pbo.pbo <= 1 and summary.rows[0].summary.sharpe > summary.rows[-1].summary.sharpe


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def _day(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d")


def test_run_walk_forward_streams_folds_then_the_clis_out_of_sample_figures(daemon) -> None:  # noqa: ANN001
    symbols = ["AAPL", "KO", "XOM", "JPM"]
    request = api.RunWalkForwardRequest(dataset="sp500", symbols=symbols, start_date="2010-01-01", end_date="2012-12-31",
                                        set=["risk.max_position_pct=0.5"], train=252, test=63, step=63)  # fmt: skip
    responses = list(daemon.stub.RunWalkForward(request, timeout=180))
    folds = [r.fold for r in responses if r.HasField("fold")]
    summary = responses[-1].summary
    assert responses[-1].HasField("summary") and len(folds) == summary.folds == len(responses) - 1

    # `utp walk-forward --json` with the same options (and the daemon's risk.max_position_pct, overridden).
    config = load_config(environ={}, overrides={
        "market_data.dataset": "sp500", "market_data.symbols": symbols, "market_data.start": "2010-01-01",
        "market_data.end": "2012-12-31", "market_data.batch_bar_times": 1000, "risk.max_position_pct": 0.5})  # fmt: skip
    expected = walkforward.summary_dict(walkforward.walk_forward(config, train=252, test=63, step=63))
    assert len(expected["folds"]) == len(folds) > 3
    for fold, row in zip(folds, expected["folds"], strict=True):
        assert {"fold": fold.index, "train_start": _day(fold.train_start_time_ns),
                "test_start": _day(fold.test_start_time_ns), "test_end": _day(fold.test_end_time_ns),
                "bars": fold.bars, "return": fold.total_return, "sharpe": _finite(fold.sharpe),
                "max_drawdown": fold.max_drawdown, "trades": fold.trades} == row  # fmt: skip
    assert (summary.scheme, summary.train, summary.test, summary.step, summary.anchored) == ("bars", 252, 63, 63, False)
    assert summary.periods_per_year == expected["periods_per_year"]
    assert {"bars": summary.oos_bars, "start": _day(summary.oos_start_time_ns), "end": _day(summary.oos_end_time_ns),
            "total_return": summary.oos_total_return, "sharpe": _finite(summary.oos_sharpe),
            "psr": _finite(summary.oos_psr), "negative_sharpe_share": summary.negative_sharpe_share} == expected["oos"]  # fmt: skip


def test_malformed_research_requests_get_invalid_argument_naming_the_field(daemon) -> None:  # noqa: ANN001
    """One daemon for every case; the last two are found by the spawned process (invalid variants, no fold
    fits), the rest before anything runs."""
    sweep_cases = [
        (api.RunSweepRequest(spec_yaml="grid: [unclosed"), "spec_yaml: not valid YAML"),
        (api.RunSweepRequest(spec_yaml="grid: {alpha.ema_cross.fastest: [1, 2]}"), "alpha.ema_cross.fastest"),
        (api.RunSweepRequest(spec_yaml=f"config: [reference.yaml]\n{SWEEP_SPEC}"), "config_yaml"),
        (api.RunSweepRequest(spec_yaml=SWEEP_SPEC, metric="luck"), "metric"),
        (api.RunSweepRequest(spec_yaml=SWEEP_SPEC, config_yaml=["risk: [unclosed"]), "config_yaml"),
        (api.RunSweepRequest(spec_yaml=SWEEP_SPEC, processes=-1), "processes"),
        (api.RunSweepRequest(spec_yaml=SWEEP_SPEC, nats_url="http://example.com"), "nats_url"),
        (api.RunSweepRequest(spec_yaml="grid: {alpha.ema_cross.fast: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}\n"
                                       "random: {risk.max_position_pct: {low: 0.1, high: 1}}\nsamples: 1001"), "at most"),
        (api.RunSweepRequest(spec_yaml="grid: {alpha.ema_cross.fast: [30, 40], alpha.ema_cross.slow: [26]}",
                             config_yaml=[REFERENCE_YAML]), "spec_yaml: no valid variant"),
    ]  # fmt: skip
    walk_forward_cases = [
        (api.RunWalkForwardRequest(scheme="weeks"), "scheme"),
        (api.RunWalkForwardRequest(set=["risk.no_such_rule=1"]), "no_such_rule"),
        (api.RunWalkForwardRequest(dataset="nasdaq"), "dataset"),
        (api.RunWalkForwardRequest(train=-1), "train"),
        (api.RunWalkForwardRequest(folds=3, all_folds=True), "folds"),
        (api.RunWalkForwardRequest(dataset="goog", train=5000), "train"),
    ]
    calls = [(daemon.stub.RunSweep, r, f) for r, f in sweep_cases]
    calls += [(daemon.stub.RunWalkForward, r, f) for r, f in walk_forward_cases]
    for method, request, field in calls:
        with pytest.raises(grpc.RpcError) as caught:
            list(method(request, timeout=120))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (request, caught.value.details())
        assert field in caught.value.details(), (request, caught.value.details())
    status = daemon.status()
    assert status.session_state == api.SESSION_STATE_RUNNING and not status.halted


def test_model_rpcs_list_refuse_a_failed_gate_promote_and_the_session_swaps_to_the_champion(daemon_factory, tmp_path) -> None:  # noqa: ANN001
    from tests.ml_models import linear_model
    from utp.core.config import load_config
    from utp.core.features import FeatureSpec
    from utp.core.ml.registry import ModelRegistry

    data_dir = tmp_path / "models-data"
    spec = FeatureSpec(load_config([], environ={}).features)
    registry = ModelRegistry(data_dir / "mlflow")
    tags = {"feature_set_version": spec.version, "model_kind": "lgbm", "oos_sharpe": "0.9", "oos_win_rate": "0.5",
            "min_fold_sharpe": "0.1", "deflated_sharpe": "0.9"}  # fmt: skip
    with registry.start_run("test", "models", {}, {}) as run:
        for passed in ("false", "true"):
            model = linear_model(spec.names, spec.version, weights={"ret_5": 1.0})
            registry.register("tft", run, model, {**tags, "gate_passed": passed})
    daemon = daemon_factory("--replay-rate", "40", "--set", "inference.registry_poll_s=0.5", data_dir=data_dir).start()
    listed = daemon.stub.ListModels(api.ListModelsRequest(name="tft"), timeout=30).versions
    assert [(v.version, v.gate_passed, list(v.aliases)) for v in listed] == [("2", True, ["challenger"]), ("1", False, [])]
    with pytest.raises(grpc.RpcError) as refused:
        daemon.stub.PromoteModel(api.PromoteModelRequest(name="tft", version="1", actor="test"), timeout=30)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "gate" in refused.value.details()
    with pytest.raises(grpc.RpcError) as unknown:
        daemon.stub.ListModels(api.ListModelsRequest(name="nope"), timeout=30)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    # The live session picks the champion up and predicts with it (hot reload, no restart).
    events: list[pb.Event] = []
    watching = threading.Thread(target=lambda: events.extend(collect(
        daemon.stub, api.WatchEventsRequest(kinds=[pb.EVENT_KIND_MODEL_ALERT, pb.EVENT_KIND_PREDICTION]), 10)))
    watching.start()
    time.sleep(1.0)
    champion = daemon.stub.PromoteModel(api.PromoteModelRequest(name="tft", reason="test", actor="test"), timeout=30).champion
    assert champion.version == "2" and "champion" in champion.aliases
    watching.join()
    swapped = [e.model_alert for e in events if e.WhichOneof("payload") == "model_alert"]
    predictions = [e.prediction for e in events if e.WhichOneof("payload") == "prediction"]
    assert [a.model_version for a in swapped if a.kind == pb.MODEL_ALERT_KIND_MODEL_SWAPPED] == ["2"]
    assert predictions and {p.model_version for p in predictions} == {"2"}


def test_trigger_retrain_streams_the_stages_then_registers_the_model(daemon) -> None:  # noqa: ANN001
    settings = ["train.start=2014-06-01", "train.train_bars=250", "train.test_bars=30", "train.folds=2",
                "train.lgbm={n_estimators: 20}", "train.symbols=[AAPL, JPM, XOM]"]  # fmt: skip
    responses = list(daemon.stub.TriggerRetrain(api.TriggerRetrainRequest(model="lgbm", set=settings), timeout=600))
    stages = [r.progress.stage for r in responses if r.WhichOneof("payload") == "progress"]
    assert stages[0] == "data" and stages.count("fold") == 2 and "backtest" in stages and "gate" in stages
    assert stages[-1] == "registered"
    result = responses[-1].result
    assert result.model == "lgbm" and result.version == "1" and [f.fold for f in result.folds] == sorted(f.fold for f in result.folds)
    assert len(result.folds) == 2 and result.gate_passed == (not result.gate_reasons) and not result.promoted
    listed = daemon.stub.ListModels(api.ListModelsRequest(name="lgbm"), timeout=30).versions
    assert [v.version for v in listed] == ["1"] and listed[0].run_id == result.run_id
    with pytest.raises(grpc.RpcError) as bad:
        list(daemon.stub.TriggerRetrain(api.TriggerRetrainRequest(model="xgboost"), timeout=30))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "model" in bad.value.details()


def test_a_daemon_on_jetstream_sends_a_watcher_the_kinds_it_asks_for(daemon_factory, nats_url, stream_names) -> None:  # noqa: ANN001
    """Over JetStream the daemon's tap takes only the kinds someone watches (its status and metrics kinds, which
    include bars); a watcher asking for feature vectors, which nobody watched when the session started, gets them."""
    from tests.test_restart import daemon_args

    stream, root = stream_names
    daemon = daemon_factory(*daemon_args(nats_url, stream, root, rate=20)).start()
    try:
        events = collect(daemon.stub, api.WatchEventsRequest(kinds=[pb.EVENT_KIND_FEATURE_VECTOR]), 5)
    finally:
        daemon.stop()  # before its stream is deleted
    assert events and {e.WhichOneof("payload") for e in events} == {"feature_vector"}


def test_a_started_process_freezes_its_heap_once_so_full_collections_stay_short() -> None:
    """`utp core` and `utp engine` freeze what is alive once their engines have started (`freeze_startup_heap`): a
    full garbage collection then walks only what came after, not every object of polars, numba and gRPC. Only the
    first call freezes, after collecting what was garbage already."""
    import subprocess
    import sys

    probe = """
import gc
from utp.daemon.session import freeze_startup_heap
cycles = []
for _ in range(100):
    a = []
    a.append(a)
    cycles.append(a)
del cycles, a
tracked = len(gc.get_objects())
freeze_startup_heap()
frozen = gc.get_freeze_count()
assert frozen > 10000, frozen  # the imports' objects
assert frozen < tracked - 90, (frozen, tracked)  # the garbage cycles were collected, not frozen
assert len(gc.get_objects()) < 1000, len(gc.get_objects())  # a full collection has almost nothing to walk
junk = [[] for _ in range(2000)]
freeze_startup_heap()
assert gc.get_freeze_count() == frozen  # only the first call freezes
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
