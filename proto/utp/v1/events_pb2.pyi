from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_BAR: _ClassVar[EventKind]
    EVENT_KIND_FEATURE_VECTOR: _ClassVar[EventKind]
    EVENT_KIND_ALPHA_SIGNAL: _ClassVar[EventKind]
    EVENT_KIND_PREDICTION: _ClassVar[EventKind]
    EVENT_KIND_SCORED_SIGNAL: _ClassVar[EventKind]
    EVENT_KIND_ORDER_INTENT: _ClassVar[EventKind]
    EVENT_KIND_RISK_DECISION: _ClassVar[EventKind]
    EVENT_KIND_ORDER: _ClassVar[EventKind]
    EVENT_KIND_FILL: _ClassVar[EventKind]
    EVENT_KIND_POSITION_SNAPSHOT: _ClassVar[EventKind]
    EVENT_KIND_ACCOUNT_SNAPSHOT: _ClassVar[EventKind]
    EVENT_KIND_ENGINE_STATUS: _ClassVar[EventKind]
    EVENT_KIND_CONTROL_COMMAND: _ClassVar[EventKind]
    EVENT_KIND_REJECTED_BAR: _ClassVar[EventKind]
    EVENT_KIND_PORTFOLIO_TARGET: _ClassVar[EventKind]
    EVENT_KIND_MODEL_ALERT: _ClassVar[EventKind]
    EVENT_KIND_RISK_EVENT: _ClassVar[EventKind]
    EVENT_KIND_DATA_ALERT: _ClassVar[EventKind]
    EVENT_KIND_ORDER_APPROVAL: _ClassVar[EventKind]
    EVENT_KIND_OPERATOR_ALERT: _ClassVar[EventKind]

class BarRejectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BAR_REJECT_REASON_UNSPECIFIED: _ClassVar[BarRejectReason]
    BAR_REJECT_REASON_NON_FINITE: _ClassVar[BarRejectReason]
    BAR_REJECT_REASON_NON_POSITIVE_PRICE: _ClassVar[BarRejectReason]
    BAR_REJECT_REASON_HIGH_BELOW_LOW: _ClassVar[BarRejectReason]
    BAR_REJECT_REASON_OUTSIDE_RANGE: _ClassVar[BarRejectReason]
    BAR_REJECT_REASON_NEGATIVE_VOLUME: _ClassVar[BarRejectReason]
    BAR_REJECT_REASON_OUT_OF_ORDER: _ClassVar[BarRejectReason]
    BAR_REJECT_REASON_DUPLICATE: _ClassVar[BarRejectReason]
    BAR_REJECT_REASON_UNKNOWN_SYMBOL: _ClassVar[BarRejectReason]
    BAR_REJECT_REASON_OUTLIER_PRICE: _ClassVar[BarRejectReason]
    BAR_REJECT_REASON_OUTLIER_VOLUME: _ClassVar[BarRejectReason]

class DataAlertKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_ALERT_KIND_UNSPECIFIED: _ClassVar[DataAlertKind]
    DATA_ALERT_KIND_STALE: _ClassVar[DataAlertKind]
    DATA_ALERT_KIND_FRESH: _ClassVar[DataAlertKind]
    DATA_ALERT_KIND_FAILOVER: _ClassVar[DataAlertKind]
    DATA_ALERT_KIND_SOURCE_ERROR: _ClassVar[DataAlertKind]

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_UP: _ClassVar[Direction]
    DIRECTION_DOWN: _ClassVar[Direction]
    DIRECTION_FLAT: _ClassVar[Direction]

class ModelAlertKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_ALERT_KIND_UNSPECIFIED: _ClassVar[ModelAlertKind]
    MODEL_ALERT_KIND_MODEL_SWAPPED: _ClassVar[ModelAlertKind]
    MODEL_ALERT_KIND_CONFIDENCE_DRIFT: _ClassVar[ModelAlertKind]
    MODEL_ALERT_KIND_FEATURE_DRIFT: _ClassVar[ModelAlertKind]
    MODEL_ALERT_KIND_MODEL_FAILED: _ClassVar[ModelAlertKind]
    MODEL_ALERT_KIND_FEATURE_MISMATCH: _ClassVar[ModelAlertKind]

