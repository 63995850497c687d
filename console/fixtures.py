"""A fixed, plausible daemon state for the console's layout snapshots and the docs' screenshots.

Only `FixtureSource` uses it: behaviour is tested against a real daemon. Everything here is a pure function of
constants (no clock, no randomness), so the same screen renders the same pixels on every machine.
"""

from __future__ import annotations

import json
import math

from utp.console.source import FixtureSource
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

DAY_NS = 86_400 * 10**9
#: The newest bar: 2024-03-28 20:00 UTC (a daily bar's close).
MARKET_TIME_NS = 1_711_656_000 * 10**9
#: The console's audit entries happened on this wall time (2024-03-28 20:05 UTC) and after.
WALL_TIME_NS = MARKET_TIME_NS + 300 * 10**9
SYMBOLS = ("AAPL", "JPM", "MSFT", "NVDA", "XOM")


def _header(symbol: str = "", days_ago: int = 0, event_id: str = "") -> pb.EventHeader:
    return pb.EventHeader(
        event_id=event_id or f"{symbol or 'portfolio'}-{days_ago}",
        symbol=symbol,
        event_time_ns=MARKET_TIME_NS - days_ago * DAY_NS,
    )


def equity_curve(points: int = 160, start: float = 100_000.0) -> api.EquityCurve:
    times = [MARKET_TIME_NS - (points - 1 - i) * DAY_NS for i in range(points)]
    equity = [
        round(start * (1 + 0.0003 * i + 0.014 * math.sin(i / 11) + 0.005 * math.sin(i / 2.9)), 2) for i in range(points)
    ]
    return api.EquityCurve(time_ns=times, equity=equity)


def account() -> pb.AccountSnapshot:
    return pb.AccountSnapshot(
        header=_header(),
        cash=38_210.55,
        equity=104_532.18,
        gross_exposure=66_321.63,
        net_exposure=48_115.20,
        realized_pnl=2_950.10,
        unrealized_pnl=1_582.08,
        day_pnl=412.37,
        commissions=84.20,
        open_positions=5,
        long_exposure=57_218.42,
        short_exposure=9_103.21,
    )


def engines() -> list[pb.EngineStatus]:
    lags = {
        "market_data": 0,
        "features": 0,
        "alpha": 0,
        "inference": 1,
        "ensemble": 1,
        "portfolio": 1,
        "risk": 1,
        "execution": 1,
        "exit": 3,
    }
    return [
        pb.EngineStatus(
            engine=name,
            state=pb.ENGINE_STATE_RUNNING,
            through_time_ns=MARKET_TIME_NS - lag * DAY_NS,
            events_in=12_000 + 731 * i,
            events_out=11_500 + 517 * i,
            events_rejected=2 if name == "market_data" else 0,
        )
        for i, (name, lag) in enumerate(lags.items())
    ]


def status() -> api.GetStatusResponse:
    return api.GetStatusResponse(
        mode="paper",
        bus="in_process",
        session_state=api.SESSION_STATE_RUNNING,
        halted=False,
        execution_approved=True,
        account=account(),
        engines=engines(),
        dataset="sp500",
        symbols=list(SYMBOLS),
        version="0.1.0",
        entries_paused=False,
        approval_mode=pb.APPROVAL_MODE_PER_ORDER,
    )


def gauges() -> list[api.RiskGauge]:
    return [
        api.RiskGauge(name="risk.max_daily_loss_pct", value=0.004, limit=0.02, unit="fraction"),
        api.RiskGauge(name="risk.max_drawdown_pct", value=0.031, limit=0.10, unit="fraction"),
        api.RiskGauge(name="risk.max_total_exposure", value=0.634, limit=1.0, unit="fraction"),
        api.RiskGauge(name="risk.max_cvar_pct", value=0.0215, limit=0.025, unit="fraction"),
        api.RiskGauge(name="risk.max_positions", value=5, limit=8, unit="count"),
        api.RiskGauge(name="risk.max_short_share", value=0.137, limit=0.30, unit="fraction"),
        api.RiskGauge(name="risk.max_symbol_exposure", value=9_400, limit=10_000, unit="usd"),
    ]


