"""Sessions: the one place that assembles the engine graph.

A backtest and a live or paper session are the same engines; they differ only in what they are handed:

    backtest: InProcessBus, SimulatedClock, SimulatedBroker, no persistence, execution approved
    paper:    InProcessBus or JetStreamBus, WallClock, SimulatedBroker, LMDB hot state, operator flags
    live:     the same, bars from a vendor stream (data.primary) and orders at a real broker (broker.name)

    market_data -> bar -> features -> feature_vector --\
                       -> alpha -> alpha_signal ---------+-> ensemble -> scored_signal -> portfolio
                       portfolio -> portfolio_target, bar -> risk -> risk_decision
                       risk_decision -> exit -> order_intent (protective legs)
                       bar, risk_decision, order_intent -> execution -> order, fill, position_snapshot,
                                                                        account_snapshot, risk_event -> backtest

The graph has no cycle: risk asks for target positions and execution sizes the orders from its own
books, so every engine takes a whole batch of bar times in one step.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import polars as pl

from utp.core.broker import SimulatedBroker
from utp.core.bus import Bus, InProcessBus
from utp.core.clock import Clock, SimulatedClock
from utp.core.config import Config, ConfigError, parse_yaml
from utp.core.controls import ControlState
from utp.core.features import Benchmark, FeatureSpec
from utp.core.feeds import FailoverFeed, empty_bars
from utp.core.ml.sources import ModelSource
from utp.core.partitions import Partition, producers_of
from utp.core.risk_guard import RiskGuard
from utp.core.venue import ExternalVenue
from utp.core.runtime import Checkpointer, Engine, EngineRunner, SourceRunner
from utp.core.universe import Universe
from utp.engines.alpha import AlphaEngine
from utp.engines.backtest import BacktestEngine
from utp.engines.ensemble import EnsembleEngine
from utp.engines.execution import ExecutionEngine
from utp.engines.exit import ExitEngine
from utp.engines.features import FeatureEngine
from utp.engines.inference import InferenceEngine
from utp.engines.market_data import LiveMarketDataEngine, MarketDataEngine, outlier_detector
from utp.engines.portfolio import PortfolioConstructionEngine
from utp.engines.risk import RiskEngine
from utp.storage.datasets import STORE_DATASET, Dataset, dataset, load_sp500_index, store_dataset
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

ProgressCallback = Callable[[api.BacktestProgress], None]


@dataclass(frozen=True, slots=True)
class MarketData:
    """The bars a session replays and what they are."""

    dataset: Dataset
    universe: Universe
    bars: pl.DataFrame

    @classmethod
    def from_config(cls, config: Config) -> MarketData:
        """The packaged data set market_data.dataset, or with `store` the local bar store (data.store_dir, else
        <data dir>/bars), adjusted with data.corporate_actions when set."""
        md = config.market_data
        if md.dataset == STORE_DATASET:
            from utp.daemon.data_cli import store_root

            ds = store_dataset(store_root(config), md.symbols, md.start_date(), md.end_date(),
                               corporate_actions=config.data.corporate_actions or None)  # fmt: skip
        else:
            ds = dataset(md.dataset)
        symbols = md.symbols or ds.symbols
        bars = ds.bars(symbols, md.start_date(), md.end_date())
        return cls(ds, Universe(symbols), bars)


#: Live vendors, as data.primary / data.secondary name them.
LIVE_VENDORS = ("alpaca", "polygon")
#: Regular trading hours of a US equity session, for annualising intraday bars.
_SESSION_NS = 390 * 60 * 10**9


def live_market_data(config: Config) -> MarketData:
    """What a live session's bars are: the symbols of market_data.symbols at data.timeframe. There are no
    recorded bars; `dataset` says how to annualise them (252 sessions of 6.5 hours)."""
    from utp.core.vendors.history import Timeframe

    data = config.data
    symbols = tuple(config.market_data.symbols)
    if not symbols:
        raise ConfigError(f"live data needs market_data.symbols: data.primary is {data.primary!r}, "
                          "and a live session streams the symbols it is told, never a whole data set")  # fmt: skip
    try:
        interval_ns = Timeframe.parse(data.timeframe).nanos
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    source = data.primary + (f" (failover {data.secondary})" if data.secondary else "")
    live = Dataset(data.primary, f"live {data.timeframe} bars from {source}", symbols, interval_ns,
                   periods_per_year=252 * max(1.0, _SESSION_NS / interval_ns), _load=empty_bars)  # fmt: skip
    return MarketData(live, Universe(symbols), empty_bars())


def live_feed(config: Config, environ: Mapping[str, str] | None = None) -> FailoverFeed:
    """The FailoverFeed of data.primary (and data.secondary) over market_data.symbols, credentials from
    `environ` (default: the process environment). ConfigError names the setting at fault."""
    import os

    from utp.core.vendors.streams import AlpacaBarStream, PolygonBarStream  # the vendors' clients load slowly

    data, symbols = config.data, config.market_data.symbols
    env = os.environ if environ is None else environ
    if not symbols:
        raise ConfigError("live data needs market_data.symbols")

    def stream(setting: str, vendor: str) -> AlpacaBarStream | PolygonBarStream:
        if vendor not in LIVE_VENDORS:
            raise ConfigError(f"data.{setting} is {vendor!r}; live data comes from {' or '.join(LIVE_VENDORS)}")
        try:
            if vendor == "alpaca":
                return AlpacaBarStream.from_environment(data, symbols, env, broker=config.broker)
            return PolygonBarStream.from_environment(data, symbols, env)
        except ValueError as exc:
            raise ConfigError(f"data.{setting} {vendor}: {exc}") from exc

    if data.secondary == data.primary:
        raise ConfigError(f"data.secondary is {data.secondary!r} like data.primary; fail over to the other vendor "
                          "or leave data.secondary empty")  # fmt: skip
    primary = stream("primary", data.primary)
    secondary = stream("secondary", data.secondary) if data.secondary else None
    try:
        return FailoverFeed(primary, secondary, failover_after_s=data.failover_after_s)
    except ValueError as exc:
        raise ConfigError(f"data.failover_after_s: {exc}") from exc


def freeze_startup_heap() -> None:
    """Put everything alive now (modules, compiled kernels, the engines' preallocated state) out of the cyclic garbage
    collector's reach, once a long-running process has started its engines. A full collection walks every object it
    tracks: after the imports of a session (polars, numba, protobuf, gRPC) one stopped the event loop for 146 ms in
    the middle of `bench/live_latency.py`, every engine's step and every ack waiting behind it. What is frozen is
    never collected, so garbage is collected first, and only the first call freezes: a later session's objects
    would stay frozen after it ends."""
    if gc.get_freeze_count():
        return
    gc.collect()
    gc.freeze()


class Session:
    """One engine graph on one bus: start it, run the data through, stop it."""

    def __init__(
        self,
        config: Config,
        *,
        bus: Bus,
        clock: Clock,
        market_data: MarketData | None = None,
        controls: ControlState | None = None,
        checkpointer: Checkpointer | None = None,
        collect_results: bool = False,
        include_details: bool = True,
        status_interval_s: float | None = None,
        model_sources: Sequence[ModelSource] | None = None,
        environ: Mapping[str, str] | None = None,
        approval: Callable[[], bool] | None = None,
        partition: Partition | None = None,
    ) -> None:
        """`partition`: this process runs that partition of each engine of `bus.partitions` (a `utp engine`
        process; see `core.partitions`).

        `model_sources`: the models the inference engine serves (see `daemon.models.model_sources`);
        None serves the models of `inference.model_files` (and the packaged TFT with
        `inference.packaged_fallback`). Only models with an
        ensemble weight are served; with none, the graph has no inference engine.

        With data.primary set and no `market_data` handed over, the bars are live, from the vendors' streams
        (credentials from `environ`, default the process environment); `market_data` is always replayed.

        With broker.name other than simulated, orders go to that broker (`utp.core.venue`); `approval` is the
        operator's approval state it checks before every order (the daemon's, from its hot state), default the
        session's own controls."""
        self.config = config
        self.bus = bus
        self.clock = clock
        self.external_broker: Any = None
        live = bool(config.data.primary) and market_data is None
        if live and clock.simulated:
            raise ConfigError(f"data.primary is {config.data.primary!r}: live data runs on the wall clock, "
                              "not on a simulated one")  # fmt: skip
        self.market_data = market_data or (live_market_data(config) if live else MarketData.from_config(config))
        controls = controls or ControlState()
        md, universe = config.market_data, self.market_data.universe
        self.source: MarketDataEngine | LiveMarketDataEngine
        if live:
            self.source = LiveMarketDataEngine(
                live_feed(config, environ), universe, interval_ns=self.market_data.dataset.interval_ns,
                outliers=outlier_detector(config.data, len(universe)) if config.data.outliers else None,
                max_bar_age_s=config.data.max_bar_age_s, calendar=config.risk.filters.calendar,
            )  # fmt: skip
        else:
            self.source = MarketDataEngine(
                self.market_data.bars,
                universe,
                interval_ns=self.market_data.dataset.interval_ns,
                batch_bar_times=md.batch_bar_times,
                replay_rate=0.0 if clock.simulated else md.replay_rate,
                outliers=outlier_detector(config.data, len(universe)) if md.outliers else None,
            )
        ex = config.execution
        broker = SimulatedBroker(
            universe.symbols,
            slippage_bps=ex.slippage_bps,
            slippage_model=ex.slippage_model,
            spread_period=ex.spread_period,
            volatility_factor=ex.volatility_factor,
            volume_limit=ex.volume_limit,
            commission_per_share=ex.commission_per_share,
            commission_min=ex.commission_min,
            commission_bps=ex.commission_bps,
            fractional=ex.fractional_shares,
        )
        benchmark = Benchmark.from_frame(load_sp500_index()) if config.features.benchmark == "sp500" else None
        if model_sources is None:
            from utp.daemon.models import model_sources as resolve

            model_sources = resolve(config, registry=None)
        served = [s for s in model_sources if s.name in config.ensemble.weights]
        engines: list[Engine] = [
            FeatureEngine(config.features, universe, benchmark),
            AlphaEngine(config.alpha, universe),
            EnsembleEngine(config.ensemble, universe, tuple(s.name for s in served)),
            PortfolioConstructionEngine(config.portfolio, config.risk, universe,
                                        periods_per_year=self.market_data.dataset.periods_per_year),
            RiskEngine(config.risk, controls),
            ExecutionEngine(config.execution, broker, controls, universe,
                            RiskGuard(config.risk, config.exit, universe.symbols, expected_slippage_bps=ex.slippage_bps),
                            venue=self._venue(config, universe, controls, approval, environ)),
            ExitEngine(config.exit),
        ]
        if served:
            inf = config.inference
            engines.insert(1, InferenceEngine(served, universe, feature_set_version=FeatureSpec(config.features).version,
                                              history_bars=inf.history_bars, drift=inf.drift))  # fmt: skip
        self.collector: BacktestEngine | None = None
        if collect_results:
            self.collector = BacktestEngine(
                initial_equity=ex.initial_cash,
                periods_per_year=self.market_data.dataset.periods_per_year,
                include_details=include_details,
                benchmark=benchmark,
            )
            engines.append(self.collector)
        self.engines = engines
        self.execution = next(e for e in engines if isinstance(e, ExecutionEngine))
        # Only a bus that delivers again can retry a failing step, and so tell a poison step from a passing fault.
        max_deliveries = config.bus.max_deliveries if bus.durable else None
        # Only there: on the in-process bus the source commits every engine's staged checkpoint together after each
        # batch (`DeferredCheckpointer`), which needs every engine's state at that point.
        checkpoint_interval_s = config.state.checkpoint_interval_ms / 1000 if bus.durable else 0.0
        # Consumers of a partitioned engine's outputs wait for the watermark of each of its partitions.
        producers: dict[str, tuple[str, ...]] = {}
        for e in engines:
            if count := config.bus.partitions.get(e.name):
                producers.update(dict.fromkeys(e.outputs, producers_of(e.name, count)))
        # The bars go out split into the partitions of the engines that read them (one count for all, see the
        # config), so that a partition's process receives its own bars only; everyone else takes every partition.
        bar_partitions = next((n for e in engines if (n := config.bus.partitions.get(e.name))
                               and any(i.kind == "bar" for i in e.inputs)), 0)  # fmt: skip
        if bar_partitions:
            producers["bar"] = producers_of(self.source.name, bar_partitions)

        def runner(e: Engine) -> EngineRunner:
            part = partition if partition is not None and e.name in config.bus.partitions else None
            reads_split_bars = part is not None and bar_partitions and any(i.kind == "bar" for i in e.inputs)
            own = {**producers, "bar": (f"{self.source.name}.{part.name}",)} if reads_split_bars else producers
            return EngineRunner(e, bus, clock, checkpointer, status_interval_s=status_interval_s,
                                max_deliveries=max_deliveries, producers=own, partition=part,
                                split_inputs=("bar",) if reads_split_bars else (),
                                checkpoint_interval_s=checkpoint_interval_s)  # fmt: skip

        runners = [runner(e) for e in engines]
        remote = set(config.bus.remote_engines)
        #: The runners this session runs; those of bus.remote_engines are `utp engine` processes' (`remote_runners`).
        self.runners = [r for r in runners if r.engine.name not in remote]
        self.remote_runners = {r.engine.name: r for r in runners if r.engine.name in remote}
        self.source_runner = SourceRunner(self.source, bus, clock, checkpointer, status_interval_s=status_interval_s,
                                          split_outputs={"bar": bar_partitions} if bar_partitions else None)  # fmt: skip

    def _venue(self, config: Config, universe: Universe, controls: ControlState,
               approval: Callable[[], bool] | None, environ: Mapping[str, str] | None) -> ExternalVenue | None:  # fmt: skip
        """The real broker orders go to, or None for the simulated venue. Refuses a live endpoint unless every gate
        is open (`utp.core.safety`)."""
        name = config.broker.name
        if name == "simulated":
            return None
        if not name.startswith("alpaca-"):
            raise ConfigError(f"broker.name {name!r}: expected simulated, alpaca-paper or alpaca-live")
        from utp.core.vendors.alpaca_broker import AlpacaBroker

        if approval is None:
            def approval() -> bool:  # the execution engine's own flags, which follow the operator's commands
                state = self.execution.controls
                return state.execution_approved and not state.halted

        broker = AlpacaBroker(config.broker, universe.symbols, approval=approval, environ=environ)
        self.external_broker = broker
        return ExternalVenue(broker, universe.symbols, reconcile_interval_s=config.broker.reconcile_interval_s)

    @property
    def all_runners(self) -> list[EngineRunner | SourceRunner]:
        return [self.source_runner, *self.runners]

    async def start(self) -> None:
        """Subscribe every engine (restoring checkpoints); the data does not flow until `run`."""
        if self.external_broker is not None:  # the trade-updates stream, before any order can be sent
            await asyncio.to_thread(self.external_broker.start)
        for runner in self.runners:
            await runner.start()
        await self.source_runner.start()

    async def run(self) -> None:
        """Replay the data and wait until every engine has processed all of it."""
        await self.source_runner.run()
        await self.wait_finished()

    async def wait_finished(self) -> None:
        # A runner restarted after a failure has a new `finished` event: wait until the current ones are all set.
        while not all(r.finished.is_set() for r in self.all_runners):
            await asyncio.gather(*(r.finished.wait() for r in self.all_runners))
        failed = [r for r in self.all_runners if r.state == pb.ENGINE_STATE_FAILED]
        if failed:
            raise RuntimeError("; ".join(r.last_error for r in failed))

    @property
    def completed(self) -> bool:
        return all(r.state == pb.ENGINE_STATE_FINISHED for r in self.all_runners)

    async def stop(self) -> None:
        await self.source_runner.stop()
        for runner in self.runners:
            await runner.stop()
        if self.external_broker is not None:
            await asyncio.to_thread(self.external_broker.close)