class Regime(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REGIME_UNSPECIFIED: _ClassVar[Regime]
    REGIME_BULL: _ClassVar[Regime]
    REGIME_BEAR: _ClassVar[Regime]
    REGIME_SIDEWAYS: _ClassVar[Regime]

class OrderSide(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_SIDE_UNSPECIFIED: _ClassVar[OrderSide]
    ORDER_SIDE_BUY: _ClassVar[OrderSide]
    ORDER_SIDE_SELL: _ClassVar[OrderSide]

class OrderType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_TYPE_UNSPECIFIED: _ClassVar[OrderType]
    ORDER_TYPE_MARKET: _ClassVar[OrderType]
    ORDER_TYPE_LIMIT: _ClassVar[OrderType]
    ORDER_TYPE_STOP: _ClassVar[OrderType]
    ORDER_TYPE_STOP_LIMIT: _ClassVar[OrderType]

class TimeInForce(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIME_IN_FORCE_UNSPECIFIED: _ClassVar[TimeInForce]
    TIME_IN_FORCE_DAY: _ClassVar[TimeInForce]
    TIME_IN_FORCE_GTC: _ClassVar[TimeInForce]

class IntentReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTENT_REASON_UNSPECIFIED: _ClassVar[IntentReason]
    INTENT_REASON_ENTRY: _ClassVar[IntentReason]
    INTENT_REASON_SIGNAL_EXIT: _ClassVar[IntentReason]
    INTENT_REASON_TAKE_PROFIT: _ClassVar[IntentReason]
    INTENT_REASON_STOP_LOSS: _ClassVar[IntentReason]
    INTENT_REASON_TRAILING_STOP: _ClassVar[IntentReason]
    INTENT_REASON_RISK_LIQUIDATION: _ClassVar[IntentReason]
    INTENT_REASON_MAX_HOLDING_TIME: _ClassVar[IntentReason]
    INTENT_REASON_OPERATOR: _ClassVar[IntentReason]

class RiskReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RISK_REASON_UNSPECIFIED: _ClassVar[RiskReason]
    RISK_REASON_APPROVED: _ClassVar[RiskReason]
    RISK_REASON_HALTED: _ClassVar[RiskReason]
    RISK_REASON_EXECUTION_NOT_APPROVED: _ClassVar[RiskReason]
    RISK_REASON_MAX_POSITION: _ClassVar[RiskReason]
    RISK_REASON_INSUFFICIENT_CASH: _ClassVar[RiskReason]
    RISK_REASON_INVALID_INTENT: _ClassVar[RiskReason]
    RISK_REASON_SHORT_NOT_ALLOWED: _ClassVar[RiskReason]
    RISK_REASON_DAILY_LOSS: _ClassVar[RiskReason]
    RISK_REASON_KILL_SWITCH: _ClassVar[RiskReason]
    RISK_REASON_DRAWDOWN: _ClassVar[RiskReason]
    RISK_REASON_TRAILING_STOP: _ClassVar[RiskReason]
    RISK_REASON_SECTOR_EXPOSURE: _ClassVar[RiskReason]
    RISK_REASON_TOTAL_EXPOSURE: _ClassVar[RiskReason]
    RISK_REASON_SYMBOL_EXPOSURE: _ClassVar[RiskReason]
    RISK_REASON_ORDER_RATE: _ClassVar[RiskReason]
    RISK_REASON_SYMBOL_ORDER_LIMIT: _ClassVar[RiskReason]
    RISK_REASON_CONSECUTIVE_LOSSES: _ClassVar[RiskReason]
    RISK_REASON_ABNORMAL_SLIPPAGE: _ClassVar[RiskReason]
    RISK_REASON_MAX_POSITIONS: _ClassVar[RiskReason]
    RISK_REASON_SHORT_EXPOSURE: _ClassVar[RiskReason]
    RISK_REASON_CVAR: _ClassVar[RiskReason]
    RISK_REASON_POSITION_RISK: _ClassVar[RiskReason]
    RISK_REASON_MARKET_CLOSED: _ClassVar[RiskReason]
    RISK_REASON_LOW_VOLUME: _ClassVar[RiskReason]
    RISK_REASON_WIDE_SPREAD: _ClassVar[RiskReason]
    RISK_REASON_EARNINGS_BLACKOUT: _ClassVar[RiskReason]
    RISK_REASON_RECONCILIATION: _ClassVar[RiskReason]
    RISK_REASON_NOT_IN_UNIVERSE: _ClassVar[RiskReason]
    RISK_REASON_MAX_HOLDING_TIME: _ClassVar[RiskReason]
    RISK_REASON_ENTRIES_PAUSED: _ClassVar[RiskReason]
    RISK_REASON_OPERATOR_REJECTED: _ClassVar[RiskReason]
    RISK_REASON_APPROVAL_EXPIRED: _ClassVar[RiskReason]

class RiskAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RISK_ACTION_UNSPECIFIED: _ClassVar[RiskAction]
    RISK_ACTION_REJECT_ENTRY: _ClassVar[RiskAction]
    RISK_ACTION_CAP_ENTRY: _ClassVar[RiskAction]
    RISK_ACTION_EXIT_POSITION: _ClassVar[RiskAction]
    RISK_ACTION_LIQUIDATE: _ClassVar[RiskAction]
    RISK_ACTION_KILL_SWITCH: _ClassVar[RiskAction]
    RISK_ACTION_BLOCK_SYMBOL: _ClassVar[RiskAction]
    RISK_ACTION_PAUSE_ENTRIES: _ClassVar[RiskAction]
    RISK_ACTION_HALT: _ClassVar[RiskAction]

class OrderStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_STATUS_UNSPECIFIED: _ClassVar[OrderStatus]
    ORDER_STATUS_NEW: _ClassVar[OrderStatus]
    ORDER_STATUS_PARTIALLY_FILLED: _ClassVar[OrderStatus]
    ORDER_STATUS_FILLED: _ClassVar[OrderStatus]
    ORDER_STATUS_CANCELED: _ClassVar[OrderStatus]
    ORDER_STATUS_REJECTED: _ClassVar[OrderStatus]
    ORDER_STATUS_EXPIRED: _ClassVar[OrderStatus]
    ORDER_STATUS_REPLACED: _ClassVar[OrderStatus]
    ORDER_STATUS_HELD: _ClassVar[OrderStatus]

class EngineState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENGINE_STATE_UNSPECIFIED: _ClassVar[EngineState]
    ENGINE_STATE_STARTING: _ClassVar[EngineState]
    ENGINE_STATE_RUNNING: _ClassVar[EngineState]
    ENGINE_STATE_FINISHED: _ClassVar[EngineState]
    ENGINE_STATE_STOPPED: _ClassVar[EngineState]
    ENGINE_STATE_FAILED: _ClassVar[EngineState]

class ControlAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTROL_ACTION_UNSPECIFIED: _ClassVar[ControlAction]
    CONTROL_ACTION_HALT: _ClassVar[ControlAction]
    CONTROL_ACTION_RESUME: _ClassVar[ControlAction]
    CONTROL_ACTION_APPROVE_EXECUTION: _ClassVar[ControlAction]
    CONTROL_ACTION_REVOKE_EXECUTION: _ClassVar[ControlAction]
    CONTROL_ACTION_PAUSE_ENTRIES: _ClassVar[ControlAction]
    CONTROL_ACTION_RESUME_ENTRIES: _ClassVar[ControlAction]
    CONTROL_ACTION_FLATTEN: _ClassVar[ControlAction]
    CONTROL_ACTION_CANCEL_ORDER: _ClassVar[ControlAction]
    CONTROL_ACTION_APPROVE_ORDER: _ClassVar[ControlAction]
    CONTROL_ACTION_REJECT_ORDER: _ClassVar[ControlAction]
    CONTROL_ACTION_SET_APPROVAL_MODE: _ClassVar[ControlAction]

class ApprovalMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPROVAL_MODE_UNSPECIFIED: _ClassVar[ApprovalMode]
    APPROVAL_MODE_BLANKET: _ClassVar[ApprovalMode]
    APPROVAL_MODE_PER_ORDER: _ClassVar[ApprovalMode]

class ApprovalState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPROVAL_STATE_UNSPECIFIED: _ClassVar[ApprovalState]
    APPROVAL_STATE_PENDING: _ClassVar[ApprovalState]
    APPROVAL_STATE_APPROVED: _ClassVar[ApprovalState]
    APPROVAL_STATE_REJECTED: _ClassVar[ApprovalState]
    APPROVAL_STATE_EXPIRED: _ClassVar[ApprovalState]
    APPROVAL_STATE_SUPERSEDED: _ClassVar[ApprovalState]

class AlertSeverity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALERT_SEVERITY_UNSPECIFIED: _ClassVar[AlertSeverity]
    ALERT_SEVERITY_INFO: _ClassVar[AlertSeverity]
    ALERT_SEVERITY_WARNING: _ClassVar[AlertSeverity]
    ALERT_SEVERITY_CRITICAL: _ClassVar[AlertSeverity]
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_BAR: EventKind
EVENT_KIND_FEATURE_VECTOR: EventKind
EVENT_KIND_ALPHA_SIGNAL: EventKind
EVENT_KIND_PREDICTION: EventKind
EVENT_KIND_SCORED_SIGNAL: EventKind
EVENT_KIND_ORDER_INTENT: EventKind
EVENT_KIND_RISK_DECISION: EventKind
EVENT_KIND_ORDER: EventKind
EVENT_KIND_FILL: EventKind
EVENT_KIND_POSITION_SNAPSHOT: EventKind
EVENT_KIND_ACCOUNT_SNAPSHOT: EventKind
EVENT_KIND_ENGINE_STATUS: EventKind
EVENT_KIND_CONTROL_COMMAND: EventKind
EVENT_KIND_REJECTED_BAR: EventKind
EVENT_KIND_PORTFOLIO_TARGET: EventKind
EVENT_KIND_MODEL_ALERT: EventKind
EVENT_KIND_RISK_EVENT: EventKind
EVENT_KIND_DATA_ALERT: EventKind
EVENT_KIND_ORDER_APPROVAL: EventKind
EVENT_KIND_OPERATOR_ALERT: EventKind
BAR_REJECT_REASON_UNSPECIFIED: BarRejectReason
BAR_REJECT_REASON_NON_FINITE: BarRejectReason
BAR_REJECT_REASON_NON_POSITIVE_PRICE: BarRejectReason
BAR_REJECT_REASON_HIGH_BELOW_LOW: BarRejectReason
BAR_REJECT_REASON_OUTSIDE_RANGE: BarRejectReason
BAR_REJECT_REASON_NEGATIVE_VOLUME: BarRejectReason
BAR_REJECT_REASON_OUT_OF_ORDER: BarRejectReason
BAR_REJECT_REASON_DUPLICATE: BarRejectReason
BAR_REJECT_REASON_UNKNOWN_SYMBOL: BarRejectReason
BAR_REJECT_REASON_OUTLIER_PRICE: BarRejectReason
BAR_REJECT_REASON_OUTLIER_VOLUME: BarRejectReason
DATA_ALERT_KIND_UNSPECIFIED: DataAlertKind
DATA_ALERT_KIND_STALE: DataAlertKind
DATA_ALERT_KIND_FRESH: DataAlertKind
DATA_ALERT_KIND_FAILOVER: DataAlertKind
DATA_ALERT_KIND_SOURCE_ERROR: DataAlertKind
DIRECTION_UNSPECIFIED: Direction
DIRECTION_UP: Direction
DIRECTION_DOWN: Direction
DIRECTION_FLAT: Direction
MODEL_ALERT_KIND_UNSPECIFIED: ModelAlertKind
MODEL_ALERT_KIND_MODEL_SWAPPED: ModelAlertKind
MODEL_ALERT_KIND_CONFIDENCE_DRIFT: ModelAlertKind
MODEL_ALERT_KIND_FEATURE_DRIFT: ModelAlertKind
MODEL_ALERT_KIND_MODEL_FAILED: ModelAlertKind
MODEL_ALERT_KIND_FEATURE_MISMATCH: ModelAlertKind
REGIME_UNSPECIFIED: Regime
REGIME_BULL: Regime
REGIME_BEAR: Regime
REGIME_SIDEWAYS: Regime
ORDER_SIDE_UNSPECIFIED: OrderSide
ORDER_SIDE_BUY: OrderSide
ORDER_SIDE_SELL: OrderSide
ORDER_TYPE_UNSPECIFIED: OrderType
ORDER_TYPE_MARKET: OrderType
ORDER_TYPE_LIMIT: OrderType
ORDER_TYPE_STOP: OrderType
ORDER_TYPE_STOP_LIMIT: OrderType
TIME_IN_FORCE_UNSPECIFIED: TimeInForce
TIME_IN_FORCE_DAY: TimeInForce
TIME_IN_FORCE_GTC: TimeInForce
INTENT_REASON_UNSPECIFIED: IntentReason
INTENT_REASON_ENTRY: IntentReason
INTENT_REASON_SIGNAL_EXIT: IntentReason
INTENT_REASON_TAKE_PROFIT: IntentReason
INTENT_REASON_STOP_LOSS: IntentReason
INTENT_REASON_TRAILING_STOP: IntentReason
INTENT_REASON_RISK_LIQUIDATION: IntentReason
INTENT_REASON_MAX_HOLDING_TIME: IntentReason
INTENT_REASON_OPERATOR: IntentReason
RISK_REASON_UNSPECIFIED: RiskReason
RISK_REASON_APPROVED: RiskReason
RISK_REASON_HALTED: RiskReason
RISK_REASON_EXECUTION_NOT_APPROVED: RiskReason
RISK_REASON_MAX_POSITION: RiskReason
RISK_REASON_INSUFFICIENT_CASH: RiskReason
RISK_REASON_INVALID_INTENT: RiskReason
RISK_REASON_SHORT_NOT_ALLOWED: RiskReason
RISK_REASON_DAILY_LOSS: RiskReason
RISK_REASON_KILL_SWITCH: RiskReason
RISK_REASON_DRAWDOWN: RiskReason
RISK_REASON_TRAILING_STOP: RiskReason
RISK_REASON_SECTOR_EXPOSURE: RiskReason
RISK_REASON_TOTAL_EXPOSURE: RiskReason
RISK_REASON_SYMBOL_EXPOSURE: RiskReason
RISK_REASON_ORDER_RATE: RiskReason
RISK_REASON_SYMBOL_ORDER_LIMIT: RiskReason
RISK_REASON_CONSECUTIVE_LOSSES: RiskReason
RISK_REASON_ABNORMAL_SLIPPAGE: RiskReason
RISK_REASON_MAX_POSITIONS: RiskReason
RISK_REASON_SHORT_EXPOSURE: RiskReason
RISK_REASON_CVAR: RiskReason
RISK_REASON_POSITION_RISK: RiskReason
RISK_REASON_MARKET_CLOSED: RiskReason
RISK_REASON_LOW_VOLUME: RiskReason
RISK_REASON_WIDE_SPREAD: RiskReason
RISK_REASON_EARNINGS_BLACKOUT: RiskReason
RISK_REASON_RECONCILIATION: RiskReason
RISK_REASON_NOT_IN_UNIVERSE: RiskReason
RISK_REASON_MAX_HOLDING_TIME: RiskReason
RISK_REASON_ENTRIES_PAUSED: RiskReason
RISK_REASON_OPERATOR_REJECTED: RiskReason
RISK_REASON_APPROVAL_EXPIRED: RiskReason
RISK_ACTION_UNSPECIFIED: RiskAction
RISK_ACTION_REJECT_ENTRY: RiskAction
RISK_ACTION_CAP_ENTRY: RiskAction
RISK_ACTION_EXIT_POSITION: RiskAction
RISK_ACTION_LIQUIDATE: RiskAction
RISK_ACTION_KILL_SWITCH: RiskAction
RISK_ACTION_BLOCK_SYMBOL: RiskAction
RISK_ACTION_PAUSE_ENTRIES: RiskAction
RISK_ACTION_HALT: RiskAction
ORDER_STATUS_UNSPECIFIED: OrderStatus
ORDER_STATUS_NEW: OrderStatus
ORDER_STATUS_PARTIALLY_FILLED: OrderStatus
ORDER_STATUS_FILLED: OrderStatus
ORDER_STATUS_CANCELED: OrderStatus
ORDER_STATUS_REJECTED: OrderStatus
ORDER_STATUS_EXPIRED: OrderStatus
ORDER_STATUS_REPLACED: OrderStatus
ORDER_STATUS_HELD: OrderStatus
ENGINE_STATE_UNSPECIFIED: EngineState
ENGINE_STATE_STARTING: EngineState
ENGINE_STATE_RUNNING: EngineState
ENGINE_STATE_FINISHED: EngineState
ENGINE_STATE_STOPPED: EngineState
ENGINE_STATE_FAILED: EngineState
CONTROL_ACTION_UNSPECIFIED: ControlAction
CONTROL_ACTION_HALT: ControlAction
CONTROL_ACTION_RESUME: ControlAction
CONTROL_ACTION_APPROVE_EXECUTION: ControlAction
CONTROL_ACTION_REVOKE_EXECUTION: ControlAction
CONTROL_ACTION_PAUSE_ENTRIES: ControlAction
CONTROL_ACTION_RESUME_ENTRIES: ControlAction
CONTROL_ACTION_FLATTEN: ControlAction
CONTROL_ACTION_CANCEL_ORDER: ControlAction
CONTROL_ACTION_APPROVE_ORDER: ControlAction
CONTROL_ACTION_REJECT_ORDER: ControlAction
CONTROL_ACTION_SET_APPROVAL_MODE: ControlAction
APPROVAL_MODE_UNSPECIFIED: ApprovalMode
APPROVAL_MODE_BLANKET: ApprovalMode
APPROVAL_MODE_PER_ORDER: ApprovalMode
APPROVAL_STATE_UNSPECIFIED: ApprovalState
APPROVAL_STATE_PENDING: ApprovalState
APPROVAL_STATE_APPROVED: ApprovalState
APPROVAL_STATE_REJECTED: ApprovalState
APPROVAL_STATE_EXPIRED: ApprovalState
APPROVAL_STATE_SUPERSEDED: ApprovalState
ALERT_SEVERITY_UNSPECIFIED: AlertSeverity
ALERT_SEVERITY_INFO: AlertSeverity
ALERT_SEVERITY_WARNING: AlertSeverity
ALERT_SEVERITY_CRITICAL: AlertSeverity

class EventHeader(_message.Message):
    __slots__ = ("event_id", "correlation_id", "event_time_ns", "symbol")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    correlation_id: str
    event_time_ns: int
    symbol: str
    def __init__(self, event_id: _Optional[str] = ..., correlation_id: _Optional[str] = ..., event_time_ns: _Optional[int] = ..., symbol: _Optional[str] = ...) -> None: ...

class Bar(_message.Message):
    __slots__ = ("header", "open", "high", "low", "close", "volume", "interval_ns")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_NS_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    open: float
    high: float
    low: float
    close: float
    volume: float
    interval_ns: int
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., open: _Optional[float] = ..., high: _Optional[float] = ..., low: _Optional[float] = ..., close: _Optional[float] = ..., volume: _Optional[float] = ..., interval_ns: _Optional[int] = ...) -> None: ...

class DataAlert(_message.Message):
    __slots__ = ("header", "kind", "message", "source", "age_s")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    AGE_S_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    kind: DataAlertKind
    message: str
    source: str
    age_s: float
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., kind: _Optional[_Union[DataAlertKind, str]] = ..., message: _Optional[str] = ..., source: _Optional[str] = ..., age_s: _Optional[float] = ...) -> None: ...

class RejectedBar(_message.Message):
    __slots__ = ("header", "bar", "reason", "message")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    BAR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    bar: Bar
    reason: BarRejectReason
    message: str
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., bar: _Optional[_Union[Bar, _Mapping]] = ..., reason: _Optional[_Union[BarRejectReason, str]] = ..., message: _Optional[str] = ...) -> None: ...

