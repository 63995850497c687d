from utp.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_STATE_UNSPECIFIED: _ClassVar[SessionState]
    SESSION_STATE_STARTING: _ClassVar[SessionState]
    SESSION_STATE_RUNNING: _ClassVar[SessionState]
    SESSION_STATE_COMPLETED: _ClassVar[SessionState]
    SESSION_STATE_STOPPING: _ClassVar[SessionState]
    SESSION_STATE_FAILED: _ClassVar[SessionState]
SESSION_STATE_UNSPECIFIED: SessionState
SESSION_STATE_STARTING: SessionState
SESSION_STATE_RUNNING: SessionState
SESSION_STATE_COMPLETED: SessionState
SESSION_STATE_STOPPING: SessionState
SESSION_STATE_FAILED: SessionState

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("mode", "bus", "nats_url", "session_state", "halted", "execution_approved", "account", "engines", "dataset", "symbols", "version", "halt_reason", "entries_paused", "approval_mode", "session_id")
    MODE_FIELD_NUMBER: _ClassVar[int]
    BUS_FIELD_NUMBER: _ClassVar[int]
    NATS_URL_FIELD_NUMBER: _ClassVar[int]
    SESSION_STATE_FIELD_NUMBER: _ClassVar[int]
    HALTED_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_APPROVED_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HALT_REASON_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_PAUSED_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_MODE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    mode: str
    bus: str
    nats_url: str
    session_state: SessionState
    halted: bool
    execution_approved: bool
    account: _events_pb2.AccountSnapshot
    engines: _containers.RepeatedCompositeFieldContainer[_events_pb2.EngineStatus]
    dataset: str
    symbols: _containers.RepeatedScalarFieldContainer[str]
    version: str
    halt_reason: str
    entries_paused: bool
    approval_mode: _events_pb2.ApprovalMode
    session_id: str
    def __init__(self, mode: _Optional[str] = ..., bus: _Optional[str] = ..., nats_url: _Optional[str] = ..., session_state: _Optional[_Union[SessionState, str]] = ..., halted: _Optional[bool] = ..., execution_approved: _Optional[bool] = ..., account: _Optional[_Union[_events_pb2.AccountSnapshot, _Mapping]] = ..., engines: _Optional[_Iterable[_Union[_events_pb2.EngineStatus, _Mapping]]] = ..., dataset: _Optional[str] = ..., symbols: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ..., halt_reason: _Optional[str] = ..., entries_paused: _Optional[bool] = ..., approval_mode: _Optional[_Union[_events_pb2.ApprovalMode, str]] = ..., session_id: _Optional[str] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("kinds", "symbols")
    KINDS_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedScalarFieldContainer[_events_pb2.EventKind]
    symbols: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kinds: _Optional[_Iterable[_Union[_events_pb2.EventKind, str]]] = ..., symbols: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchEventsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _events_pb2.Event
    def __init__(self, event: _Optional[_Union[_events_pb2.Event, _Mapping]] = ...) -> None: ...

class ListPositionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPositionsResponse(_message.Message):
    __slots__ = ("positions",)
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    positions: _containers.RepeatedCompositeFieldContainer[_events_pb2.PositionSnapshot]
    def __init__(self, positions: _Optional[_Iterable[_Union[_events_pb2.PositionSnapshot, _Mapping]]] = ...) -> None: ...

class ListOrdersRequest(_message.Message):
    __slots__ = ("limit", "working_only")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WORKING_ONLY_FIELD_NUMBER: _ClassVar[int]
    limit: int
    working_only: bool
    def __init__(self, limit: _Optional[int] = ..., working_only: _Optional[bool] = ...) -> None: ...

class ListOrdersResponse(_message.Message):
    __slots__ = ("orders",)
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    orders: _containers.RepeatedCompositeFieldContainer[_events_pb2.Order]
    def __init__(self, orders: _Optional[_Iterable[_Union[_events_pb2.Order, _Mapping]]] = ...) -> None: ...

class SetExecutionApprovalRequest(_message.Message):
    __slots__ = ("approved", "reason", "actor")
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    approved: bool
    reason: str
    actor: str
    def __init__(self, approved: _Optional[bool] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class SetExecutionApprovalResponse(_message.Message):
    __slots__ = ("execution_approved",)
    EXECUTION_APPROVED_FIELD_NUMBER: _ClassVar[int]
    execution_approved: bool
    def __init__(self, execution_approved: _Optional[bool] = ...) -> None: ...

class HaltRequest(_message.Message):
    __slots__ = ("reason", "actor")
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    reason: str
    actor: str
    def __init__(self, reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class HaltResponse(_message.Message):
    __slots__ = ("halted",)
    HALTED_FIELD_NUMBER: _ClassVar[int]
    halted: bool
    def __init__(self, halted: _Optional[bool] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("reason", "actor")
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    reason: str
    actor: str
    def __init__(self, reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class ResumeResponse(_message.Message):
    __slots__ = ("halted",)
    HALTED_FIELD_NUMBER: _ClassVar[int]
    halted: bool
    def __init__(self, halted: _Optional[bool] = ...) -> None: ...

class SetEntriesPausedRequest(_message.Message):
    __slots__ = ("paused", "reason", "actor")
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    paused: bool
    reason: str
    actor: str
    def __init__(self, paused: _Optional[bool] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class SetEntriesPausedResponse(_message.Message):
    __slots__ = ("entries_paused",)
    ENTRIES_PAUSED_FIELD_NUMBER: _ClassVar[int]
    entries_paused: bool
    def __init__(self, entries_paused: _Optional[bool] = ...) -> None: ...

class FlattenRequest(_message.Message):
    __slots__ = ("symbol", "halt", "reason", "actor")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    HALT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    halt: bool
    reason: str
    actor: str
    def __init__(self, symbol: _Optional[str] = ..., halt: _Optional[bool] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class FlattenResponse(_message.Message):
    __slots__ = ("symbols", "halted")
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    HALTED_FIELD_NUMBER: _ClassVar[int]
    symbols: _containers.RepeatedScalarFieldContainer[str]
    halted: bool
    def __init__(self, symbols: _Optional[_Iterable[str]] = ..., halted: _Optional[bool] = ...) -> None: ...

class CancelOrderRequest(_message.Message):
    __slots__ = ("client_order_id", "reason", "actor")
    CLIENT_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    client_order_id: str
    reason: str
    actor: str
    def __init__(self, client_order_id: _Optional[str] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class CancelOrderResponse(_message.Message):
    __slots__ = ("client_order_id",)
    CLIENT_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    client_order_id: str
    def __init__(self, client_order_id: _Optional[str] = ...) -> None: ...

class SetApprovalModeRequest(_message.Message):
    __slots__ = ("mode", "reason", "actor")
    MODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    mode: _events_pb2.ApprovalMode
    reason: str
    actor: str
    def __init__(self, mode: _Optional[_Union[_events_pb2.ApprovalMode, str]] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class SetApprovalModeResponse(_message.Message):
    __slots__ = ("mode",)
    MODE_FIELD_NUMBER: _ClassVar[int]
    mode: _events_pb2.ApprovalMode
    def __init__(self, mode: _Optional[_Union[_events_pb2.ApprovalMode, str]] = ...) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ("decided",)
    DECIDED_FIELD_NUMBER: _ClassVar[int]
    decided: int
    def __init__(self, decided: _Optional[int] = ...) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("pending", "decided", "mode")
    PENDING_FIELD_NUMBER: _ClassVar[int]
    DECIDED_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    pending: _containers.RepeatedCompositeFieldContainer[_events_pb2.OrderApproval]
    decided: _containers.RepeatedCompositeFieldContainer[_events_pb2.OrderApproval]
    mode: _events_pb2.ApprovalMode
    def __init__(self, pending: _Optional[_Iterable[_Union[_events_pb2.OrderApproval, _Mapping]]] = ..., decided: _Optional[_Iterable[_Union[_events_pb2.OrderApproval, _Mapping]]] = ..., mode: _Optional[_Union[_events_pb2.ApprovalMode, str]] = ...) -> None: ...

class DecideApprovalsRequest(_message.Message):
    __slots__ = ("intent_ids", "all", "approve", "reason", "actor")
    INTENT_IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    intent_ids: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    approve: bool
    reason: str
    actor: str
    def __init__(self, intent_ids: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ..., approve: _Optional[bool] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class DecideApprovalsResponse(_message.Message):
    __slots__ = ("intent_ids",)
    INTENT_IDS_FIELD_NUMBER: _ClassVar[int]
    intent_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, intent_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListSignalsRequest(_message.Message):
    __slots__ = ("symbols",)
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    symbols: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, symbols: _Optional[_Iterable[str]] = ...) -> None: ...

class ListSignalsResponse(_message.Message):
    __slots__ = ("signals",)
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    signals: _containers.RepeatedCompositeFieldContainer[_events_pb2.ScoredSignal]
    def __init__(self, signals: _Optional[_Iterable[_Union[_events_pb2.ScoredSignal, _Mapping]]] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("sequence", "engine", "kind", "subject", "error", "deliveries", "event")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    engine: str
    kind: _events_pb2.EventKind
    subject: str
    error: str
    deliveries: int
    event: _events_pb2.Event
    def __init__(self, sequence: _Optional[int] = ..., engine: _Optional[str] = ..., kind: _Optional[_Union[_events_pb2.EventKind, str]] = ..., subject: _Optional[str] = ..., error: _Optional[str] = ..., deliveries: _Optional[int] = ..., event: _Optional[_Union[_events_pb2.Event, _Mapping]] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("letters",)
    LETTERS_FIELD_NUMBER: _ClassVar[int]
    letters: _containers.RepeatedCompositeFieldContainer[DeadLetter]
    def __init__(self, letters: _Optional[_Iterable[_Union[DeadLetter, _Mapping]]] = ...) -> None: ...

class ReplayDeadLettersRequest(_message.Message):
    __slots__ = ("sequences", "all", "drop", "reason", "actor")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedScalarFieldContainer[int]
    all: bool
    drop: bool
    reason: str
    actor: str
    def __init__(self, sequences: _Optional[_Iterable[int]] = ..., all: _Optional[bool] = ..., drop: _Optional[bool] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class ReplayDeadLettersResponse(_message.Message):
    __slots__ = ("replayed", "dropped", "errors")
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    replayed: int
    dropped: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, replayed: _Optional[int] = ..., dropped: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("alerts",)
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[_events_pb2.Event]
    def __init__(self, alerts: _Optional[_Iterable[_Union[_events_pb2.Event, _Mapping]]] = ...) -> None: ...

class ListRejectionsRequest(_message.Message):
    __slots__ = ("limit", "symbols")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    limit: int
    symbols: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, limit: _Optional[int] = ..., symbols: _Optional[_Iterable[str]] = ...) -> None: ...

class ListRejectionsResponse(_message.Message):
    __slots__ = ("rejections",)
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    rejections: _containers.RepeatedCompositeFieldContainer[_events_pb2.Event]
    def __init__(self, rejections: _Optional[_Iterable[_Union[_events_pb2.Event, _Mapping]]] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("time_ns", "actor", "role", "peer", "method", "request_json", "reason", "outcome", "detail")
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_JSON_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    time_ns: int
    actor: str
    role: str
    peer: str
    method: str
    request_json: str
    reason: str
    outcome: str
    detail: str
    def __init__(self, time_ns: _Optional[int] = ..., actor: _Optional[str] = ..., role: _Optional[str] = ..., peer: _Optional[str] = ..., method: _Optional[str] = ..., request_json: _Optional[str] = ..., reason: _Optional[str] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("limit", "method", "actor", "outcome", "since_time_ns")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SINCE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    limit: int
    method: str
    actor: str
    outcome: str
    since_time_ns: int
    def __init__(self, limit: _Optional[int] = ..., method: _Optional[str] = ..., actor: _Optional[str] = ..., outcome: _Optional[str] = ..., since_time_ns: _Optional[int] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

class RiskGauge(_message.Message):
    __slots__ = ("name", "value", "limit", "unit")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    limit: float
    unit: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., limit: _Optional[float] = ..., unit: _Optional[str] = ...) -> None: ...

class ServedModel(_message.Message):
    __slots__ = ("name", "version", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    source: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class GetDashboardRequest(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: int
    def __init__(self, points: _Optional[int] = ...) -> None: ...

class GetDashboardResponse(_message.Message):
    __slots__ = ("status", "equity_curve", "gauges", "models", "alerts", "jobs", "pending_approvals", "market_time_ns")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EQUITY_CURVE_FIELD_NUMBER: _ClassVar[int]
    GAUGES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    PENDING_APPROVALS_FIELD_NUMBER: _ClassVar[int]
    MARKET_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    status: GetStatusResponse
    equity_curve: EquityCurve
    gauges: _containers.RepeatedCompositeFieldContainer[RiskGauge]
    models: _containers.RepeatedCompositeFieldContainer[ServedModel]
    alerts: _containers.RepeatedCompositeFieldContainer[_events_pb2.Event]
    jobs: _containers.RepeatedCompositeFieldContainer[ScheduledJob]
    pending_approvals: int
    market_time_ns: int
    def __init__(self, status: _Optional[_Union[GetStatusResponse, _Mapping]] = ..., equity_curve: _Optional[_Union[EquityCurve, _Mapping]] = ..., gauges: _Optional[_Iterable[_Union[RiskGauge, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[ServedModel, _Mapping]]] = ..., alerts: _Optional[_Iterable[_Union[_events_pb2.Event, _Mapping]]] = ..., jobs: _Optional[_Iterable[_Union[ScheduledJob, _Mapping]]] = ..., pending_approvals: _Optional[int] = ..., market_time_ns: _Optional[int] = ...) -> None: ...

class ScheduledJob(_message.Message):
    __slots__ = ("name", "schedule", "description", "next_run_time_ns", "last_run_time_ns", "last_outcome", "last_detail", "running")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    NEXT_RUN_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    LAST_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LAST_DETAIL_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    name: str
    schedule: str
    description: str
    next_run_time_ns: int
    last_run_time_ns: int
    last_outcome: str
    last_detail: str
    running: bool
    def __init__(self, name: _Optional[str] = ..., schedule: _Optional[str] = ..., description: _Optional[str] = ..., next_run_time_ns: _Optional[int] = ..., last_run_time_ns: _Optional[int] = ..., last_outcome: _Optional[str] = ..., last_detail: _Optional[str] = ..., running: _Optional[bool] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[ScheduledJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[ScheduledJob, _Mapping]]] = ...) -> None: ...

class RunJobRequest(_message.Message):
    __slots__ = ("name", "reason", "actor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    actor: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class RunJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: ScheduledJob
    def __init__(self, job: _Optional[_Union[ScheduledJob, _Mapping]] = ...) -> None: ...

class RunBacktestRequest(_message.Message):
    __slots__ = ("dataset", "symbols", "start_date", "end_date", "weights", "initial_cash", "batch_bar_times", "include_details", "config_yaml", "set", "compare", "report_dir", "actor", "reason")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_CASH_FIELD_NUMBER: _ClassVar[int]
    BATCH_BAR_TIMES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DETAILS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    COMPARE_FIELD_NUMBER: _ClassVar[int]
    REPORT_DIR_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    symbols: _containers.RepeatedScalarFieldContainer[str]
    start_date: str
    end_date: str
    weights: _containers.ScalarMap[str, float]
    initial_cash: float
    batch_bar_times: int
    include_details: bool
    config_yaml: _containers.RepeatedScalarFieldContainer[str]
    set: _containers.RepeatedScalarFieldContainer[str]
    compare: str
    report_dir: str
    actor: str
    reason: str
    def __init__(self, dataset: _Optional[str] = ..., symbols: _Optional[_Iterable[str]] = ..., start_date: _Optional[str] = ..., end_date: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ..., initial_cash: _Optional[float] = ..., batch_bar_times: _Optional[int] = ..., include_details: _Optional[bool] = ..., config_yaml: _Optional[_Iterable[str]] = ..., set: _Optional[_Iterable[str]] = ..., compare: _Optional[str] = ..., report_dir: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class BacktestProgress(_message.Message):
    __slots__ = ("bars_processed", "bars_total", "through_time_ns", "run")
    BARS_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    BARS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    THROUGH_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    bars_processed: int
    bars_total: int
    through_time_ns: int
    run: str
    def __init__(self, bars_processed: _Optional[int] = ..., bars_total: _Optional[int] = ..., through_time_ns: _Optional[int] = ..., run: _Optional[str] = ...) -> None: ...

class EquityCurve(_message.Message):
    __slots__ = ("time_ns", "equity")
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    EQUITY_FIELD_NUMBER: _ClassVar[int]
    time_ns: _containers.RepeatedScalarFieldContainer[int]
    equity: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, time_ns: _Optional[_Iterable[int]] = ..., equity: _Optional[_Iterable[float]] = ...) -> None: ...

class Trade(_message.Message):
    __slots__ = ("symbol", "side", "quantity", "entry_time_ns", "entry_price", "exit_time_ns", "exit_price", "pnl", "return_pct", "commission", "strategy", "open")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    ENTRY_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    ENTRY_PRICE_FIELD_NUMBER: _ClassVar[int]
    EXIT_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    EXIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    PNL_FIELD_NUMBER: _ClassVar[int]
    RETURN_PCT_FIELD_NUMBER: _ClassVar[int]
    COMMISSION_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    side: _events_pb2.OrderSide
    quantity: float
    entry_time_ns: int
    entry_price: float
    exit_time_ns: int
    exit_price: float
    pnl: float
    return_pct: float
    commission: float
    strategy: str
    open: bool
    def __init__(self, symbol: _Optional[str] = ..., side: _Optional[_Union[_events_pb2.OrderSide, str]] = ..., quantity: _Optional[float] = ..., entry_time_ns: _Optional[int] = ..., entry_price: _Optional[float] = ..., exit_time_ns: _Optional[int] = ..., exit_price: _Optional[float] = ..., pnl: _Optional[float] = ..., return_pct: _Optional[float] = ..., commission: _Optional[float] = ..., strategy: _Optional[str] = ..., open: _Optional[bool] = ...) -> None: ...

class Attribution(_message.Message):
    __slots__ = ("key", "pnl", "trades", "win_rate", "share")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PNL_FIELD_NUMBER: _ClassVar[int]
    TRADES_FIELD_NUMBER: _ClassVar[int]
    WIN_RATE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    key: str
    pnl: float
    trades: int
    win_rate: float
    share: float
    def __init__(self, key: _Optional[str] = ..., pnl: _Optional[float] = ..., trades: _Optional[int] = ..., win_rate: _Optional[float] = ..., share: _Optional[float] = ...) -> None: ...

class BacktestSummary(_message.Message):
    __slots__ = ("bars", "bars_rejected", "signals", "orders", "fills", "trades", "initial_equity", "final_equity", "total_return", "sharpe", "max_drawdown", "start_time_ns", "end_time_ns", "periods_per_year", "annual_return", "annual_volatility", "sortino", "calmar", "max_drawdown_bars", "alpha", "beta", "information_ratio", "win_rate", "profit_factor", "average_win", "average_loss", "turnover", "exposure_time", "commissions")
    BARS_FIELD_NUMBER: _ClassVar[int]
    BARS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    FILLS_FIELD_NUMBER: _ClassVar[int]
    TRADES_FIELD_NUMBER: _ClassVar[int]
    INITIAL_EQUITY_FIELD_NUMBER: _ClassVar[int]
    FINAL_EQUITY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_RETURN_FIELD_NUMBER: _ClassVar[int]
    SHARPE_FIELD_NUMBER: _ClassVar[int]
    MAX_DRAWDOWN_FIELD_NUMBER: _ClassVar[int]
    START_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    END_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    PERIODS_PER_YEAR_FIELD_NUMBER: _ClassVar[int]
    ANNUAL_RETURN_FIELD_NUMBER: _ClassVar[int]
    ANNUAL_VOLATILITY_FIELD_NUMBER: _ClassVar[int]
    SORTINO_FIELD_NUMBER: _ClassVar[int]
    CALMAR_FIELD_NUMBER: _ClassVar[int]
    MAX_DRAWDOWN_BARS_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    INFORMATION_RATIO_FIELD_NUMBER: _ClassVar[int]
    WIN_RATE_FIELD_NUMBER: _ClassVar[int]
    PROFIT_FACTOR_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_WIN_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_LOSS_FIELD_NUMBER: _ClassVar[int]
    TURNOVER_FIELD_NUMBER: _ClassVar[int]
    EXPOSURE_TIME_FIELD_NUMBER: _ClassVar[int]
    COMMISSIONS_FIELD_NUMBER: _ClassVar[int]
    bars: int
    bars_rejected: int
    signals: int
    orders: int
    fills: int
    trades: int
    initial_equity: float
    final_equity: float
    total_return: float
    sharpe: float
    max_drawdown: float
    start_time_ns: int
    end_time_ns: int
    periods_per_year: float
    annual_return: float
    annual_volatility: float
    sortino: float
    calmar: float
    max_drawdown_bars: int
    alpha: float
    beta: float
    information_ratio: float
    win_rate: float
    profit_factor: float
    average_win: float
    average_loss: float
    turnover: float
    exposure_time: float
    commissions: float
    def __init__(self, bars: _Optional[int] = ..., bars_rejected: _Optional[int] = ..., signals: _Optional[int] = ..., orders: _Optional[int] = ..., fills: _Optional[int] = ..., trades: _Optional[int] = ..., initial_equity: _Optional[float] = ..., final_equity: _Optional[float] = ..., total_return: _Optional[float] = ..., sharpe: _Optional[float] = ..., max_drawdown: _Optional[float] = ..., start_time_ns: _Optional[int] = ..., end_time_ns: _Optional[int] = ..., periods_per_year: _Optional[float] = ..., annual_return: _Optional[float] = ..., annual_volatility: _Optional[float] = ..., sortino: _Optional[float] = ..., calmar: _Optional[float] = ..., max_drawdown_bars: _Optional[int] = ..., alpha: _Optional[float] = ..., beta: _Optional[float] = ..., information_ratio: _Optional[float] = ..., win_rate: _Optional[float] = ..., profit_factor: _Optional[float] = ..., average_win: _Optional[float] = ..., average_loss: _Optional[float] = ..., turnover: _Optional[float] = ..., exposure_time: _Optional[float] = ..., commissions: _Optional[float] = ...) -> None: ...

class BacktestResult(_message.Message):
    __slots__ = ("summary", "trades", "by_symbol", "by_strategy", "equity_curve", "name")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    TRADES_FIELD_NUMBER: _ClassVar[int]
    BY_SYMBOL_FIELD_NUMBER: _ClassVar[int]
    BY_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    EQUITY_CURVE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    summary: BacktestSummary
    trades: _containers.RepeatedCompositeFieldContainer[Trade]
    by_symbol: _containers.RepeatedCompositeFieldContainer[Attribution]
    by_strategy: _containers.RepeatedCompositeFieldContainer[Attribution]
    equity_curve: EquityCurve
    name: str
    def __init__(self, summary: _Optional[_Union[BacktestSummary, _Mapping]] = ..., trades: _Optional[_Iterable[_Union[Trade, _Mapping]]] = ..., by_symbol: _Optional[_Iterable[_Union[Attribution, _Mapping]]] = ..., by_strategy: _Optional[_Iterable[_Union[Attribution, _Mapping]]] = ..., equity_curve: _Optional[_Union[EquityCurve, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...

class RunBacktestResponse(_message.Message):
    __slots__ = ("progress", "result", "report_path")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    REPORT_PATH_FIELD_NUMBER: _ClassVar[int]
    progress: BacktestProgress
    result: BacktestResult
    report_path: str
    def __init__(self, progress: _Optional[_Union[BacktestProgress, _Mapping]] = ..., result: _Optional[_Union[BacktestResult, _Mapping]] = ..., report_path: _Optional[str] = ...) -> None: ...

class RunSweepRequest(_message.Message):
    __slots__ = ("spec_yaml", "config_yaml", "metric", "processes", "nats_url", "streams")
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    NATS_URL_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    spec_yaml: str
    config_yaml: _containers.RepeatedScalarFieldContainer[str]
    metric: str
    processes: int
    nats_url: str
    streams: str
    def __init__(self, spec_yaml: _Optional[str] = ..., config_yaml: _Optional[_Iterable[str]] = ..., metric: _Optional[str] = ..., processes: _Optional[int] = ..., nats_url: _Optional[str] = ..., streams: _Optional[str] = ...) -> None: ...

class SweepStarted(_message.Message):
    __slots__ = ("sweep_id", "variants", "base_config_yaml", "processes")
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    BASE_CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    sweep_id: str
    variants: int
    base_config_yaml: str
    processes: int
    def __init__(self, sweep_id: _Optional[str] = ..., variants: _Optional[int] = ..., base_config_yaml: _Optional[str] = ..., processes: _Optional[int] = ...) -> None: ...

class SweepVariant(_message.Message):
    __slots__ = ("variant_id", "params", "summary", "error", "worker", "elapsed_s")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    variant_id: str
    params: _containers.ScalarMap[str, str]
    summary: BacktestSummary
    error: str
    worker: str
    elapsed_s: float
    def __init__(self, variant_id: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., summary: _Optional[_Union[BacktestSummary, _Mapping]] = ..., error: _Optional[str] = ..., worker: _Optional[str] = ..., elapsed_s: _Optional[float] = ...) -> None: ...

class DeflatedSharpeRatio(_message.Message):
    __slots__ = ("variant_id", "dsr", "psr", "sharpe_per_bar", "sharpe_threshold_per_bar", "n_trials", "n_obs")
    VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    DSR_FIELD_NUMBER: _ClassVar[int]
    PSR_FIELD_NUMBER: _ClassVar[int]
    SHARPE_PER_BAR_FIELD_NUMBER: _ClassVar[int]
    SHARPE_THRESHOLD_PER_BAR_FIELD_NUMBER: _ClassVar[int]
    N_TRIALS_FIELD_NUMBER: _ClassVar[int]
    N_OBS_FIELD_NUMBER: _ClassVar[int]
    variant_id: str
    dsr: float
    psr: float
    sharpe_per_bar: float
    sharpe_threshold_per_bar: float
    n_trials: int
    n_obs: int
    def __init__(self, variant_id: _Optional[str] = ..., dsr: _Optional[float] = ..., psr: _Optional[float] = ..., sharpe_per_bar: _Optional[float] = ..., sharpe_threshold_per_bar: _Optional[float] = ..., n_trials: _Optional[int] = ..., n_obs: _Optional[int] = ...) -> None: ...

class BacktestOverfitting(_message.Message):
    __slots__ = ("pbo", "n_blocks", "n_combinations", "n_variants", "n_observations", "prob_oos_loss", "degradation_slope")
    PBO_FIELD_NUMBER: _ClassVar[int]
    N_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    N_COMBINATIONS_FIELD_NUMBER: _ClassVar[int]
    N_VARIANTS_FIELD_NUMBER: _ClassVar[int]
    N_OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    PROB_OOS_LOSS_FIELD_NUMBER: _ClassVar[int]
    DEGRADATION_SLOPE_FIELD_NUMBER: _ClassVar[int]
    pbo: float
    n_blocks: int
    n_combinations: int
    n_variants: int
    n_observations: int
    prob_oos_loss: float
    degradation_slope: float
    def __init__(self, pbo: _Optional[float] = ..., n_blocks: _Optional[int] = ..., n_combinations: _Optional[int] = ..., n_variants: _Optional[int] = ..., n_observations: _Optional[int] = ..., prob_oos_loss: _Optional[float] = ..., degradation_slope: _Optional[float] = ...) -> None: ...

class SweepSummary(_message.Message):
    __slots__ = ("sweep_id", "metric", "variants", "failed", "duplicate_results", "parameters", "rows", "dsr", "pbo", "notes")
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_RESULTS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DSR_FIELD_NUMBER: _ClassVar[int]
    PBO_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    sweep_id: str
    metric: str
    variants: int
    failed: int
    duplicate_results: int
    parameters: _containers.RepeatedScalarFieldContainer[str]
    rows: _containers.RepeatedCompositeFieldContainer[SweepVariant]
    dsr: DeflatedSharpeRatio
    pbo: BacktestOverfitting
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sweep_id: _Optional[str] = ..., metric: _Optional[str] = ..., variants: _Optional[int] = ..., failed: _Optional[int] = ..., duplicate_results: _Optional[int] = ..., parameters: _Optional[_Iterable[str]] = ..., rows: _Optional[_Iterable[_Union[SweepVariant, _Mapping]]] = ..., dsr: _Optional[_Union[DeflatedSharpeRatio, _Mapping]] = ..., pbo: _Optional[_Union[BacktestOverfitting, _Mapping]] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class RunSweepResponse(_message.Message):
    __slots__ = ("started", "variant", "summary")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    started: SweepStarted
    variant: SweepVariant
    summary: SweepSummary
    def __init__(self, started: _Optional[_Union[SweepStarted, _Mapping]] = ..., variant: _Optional[_Union[SweepVariant, _Mapping]] = ..., summary: _Optional[_Union[SweepSummary, _Mapping]] = ...) -> None: ...

class RunWalkForwardRequest(_message.Message):
    __slots__ = ("dataset", "symbols", "start_date", "end_date", "weights", "initial_cash", "batch_bar_times", "config_yaml", "set", "scheme", "train", "test", "step", "folds", "all_folds", "anchored")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_CASH_FIELD_NUMBER: _ClassVar[int]
    BATCH_BAR_TIMES_FIELD_NUMBER: _ClassVar[int]
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    TEST_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    FOLDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FOLDS_FIELD_NUMBER: _ClassVar[int]
    ANCHORED_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    symbols: _containers.RepeatedScalarFieldContainer[str]
    start_date: str
    end_date: str
    weights: _containers.ScalarMap[str, float]
    initial_cash: float
    batch_bar_times: int
    config_yaml: _containers.RepeatedScalarFieldContainer[str]
    set: _containers.RepeatedScalarFieldContainer[str]
    scheme: str
    train: int
    test: int
    step: int
    folds: int
    all_folds: bool
    anchored: bool
    def __init__(self, dataset: _Optional[str] = ..., symbols: _Optional[_Iterable[str]] = ..., start_date: _Optional[str] = ..., end_date: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ..., initial_cash: _Optional[float] = ..., batch_bar_times: _Optional[int] = ..., config_yaml: _Optional[_Iterable[str]] = ..., set: _Optional[_Iterable[str]] = ..., scheme: _Optional[str] = ..., train: _Optional[int] = ..., test: _Optional[int] = ..., step: _Optional[int] = ..., folds: _Optional[int] = ..., all_folds: _Optional[bool] = ..., anchored: _Optional[bool] = ...) -> None: ...

class WalkForwardFold(_message.Message):
    __slots__ = ("index", "train_start_time_ns", "test_start_time_ns", "test_end_time_ns", "bars", "total_return", "sharpe", "max_drawdown", "trades")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TRAIN_START_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    TEST_START_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    TEST_END_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    BARS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_RETURN_FIELD_NUMBER: _ClassVar[int]
    SHARPE_FIELD_NUMBER: _ClassVar[int]
    MAX_DRAWDOWN_FIELD_NUMBER: _ClassVar[int]
    TRADES_FIELD_NUMBER: _ClassVar[int]
    index: int
    train_start_time_ns: int
    test_start_time_ns: int
    test_end_time_ns: int
    bars: int
    total_return: float
    sharpe: float
    max_drawdown: float
    trades: int
    def __init__(self, index: _Optional[int] = ..., train_start_time_ns: _Optional[int] = ..., test_start_time_ns: _Optional[int] = ..., test_end_time_ns: _Optional[int] = ..., bars: _Optional[int] = ..., total_return: _Optional[float] = ..., sharpe: _Optional[float] = ..., max_drawdown: _Optional[float] = ..., trades: _Optional[int] = ...) -> None: ...

class WalkForwardSummary(_message.Message):
    __slots__ = ("scheme", "train", "test", "step", "anchored", "periods_per_year", "folds", "oos_bars", "oos_start_time_ns", "oos_end_time_ns", "oos_total_return", "oos_sharpe", "oos_psr", "negative_sharpe_share")
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    TEST_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ANCHORED_FIELD_NUMBER: _ClassVar[int]
    PERIODS_PER_YEAR_FIELD_NUMBER: _ClassVar[int]
    FOLDS_FIELD_NUMBER: _ClassVar[int]
    OOS_BARS_FIELD_NUMBER: _ClassVar[int]
    OOS_START_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    OOS_END_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    OOS_TOTAL_RETURN_FIELD_NUMBER: _ClassVar[int]
    OOS_SHARPE_FIELD_NUMBER: _ClassVar[int]
    OOS_PSR_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_SHARPE_SHARE_FIELD_NUMBER: _ClassVar[int]
    scheme: str
    train: int
    test: int
    step: int
    anchored: bool
    periods_per_year: float
    folds: int
    oos_bars: int
    oos_start_time_ns: int
    oos_end_time_ns: int
    oos_total_return: float
    oos_sharpe: float
    oos_psr: float
    negative_sharpe_share: float
    def __init__(self, scheme: _Optional[str] = ..., train: _Optional[int] = ..., test: _Optional[int] = ..., step: _Optional[int] = ..., anchored: _Optional[bool] = ..., periods_per_year: _Optional[float] = ..., folds: _Optional[int] = ..., oos_bars: _Optional[int] = ..., oos_start_time_ns: _Optional[int] = ..., oos_end_time_ns: _Optional[int] = ..., oos_total_return: _Optional[float] = ..., oos_sharpe: _Optional[float] = ..., oos_psr: _Optional[float] = ..., negative_sharpe_share: _Optional[float] = ...) -> None: ...

class RunWalkForwardResponse(_message.Message):
    __slots__ = ("fold", "summary")
    FOLD_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    fold: WalkForwardFold
    summary: WalkForwardSummary
    def __init__(self, fold: _Optional[_Union[WalkForwardFold, _Mapping]] = ..., summary: _Optional[_Union[WalkForwardSummary, _Mapping]] = ...) -> None: ...

class TriggerRetrainRequest(_message.Message):
    __slots__ = ("model", "set", "promote", "reason", "actor")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    PROMOTE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    model: str
    set: _containers.RepeatedScalarFieldContainer[str]
    promote: bool
    reason: str
    actor: str
    def __init__(self, model: _Optional[str] = ..., set: _Optional[_Iterable[str]] = ..., promote: _Optional[bool] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class RetrainProgress(_message.Message):
    __slots__ = ("stage", "detail_json")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    stage: str
    detail_json: str
    def __init__(self, stage: _Optional[str] = ..., detail_json: _Optional[str] = ...) -> None: ...

class ModelFold(_message.Message):
    __slots__ = ("fold", "in_sample_start", "in_sample_end", "oos_start", "oos_end", "ic", "rank_ic", "icir", "sharpe", "win_rate", "trades")
    FOLD_FIELD_NUMBER: _ClassVar[int]
    IN_SAMPLE_START_FIELD_NUMBER: _ClassVar[int]
    IN_SAMPLE_END_FIELD_NUMBER: _ClassVar[int]
    OOS_START_FIELD_NUMBER: _ClassVar[int]
    OOS_END_FIELD_NUMBER: _ClassVar[int]
    IC_FIELD_NUMBER: _ClassVar[int]
    RANK_IC_FIELD_NUMBER: _ClassVar[int]
    ICIR_FIELD_NUMBER: _ClassVar[int]
    SHARPE_FIELD_NUMBER: _ClassVar[int]
    WIN_RATE_FIELD_NUMBER: _ClassVar[int]
    TRADES_FIELD_NUMBER: _ClassVar[int]
    fold: int
    in_sample_start: str
    in_sample_end: str
    oos_start: str
    oos_end: str
    ic: float
    rank_ic: float
    icir: float
    sharpe: float
    win_rate: float
    trades: int
    def __init__(self, fold: _Optional[int] = ..., in_sample_start: _Optional[str] = ..., in_sample_end: _Optional[str] = ..., oos_start: _Optional[str] = ..., oos_end: _Optional[str] = ..., ic: _Optional[float] = ..., rank_ic: _Optional[float] = ..., icir: _Optional[float] = ..., sharpe: _Optional[float] = ..., win_rate: _Optional[float] = ..., trades: _Optional[int] = ...) -> None: ...

class RetrainResult(_message.Message):
    __slots__ = ("model", "version", "run_id", "gate_passed", "gate_reasons", "oos_sharpe", "oos_win_rate", "min_fold_sharpe", "deflated_sharpe", "promoted", "folds")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    GATE_PASSED_FIELD_NUMBER: _ClassVar[int]
    GATE_REASONS_FIELD_NUMBER: _ClassVar[int]
    OOS_SHARPE_FIELD_NUMBER: _ClassVar[int]
    OOS_WIN_RATE_FIELD_NUMBER: _ClassVar[int]
    MIN_FOLD_SHARPE_FIELD_NUMBER: _ClassVar[int]
    DEFLATED_SHARPE_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    FOLDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    run_id: str
    gate_passed: bool
    gate_reasons: _containers.RepeatedScalarFieldContainer[str]
    oos_sharpe: float
    oos_win_rate: float
    min_fold_sharpe: float
    deflated_sharpe: float
    promoted: bool
    folds: _containers.RepeatedCompositeFieldContainer[ModelFold]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., run_id: _Optional[str] = ..., gate_passed: _Optional[bool] = ..., gate_reasons: _Optional[_Iterable[str]] = ..., oos_sharpe: _Optional[float] = ..., oos_win_rate: _Optional[float] = ..., min_fold_sharpe: _Optional[float] = ..., deflated_sharpe: _Optional[float] = ..., promoted: _Optional[bool] = ..., folds: _Optional[_Iterable[_Union[ModelFold, _Mapping]]] = ...) -> None: ...

class TriggerRetrainResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: RetrainProgress
    result: RetrainResult
    def __init__(self, progress: _Optional[_Union[RetrainProgress, _Mapping]] = ..., result: _Optional[_Union[RetrainResult, _Mapping]] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("name", "version", "aliases", "run_id", "created_ms", "gate_passed", "tags")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    GATE_PASSED_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    run_id: str
    created_ms: int
    gate_passed: bool
    tags: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., run_id: _Optional[str] = ..., created_ms: _Optional[int] = ..., gate_passed: _Optional[bool] = ..., tags: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ...) -> None: ...

class PromoteModelRequest(_message.Message):
    __slots__ = ("name", "version", "rollback", "reason", "actor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    rollback: bool
    reason: str
    actor: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., rollback: _Optional[bool] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class PromoteModelResponse(_message.Message):
    __slots__ = ("champion",)
    CHAMPION_FIELD_NUMBER: _ClassVar[int]
    champion: ModelVersion
    def __init__(self, champion: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...
