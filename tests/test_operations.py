"""Operating a daemon: tokens and the audit trail, `utp ctl`, per-order approval, pausing entries, cancelling,
flattening (also while halted), alerts, the dashboard, scheduled jobs and the metrics endpoint: each against
`utp core` in a process of its own."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from utp.daemon.auth import read_token, token_path
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

#: Long enough that nothing expires while a test decides (bar time runs at many days a second).
NO_EXPIRY = "execution.approval_timeout_s=1000000000.0"


def wait_for(predicate: Callable[[], Any], timeout: float = 90.0, what: str = "a condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def ctl(daemon, *args: str, token: str | None = None) -> subprocess.CompletedProcess:  # noqa: ANN001
    cmd = [sys.executable, "-m", "utp.daemon.cli", "ctl", *args, "--target", daemon.target, "--data-dir",
           str(daemon.data_dir)]  # fmt: skip
    if token is not None:
        cmd += ["--token", token]
    env = {k: v for k, v in os.environ.items() if k != "UTP_TOKEN"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_tokens_guard_every_call_and_the_audit_trail_records_who_did_what(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory("--replay-rate", "5").start()
    auth = daemon.data_dir / "auth"
    assert stat.S_IMODE(auth.stat().st_mode) == 0o700
    for role in ("admin", "read"):
        assert stat.S_IMODE(token_path(daemon.data_dir, role).stat().st_mode) == 0o600
    anonymous, wrong = daemon.stub_with(""), daemon.stub_with("not-the-token")
    reader = daemon.stub_with(read_token(token_path(daemon.data_dir, "read")))
    for stub in (anonymous, wrong):
        assert code_of(lambda s=stub: s.GetStatus(api.GetStatusRequest(), timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda s=stub: s.Halt(api.HaltRequest(reason="intruder", actor="mallory"), timeout=5)) == \
            grpc.StatusCode.UNAUTHENTICATED  # fmt: skip
    assert not reader.GetStatus(api.GetStatusRequest(), timeout=5).halted  # a read-only token reads
    assert code_of(lambda: reader.Halt(api.HaltRequest(reason="just looking", actor="viewer"), timeout=5)) == \
        grpc.StatusCode.PERMISSION_DENIED  # fmt: skip
    assert not daemon.status().halted  # nothing refused changed anything
    assert daemon.stub.Halt(api.HaltRequest(reason="lunch", actor="alice"), timeout=5).halted

    entries = daemon.stub.ListAudit(api.ListAuditRequest(), timeout=5).entries
    assert [(e.method, e.actor, e.role, e.outcome, e.reason) for e in entries[:1]] == [("Halt", "alice", "admin", "OK", "lunch")]
    refused = [(e.method, e.role, e.outcome) for e in entries[1:]]
    assert ("Halt", "read", "PERMISSION_DENIED") in refused
    assert refused.count(("Halt", "none", "UNAUTHENTICATED")) == 2
    assert refused.count(("GetStatus", "none", "UNAUTHENTICATED")) == 2
    assert all(e.peer.startswith("ipv4:127.0.0.1") and e.time_ns > 0 for e in entries)
    assert json.loads(entries[0].request_json) == {"actor": "alice", "reason": "lunch"}
    # Reads that were allowed are not operator actions; filters work.
    assert not [e for e in entries if e.method == "GetStatus" and e.outcome == "OK"]
    only = daemon.stub.ListAudit(api.ListAuditRequest(outcome="permission_denied"), timeout=5).entries
    assert [(e.method, e.actor) for e in only] == [("Halt", "viewer")]
    assert "Halt OK by alice" in daemon.log()  # and the log

    # Rotation: the old token stops working at the next call, without a restart.
    rotated = subprocess.run([sys.executable, "-m", "utp.daemon.cli", "token", "rotate", "--data-dir", str(daemon.data_dir)],
                             capture_output=True, text=True, timeout=60, check=True).stdout.strip()  # fmt: skip
    assert rotated and rotated != daemon.token
    assert code_of(lambda: daemon.stub.GetStatus(api.GetStatusRequest(), timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
    assert daemon.stub_with(rotated).Resume(api.ResumeRequest(reason="back", actor="alice"), timeout=5).halted is False


def test_utp_ctl_drives_the_daemon_from_the_shell(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory("--replay-rate", "5").start()
    done = ctl(daemon, "halt", "--reason", "maintenance", "--actor", "ops-script")
    assert done.returncode == 0, done.stderr
    assert "halted: True" in done.stdout
    status = daemon.status()
    assert status.halted and status.halt_reason == "maintenance"
    out = ctl(daemon, "status", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["halted"] is True
    assert ctl(daemon, "resume").returncode == 0 and not daemon.status().halted
    assert ctl(daemon, "pause").returncode == 0 and daemon.status().entries_paused
    assert ctl(daemon, "mode", "per-order").returncode == 0
    assert daemon.status().approval_mode == pb.APPROVAL_MODE_PER_ORDER
    refused = ctl(daemon, "halt", token="wrong")
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    assert not daemon.status().halted
    audit = ctl(daemon, "audit", "--method", "Halt")
    assert "ops-script" in audit.stdout and "UNAUTHENTICATED" in audit.stdout
    missing = ctl(daemon, "cancel", "no-such-order")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_an_asyncio_client_sends_its_token_on_unary_and_streaming_calls(daemon_factory) -> None:  # noqa: ANN001
    import asyncio

    from utp.daemon.auth import client_channel
    from utp.v1 import core_service_pb2_grpc as api_grpc

    daemon = daemon_factory("--replay-rate", "20").start()

    async def talk() -> tuple[bool, int]:
        async with client_channel(daemon.target, daemon.token, aio=True) as channel:
            stub = api_grpc.CoreServiceStub(channel)
            status = await stub.GetStatus(api.GetStatusRequest(), timeout=5)
            call = stub.WatchEvents(api.WatchEventsRequest(kinds=[pb.EVENT_KIND_ACCOUNT_SNAPSHOT]))
            events = 0
            async for _ in call:
                events += 1
                if events == 3:
                    call.cancel()
                    break
            return status.halted, events

    assert asyncio.run(asyncio.wait_for(talk(), 60)) == (False, 3)


def test_per_order_approval_places_what_the_operator_approves_and_nothing_else(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory("--replay-rate", "25", "--set", "approve_execution_on_start=true",
                            "--set", "execution.approval_mode=per_order", "--set", NO_EXPIRY).start()  # fmt: skip
    stub = daemon.stub

    def pending() -> list[pb.OrderApproval]:
        return list(stub.ListApprovals(api.ListApprovalsRequest(), timeout=5).pending)

    first = wait_for(pending, what="an order waiting for approval")[0]
    assert first.state == pb.APPROVAL_STATE_PENDING and first.header.symbol == "GOOG"
    assert first.estimated_quantity > 0 and first.reference_price > 0 and first.legs == 2  # take profit, stop loss
    assert not [o for o in stub.ListOrders(api.ListOrdersRequest(), timeout=5).orders
                if o.client_order_id == first.client_order_id]  # nothing placed while it waits  # fmt: skip
    assert code_of(lambda: stub.DecideApprovals(api.DecideApprovalsRequest(intent_ids=["nope"], approve=True), timeout=5)) \
        == grpc.StatusCode.NOT_FOUND  # fmt: skip
    stub.DecideApprovals(api.DecideApprovalsRequest(intent_ids=[first.intent_id], approve=True, reason="looks right",
                                                    actor="alice"), timeout=5)  # fmt: skip

    def placed(cid: str) -> list[pb.Order]:
        return [o for o in stub.ListOrders(api.ListOrdersRequest(), timeout=5).orders if o.client_order_id == cid]

    order = wait_for(lambda: placed(first.client_order_id), what="the approved order")[0]
    assert order.side == pb.ORDER_SIDE_BUY
    legs = wait_for(lambda: [o for o in stub.ListOrders(api.ListOrdersRequest(), timeout=5).orders
                             if o.parent_client_order_id == first.client_order_id], what="its legs")  # fmt: skip
    assert len(legs) == 2

    second = wait_for(lambda: [a for a in pending() if a.intent_id != first.intent_id], what="a second order")[0]
    stub.DecideApprovals(api.DecideApprovalsRequest(intent_ids=[second.intent_id], approve=False, reason="too late in the day",
                                                    actor="bob"), timeout=5)  # fmt: skip

    def decided() -> dict[str, pb.OrderApproval]:
        response = stub.ListApprovals(api.ListApprovalsRequest(decided=100), timeout=5)
        return {a.intent_id: a for a in response.decided}

    wait_for(lambda: second.intent_id in decided(), what="the rejection")
    verdicts = decided()
    assert (verdicts[first.intent_id].state, verdicts[first.intent_id].actor) == (pb.APPROVAL_STATE_APPROVED, "alice")
    assert (verdicts[second.intent_id].state, verdicts[second.intent_id].actor) == (pb.APPROVAL_STATE_REJECTED, "bob")
    assert verdicts[second.intent_id].message == "too late in the day"
    time.sleep(1.0)  # bar times go on: the rejected order never reaches the broker
    assert not placed(second.client_order_id)
    alerts = stub.ListAlerts(api.ListAlertsRequest(limit=1000), timeout=5).alerts
    assert any(e.risk_event.reason == pb.RISK_REASON_OPERATOR_REJECTED and e.risk_event.intent_id == second.intent_id
               for e in alerts if e.WhichOneof("payload") == "risk_event")  # fmt: skip
    audit = stub.ListAudit(api.ListAuditRequest(method="DecideApprovals"), timeout=5).entries
    assert {(e.actor, e.outcome) for e in audit} >= {("alice", "OK"), ("bob", "OK"), ("", "NOT_FOUND")}


def test_approvals_expire_and_a_newer_target_supersedes(daemon_factory) -> None:  # noqa: ANN001
    # 300 s of bar time is less than one daily bar: every pending order expires at the next bar time.
    daemon = daemon_factory("--replay-rate", "25", "--set", "approve_execution_on_start=true",
                            "--set", "execution.approval_mode=per_order").start()  # fmt: skip

    def expired() -> list[pb.OrderApproval]:
        decided = daemon.stub.ListApprovals(api.ListApprovalsRequest(decided=100), timeout=5).decided
        return [a for a in decided if a.state == pb.APPROVAL_STATE_EXPIRED]

    gone = wait_for(expired, what="an expired approval")[0]
    assert gone.header.event_time_ns > gone.expires_time_ns
    assert not daemon.stub.ListOrders(api.ListOrdersRequest(), timeout=5).orders


def test_pause_cancel_and_emergency_flatten(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory("--replay-rate", "25", "--set", "approve_execution_on_start=true").start()
    stub = daemon.stub
    wait_for(lambda: stub.ListPositions(api.ListPositionsRequest(), timeout=5).positions, what="a position")

    def working_legs() -> list[pb.Order]:
        return [o for o in stub.ListOrders(api.ListOrdersRequest(), timeout=5).orders
                if o.parent_client_order_id and o.status == pb.ORDER_STATUS_NEW]  # fmt: skip

    leg = wait_for(working_legs, what="a working protective leg")[0]
    assert stub.CancelOrder(api.CancelOrderRequest(client_order_id=leg.client_order_id, reason="manual stop", actor="alice"),
                            timeout=5).client_order_id == leg.client_order_id  # fmt: skip
    cancelled = wait_for(lambda: [o for o in stub.ListOrders(api.ListOrdersRequest(), timeout=5).orders
                                  if o.client_order_id == leg.client_order_id and o.status == pb.ORDER_STATUS_CANCELED],
                         what="the cancellation")[0]  # fmt: skip
    assert cancelled.message == "cancelled by the operator"
    assert code_of(lambda: stub.CancelOrder(api.CancelOrderRequest(client_order_id=leg.client_order_id), timeout=5)) == \
        grpc.StatusCode.FAILED_PRECONDITION  # fmt: skip

    assert stub.SetEntriesPaused(api.SetEntriesPausedRequest(paused=True, reason="news", actor="alice"), timeout=5).entries_paused
    assert daemon.status().entries_paused

    def paused_refusals() -> list[pb.Event]:
        alerts = stub.ListAlerts(api.ListAlertsRequest(limit=1000), timeout=5).alerts
        return [e for e in alerts if e.WhichOneof("payload") == "risk_event"
                and e.risk_event.reason == pb.RISK_REASON_ENTRIES_PAUSED]  # fmt: skip

    refusal = wait_for(paused_refusals, what="an entry refused while paused")[0].risk_event
    assert "paused" in refusal.message
    # The daemon keeps its rejections for a console that attaches later; newest first, by symbol.
    rejections = stub.ListRejections(api.ListRejectionsRequest(limit=1000), timeout=5).rejections
    assert refusal.header.event_id in [e.risk_event.header.event_id for e in rejections if e.HasField("risk_event")]
    times = [getattr(e, e.WhichOneof("payload")).header.event_time_ns for e in rejections]
    assert times == sorted(times, reverse=True)
    assert all(not e.HasField("risk_decision") or not e.risk_decision.approved for e in rejections)
    assert len(stub.ListRejections(api.ListRejectionsRequest(limit=1), timeout=5).rejections) == 1
    others = stub.ListRejections(api.ListRejectionsRequest(symbols=["MSFT"]), timeout=5).rejections
    assert all(not getattr(e, e.WhichOneof("payload")).header.symbol for e in others)
    out = ctl(daemon, "rejections", "--symbol", "GOOG")
    assert out.returncode == 0 and "ENTRIES_PAUSED" in out.stdout, out.stdout + out.stderr
    entries_after = [o for o in stub.ListOrders(api.ListOrdersRequest(), timeout=5).orders
                     if o.reason == pb.INTENT_REASON_ENTRY and o.submitted_time_ns > refusal.header.event_time_ns]  # fmt: skip
    assert not entries_after

    assert not stub.SetEntriesPaused(api.SetEntriesPausedRequest(paused=False, reason="calm"), timeout=5).entries_paused
    # Emergency: halt and flatten in one call; the closing orders go although trading is halted.
    wait_for(lambda: stub.ListPositions(api.ListPositionsRequest(), timeout=5).positions, what="a position to flatten")
    response = stub.Flatten(api.FlattenRequest(halt=True, reason="emergency", actor="alice"), timeout=5)
    assert response.halted and response.symbols == ["GOOG"]
    wait_for(lambda: not stub.ListPositions(api.ListPositionsRequest(), timeout=5).positions, what="flat")
    closes = [o for o in stub.ListOrders(api.ListOrdersRequest(), timeout=5).orders if o.reason == pb.INTENT_REASON_OPERATOR]
    assert closes and all(o.status == pb.ORDER_STATUS_FILLED for o in closes)
    assert daemon.status().halted
    orders_then = len(stub.ListOrders(api.ListOrdersRequest(), timeout=5).orders)
    time.sleep(2.0)  # halted: nothing new, protective legs of the closed position included
    assert len([o for o in stub.ListOrders(api.ListOrdersRequest(), timeout=5).orders
                if o.status in (pb.ORDER_STATUS_NEW, pb.ORDER_STATUS_HELD)]) == 0  # fmt: skip
    assert len(stub.ListOrders(api.ListOrdersRequest(), timeout=5).orders) == orders_then
    assert code_of(lambda: stub.Flatten(api.FlattenRequest(symbol="MSFT"), timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT


def test_dashboard_signals_jobs_and_metrics(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory("--replay-rate", "25", "--set", "approve_execution_on_start=true").start()
    stub = daemon.stub
    board = wait_for(lambda: (d := stub.GetDashboard(api.GetDashboardRequest(points=50), timeout=5)).equity_curve.time_ns
                     and len(d.equity_curve.time_ns) >= 20 and d, what="an equity curve")  # fmt: skip
    assert len(board.equity_curve.time_ns) == len(board.equity_curve.equity) <= 50
    assert list(board.equity_curve.time_ns) == sorted(board.equity_curve.time_ns)
    gauges = {g.name: g for g in board.gauges}
    assert gauges["risk.max_total_exposure"].limit == 50_000 and gauges["risk.max_positions"].limit == 30
    assert board.market_time_ns > 0 and board.status.session_state == api.SESSION_STATE_RUNNING
    assert [m.name for m in board.models] == ["tft"]

    signals = wait_for(lambda: stub.ListSignals(api.ListSignalsRequest(), timeout=5).signals, what="a signal")
    assert [s.header.symbol for s in signals] == ["GOOG"]
    active = wait_for(lambda: [s for s in stub.ListSignals(api.ListSignalsRequest(), timeout=5).signals if s.components],
                      what="a signal with components")[0]  # fmt: skip
    assert {c.source for c in active.components} <= {"tft", "rsi", "ema_cross", "macd"}

    jobs = {j.name: j for j in stub.ListJobs(api.ListJobsRequest(), timeout=5).jobs}
    assert set(jobs) == {"pre_market", "end_of_day", "nightly"}
    assert all(j.next_run_time_ns > time.time_ns() for j in jobs.values())
    assert "08:30 America/New_York" in jobs["pre_market"].schedule
    ran = stub.RunJob(api.RunJobRequest(name="end_of_day", reason="test", actor="alice"), timeout=60).job
    assert (ran.last_outcome, ran.running) == ("ok", False)
    report = ran.last_detail.split("report ")[-1]
    assert json.loads(open(report).read())["gauges"]
    assert code_of(lambda: stub.RunJob(api.RunJobRequest(name="weekly"), timeout=5)) == grpc.StatusCode.NOT_FOUND

    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for name in ("events_processed_total", "position_count", "daily_pnl_usd", "kill_switch_active", "risk_decisions_total",
                 "grpc_requests_total"):  # fmt: skip
        assert name in text, name
    assert 'method="GetDashboard"' in text


# -- TLS -------------------------------------------------------------------------------------------------
def _pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)

    def issue(name: str, key: Any, issuer: Any, issuer_key: Any, *, ca: bool = False, sans: list | None = None) -> Any:
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))  # fmt: skip
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    paths = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "utp test CA")])
    ca = issue("utp test CA", ca_key, ca_name, ca_key, ca=True)
    for who, sans in (("server", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                      ("client", None)):  # fmt: skip
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue(f"utp {who}", key, ca_name, ca_key, sans=sans)
        paths[f"{who}_cert"], paths[f"{who}_key"] = folder / f"{who}.pem", folder / f"{who}.key"
        paths[f"{who}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{who}_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))  # fmt: skip
    paths["ca"] = folder / "ca.pem"
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths


def test_tls_and_mutual_tls(daemon_factory, tmp_path: Path) -> None:  # noqa: ANN001
    pki = _pki(tmp_path)
    client = {"tls_ca": str(pki["ca"]), "tls_cert": str(pki["client_cert"]), "tls_key": str(pki["client_key"])}
    daemon = daemon_factory("--replay-rate", "5", "--set", f"server.tls_cert={pki['server_cert']}",
                            "--set", f"server.tls_key={pki['server_key']}", "--set", f"server.tls_client_ca={pki['ca']}",
                            tls=client).start()  # fmt: skip
    assert daemon.stub.Halt(api.HaltRequest(reason="over TLS", actor="alice"), timeout=5).halted
    # Plain text, or TLS without a client certificate, does not get in.
    from utp.daemon.auth import client_channel
    from utp.v1 import core_service_pb2_grpc as api_grpc

    for options in ({}, {"tls_ca": str(pki["ca"])}):
        channel = client_channel(daemon.target, daemon.token, **options)
        try:
            stub = api_grpc.CoreServiceStub(channel)
            assert code_of(lambda s=stub: s.GetStatus(api.GetStatusRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE
        finally:
            channel.close()
    # utp ctl speaks TLS too.
    out = subprocess.run([sys.executable, "-m", "utp.daemon.cli", "ctl", "resume", "--target", daemon.target, "--data-dir",
                          str(daemon.data_dir), "--tls-ca", client["tls_ca"], "--tls-cert", client["tls_cert"],
                          "--tls-key", client["tls_key"]], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert not daemon.status().halted


# -- systemd and watchdogs ------------------------------------------------------------------------------
def test_the_daemon_tells_systemd_it_is_ready_and_watchdogs_raise_alerts(daemon_factory, tmp_path: Path,  # noqa: ANN001
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(120)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))  # the daemon's environment comes from ours
    # A memory ceiling of 1 MB and a free-disk floor no disk has: both watchdogs must fire and recover, and the
    # operator hears of each as an alert that says what the recovery did.
    daemon = daemon_factory("--replay-rate", "5", "--set", "operations.max_rss_mb=1.0",
                            "--set", "operations.min_free_disk_mb=1000000000000.0",
                            "--set", "operations.watchdog_interval_s=0.5").start()  # fmt: skip
    try:
        message = notify.recv(4096).decode()
    finally:
        notify.close()
    assert "READY=1" in message and daemon.target in message

    def memory_alerts() -> list[pb.OperatorAlert]:
        alerts = daemon.stub.ListAlerts(api.ListAlertsRequest(), timeout=5).alerts
        return [e.operator_alert for e in alerts if e.WhichOneof("payload") == "operator_alert"
                and e.operator_alert.source == "watchdog:memory"]  # fmt: skip

    alert = wait_for(memory_alerts, what="the memory watchdog's alert")[-1]  # the first one, with the recovery
    assert alert.severity == pb.ALERT_SEVERITY_CRITICAL
    assert "over the limit 1.0 MiB" in alert.message
    assert alert.action.startswith("released memory: ") and "objects collected" in alert.action

    # Disk: no new entries while the hot state may fail to write; the operator resumes them.
    wait_for(lambda: daemon.status().entries_paused, what="entries paused by the disk watchdog")
    disk_alerts = [e.operator_alert for e in daemon.stub.ListAlerts(api.ListAlertsRequest(), timeout=5).alerts
                   if e.WhichOneof("payload") == "operator_alert" and e.operator_alert.source == "watchdog:disk"]  # fmt: skip
    assert disk_alerts[-1].action.startswith("paused new entries")
    assert "free" in disk_alerts[-1].message


def test_malformed_operator_requests_get_invalid_argument_naming_the_field(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory("--replay-rate", "5").start()
    cases = [
        (lambda s: s.Flatten(api.FlattenRequest(symbol="MSFT")), "symbol"),
        (lambda s: s.Flatten(api.FlattenRequest(reason="x" * 5000)), "reason"),
        (lambda s: s.CancelOrder(api.CancelOrderRequest()), "client_order_id"),
        (lambda s: s.CancelOrder(api.CancelOrderRequest(client_order_id="x" * 500)), "client_order_id"),
        (lambda s: s.SetApprovalMode(api.SetApprovalModeRequest(mode=7)), "mode"),
        (lambda s: s.SetApprovalMode(api.SetApprovalModeRequest()), "mode"),
        (lambda s: s.ListApprovals(api.ListApprovalsRequest(decided=-1)), "decided"),
        (lambda s: s.DecideApprovals(api.DecideApprovalsRequest(intent_ids=["a"], all=True)), "intent_ids"),
        (lambda s: s.DecideApprovals(api.DecideApprovalsRequest()), "intent_ids"),
        (lambda s: s.ListSignals(api.ListSignalsRequest(symbols=["x" * 100])), "symbols"),
        (lambda s: s.ListAlerts(api.ListAlertsRequest(limit=-1)), "limit"),
        (lambda s: s.ListRejections(api.ListRejectionsRequest(limit=5000)), "limit"),
        (lambda s: s.ListRejections(api.ListRejectionsRequest(symbols=["x" * 100])), "symbols"),
        (lambda s: s.ListAudit(api.ListAuditRequest(limit=-1)), "limit"),
        (lambda s: s.ListAudit(api.ListAuditRequest(method="x" * 5000)), "method"),
        (lambda s: s.GetDashboard(api.GetDashboardRequest(points=-1)), "points"),
        (lambda s: s.RunJob(api.RunJobRequest(name="x" * 5000)), "name"),
        (lambda s: s.SetEntriesPaused(api.SetEntriesPausedRequest(paused=True, actor="x" * 5000)), "actor"),
    ]
    for call, field in cases:
        with pytest.raises(grpc.RpcError) as caught:
            call(daemon.stub)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, caught.value.details())
        assert field in caught.value.details()
    status = daemon.status()  # still up, nothing changed
    assert (status.halted, status.entries_paused, status.approval_mode) == (False, False, pb.APPROVAL_MODE_BLANKET)
    audit = daemon.stub.ListAudit(api.ListAuditRequest(outcome="INVALID_ARGUMENT"), timeout=5).entries
    assert {e.method for e in audit} >= {"Flatten", "CancelOrder", "SetApprovalMode", "DecideApprovals", "RunJob",
                                         "SetEntriesPaused"}  # fmt: skip