class FeatureVector(_message.Message):
    __slots__ = ("header", "feature_set_version", "names", "values")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SET_VERSION_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    feature_set_version: str
    names: _containers.RepeatedScalarFieldContainer[str]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., feature_set_version: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class AlphaSignal(_message.Message):
    __slots__ = ("header", "source_model", "direction", "magnitude", "confidence", "period_bars", "reference_price", "cancel")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_MODEL_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    MAGNITUDE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    PERIOD_BARS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_PRICE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    source_model: str
    direction: Direction
    magnitude: float
    confidence: float
    period_bars: int
    reference_price: float
    cancel: bool
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., source_model: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., magnitude: _Optional[float] = ..., confidence: _Optional[float] = ..., period_bars: _Optional[int] = ..., reference_price: _Optional[float] = ..., cancel: _Optional[bool] = ...) -> None: ...

class QuantileForecast(_message.Message):
    __slots__ = ("horizon_bars", "q10", "q50", "q90")
    HORIZON_BARS_FIELD_NUMBER: _ClassVar[int]
    Q10_FIELD_NUMBER: _ClassVar[int]
    Q50_FIELD_NUMBER: _ClassVar[int]
    Q90_FIELD_NUMBER: _ClassVar[int]
    horizon_bars: int
    q10: float
    q50: float
    q90: float
    def __init__(self, horizon_bars: _Optional[int] = ..., q10: _Optional[float] = ..., q50: _Optional[float] = ..., q90: _Optional[float] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("header", "model_name", "model_version", "feature_set_version", "forecasts", "signal_horizon_bars", "direction", "confidence")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SET_VERSION_FIELD_NUMBER: _ClassVar[int]
    FORECASTS_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_HORIZON_BARS_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    model_name: str
    model_version: str
    feature_set_version: str
    forecasts: _containers.RepeatedCompositeFieldContainer[QuantileForecast]
    signal_horizon_bars: int
    direction: Direction
    confidence: float
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., feature_set_version: _Optional[str] = ..., forecasts: _Optional[_Iterable[_Union[QuantileForecast, _Mapping]]] = ..., signal_horizon_bars: _Optional[int] = ..., direction: _Optional[_Union[Direction, str]] = ..., confidence: _Optional[float] = ...) -> None: ...