def alerts() -> list[pb.Event]:
    return [
        pb.Event(
            operator_alert=pb.OperatorAlert(
                header=_header(days_ago=0, event_id="op-1"),
                severity=pb.ALERT_SEVERITY_WARNING,
                source="watchdog:data_feed",
                message="polygon quiet for 45 s",
                action="failed over to alpaca",
            )
        ),
        pb.Event(
            risk_event=pb.RiskEvent(
                header=_header("NVDA", 0, "risk-1"),
                reason=pb.RISK_REASON_CVAR,
                action=pb.RISK_ACTION_CAP_ENTRY,
                value=0.027,
                threshold=0.025,
                message="entry capped to keep CVaR-95 under 2.5% of equity",
            )
        ),
        pb.Event(
            model_alert=pb.ModelAlert(
                header=_header(days_ago=1, event_id="model-1"),
                model_name="tft",
                model_version="3",
                kind=pb.MODEL_ALERT_KIND_CONFIDENCE_DRIFT,
                message="median confidence 0.54 vs 0.61 in training",
                value=0.115,
                threshold=0.10,
            )
        ),
        pb.Event(
            data_alert=pb.DataAlert(
                header=_header("XOM", 2, "data-1"),
                kind=pb.DATA_ALERT_KIND_STALE,
                message="no bar for 312 s",
                source="polygon",
                age_s=312,
            )
        ),
        pb.Event(
            operator_alert=pb.OperatorAlert(
                header=_header(days_ago=3, event_id="op-0"),
                severity=pb.ALERT_SEVERITY_INFO,
                source="scheduler:end_of_day",
                message="end of day report written",
                resolved=True,
            )
        ),
    ]


def jobs() -> list[api.ScheduledJob]:
    return [
        api.ScheduledJob(
            name="pre_market",
            schedule="08:30 America/New_York on trading days",
            description="refresh the universe and warm the models",
            next_run_time_ns=MARKET_TIME_NS + 45_000 * 10**9,
            last_run_time_ns=MARKET_TIME_NS - 41_400 * 10**9,
            last_outcome="ok",
            last_detail="universe 20 symbols",
        ),
        api.ScheduledJob(
            name="end_of_day",
            schedule="16:15 America/New_York on trading days",
            description="reconcile, report, snapshot",
            next_run_time_ns=MARKET_TIME_NS + 900 * 10**9,
            last_run_time_ns=MARKET_TIME_NS - DAY_NS + 900 * 10**9,
            last_outcome="ok",
            last_detail="report written",
        ),
        api.ScheduledJob(
            name="nightly",
            schedule="02:00 America/New_York daily",
            description="retrain and gate the challenger",
            next_run_time_ns=MARKET_TIME_NS + 36_000 * 10**9,
            last_run_time_ns=MARKET_TIME_NS - 64_800 * 10**9,
            last_outcome="failed",
            last_detail="gate: OOS Sharpe 0.41 < 0.5",
        ),
    ]


def positions() -> list[pb.PositionSnapshot]:
    rows = [
        ("AAPL", 60, 168.20, 171.48, 4.1),
        ("JPM", 45, 186.75, 198.71, 0),
        ("MSFT", 30, 409.10, 420.72, 12.5),
        ("NVDA", 16, 880.10, 903.56, 0),
        ("XOM", -78, 118.40, 116.71, 0),
    ]
    return [
        pb.PositionSnapshot(
            header=_header(symbol),
            quantity=q,
            average_price=avg,
            last_price=last,
            market_value=round(q * last, 2),
            unrealized_pnl=round(q * (last - avg), 2),
            realized_pnl=realized * 10,
            commissions=1.0 + i,
        )
        for i, (symbol, q, avg, last, realized) in enumerate(rows)
    ]


