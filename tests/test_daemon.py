"""`utp core` as a process: reflection, health, the approval gate, halt, RunBacktest, bad requests."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from utp.core.config import load_config
from utp.daemon.session import backtest
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb


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
    orders_at_halt = len(stub.ListOrders(api.ListOrdersRequest()).orders)
    events = collect(stub, api.WatchEventsRequest(kinds=[pb.EVENT_KIND_RISK_DECISION, pb.EVENT_KIND_ORDER]), 5)
    assert not [e for e in events if e.WhichOneof("payload") == "order" and e.order.status == pb.ORDER_STATUS_NEW]
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


@pytest.mark.parametrize(
    ("call", "field"),
    [
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
    ],
)
def test_malformed_requests_get_invalid_argument_and_the_daemon_stays_up(daemon, call, field: str) -> None:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as caught:
        call(daemon.stub)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
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