class ModelAlert(_message.Message):
    __slots__ = ("header", "model_name", "model_version", "kind", "message", "value", "threshold", "feature", "inference_paused")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_PAUSED_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    model_name: str
    model_version: str
    kind: ModelAlertKind
    message: str
    value: float
    threshold: float
    feature: str
    inference_paused: bool
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., kind: _Optional[_Union[ModelAlertKind, str]] = ..., message: _Optional[str] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., feature: _Optional[str] = ..., inference_paused: _Optional[bool] = ...) -> None: ...

class ComponentSignal(_message.Message):
    __slots__ = ("source", "direction", "confidence", "weight")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    source: str
    direction: Direction
    confidence: float
    weight: float
    def __init__(self, source: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., confidence: _Optional[float] = ..., weight: _Optional[float] = ...) -> None: ...

class ScoredSignal(_message.Message):
    __slots__ = ("header", "components", "direction", "confidence", "score", "active_alphas", "regime", "reference_price")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ALPHAS_FIELD_NUMBER: _ClassVar[int]
    REGIME_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_PRICE_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    components: _containers.RepeatedCompositeFieldContainer[ComponentSignal]
    direction: Direction
    confidence: float
    score: float
    active_alphas: _containers.RepeatedScalarFieldContainer[str]
    regime: Regime
    reference_price: float
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., components: _Optional[_Iterable[_Union[ComponentSignal, _Mapping]]] = ..., direction: _Optional[_Union[Direction, str]] = ..., confidence: _Optional[float] = ..., score: _Optional[float] = ..., active_alphas: _Optional[_Iterable[str]] = ..., regime: _Optional[_Union[Regime, str]] = ..., reference_price: _Optional[float] = ...) -> None: ...

