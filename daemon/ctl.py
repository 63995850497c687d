"""`utp ctl`: every console action as a shell command, for scripts; and `utp token` for the daemon's tokens.

Each subcommand is one CoreService call (the same that `grpcurl` makes: see the README), prints a line a
person can read or, with --json, the response as JSON, and exits 0 on success, 1 when the daemon refused
(the status code and its message on stderr), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from utp.v1 import core_service_pb2 as api
from utp.v1 import core_service_pb2_grpc as api_grpc
from utp.v1 import events_pb2 as pb


def add_parsers(sub: Any, add_client_args: Callable[[argparse.ArgumentParser], None]) -> None:
    ctl = sub.add_parser("ctl", help="steer a daemon from the shell: status, halt, resume, approve, flatten, ...")
    ctl_sub = ctl.add_subparsers(dest="ctl_command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = ctl_sub.add_parser(name, help=help_text)
        add_client_args(parser)
        parser.add_argument("--json", action="store_true", help="print the response as JSON")
        parser.add_argument("--reason", default="", help="why (goes to the audit trail)")
        parser.add_argument("--actor", default="", help="who (default: ctl:<user>)")
        return parser

    command("status", "the session: mode, flags, account, engines")
    command("halt", "halt trading: nothing is placed until resume")
    command("resume", "lift a halt")
    approve = command("approve", "approve execution (blanket), or pending orders (per-order: give intent ids or --all)")
    approve.add_argument("intent_ids", nargs="*", help="pending orders to approve (per-order mode)")
    approve.add_argument("--all", action="store_true", help="every pending order")
    reject = command("reject", "reject pending orders (per-order mode)")
    reject.add_argument("intent_ids", nargs="*")
    reject.add_argument("--all", action="store_true")
    command("revoke", "revoke execution: nothing reaches the broker")
    mode = command("mode", "approval mode: blanket or per-order")
    mode.add_argument("mode", choices=("blanket", "per-order"))
    command("pause", "pause new entries (exits still go)")
    command("unpause", "resume new entries")
    flatten = command("flatten", "close one position, or all of them")
    flatten.add_argument("symbol", nargs="?", default="", help="one symbol; all positions when left out")
    flatten.add_argument("--halt", action="store_true", help="and halt trading (emergency)")
    cancel = command("cancel", "cancel a working order")
    cancel.add_argument("client_order_id")
    command("positions", "open positions")
    orders = command("orders", "orders, newest first")
    orders.add_argument("--limit", type=int, default=20)
    orders.add_argument("--working", action="store_true", help="only working orders, however old")
    approvals = command("approvals", "the approval queue")
    approvals.add_argument("--decided", type=int, default=0, help="also this many recent decisions")
    command("signals", "the latest signal of each symbol, with its components")
    alerts = command("alerts", "recent alerts")
    alerts.add_argument("--limit", type=int, default=20)
    rejections = command("rejections", "intents risk refused and risk events, newest first")
    rejections.add_argument("--limit", type=int, default=20)
    rejections.add_argument("--symbol", action="append", default=[], help="only this symbol (repeatable)")
    letters = command("dead-letters", "input rows an engine kept failing on, which it went on without")
    letters.add_argument("--limit", type=int, default=100)
    replay = command("replay-letters", "hand dead letters to their engine again (once fixed), or drop them")
    replay.add_argument("sequences", nargs="*", type=int, help="the letters (their sequence numbers)")
    replay.add_argument("--all", action="store_true", help="every dead letter")
    replay.add_argument("--drop", action="store_true", help="remove them without replaying")
    audit = command("audit", "the audit trail, newest first")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--method", default="")
    audit.add_argument("--filter-actor", default="", help="only this actor")
    audit.add_argument("--outcome", default="", help="OK, UNAUTHENTICATED, PERMISSION_DENIED, ...")
    command("jobs", "the scheduler's jobs")
    run_job = command("run-job", "run a scheduled job now (waits for it)")
    run_job.add_argument("name", choices=("pre_market", "end_of_day", "nightly"))

    token = sub.add_parser("token", help="the daemon's bearer tokens (run on the daemon's machine)")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    for name, help_text in (("show", "print a token"), ("rotate", "replace a token; the old one stops working at once")):
        parser = token_sub.add_parser(name, help=help_text)
        parser.add_argument("--data-dir", metavar="DIR", help="the daemon's data folder")
        parser.add_argument("--role", choices=("admin", "read"), default="admin")


def main(args: argparse.Namespace) -> int:
    if args.command == "token":
        return _token(args)
    from utp.daemon.auth import client_channel
    from utp.daemon.cli import client_token

    channel = client_channel(args.target, client_token(args), tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                             tls_key=args.tls_key, server_name=args.tls_server_name)  # fmt: skip
    stub = api_grpc.CoreServiceStub(channel)
    actor = args.actor or f"ctl:{getpass.getuser()}"
    try:
        response, text = _call(stub, args, actor)
    except grpc.RpcError as exc:
        print(f"utp ctl {args.ctl_command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"utp ctl {args.ctl_command}: {exc}", file=sys.stderr)
        return 2
    finally:
        channel.close()
    if args.json:
        print(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=1, sort_keys=True))
    else:
        print(text)
    return 0


def _token(args: argparse.Namespace) -> int:
    from utp.daemon.auth import read_token, rotate_token, token_path
    from utp.daemon.cli import _default_data_dir

    data_dir = Path(args.data_dir).expanduser() if args.data_dir else _default_data_dir()
    if args.token_command == "rotate":
        print(rotate_token(data_dir, args.role))
        print(f"rotated the {args.role} token in {token_path(data_dir, args.role)}", file=sys.stderr)
        return 0
    path = token_path(data_dir, args.role)
    if not path.exists():
        print(f"utp token: no {args.role} token in {path}: has the daemon started with this --data-dir?", file=sys.stderr)
        return 1
    print(read_token(path))
    return 0


_DIRECTION = {pb.DIRECTION_UP: "+", pb.DIRECTION_DOWN: "-", pb.DIRECTION_FLAT: "0"}


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S") if ns > 0 else "-"


def _call(stub: api_grpc.CoreServiceStub, args: argparse.Namespace, actor: str) -> tuple[Message, str]:  # noqa: PLR0911, PLR0912
    name, reason, timeout = args.ctl_command, args.reason, 30
    if name == "status":
        s = stub.GetStatus(api.GetStatusRequest(), timeout=timeout)
        return s, _status_text(s)
    if name == "halt":
        r = stub.Halt(api.HaltRequest(reason=reason or "halted from utp ctl", actor=actor), timeout=timeout)
        return r, f"halted: {r.halted}"
    if name == "resume":
        r = stub.Resume(api.ResumeRequest(reason=reason, actor=actor), timeout=timeout)
        return r, f"halted: {r.halted}"
    if name in ("approve", "reject") and (args.intent_ids or args.all):
        r = stub.DecideApprovals(api.DecideApprovalsRequest(intent_ids=args.intent_ids, all=args.all,
                                                            approve=name == "approve", reason=reason, actor=actor),
                                 timeout=timeout)  # fmt: skip
        return r, f"{name}d {len(r.intent_ids)} order(s): {', '.join(r.intent_ids) or '-'}"
    if name == "reject":
        raise ValueError("reject: give intent ids or --all")
    if name in ("approve", "revoke"):
        r = stub.SetExecutionApproval(api.SetExecutionApprovalRequest(approved=name == "approve", reason=reason,
                                                                      actor=actor), timeout=timeout)  # fmt: skip
        return r, f"execution approved: {r.execution_approved}"
    if name == "mode":
        mode = pb.APPROVAL_MODE_PER_ORDER if args.mode == "per-order" else pb.APPROVAL_MODE_BLANKET
        r = stub.SetApprovalMode(api.SetApprovalModeRequest(mode=mode, reason=reason, actor=actor), timeout=timeout)
        return r, f"approval mode: {pb.ApprovalMode.Name(r.mode).removeprefix('APPROVAL_MODE_').lower()}"
    if name in ("pause", "unpause"):
        r = stub.SetEntriesPaused(api.SetEntriesPausedRequest(paused=name == "pause", reason=reason, actor=actor),
                                  timeout=timeout)  # fmt: skip
        return r, f"entries paused: {r.entries_paused}"
    if name == "flatten":
        r = stub.Flatten(api.FlattenRequest(symbol=args.symbol, halt=args.halt, reason=reason, actor=actor), timeout=timeout)
        return r, f"closing {', '.join(r.symbols) or 'no position'}; halted: {r.halted}"
    if name == "cancel":
        r = stub.CancelOrder(api.CancelOrderRequest(client_order_id=args.client_order_id, reason=reason, actor=actor),
                             timeout=timeout)  # fmt: skip
        return r, f"cancelling {r.client_order_id}"
    if name == "positions":
        r = stub.ListPositions(api.ListPositionsRequest(), timeout=timeout)
        lines = [f"{p.header.symbol:8} {p.quantity:>10g} avg {p.average_price:>10.2f} last {p.last_price:>10.2f} "
                 f"unrealized {p.unrealized_pnl:>+10.2f}" for p in r.positions]  # fmt: skip
        return r, "\n".join(lines) or "no open position"
    if name == "orders":
        r = stub.ListOrders(api.ListOrdersRequest(limit=args.limit, working_only=args.working), timeout=timeout)
        lines = [f"{_time(o.submitted_time_ns)} {o.client_order_id} {o.header.symbol} "
                 f"{pb.OrderSide.Name(o.side).removeprefix('ORDER_SIDE_')} {o.quantity:g} "
                 f"{pb.OrderStatus.Name(o.status).removeprefix('ORDER_STATUS_')} {o.message}".rstrip() for o in r.orders]  # fmt: skip
        return r, "\n".join(lines) or "no order"
    if name == "approvals":
        r = stub.ListApprovals(api.ListApprovalsRequest(decided=args.decided), timeout=timeout)
        mode = pb.ApprovalMode.Name(r.mode).removeprefix("APPROVAL_MODE_").lower()
        lines = [f"mode: {mode}; {len(r.pending)} pending"]
        for a in [*r.pending, *r.decided]:
            lines.append(f"{pb.ApprovalState.Name(a.state).removeprefix('APPROVAL_STATE_'):10} {a.intent_id} "
                         f"{a.header.symbol} {pb.OrderSide.Name(a.side).removeprefix('ORDER_SIDE_')} "
                         f"~{a.estimated_quantity:.0f} @ {a.reference_price:.2f} target {a.target_percent:+.1%} "
                         f"expires {_time(a.expires_time_ns)} {a.message}".rstrip())  # fmt: skip
        return r, "\n".join(lines)
    if name == "signals":
        r = stub.ListSignals(api.ListSignalsRequest(), timeout=timeout)
        lines = [f"{s.header.symbol:8} {pb.Direction.Name(s.direction).removeprefix('DIRECTION_'):6} "
                 f"score {s.score:+.3f} confidence {s.confidence:.3f} "
                 + " ".join(f"{c.source}={_DIRECTION.get(c.direction, '?')}{c.confidence:.2f}" for c in s.components)
                 for s in r.signals]  # fmt: skip
        return r, "\n".join(lines) or "no signal yet"
    if name == "dead-letters":
        r = stub.ListDeadLetters(api.ListDeadLettersRequest(limit=args.limit), timeout=timeout)
        return r, "\n".join(_dead_letter_text(x) for x in r.letters) or "no dead letter"
    if name == "replay-letters":
        r = stub.ReplayDeadLetters(api.ReplayDeadLettersRequest(sequences=args.sequences, all=args.all, drop=args.drop,
                                                                reason=reason, actor=actor), timeout=timeout)  # fmt: skip
        return r, "\n".join([f"replayed {r.replayed}, dropped {r.dropped}", *r.errors])
    if name == "alerts":
        r = stub.ListAlerts(api.ListAlertsRequest(limit=args.limit), timeout=timeout)
        return r, "\n".join(_alert_text(e) for e in r.alerts) or "no alert"
    if name == "rejections":
        r = stub.ListRejections(api.ListRejectionsRequest(limit=args.limit, symbols=args.symbol), timeout=timeout)
        return r, "\n".join(_rejection_text(e) for e in r.rejections) or "nothing rejected"
    if name == "audit":
        r = stub.ListAudit(api.ListAuditRequest(limit=args.limit, method=args.method, actor=args.filter_actor,
                                                outcome=args.outcome), timeout=timeout)  # fmt: skip
        lines = [f"{_time(e.time_ns)} {e.method:18} {e.outcome:18} {e.actor or '-'} ({e.role}, {e.peer}) "
                 f"{e.reason}" for e in r.entries]  # fmt: skip
        return r, "\n".join(lines) or "no entry"
    if name == "jobs":
        r = stub.ListJobs(api.ListJobsRequest(), timeout=timeout)
        return r, "\n".join(_job_text(j) for j in r.jobs) or "no scheduler"
    if name == "run-job":
        r = stub.RunJob(api.RunJobRequest(name=args.name, reason=reason, actor=actor), timeout=3600)
        return r, _job_text(r.job)
    raise ValueError(f"unknown command {name}")


def _status_text(s: api.GetStatusResponse) -> str:
    a = s.account
    mode = pb.ApprovalMode.Name(s.approval_mode).removeprefix("APPROVAL_MODE_").lower()
    lines = [
        f"mode {s.mode} on {s.bus}; session {api.SessionState.Name(s.session_state).removeprefix('SESSION_STATE_').lower()}",
        f"{'HALTED (' + s.halt_reason + ')' if s.halted else 'trading'}; execution "
        f"{'approved' if s.execution_approved else 'revoked'} ({mode}); entries {'PAUSED' if s.entries_paused else 'open'}",
        f"equity {a.equity:,.2f} cash {a.cash:,.2f} day P&L {a.day_pnl:+,.2f} positions {a.open_positions} "
        f"data through {_time(a.header.event_time_ns)}",
    ]  # fmt: skip
    for e in s.engines:
        lines.append(f"  {e.engine:12} {pb.EngineState.Name(e.state).removeprefix('ENGINE_STATE_').lower():9} "
                     f"through {_time(e.through_time_ns)} in {e.events_in} out {e.events_out} rejected {e.events_rejected}")  # fmt: skip
    return "\n".join(lines)


def _alert_text(event: pb.Event) -> str:
    kind = event.WhichOneof("payload")
    m = getattr(event, kind)
    return f"{_time(m.header.event_time_ns)} {kind:14} {m.header.symbol or '-':8} {m.message}"


def _rejection_text(event: pb.Event) -> str:
    kind = event.WhichOneof("payload")
    m = getattr(event, kind)  # a risk_decision or a risk_event: both say why by a reason code
    reason = pb.RiskReason.Name(m.reason).removeprefix("RISK_REASON_")
    return f"{_time(m.header.event_time_ns)} {kind:14} {m.header.symbol or '-':8} {reason}: {m.message}"


def _dead_letter_text(x: api.DeadLetter) -> str:
    kind = x.event.WhichOneof("payload") or "?"
    header = getattr(x.event, kind).header if kind != "?" else pb.EventHeader()
    return (f"#{x.sequence} {_time(header.event_time_ns)} {x.engine:10} {kind:16} {header.symbol or '-':8} "
            f"{x.deliveries} deliveries: {x.error}")  # fmt: skip


def _job_text(j: api.ScheduledJob) -> str:
    return (f"{j.name:11} next {_time(j.next_run_time_ns)}  last {_time(j.last_run_time_ns)} "
            f"{'RUNNING' if j.running else j.last_outcome or 'never'} {j.last_detail}  [{j.schedule}]").rstrip()  # fmt: skip