def orders() -> list[pb.Order]:
    def order(coid: str, symbol: str, side: int, qty: float, status: int, days_ago: int, **kw: object) -> pb.Order:
        return pb.Order(
            header=_header(symbol, days_ago, coid),
            client_order_id=coid,
            intent_id=f"intent-{coid}",
            side=side,
            quantity=qty,
            status=status,
            broker="simulated",
            submitted_time_ns=MARKET_TIME_NS - days_ago * DAY_NS,
            **kw,
        )  # type: ignore[arg-type]

    return [
        order(
            "o-1042",
            "NVDA",
            pb.ORDER_SIDE_BUY,
            4,
            pb.ORDER_STATUS_NEW,
            0,
            order_type=pb.ORDER_TYPE_LIMIT,
            limit_price=899.5,
            reason=pb.INTENT_REASON_ENTRY,
            strategy="tft+ema_cross",
        ),
        order(
            "o-1041",
            "AAPL",
            pb.ORDER_SIDE_SELL,
            60,
            pb.ORDER_STATUS_HELD,
            0,
            order_type=pb.ORDER_TYPE_STOP,
            stop_price=163.9,
            reason=pb.INTENT_REASON_STOP_LOSS,
            strategy="rsi",
            parent_client_order_id="o-1030",
        ),
        order(
            "o-1040",
            "AAPL",
            pb.ORDER_SIDE_SELL,
            60,
            pb.ORDER_STATUS_HELD,
            0,
            order_type=pb.ORDER_TYPE_LIMIT,
            limit_price=176.6,
            reason=pb.INTENT_REASON_TAKE_PROFIT,
            strategy="rsi",
            parent_client_order_id="o-1030",
        ),
        order(
            "o-1038",
            "MSFT",
            pb.ORDER_SIDE_BUY,
            30,
            pb.ORDER_STATUS_FILLED,
            1,
            order_type=pb.ORDER_TYPE_MARKET,
            filled_quantity=30,
            average_fill_price=409.1,
            reason=pb.INTENT_REASON_ENTRY,
            strategy="tft",
        ),
        order(
            "o-1035",
            "XOM",
            pb.ORDER_SIDE_SELL,
            78,
            pb.ORDER_STATUS_FILLED,
            2,
            order_type=pb.ORDER_TYPE_MARKET,
            filled_quantity=78,
            average_fill_price=118.4,
            reason=pb.INTENT_REASON_ENTRY,
            strategy="macd",
        ),
        order(
            "o-1033",
            "JPM",
            pb.ORDER_SIDE_BUY,
            20,
            pb.ORDER_STATUS_CANCELED,
            3,
            order_type=pb.ORDER_TYPE_LIMIT,
            limit_price=185.0,
            reason=pb.INTENT_REASON_ENTRY,
            strategy="ema_cross",
            message="cancelled by the operator",
        ),
        order(
            "o-1031",
            "NVDA",
            pb.ORDER_SIDE_BUY,
            5,
            pb.ORDER_STATUS_REJECTED,
            4,
            order_type=pb.ORDER_TYPE_MARKET,
            reason=pb.INTENT_REASON_ENTRY,
            strategy="tft",
            message="insufficient buying power",
        ),
        order(
            "o-1030",
            "AAPL",
            pb.ORDER_SIDE_BUY,
            60,
            pb.ORDER_STATUS_FILLED,
            5,
            order_type=pb.ORDER_TYPE_MARKET,
            filled_quantity=60,
            average_fill_price=168.2,
            reason=pb.INTENT_REASON_ENTRY,
            strategy="rsi",
        ),
    ]


def rejections() -> list[api.WatchEventsResponse]:
    def decision(symbol: str, days_ago: int, reason: int, message: str, target: float) -> api.WatchEventsResponse:
        intent = pb.OrderIntent(
            header=_header(symbol, days_ago, f"intent-{symbol}-{days_ago}"),
            side=pb.ORDER_SIDE_BUY,
            reference_price=100 + days_ago,
            source="risk",
            target_percent=target,
        )
        event = pb.RiskDecision(
            header=_header(symbol, days_ago, f"decision-{symbol}-{days_ago}"),
            intent=intent,
            approved=False,
            reason=reason,
            message=message,
        )
        return api.WatchEventsResponse(event=pb.Event(risk_decision=event))

    return [
        decision("JPM", 6, pb.RISK_REASON_SECTOR_EXPOSURE, "financials would be 31% of equity (limit 30%)", 0.12),
        decision("NVDA", 3, pb.RISK_REASON_MAX_POSITIONS, "8 positions open already", 0.10),
        api.WatchEventsResponse(event=alerts()[1]),
        decision("MSFT", 1, pb.RISK_REASON_ENTRIES_PAUSED, "the operator paused new entries", 0.10),
    ]