class PortfolioTarget(_message.Message):
    __slots__ = ("header", "target_percent", "reference_price", "direction", "confidence", "strategy", "method", "rebalance_band")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    TARGET_PERCENT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_PRICE_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REBALANCE_BAND_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    target_percent: float
    reference_price: float
    direction: Direction
    confidence: float
    strategy: str
    method: str
    rebalance_band: float
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., target_percent: _Optional[float] = ..., reference_price: _Optional[float] = ..., direction: _Optional[_Union[Direction, str]] = ..., confidence: _Optional[float] = ..., strategy: _Optional[str] = ..., method: _Optional[str] = ..., rebalance_band: _Optional[float] = ...) -> None: ...

class OrderIntent(_message.Message):
    __slots__ = ("header", "side", "quantity", "order_type", "reason", "reference_price", "reduce_only", "source", "target_percent", "limit_price", "stop_price", "time_in_force", "parent_intent_id", "oco_group", "strategy", "rebalance_band")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    ORDER_TYPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_PRICE_FIELD_NUMBER: _ClassVar[int]
    REDUCE_ONLY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_PERCENT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    STOP_PRICE_FIELD_NUMBER: _ClassVar[int]
    TIME_IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    PARENT_INTENT_ID_FIELD_NUMBER: _ClassVar[int]
    OCO_GROUP_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    REBALANCE_BAND_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    side: OrderSide
    quantity: float
    order_type: OrderType
    reason: IntentReason
    reference_price: float
    reduce_only: bool
    source: str
    target_percent: float
    limit_price: float
    stop_price: float
    time_in_force: TimeInForce
    parent_intent_id: str
    oco_group: str
    strategy: str
    rebalance_band: float
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., side: _Optional[_Union[OrderSide, str]] = ..., quantity: _Optional[float] = ..., order_type: _Optional[_Union[OrderType, str]] = ..., reason: _Optional[_Union[IntentReason, str]] = ..., reference_price: _Optional[float] = ..., reduce_only: _Optional[bool] = ..., source: _Optional[str] = ..., target_percent: _Optional[float] = ..., limit_price: _Optional[float] = ..., stop_price: _Optional[float] = ..., time_in_force: _Optional[_Union[TimeInForce, str]] = ..., parent_intent_id: _Optional[str] = ..., oco_group: _Optional[str] = ..., strategy: _Optional[str] = ..., rebalance_band: _Optional[float] = ...) -> None: ...