async def run_backtest(
    config: Config,
    *,
    market_data: MarketData | None = None,
    on_progress: ProgressCallback | None = None,
    include_details: bool = True,
    model_sources: Sequence[ModelSource] | None = None,
) -> api.BacktestResult:
    """Run the engine graph over recorded bars on the in-process bus with a simulated clock.

    With `on_progress`, batches are at most a hundredth of the run so that progress moves in steps of about
    1% (batch size never changes a decision, only how often progress can be told)."""
    market_data = market_data or MarketData.from_config(config)
    if on_progress is not None:
        bar_times = market_data.bars["event_time_ns"].n_unique()
        md = config.market_data
        batch = max(1, min(md.batch_bar_times, -(-bar_times // 100)))
        config = msgspec.structs.replace(config, market_data=msgspec.structs.replace(md, batch_bar_times=batch))
    bus = InProcessBus()
    session = Session(
        config,
        bus=bus,
        clock=SimulatedClock(),
        market_data=market_data,
        controls=ControlState(execution_approved=True),
        collect_results=True,
        include_details=include_details,
        model_sources=model_sources,
    )
    await session.start()
    if on_progress is not None:
        bar_times = session.market_data.bars["event_time_ns"].sort().to_numpy()
        total = bar_times.size
        reported = [-1]

        async def report(kind: str, messages: list) -> None:  # noqa: ARG001 - tap signature
            # Progress is what execution has processed: the bars up to its latest account snapshot.
            through = messages[-1].header.event_time_ns
            done = int(np.searchsorted(bar_times, through, side="right"))
            if done - reported[0] >= max(total // 100, 1) or done == total:
                reported[0] = done
                on_progress(api.BacktestProgress(bars_processed=done, bars_total=total, through_time_ns=through))

        await bus.tap(report, lambda kind: kind == "account_snapshot")
    await session.run()
    assert session.collector is not None and session.collector.result is not None
    return session.collector.result


def backtest(
    config: Config,
    *,
    market_data: MarketData | None = None,
    on_progress: ProgressCallback | None = None,
    include_details: bool = True,
    model_sources: Sequence[ModelSource] | None = None,
) -> api.BacktestResult:
    """`run_backtest` on an event loop of its own (for callers outside one: the CLI, a worker thread)."""
    holder: list[api.BacktestResult] = []

    async def go() -> None:
        # The result stays out of the task's return value: asyncio formats a finished main task's result
        # when it restores the SIGINT handler, and a long equity curve takes seconds to print.
        holder.append(await run_backtest(config, market_data=market_data, on_progress=on_progress,
                                         include_details=include_details, model_sources=model_sources))  # fmt: skip

    asyncio.run(go())
    return holder[0]


#: At most this many runs in one comparison.
MAX_COMPARE = 16


@dataclass(frozen=True, slots=True)
class NamedRun:
    """One run of a backtest request: its name in a comparison ("" alone) and its configuration."""

    name: str
    config: Config


def parse_compare(spec: str) -> tuple[str, list[tuple[str, Any]]]:
    """`KEY=V1,V2,..` -> (KEY, [(text, value), ..]); values parsed the way YAML (and `--set`) would."""
    key, sep, values = spec.partition("=")
    tokens = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or not tokens:
        raise ConfigError(f"compare {spec[:80]!r}: expected KEY=V1,V2,... e.g. portfolio.method=equal,hrp")
    if len(tokens) > MAX_COMPARE:
        raise ConfigError(f"compare: at most {MAX_COMPARE} values, got {len(tokens)}")
    if len(set(tokens)) != len(tokens):
        raise ConfigError("compare: a value is given twice")
    return key.strip(), [(t, parse_yaml(t, f"compare value {t[:40]!r}")) for t in tokens]


def named_runs(compare: str, build: Callable[[Mapping[str, Any]], Config]) -> list[NamedRun]:
    """The runs of a request: one with no `compare`, else one per value, each built by `build(overrides)`
    (which raises ConfigError for a key that is not a setting or a value it does not take)."""
    if not compare:
        return [NamedRun("", build({}))]
    key, values = parse_compare(compare)
    return [NamedRun(f"{key}={text}", build({key: value})) for text, value in values]