def signals() -> list[pb.ScoredSignal]:
    votes = {  # symbol: (direction, score, regime, {source: (direction, confidence, weight)})
        "AAPL": (
            pb.DIRECTION_UP,
            0.58,
            pb.REGIME_BULL,
            {"tft": (1, 0.71, 0.4), "rsi": (1, 0.55, 0.2), "ema_cross": (1, 0.60, 0.2), "macd": (3, 0.0, 0.2)},
        ),
        "JPM": (pb.DIRECTION_FLAT, 0.08, pb.REGIME_SIDEWAYS, {"tft": (2, 0.52, 0.5), "ema_cross": (1, 0.61, 0.5)}),
        "MSFT": (
            pb.DIRECTION_UP,
            0.66,
            pb.REGIME_BULL,
            {"tft": (1, 0.77, 0.4), "rsi": (1, 0.51, 0.2), "ema_cross": (1, 0.64, 0.2), "macd": (1, 0.58, 0.2)},
        ),
        "NVDA": (
            pb.DIRECTION_UP,
            0.41,
            pb.REGIME_BULL,
            {"tft": (1, 0.63, 0.5), "rsi": (2, 0.62, 0.25), "macd": (1, 0.57, 0.25)},
        ),
        "XOM": (
            pb.DIRECTION_DOWN,
            -0.47,
            pb.REGIME_BEAR,
            {"tft": (2, 0.66, 0.4), "rsi": (2, 0.53, 0.2), "ema_cross": (2, 0.58, 0.2), "macd": (2, 0.49, 0.2)},
        ),
    }
    prices = {"AAPL": 171.48, "JPM": 198.71, "MSFT": 420.72, "NVDA": 903.56, "XOM": 116.71}
    return [
        pb.ScoredSignal(
            header=_header(symbol, 0, f"signal-{symbol}"),
            direction=d,
            confidence=abs(score),
            score=score,
            regime=regime,
            reference_price=prices[symbol],
            active_alphas=sorted(components),
            components=[
                pb.ComponentSignal(source=s, direction=c[0], confidence=c[1], weight=c[2])
                for s, c in components.items()
            ],
        )
        for symbol, (d, score, regime, components) in votes.items()
    ]


def approvals() -> api.ListApprovalsResponse:
    def approval(
        intent: str, symbol: str, state: int, side: int, qty: float, price: float, target: float, **kw: object
    ) -> pb.OrderApproval:
        return pb.OrderApproval(
            header=_header(symbol, 0, f"{intent}/{state}"),
            state=state,
            intent_id=intent,
            client_order_id=f"o-{intent}",
            side=side,
            estimated_quantity=qty,
            reference_price=price,
            target_percent=target,
            reason=pb.INTENT_REASON_ENTRY,
            legs=2,
            expires_time_ns=MARKET_TIME_NS + 300 * 10**9,
            **kw,
        )  # type: ignore[arg-type]

    pending = [
        approval("i-7f3a", "MSFT", pb.APPROVAL_STATE_PENDING, pb.ORDER_SIDE_BUY, 12, 420.72, 0.08, strategy="tft+macd"),
        approval(
            "i-80c1",
            "AAPL",
            pb.APPROVAL_STATE_PENDING,
            pb.ORDER_SIDE_BUY,
            24,
            171.48,
            0.10,
            strategy="tft+rsi+ema_cross",
        ),
        approval(
            "i-8a44", "XOM", pb.APPROVAL_STATE_PENDING, pb.ORDER_SIDE_SELL, 40, 116.71, -0.12, strategy="tft+macd"
        ),
    ]
    decided = [
        approval(
            "i-6e02",
            "JPM",
            pb.APPROVAL_STATE_REJECTED,
            pb.ORDER_SIDE_BUY,
            20,
            198.71,
            0.05,
            strategy="ema_cross",
            actor="console:ann",
            message="earnings tomorrow",
        ),
        approval(
            "i-6d9b",
            "NVDA",
            pb.APPROVAL_STATE_APPROVED,
            pb.ORDER_SIDE_BUY,
            4,
            903.56,
            0.04,
            strategy="tft",
            actor="console:ann",
            message="approved from the console",
        ),
        approval("i-6c10", "AAPL", pb.APPROVAL_STATE_EXPIRED, pb.ORDER_SIDE_SELL, 10, 170.02, 0.0, strategy="rsi"),
    ]
    return api.ListApprovalsResponse(pending=pending, decided=decided, mode=pb.APPROVAL_MODE_PER_ORDER)