class RiskEvent(_message.Message):
    __slots__ = ("header", "reason", "action", "value", "threshold", "message", "intent_id")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INTENT_ID_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    reason: RiskReason
    action: RiskAction
    value: float
    threshold: float
    message: str
    intent_id: str
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., reason: _Optional[_Union[RiskReason, str]] = ..., action: _Optional[_Union[RiskAction, str]] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., message: _Optional[str] = ..., intent_id: _Optional[str] = ...) -> None: ...

class RiskDecision(_message.Message):
    __slots__ = ("header", "intent", "approved", "reason", "message")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    intent: OrderIntent
    approved: bool
    reason: RiskReason
    message: str
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., intent: _Optional[_Union[OrderIntent, _Mapping]] = ..., approved: _Optional[bool] = ..., reason: _Optional[_Union[RiskReason, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Order(_message.Message):
    __slots__ = ("header", "client_order_id", "intent_id", "side", "quantity", "order_type", "status", "filled_quantity", "average_fill_price", "broker", "broker_order_id", "submitted_time_ns", "reason", "limit_price", "stop_price", "time_in_force", "notional", "parent_client_order_id", "oco_group", "message", "strategy", "replaces_client_order_id")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    INTENT_ID_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    ORDER_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FILLED_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_FILL_PRICE_FIELD_NUMBER: _ClassVar[int]
    BROKER_FIELD_NUMBER: _ClassVar[int]
    BROKER_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LIMIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    STOP_PRICE_FIELD_NUMBER: _ClassVar[int]
    TIME_IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    PARENT_CLIENT_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    OCO_GROUP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    REPLACES_CLIENT_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    client_order_id: str
    intent_id: str
    side: OrderSide
    quantity: float
    order_type: OrderType
    status: OrderStatus
    filled_quantity: float
    average_fill_price: float
    broker: str
    broker_order_id: str
    submitted_time_ns: int
    reason: IntentReason
    limit_price: float
    stop_price: float
    time_in_force: TimeInForce
    notional: float
    parent_client_order_id: str
    oco_group: str
    message: str
    strategy: str
    replaces_client_order_id: str
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., client_order_id: _Optional[str] = ..., intent_id: _Optional[str] = ..., side: _Optional[_Union[OrderSide, str]] = ..., quantity: _Optional[float] = ..., order_type: _Optional[_Union[OrderType, str]] = ..., status: _Optional[_Union[OrderStatus, str]] = ..., filled_quantity: _Optional[float] = ..., average_fill_price: _Optional[float] = ..., broker: _Optional[str] = ..., broker_order_id: _Optional[str] = ..., submitted_time_ns: _Optional[int] = ..., reason: _Optional[_Union[IntentReason, str]] = ..., limit_price: _Optional[float] = ..., stop_price: _Optional[float] = ..., time_in_force: _Optional[_Union[TimeInForce, str]] = ..., notional: _Optional[float] = ..., parent_client_order_id: _Optional[str] = ..., oco_group: _Optional[str] = ..., message: _Optional[str] = ..., strategy: _Optional[str] = ..., replaces_client_order_id: _Optional[str] = ...) -> None: ...

class Fill(_message.Message):
    __slots__ = ("header", "client_order_id", "fill_id", "side", "quantity", "price", "commission", "slippage", "reason", "strategy")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    FILL_ID_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    COMMISSION_FIELD_NUMBER: _ClassVar[int]
    SLIPPAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    client_order_id: str
    fill_id: str
    side: OrderSide
    quantity: float
    price: float
    commission: float
    slippage: float
    reason: IntentReason
    strategy: str
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., client_order_id: _Optional[str] = ..., fill_id: _Optional[str] = ..., side: _Optional[_Union[OrderSide, str]] = ..., quantity: _Optional[float] = ..., price: _Optional[float] = ..., commission: _Optional[float] = ..., slippage: _Optional[float] = ..., reason: _Optional[_Union[IntentReason, str]] = ..., strategy: _Optional[str] = ...) -> None: ...

class PositionSnapshot(_message.Message):
    __slots__ = ("header", "quantity", "average_price", "last_price", "market_value", "unrealized_pnl", "realized_pnl", "pending_quantity", "commissions")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_PRICE_FIELD_NUMBER: _ClassVar[int]
    LAST_PRICE_FIELD_NUMBER: _ClassVar[int]
    MARKET_VALUE_FIELD_NUMBER: _ClassVar[int]
    UNREALIZED_PNL_FIELD_NUMBER: _ClassVar[int]
    REALIZED_PNL_FIELD_NUMBER: _ClassVar[int]
    PENDING_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    COMMISSIONS_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    quantity: float
    average_price: float
    last_price: float
    market_value: float
    unrealized_pnl: float
    realized_pnl: float
    pending_quantity: float
    commissions: float
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., quantity: _Optional[float] = ..., average_price: _Optional[float] = ..., last_price: _Optional[float] = ..., market_value: _Optional[float] = ..., unrealized_pnl: _Optional[float] = ..., realized_pnl: _Optional[float] = ..., pending_quantity: _Optional[float] = ..., commissions: _Optional[float] = ...) -> None: ...

class AccountSnapshot(_message.Message):
    __slots__ = ("header", "cash", "equity", "gross_exposure", "net_exposure", "realized_pnl", "unrealized_pnl", "day_pnl", "commissions", "open_positions", "long_exposure", "short_exposure", "borrow_costs")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CASH_FIELD_NUMBER: _ClassVar[int]
    EQUITY_FIELD_NUMBER: _ClassVar[int]
    GROSS_EXPOSURE_FIELD_NUMBER: _ClassVar[int]
    NET_EXPOSURE_FIELD_NUMBER: _ClassVar[int]
    REALIZED_PNL_FIELD_NUMBER: _ClassVar[int]
    UNREALIZED_PNL_FIELD_NUMBER: _ClassVar[int]
    DAY_PNL_FIELD_NUMBER: _ClassVar[int]
    COMMISSIONS_FIELD_NUMBER: _ClassVar[int]
    OPEN_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    LONG_EXPOSURE_FIELD_NUMBER: _ClassVar[int]
    SHORT_EXPOSURE_FIELD_NUMBER: _ClassVar[int]
    BORROW_COSTS_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    cash: float
    equity: float
    gross_exposure: float
    net_exposure: float
    realized_pnl: float
    unrealized_pnl: float
    day_pnl: float
    commissions: float
    open_positions: int
    long_exposure: float
    short_exposure: float
    borrow_costs: float
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., cash: _Optional[float] = ..., equity: _Optional[float] = ..., gross_exposure: _Optional[float] = ..., net_exposure: _Optional[float] = ..., realized_pnl: _Optional[float] = ..., unrealized_pnl: _Optional[float] = ..., day_pnl: _Optional[float] = ..., commissions: _Optional[float] = ..., open_positions: _Optional[int] = ..., long_exposure: _Optional[float] = ..., short_exposure: _Optional[float] = ..., borrow_costs: _Optional[float] = ...) -> None: ...

