from utp.v1 import core_service_pb2 as _core_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SweepDataset(_message.Message):
    __slots__ = ("name", "symbols", "start", "end")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    name: str
    symbols: _containers.RepeatedScalarFieldContainer[str]
    start: str
    end: str
    def __init__(self, name: _Optional[str] = ..., symbols: _Optional[_Iterable[str]] = ..., start: _Optional[str] = ..., end: _Optional[str] = ...) -> None: ...

class SweepJob(_message.Message):
    __slots__ = ("sweep_id", "variant_id", "base_config_yaml", "overrides", "dataset")
    class OverridesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    sweep_id: str
    variant_id: str
    base_config_yaml: str
    overrides: _containers.ScalarMap[str, str]
    dataset: SweepDataset
    def __init__(self, sweep_id: _Optional[str] = ..., variant_id: _Optional[str] = ..., base_config_yaml: _Optional[str] = ..., overrides: _Optional[_Mapping[str, str]] = ..., dataset: _Optional[_Union[SweepDataset, _Mapping]] = ...) -> None: ...

class SweepResult(_message.Message):
    __slots__ = ("sweep_id", "variant_id", "params", "summary", "equity_returns", "returns_omitted", "error", "worker", "elapsed_s", "delivery")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    EQUITY_RETURNS_FIELD_NUMBER: _ClassVar[int]
    RETURNS_OMITTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    sweep_id: str
    variant_id: str
    params: _containers.ScalarMap[str, str]
    summary: _core_service_pb2.BacktestSummary
    equity_returns: _containers.RepeatedScalarFieldContainer[float]
    returns_omitted: bool
    error: str
    worker: str
    elapsed_s: float
    delivery: int
    def __init__(self, sweep_id: _Optional[str] = ..., variant_id: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., summary: _Optional[_Union[_core_service_pb2.BacktestSummary, _Mapping]] = ..., equity_returns: _Optional[_Iterable[float]] = ..., returns_omitted: _Optional[bool] = ..., error: _Optional[str] = ..., worker: _Optional[str] = ..., elapsed_s: _Optional[float] = ..., delivery: _Optional[int] = ...) -> None: ...