def model_versions() -> list[api.ModelVersion]:
    def version(
        name: str, number: int, aliases: list[str], passed: bool, sharpe: float, win: float, days_ago: int
    ) -> api.ModelVersion:
        tags = {
            "gate_passed": str(passed).lower(),
            "oos_sharpe": f"{sharpe}",
            "oos_win_rate": f"{win}",
            "min_fold_sharpe": f"{sharpe - 0.6:.2f}",
            "deflated_sharpe": f"{min(0.99, sharpe / 2):.2f}",
            "feature_set_version": "fs-9c2e41",
            "model_kind": name,
        }
        return api.ModelVersion(
            name=name,
            version=str(number),
            aliases=aliases,
            run_id=f"{name}{number:02d}0a1b2c3d4e5f",
            created_ms=(WALL_TIME_NS - days_ago * DAY_NS) // 1_000_000,
            gate_passed=passed,
            tags=tags,
        )

    return [
        version("tft", 3, ["champion"], True, 1.21, 0.56, 2),
        version("tft", 2, [], True, 0.94, 0.54, 9),
        version("lgbm", 2, ["challenger"], True, 0.88, 0.53, 1),
        version("lgbm", 1, ["champion"], True, 0.73, 0.52, 20),
        version("tft", 1, [], False, 0.31, 0.50, 30),
    ]


def audit() -> list[api.AuditEntry]:
    rows = [
        ("console:ann", "admin", "DecideApprovals", "OK", "approved from the console", ""),
        ("console:ann", "admin", "DecideApprovals", "OK", "earnings tomorrow", ""),
        (
            "console:bob",
            "read",
            "Halt",
            "PERMISSION_DENIED",
            "halt from the console",
            "Halt changes the daemon: the read-only token may not call it",
        ),
        ("console:ann", "admin", "SetApprovalMode", "OK", "per-order approval from the console", ""),
        ("scheduler", "admin", "RunJob", "OK", "nightly", ""),
        ("", "none", "GetStatus", "UNAUTHENTICATED", "", "a bearer token is required"),
        ("console:ann", "admin", "SetExecutionApproval", "OK", "approve execution from the console", ""),
    ]
    return [
        api.AuditEntry(
            time_ns=WALL_TIME_NS - i * 600 * 10**9,
            actor=actor,
            role=role,
            peer="ipv4:127.0.0.1:5" + f"{i:04d}",
            method=method,
            request_json="{}",
            reason=reason,
            outcome=outcome,
            detail=detail,
        )
        for i, (actor, role, method, outcome, reason, detail) in enumerate(rows)
    ]


def backtest_stream() -> list[api.RunBacktestResponse]:
    """A comparison of two portfolio methods: progress, then each run's result with its equity curve."""
    stream = []
    for run, drift, sharpe in (("portfolio.method=equal", 0.0004, 1.12), ("portfolio.method=hrp", 0.0003, 1.31)):
        for done in (500, 1000, 1510):
            stream.append(
                api.RunBacktestResponse(
                    progress=api.BacktestProgress(
                        bars_processed=done, bars_total=1510, through_time_ns=MARKET_TIME_NS, run=run
                    )
                )
            )
        curve = equity_curve(200)
        curve.equity[:] = [
            100_000 * (1 + drift * i + 0.01 * math.sin(i / (7 if drift > 0.00035 else 13))) for i in range(200)
        ]
        final = curve.equity[-1]
        summary = api.BacktestSummary(
            bars=1510,
            signals=2_211,
            orders=412,
            fills=398,
            trades=187,
            initial_equity=100_000,
            final_equity=final,
            total_return=final / 100_000 - 1,
            sharpe=sharpe,
            max_drawdown=0.083 if drift > 0.00035 else 0.061,
            annual_return=0.094 * sharpe,
            sortino=sharpe * 1.4,
            calmar=sharpe * 0.9,
            win_rate=0.54,
            profit_factor=1.38,
            exposure_time=0.71,
            turnover=3.2,
            commissions=412.5,
        )
        stream.append(api.RunBacktestResponse(result=api.BacktestResult(summary=summary, equity_curve=curve, name=run)))
    return stream