class EngineStatus(_message.Message):
    __slots__ = ("header", "engine", "state", "through_time_ns", "events_in", "events_out", "events_rejected", "last_error")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    THROUGH_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_IN_FIELD_NUMBER: _ClassVar[int]
    EVENTS_OUT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    engine: str
    state: EngineState
    through_time_ns: int
    events_in: int
    events_out: int
    events_rejected: int
    last_error: str
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., engine: _Optional[str] = ..., state: _Optional[_Union[EngineState, str]] = ..., through_time_ns: _Optional[int] = ..., events_in: _Optional[int] = ..., events_out: _Optional[int] = ..., events_rejected: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class OrderApproval(_message.Message):
    __slots__ = ("header", "state", "intent_id", "client_order_id", "target_percent", "side", "estimated_quantity", "reference_price", "reason", "strategy", "legs", "actor", "message", "expires_time_ns")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INTENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_PRICE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    LEGS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    state: ApprovalState
    intent_id: str
    client_order_id: str
    target_percent: float
    side: OrderSide
    estimated_quantity: float
    reference_price: float
    reason: IntentReason
    strategy: str
    legs: int
    actor: str
    message: str
    expires_time_ns: int
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., state: _Optional[_Union[ApprovalState, str]] = ..., intent_id: _Optional[str] = ..., client_order_id: _Optional[str] = ..., target_percent: _Optional[float] = ..., side: _Optional[_Union[OrderSide, str]] = ..., estimated_quantity: _Optional[float] = ..., reference_price: _Optional[float] = ..., reason: _Optional[_Union[IntentReason, str]] = ..., strategy: _Optional[str] = ..., legs: _Optional[int] = ..., actor: _Optional[str] = ..., message: _Optional[str] = ..., expires_time_ns: _Optional[int] = ...) -> None: ...

class OperatorAlert(_message.Message):
    __slots__ = ("header", "severity", "source", "message", "action", "resolved")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    severity: AlertSeverity
    source: str
    message: str
    action: str
    resolved: bool
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., severity: _Optional[_Union[AlertSeverity, str]] = ..., source: _Optional[str] = ..., message: _Optional[str] = ..., action: _Optional[str] = ..., resolved: _Optional[bool] = ...) -> None: ...

class ControlCommand(_message.Message):
    __slots__ = ("header", "action", "reason", "actor", "sequence", "client_order_id", "intent_id", "approval_mode")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    INTENT_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_MODE_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    action: ControlAction
    reason: str
    actor: str
    sequence: int
    client_order_id: str
    intent_id: str
    approval_mode: ApprovalMode
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., action: _Optional[_Union[ControlAction, str]] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., sequence: _Optional[int] = ..., client_order_id: _Optional[str] = ..., intent_id: _Optional[str] = ..., approval_mode: _Optional[_Union[ApprovalMode, str]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("bar", "feature_vector", "alpha_signal", "prediction", "scored_signal", "order_intent", "risk_decision", "order", "fill", "position_snapshot", "account_snapshot", "engine_status", "control_command", "rejected_bar", "portfolio_target", "model_alert", "risk_event", "data_alert", "order_approval", "operator_alert")
    BAR_FIELD_NUMBER: _ClassVar[int]
    FEATURE_VECTOR_FIELD_NUMBER: _ClassVar[int]
    ALPHA_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    SCORED_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ORDER_INTENT_FIELD_NUMBER: _ClassVar[int]
    RISK_DECISION_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    FILL_FIELD_NUMBER: _ClassVar[int]
    POSITION_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    ENGINE_STATUS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_COMMAND_FIELD_NUMBER: _ClassVar[int]
    REJECTED_BAR_FIELD_NUMBER: _ClassVar[int]
    PORTFOLIO_TARGET_FIELD_NUMBER: _ClassVar[int]
    MODEL_ALERT_FIELD_NUMBER: _ClassVar[int]
    RISK_EVENT_FIELD_NUMBER: _ClassVar[int]
    DATA_ALERT_FIELD_NUMBER: _ClassVar[int]
    ORDER_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_ALERT_FIELD_NUMBER: _ClassVar[int]
    bar: Bar
    feature_vector: FeatureVector
    alpha_signal: AlphaSignal
    prediction: Prediction
    scored_signal: ScoredSignal
    order_intent: OrderIntent
    risk_decision: RiskDecision
    order: Order
    fill: Fill
    position_snapshot: PositionSnapshot
    account_snapshot: AccountSnapshot
    engine_status: EngineStatus
    control_command: ControlCommand
    rejected_bar: RejectedBar
    portfolio_target: PortfolioTarget
    model_alert: ModelAlert
    risk_event: RiskEvent
    data_alert: DataAlert
    order_approval: OrderApproval
    operator_alert: OperatorAlert
    def __init__(self, bar: _Optional[_Union[Bar, _Mapping]] = ..., feature_vector: _Optional[_Union[FeatureVector, _Mapping]] = ..., alpha_signal: _Optional[_Union[AlphaSignal, _Mapping]] = ..., prediction: _Optional[_Union[Prediction, _Mapping]] = ..., scored_signal: _Optional[_Union[ScoredSignal, _Mapping]] = ..., order_intent: _Optional[_Union[OrderIntent, _Mapping]] = ..., risk_decision: _Optional[_Union[RiskDecision, _Mapping]] = ..., order: _Optional[_Union[Order, _Mapping]] = ..., fill: _Optional[_Union[Fill, _Mapping]] = ..., position_snapshot: _Optional[_Union[PositionSnapshot, _Mapping]] = ..., account_snapshot: _Optional[_Union[AccountSnapshot, _Mapping]] = ..., engine_status: _Optional[_Union[EngineStatus, _Mapping]] = ..., control_command: _Optional[_Union[ControlCommand, _Mapping]] = ..., rejected_bar: _Optional[_Union[RejectedBar, _Mapping]] = ..., portfolio_target: _Optional[_Union[PortfolioTarget, _Mapping]] = ..., model_alert: _Optional[_Union[ModelAlert, _Mapping]] = ..., risk_event: _Optional[_Union[RiskEvent, _Mapping]] = ..., data_alert: _Optional[_Union[DataAlert, _Mapping]] = ..., order_approval: _Optional[_Union[OrderApproval, _Mapping]] = ..., operator_alert: _Optional[_Union[OperatorAlert, _Mapping]] = ...) -> None: ...

class CommandsApplied(_message.Message):
    __slots__ = ("engine", "through_time_ns", "event_ids", "kind")
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    THROUGH_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    engine: str
    through_time_ns: int
    event_ids: _containers.RepeatedScalarFieldContainer[str]
    kind: EventKind
    def __init__(self, engine: _Optional[str] = ..., through_time_ns: _Optional[int] = ..., event_ids: _Optional[_Iterable[str]] = ..., kind: _Optional[_Union[EventKind, str]] = ...) -> None: ...

class SessionManifest(_message.Message):
    __slots__ = ("session_id", "stream", "subject_root", "start_after", "config_json", "version", "created_time_ns")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ROOT_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    stream: str
    subject_root: str
    start_after: int
    config_json: str
    version: str
    created_time_ns: int
    def __init__(self, session_id: _Optional[str] = ..., stream: _Optional[str] = ..., subject_root: _Optional[str] = ..., start_after: _Optional[int] = ..., config_json: _Optional[str] = ..., version: _Optional[str] = ..., created_time_ns: _Optional[int] = ...) -> None: ...

class Watermark(_message.Message):
    __slots__ = ("kind", "producer", "through_time_ns", "event_count", "end_of_stream")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    THROUGH_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    END_OF_STREAM_FIELD_NUMBER: _ClassVar[int]
    kind: EventKind
    producer: str
    through_time_ns: int
    event_count: int
    end_of_stream: bool
    def __init__(self, kind: _Optional[_Union[EventKind, str]] = ..., producer: _Optional[str] = ..., through_time_ns: _Optional[int] = ..., event_count: _Optional[int] = ..., end_of_stream: _Optional[bool] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("kind", "rows", "columns", "part", "watermark")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    kind: EventKind
    rows: int
    columns: _containers.RepeatedCompositeFieldContainer[Column]
    part: int
    watermark: Watermark
    def __init__(self, kind: _Optional[_Union[EventKind, str]] = ..., rows: _Optional[int] = ..., columns: _Optional[_Iterable[_Union[Column, _Mapping]]] = ..., part: _Optional[int] = ..., watermark: _Optional[_Union[Watermark, _Mapping]] = ...) -> None: ...

class Column(_message.Message):
    __slots__ = ("name", "valid", "doubles", "floats", "int64s", "uint64s", "int32s", "uint32s", "bools", "strings", "binaries", "structs", "lists")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    DOUBLES_FIELD_NUMBER: _ClassVar[int]
    FLOATS_FIELD_NUMBER: _ClassVar[int]
    INT64S_FIELD_NUMBER: _ClassVar[int]
    UINT64S_FIELD_NUMBER: _ClassVar[int]
    INT32S_FIELD_NUMBER: _ClassVar[int]
    UINT32S_FIELD_NUMBER: _ClassVar[int]
    BOOLS_FIELD_NUMBER: _ClassVar[int]
    STRINGS_FIELD_NUMBER: _ClassVar[int]
    BINARIES_FIELD_NUMBER: _ClassVar[int]
    STRUCTS_FIELD_NUMBER: _ClassVar[int]
    LISTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    valid: _containers.RepeatedScalarFieldContainer[bool]
    doubles: DoubleValues
    floats: FloatValues
    int64s: Int64Values
    uint64s: UInt64Values
    int32s: Int32Values
    uint32s: UInt32Values
    bools: BoolValues
    strings: StringValues
    binaries: BytesValues
    structs: StructValues
    lists: ListValues
    def __init__(self, name: _Optional[str] = ..., valid: _Optional[_Iterable[bool]] = ..., doubles: _Optional[_Union[DoubleValues, _Mapping]] = ..., floats: _Optional[_Union[FloatValues, _Mapping]] = ..., int64s: _Optional[_Union[Int64Values, _Mapping]] = ..., uint64s: _Optional[_Union[UInt64Values, _Mapping]] = ..., int32s: _Optional[_Union[Int32Values, _Mapping]] = ..., uint32s: _Optional[_Union[UInt32Values, _Mapping]] = ..., bools: _Optional[_Union[BoolValues, _Mapping]] = ..., strings: _Optional[_Union[StringValues, _Mapping]] = ..., binaries: _Optional[_Union[BytesValues, _Mapping]] = ..., structs: _Optional[_Union[StructValues, _Mapping]] = ..., lists: _Optional[_Union[ListValues, _Mapping]] = ...) -> None: ...

class DoubleValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class FloatValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Int64Values(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class UInt64Values(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class Int32Values(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class UInt32Values(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class BoolValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, values: _Optional[_Iterable[bool]] = ...) -> None: ...

class StringValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class BytesValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, values: _Optional[_Iterable[bytes]] = ...) -> None: ...

class StructValues(_message.Message):
    __slots__ = ("fields",)
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.RepeatedCompositeFieldContainer[Column]
    def __init__(self, fields: _Optional[_Iterable[_Union[Column, _Mapping]]] = ...) -> None: ...

class ListValues(_message.Message):
    __slots__ = ("offsets", "items")
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    offsets: _containers.RepeatedScalarFieldContainer[int]
    items: Column
    def __init__(self, offsets: _Optional[_Iterable[int]] = ..., items: _Optional[_Union[Column, _Mapping]] = ...) -> None: ...