def retrain_stream() -> list[api.TriggerRetrainResponse]:
    def stage(name: str, **detail: object) -> api.TriggerRetrainResponse:
        return api.TriggerRetrainResponse(progress=api.RetrainProgress(stage=name, detail_json=json.dumps(detail)))

    return [
        stage("data", rows=48_120, symbols=20, features=64),
        stage("fold", fold=1, of=2, ic=0.041, rank_ic=0.038, icir=0.52),
        stage("fold", fold=2, of=2, ic=0.036, rank_ic=0.033, icir=0.47),
        stage("backtest", start="2021-01-04", end="2022-12-30"),
        stage(
            "gate",
            passed=True,
            oos_sharpe=0.88,
            oos_win_rate=0.53,
            min_fold_sharpe=0.28,
            deflated_sharpe=0.44,
            reasons=[],
        ),
        stage("ensemble calibration", signals=3_411),
        stage("registered", model="lgbm", version="3", run_id="lgbm030a1b2c3d4e5f"),
        api.TriggerRetrainResponse(
            result=api.RetrainResult(
                model="lgbm",
                version="3",
                run_id="lgbm030a1b2c3d4e5f",
                gate_passed=True,
                oos_sharpe=0.88,
                oos_win_rate=0.53,
                min_fold_sharpe=0.28,
                deflated_sharpe=0.44,
            )
        ),
    ]


def dead_letters() -> list[api.DeadLetter]:
    """A bar the risk engine kept failing on, as the daemon lists it."""
    t = MARKET_TIME_NS - 86_400 * 10**9
    bar = pb.Bar(header=pb.EventHeader(event_id=f"bar/NVDA@{t}", correlation_id=f"NVDA@{t}", event_time_ns=t,
                                       symbol="NVDA"), open=431.2, high=433.9, low=0.0, close=432.5, volume=3.1e6)  # fmt: skip
    return [api.DeadLetter(sequence=48_211, engine="risk", kind=pb.EVENT_KIND_BAR, subject="utp.dlq.bar.NVDA",
                           error="ZeroDivisionError: float division by zero", deliveries=3, event=pb.Event(bar=bar))]  # fmt: skip


def canned_source() -> FixtureSource:
    """The whole canned daemon: every read the console makes, and the two research streams."""
    all_alerts = alerts()
    dashboard = api.GetDashboardResponse(
        status=status(),
        equity_curve=equity_curve(),
        gauges=gauges(),
        models=[
            api.ServedModel(name="tft", version="3", source="registry"),
            api.ServedModel(name="lgbm", version="1", source="registry"),
        ],
        alerts=all_alerts,
        jobs=jobs(),
        pending_approvals=3,
        market_time_ns=MARKET_TIME_NS,
    )
    return FixtureSource(
        {
            "GetDashboard": dashboard,
            "GetStatus": status(),
            "ListPositions": api.ListPositionsResponse(positions=positions()),
            "ListOrders": api.ListOrdersResponse(orders=orders()),
            "WatchEvents": rejections(),
            "ListRejections": api.ListRejectionsResponse(rejections=[r.event for r in reversed(rejections())]),
            "ListSignals": api.ListSignalsResponse(signals=signals()),
            "ListApprovals": approvals(),
            "ListModels": api.ListModelsResponse(versions=model_versions()),
            "ListAudit": api.ListAuditResponse(entries=audit()),
            "ListAlerts": api.ListAlertsResponse(alerts=all_alerts),
            "ListDeadLetters": api.ListDeadLettersResponse(letters=dead_letters()),
            "ListJobs": api.ListJobsResponse(jobs=jobs()),
            "RunBacktest": backtest_stream(),
            "TriggerRetrain": retrain_stream(),
        }
    )
