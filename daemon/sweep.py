"""Parameter sweeps: a grid or random search over settings, backtested in parallel processes on this
machine, or by `utp worker` processes on any machine through a NATS JetStream work queue.

A spec is a YAML file:

    config: [reference.yaml]           # base configuration files, relative to the spec, merged in order
    overrides: {market_data.dataset: goog}
    grid:                              # every combination of these values
      alpha.ema_cross.fast: [8, 10, 12]
      alpha.ema_cross.slow: [26, 30]
    random:                            # `samples` seeded draws, each combined with every grid point
      risk.max_position_pct: {low: 0.5, high: 1.0}          # uniform; log: true, int: true
      execution.slippage_model: [fixed, spread]             # a list: one of its values
    samples: 4
    seed: 7
    skip_invalid: false                # true: drop variants whose configuration is invalid (fast >= slow)

The spec is the whole configuration: the environment's UTP_* settings are not read, so a sweep means
the same on every machine. Every variant is validated before anything runs.

Distributed (`--nats`): the coordinator publishes one `SweepJob` per variant on `<root>.jobs.<sweep_id>`
of a stream with work-queue retention (`Nats-Msg-Id` = sweep/variant, so a re-published job is dropped)
and reads `SweepResult`s from `<root>.results.<sweep_id>` until every variant has answered. Workers
share one durable pull consumer with explicit acks. A job is acked only after its result is stored, so
a worker that dies leaves its job unacked and JetStream hands it to another worker after `ack_wait`; a
running job reports "in progress" every ack_wait/3 so a long one is not handed out again while its
worker lives; `max_deliver` bounds the attempts, and the coordinator hears of a job that used them up
from JetStream's advisory and records it as failed. A job that fails (a malformed message, an invalid
configuration, an exception in the backtest) is answered with an error result and acked, so a bad
variant never loops. The coordinator keeps the first result of each variant.

The table has one row per variant, sorted by a summary metric, with the Deflated Sharpe Ratio of the
best variant and the probability of backtest overfitting (CSCV) over all of them, both computed from
the variants' per-bar returns of equity.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import multiprocessing
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl
import yaml
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from utp.core.config import Config, ConfigError, load_config, to_dict
from utp.core.validation import (
    DeflatedSharpe,
    PBOResult,
    deflated_sharpe_ratio,
    deflated_sharpe_ratio_of_trials,
    probability_of_backtest_overfitting,
)
from utp.daemon.cli import summary_dict
from utp.v1 import core_service_pb2 as api
from utp.v1 import research_pb2 as rpb

log = logging.getLogger("utp.sweep")


class SweepError(ConfigError):
    """A spec, a metric or a server that cannot be used; the message says which and why."""


# -- the spec ----------------------------------------------------------------------------------------
class RandomRange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A number drawn uniformly from [low, high], or log-uniformly with `log`; `int` draws integers."""

    low: float
    high: float
    log: bool = False
    integer: bool = msgspec.field(default=False, name="int")


class _SpecFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    config: list[str] | str = []
    overrides: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    random: dict[str, RandomRange | list[Any]] = {}
    samples: int = 0
    seed: int = 0
    skip_invalid: bool = False


@dataclass(frozen=True)
class SweepSpec:
    """A validated spec: the base configuration and how to vary it."""

    base: Config
    grid: dict[str, list[Any]]
    random: dict[str, RandomRange | list[Any]]
    samples: int = 0
    seed: int = 0
    skip_invalid: bool = False
    name: str = "sweep"

    @property
    def base_yaml(self) -> str:
        """Every setting of the base configuration, the document a job carries."""
        return yaml.safe_dump(to_dict(self.base), sort_keys=False)

    @property
    def keys(self) -> list[str]:
        return [*self.grid, *self.random]


@dataclass(frozen=True)
class Variant:
    variant_id: str
    params: dict[str, Any]


def _plain(value: Any) -> Any:
    """YAML reads 2010-01-01 as a date; settings hold dates as ISO strings (as `load_config` does)."""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def parse_spec(
    data: Mapping[str, Any], base_dir: Path = Path("."), name: str = "sweep", base: Config | None = None
) -> SweepSpec:
    """A spec from its YAML mapping; config files are read relative to `base_dir`. The files and the
    spec's overrides go over the defaults, or over `base` (RunSweep: the daemon's configuration)."""
    try:
        raw = msgspec.convert(_plain(dict(data)), _SpecFile)
    except msgspec.ValidationError as exc:
        raise SweepError(f"{name}: {exc}") from None
    files = [raw.config] if isinstance(raw.config, str) else raw.config
    paths = [p if p.is_absolute() else base_dir / p for p in map(Path, files)]
    for path in paths:
        if not path.is_file():
            raise SweepError(f"{name}: config file {path} does not exist")
    try:
        base = load_config(paths, overrides=raw.overrides, environ={}, base=base)
    except ConfigError as exc:
        raise SweepError(f"{name}: the base configuration is invalid: {exc}") from None
    if not raw.grid and not raw.random:
        raise SweepError(f"{name}: nothing to sweep: give `grid` and/or `random`")
    keys = [*raw.grid, *raw.random]
    for key in keys:
        check_setting(key, name)
    if len(set(keys)) < len(keys):
        raise SweepError(f"{name}: a setting is both in grid and random: {sorted(k for k in raw.grid if k in raw.random)}")
    for a, b in itertools.permutations(keys, 2):
        # Variant settings apply in no particular order (a protobuf map), so none may contain another.
        if b.startswith(a + "."):
            raise SweepError(f"{name}: {a} contains {b}; sweep one or the other")
    for key, values in raw.grid.items():
        if not values:
            raise SweepError(f"{name}: grid {key} has no values")
    for key, spec in raw.random.items():
        if isinstance(spec, list):
            if not spec:
                raise SweepError(f"{name}: random {key} has no values to choose from")
        elif not spec.low <= spec.high or (spec.log and spec.low <= 0):
            raise SweepError(f"{name}: random {key} needs low <= high (and low > 0 with log)")
        elif spec.integer and not (float(spec.low).is_integer() and float(spec.high).is_integer()):
            raise SweepError(f"{name}: random {key} with int: true needs integer low and high")
    if raw.random and raw.samples < 1:
        raise SweepError(f"{name}: random needs samples >= 1")
    if raw.samples and not raw.random:
        raise SweepError(f"{name}: samples without random")
    return SweepSpec(base, dict(raw.grid), dict(raw.random), raw.samples, raw.seed, raw.skip_invalid, name)


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SweepError(f"{path}: {exc}") from None
    if not isinstance(data, Mapping):
        raise SweepError(f"{path}: a sweep spec is a mapping (config, overrides, grid, random, samples, seed)")
    return parse_spec(data, path.parent, str(path))


def _draw(rng: np.random.Generator, spec: RandomRange | list[Any]) -> Any:
    if isinstance(spec, list):
        return spec[int(rng.integers(len(spec)))]
    if spec.integer and not spec.log:
        return int(rng.integers(int(spec.low), int(spec.high), endpoint=True))
    if spec.log:
        # For integers, draw over [low, high + 1) and floor, so every integer gets its log-width's share.
        high = spec.high + 1 if spec.integer else spec.high
        x = math.exp(rng.uniform(math.log(spec.low), math.log(high)))
        return min(int(math.floor(x)), int(spec.high)) if spec.integer else float(x)
    return float(rng.uniform(spec.low, spec.high))


def expand(spec: SweepSpec) -> list[Variant]:
    """The variants of a spec, each validated as a configuration: grid points in the order of their keys (the last varies
    fastest), each with every random draw. Ids v000, v001, ... follow that order; the same spec always
    gives the same variants. A parameter set drawn twice is kept once (a repeated trial would count
    twice in the Deflated Sharpe Ratio)."""
    grid_points = [dict(zip(spec.grid, values, strict=True)) for values in itertools.product(*spec.grid.values())]
    rng = np.random.default_rng(spec.seed)
    draws = [{key: _draw(rng, r) for key, r in spec.random.items()} for _ in range(spec.samples)] or [{}]
    params, seen = [], set()
    for point in grid_points:
        for draw in draws:
            p = {**point, **draw}
            fingerprint = json.dumps(p, sort_keys=True, default=str)
            if fingerprint not in seen:
                seen.add(fingerprint)
                params.append(p)
    base_yaml = spec.base_yaml
    valid: list[dict[str, Any]] = []
    invalid: list[str] = []
    for p in params:
        try:
            variant_config(base_yaml, encode_params(p))
        except ConfigError as exc:
            invalid.append(f"{_describe(p)}: {exc}")
            continue
        valid.append(p)
    if not valid:
        raise SweepError(f"{spec.name}: no valid variant among {len(params)}:\n  " + "\n  ".join(invalid[:5]))
    if invalid and not spec.skip_invalid:
        shown = "\n  ".join(invalid[:5])
        more = f"\n  ... and {len(invalid) - 5} more" if len(invalid) > 5 else ""
        raise SweepError(
            f"{spec.name}: {len(invalid)} of {len(params)} variants are invalid (skip_invalid: true drops them):"
            f"\n  {shown}{more}"
        )
    if invalid:
        log.warning("%s: skipped %d invalid variants of %d", spec.name, len(invalid), len(params))
    width = max(3, len(str(len(valid) - 1)))
    return [Variant(f"v{i:0{width}d}", p) for i, p in enumerate(valid)]


def check_setting(key: str, where: str = "sweep") -> None:
    """Raise unless `key` names a setting of `Config` (a value, a whole section, or an entry of a mapping
    setting such as ensemble.weights.rsi). Values are checked later, by loading each variant."""
    node: Any = Config
    for depth, part in enumerate(key.split(".")):
        if typing.get_origin(node) is dict:
            return  # any key of a mapping setting
        if not (isinstance(node, type) and issubclass(node, msgspec.Struct)):
            raise SweepError(f"{where}: {key} is not a setting: {'.'.join(key.split('.')[:depth])} is a value")
        fields = {f.name: f.type for f in msgspec.structs.fields(node)}
        if part not in fields:
            section = ".".join(key.split(".")[:depth]) or "the top level"
            raise SweepError(f"{where}: {key} is not a setting; {section} has {', '.join(fields)}")
        node = fields[part]


def _describe(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_yaml_text(v)}" for k, v in params.items())


# -- jobs and their configuration --------------------------------------------------------------------
def _yaml_text(value: Any) -> str:
    """One line of YAML that reads back as `value` (dumped inside a list: flow style, no document end)."""
    return yaml.safe_dump([value], default_flow_style=True, width=2**31 - 1).strip()[1:-1]


def encode_params(params: Mapping[str, Any]) -> dict[str, str]:
    return {key: _yaml_text(value) for key, value in params.items()}


def decode_params(params: Mapping[str, str]) -> dict[str, Any]:
    return {key: yaml.safe_load(text) for key, text in params.items()}


def variant_config(base_yaml: str, overrides: Mapping[str, str]) -> Config:
    """The configuration of a variant: the base document with the variant's settings over it. Local and
    distributed sweeps both build it here, from the job's text, so they run the same configuration."""
    tree = yaml.safe_load(base_yaml) or {}
    if not isinstance(tree, dict):
        raise ConfigError("the base configuration is not a mapping")
    # Whole sections first, then the variant's dotted keys into them (none contains another).
    return load_config(overrides={**tree, **decode_params(overrides)}, environ={})


def _dataset_of(config: Config) -> rpb.SweepDataset:
    md = config.market_data
    return rpb.SweepDataset(name=md.dataset, symbols=list(md.symbols), start=md.start, end=md.end)


def new_sweep_id() -> str:
    """Unique per run (a NATS subject token): the UTC time and a random suffix."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def make_jobs(spec: SweepSpec, variants: Sequence[Variant], sweep_id: str) -> list[rpb.SweepJob]:
    base_yaml = spec.base_yaml
    jobs = []
    for v in variants:
        overrides = encode_params(v.params)
        job = rpb.SweepJob(sweep_id=sweep_id, variant_id=v.variant_id, base_config_yaml=base_yaml, overrides=overrides)
        job.dataset.CopyFrom(_dataset_of(variant_config(base_yaml, overrides)))
        jobs.append(job)
    return jobs


_MARKET_DATA: dict[tuple[str, tuple[str, ...], str, str], Any] = {}


def _market_data(config: Config) -> Any:
    """The bars of a configuration, kept per process: the variants of a sweep mostly share their data."""
    from utp.daemon.session import MarketData

    md = config.market_data
    key = (md.dataset, md.symbols, md.start, md.end)
    if key not in _MARKET_DATA:
        if len(_MARKET_DATA) >= 4:  # a sweep over dates: keep memory bounded
            _MARKET_DATA.clear()
        _MARKET_DATA[key] = MarketData.from_config(config)
    return _MARKET_DATA[key]


def run_job(job: rpb.SweepJob, worker: str, delivery: int = 1) -> rpb.SweepResult:
    """Backtest one variant. Never raises: what goes wrong becomes the result's error."""
    from utp.core.performance import simple_returns
    from utp.daemon.session import backtest

    started = time.perf_counter()
    result = rpb.SweepResult(sweep_id=job.sweep_id, variant_id=job.variant_id, worker=worker, delivery=delivery)
    result.params.update(job.overrides)
    try:
        config = variant_config(job.base_config_yaml, job.overrides)
        resolved = _dataset_of(config)
        if job.HasField("dataset") and resolved != job.dataset:
            raise ConfigError(
                f"this worker resolves the configuration to data set {resolved} but the coordinator to {job.dataset} "
                "(different utp versions?)"
            )
        outcome = backtest(config, market_data=_market_data(config), include_details=True)
        result.summary.CopyFrom(outcome.summary)
        # As the summary's statistics: the first return is measured from the initial equity.
        equity = np.asarray(outcome.equity_curve.equity, np.float64)
        result.equity_returns.extend(simple_returns(np.concatenate([[outcome.summary.initial_equity], equity])))
    except Exception as exc:  # noqa: BLE001 - a failed variant is a result, not a crash of the sweep
        result.error = f"{type(exc).__name__}: {exc}"
    result.elapsed_s = time.perf_counter() - started
    return result


def _run_job_bytes(data: bytes, worker: str | None, delivery: int) -> bytes:
    """The entry point in a pool process: bytes in and out, as on the wire."""
    job = rpb.SweepJob.FromString(data)
    return run_job(job, worker or f"local:{os.getpid()}", delivery).SerializeToString()


def _init_job_process(parent: int) -> None:
    # The parent decides what an interrupt means (finish or abandon the running jobs); a terminal's
    # Ctrl-C reaches the whole process group and must not kill a job half-way on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def exit_with_parent() -> None:
        # A parent killed with SIGKILL cannot end its pool, and its processes would live on for good
        # (idle, or finishing a job nobody will read): they leave once they are someone else's children.
        # `parent` comes from the parent itself: it may have died before this process got here.
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=exit_with_parent, name="exit-with-parent", daemon=True).start()


class _JobPool:
    """Processes that run jobs. Spawned, not forked: a fork of a process holding polars' and numba's
    threads or a NATS connection is not safe. `kill` ends them at once (an abandoned sweep)."""

    def __init__(self, processes: int) -> None:
        self._before = set(multiprocessing.active_children())
        self.processes = max(1, processes)
        self.executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(
            self.processes, mp_context=context, initializer=_init_job_process, initargs=(os.getpid(),)
        )

    def submit(self, data: bytes, worker: str | None, delivery: int) -> Future[bytes]:
        try:
            return self.executor.submit(_run_job_bytes, data, worker, delivery)
        except BrokenProcessPool:
            # A process died (killed, out of memory) and took the pool down with it; the job it ran was
            # answered with an error. A worker goes on with a fresh pool.
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = self._start()
            return self.executor.submit(_run_job_bytes, data, worker, delivery)

    def kill(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        for process in set(multiprocessing.active_children()) - self._before:
            process.kill()

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


ResultCallback = Callable[[rpb.SweepResult], None]


def _failed(job: rpb.SweepJob, error: str, worker: str = "", delivery: int = 0) -> rpb.SweepResult:
    result = rpb.SweepResult(sweep_id=job.sweep_id, variant_id=job.variant_id, error=error, worker=worker,
                             delivery=delivery)  # fmt: skip
    result.params.update(job.overrides)
    return result


def run_local(
    jobs: Sequence[rpb.SweepJob], processes: int | None = None, on_result: ResultCallback | None = None
) -> list[rpb.SweepResult]:
    """Run the jobs in `processes` spawned processes (default: one per CPU); results in completion order."""
    pool = _JobPool(min(processes or os.cpu_count() or 1, len(jobs)))
    results = []
    try:
        futures = {pool.submit(job.SerializeToString(), None, 1): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                result = rpb.SweepResult.FromString(future.result())
            except Exception as exc:  # noqa: BLE001 - the process died (BrokenProcessPool): fail that variant
                result = _failed(job, f"the process running the job died: {exc!r}")
            results.append(result)
            if on_result is not None:
                on_result(result)
    except BaseException:
        pool.kill()
        raise
    pool.shutdown()
    return results


# -- JetStream ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepStreams:
    """Every stream, subject and consumer name of sweeps, built here only.

    `prefix` names the streams `<prefix>_JOBS` and `<prefix>_RESULTS` and the subject root
    `<prefix in lower case>`. The root must not be the engine bus's (`utp`): its stream takes `utp.>`,
    and JetStream refuses streams whose subjects overlap.
    """

    prefix: str = "UTP_SWEEP"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", self.prefix) or self.prefix.lower() == "utp":
            raise SweepError(f"stream prefix {self.prefix!r}: letters, digits, _ or -, and not 'utp'")

    @property
    def jobs_stream(self) -> str:
        return f"{self.prefix}_JOBS"

    @property
    def results_stream(self) -> str:
        return f"{self.prefix}_RESULTS"

    @property
    def consumer(self) -> str:
        """The durable pull consumer that every worker shares: JetStream hands each job to one of them."""
        return f"{self.prefix}_WORKERS"

    @property
    def root(self) -> str:
        return self.prefix.lower()

    def jobs(self, sweep_id: str = ">") -> str:
        return f"{self.root}.jobs.{sweep_id}"

    def results(self, sweep_id: str = ">") -> str:
        return f"{self.root}.results.{sweep_id}"

    def max_deliveries_advisory(self) -> str:
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.jobs_stream}.{self.consumer}"


async def _connect(url: str, name: str) -> Any:
    import nats

    return await nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=5)


async def ensure_streams(js: Any, streams: SweepStreams) -> None:
    """Create the jobs and results streams unless they exist (coordinators and workers both call it)."""
    import nats.js.errors
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    configs = [
        # Work-queue retention: a job leaves the stream when a worker acks it.
        StreamConfig(name=streams.jobs_stream, subjects=[streams.jobs()], retention=RetentionPolicy.WORK_QUEUE,
                     storage=StorageType.FILE, duplicate_window=600.0),
        # Results stay until their coordinator has read and purged them; those of a coordinator that
        # died expire after a week.
        StreamConfig(name=streams.results_stream, subjects=[streams.results()], retention=RetentionPolicy.LIMITS,
                     storage=StorageType.FILE, max_age=7 * 24 * 3600.0, duplicate_window=600.0),
    ]  # fmt: skip
    for config in configs:
        try:
            info = await js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(config)
                continue
            except nats.js.errors.BadRequestError:  # another process created it meanwhile
                info = await js.stream_info(config.name)
        if list(info.config.subjects or []) != config.subjects or info.config.retention != config.retention:
            raise SweepError(
                f"stream {config.name} exists with subjects {info.config.subjects} and {info.config.retention} "
                f"retention, not {config.subjects} and {config.retention}"
            )


async def _run_distributed(
    jobs: Sequence[rpb.SweepJob], url: str, streams: SweepStreams, on_result: ResultCallback | None
) -> tuple[list[rpb.SweepResult], int]:
    import nats.js.errors
    from nats.js.api import DeliverPolicy

    sweep_id = jobs[0].sweep_id
    by_variant = {job.variant_id: job for job in jobs}
    nc = await _connect(url, f"utp-sweep-{sweep_id}")
    js = nc.jetstream(timeout=10.0)
    inbox: asyncio.Queue[rpb.SweepResult] = asyncio.Queue()
    job_of_sequence: dict[int, str] = {}

    async def on_result_msg(msg: Any) -> None:
        try:
            inbox.put_nowait(rpb.SweepResult.FromString(msg.data))
        except DecodeError as exc:
            log.error("result on %s is not a SweepResult: %s", msg.subject, exc)

    async def on_advisory(msg: Any) -> None:
        # The consumer is shared with other sweeps: only sequences of this sweep's jobs count.
        event = json.loads(msg.data)
        variant = job_of_sequence.get(int(event.get("stream_seq", 0)))
        if variant is not None:
            deliveries = int(event.get("deliveries", 0))
            inbox.put_nowait(_failed(by_variant[variant], f"no result after {deliveries} deliveries: the workers "
                                                          "running it died or stalled"))  # fmt: skip

    results: dict[str, rpb.SweepResult] = {}
    duplicates = 0
    try:
        await ensure_streams(js, streams)
        results_sub = await js.subscribe(streams.results(sweep_id), cb=on_result_msg, ordered_consumer=True,
                                         deliver_policy=DeliverPolicy.ALL)  # fmt: skip
        advisory_sub = await nc.subscribe(streams.max_deliveries_advisory(), cb=on_advisory)
        try:
            # Idle workers keep a pull request waiting; asked before the jobs are there to take them.
            waiting = (await js.consumer_info(streams.jobs_stream, streams.consumer)).num_waiting
        except nats.js.errors.NotFoundError:
            waiting = 0
        for job in jobs:
            ack = await js.publish(streams.jobs(sweep_id), job.SerializeToString(),
                                   headers={"Nats-Msg-Id": f"{sweep_id}/{job.variant_id}"})  # fmt: skip
            job_of_sequence[ack.seq] = job.variant_id
        log.info("published %d jobs on %s; %d workers were waiting", len(jobs), streams.jobs(sweep_id), waiting)
        if not waiting:
            flag = "" if streams == SweepStreams() else f" --streams {streams.prefix}"
            print(f"utp sweep: {len(jobs)} jobs queued on {streams.jobs_stream}; no worker seems to be waiting: "
                  f"start `utp worker --nats {url}{flag}`", file=sys.stderr)  # fmt: skip
        while len(results) < len(by_variant):
            result = await inbox.get()
            if result.sweep_id != sweep_id or result.variant_id not in by_variant:
                log.warning("ignoring a result for %s/%s", result.sweep_id, result.variant_id)
                continue
            previous = results.get(result.variant_id)
            if previous is not None:
                # A job handed out again while its first worker was alive: keep the first answer, unless
                # that was only the advisory's failure and a worker has answered after all.
                if previous.worker or not result.worker:
                    duplicates += 1
                    continue
                results[result.variant_id] = result
                continue
            results[result.variant_id] = result
            if on_result is not None:
                on_result(result)
        await results_sub.unsubscribe()
        await advisory_sub.unsubscribe()
    finally:
        # Nothing of this sweep is left to run or to read: an interrupted coordinator leaves no work behind.
        for stream, subject in ((streams.jobs_stream, streams.jobs(sweep_id)),
                                (streams.results_stream, streams.results(sweep_id))):  # fmt: skip
            with contextlib.suppress(Exception):
                await js.purge_stream(stream, subject=subject)
        with contextlib.suppress(Exception):
            await nc.close()
    return list(results.values()), duplicates


def run_distributed(
    jobs: Sequence[rpb.SweepJob],
    url: str,
    streams: SweepStreams = SweepStreams(),
    on_result: ResultCallback | None = None,
) -> tuple[list[rpb.SweepResult], int]:
    """Queue the jobs on JetStream and wait for every variant's result; also returns how many duplicate
    results were dropped."""
    return asyncio.run(_run_distributed(jobs, url, streams, on_result))


# -- the worker --------------------------------------------------------------------------------------
async def ensure_worker_consumer(js: Any, streams: SweepStreams, ack_wait_s: float, max_deliver: int) -> float:
    """Create (or update) the workers' shared consumer; returns its ack wait in seconds."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    config = ConsumerConfig(
        durable_name=streams.consumer,
        filter_subject=streams.jobs(),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=max_deliver,
    )
    info = await js.add_consumer(streams.jobs_stream, config)
    return float(info.config.ack_wait or ack_wait_s)


class Worker:
    """`utp worker`: takes jobs from the shared consumer, `processes` at a time, until told to stop.

    The first SIGTERM/SIGINT stops taking jobs and lets the running ones finish; a second one gives them
    back to JetStream at once (nak: another worker takes them) and exits."""

    def __init__(
        self,
        url: str,
        *,
        processes: int = 1,
        name: str | None = None,
        streams: SweepStreams = SweepStreams(),
        ack_wait_s: float = 30.0,
        max_deliver: int = 5,
    ) -> None:
        if processes < 1 or max_deliver < 1 or ack_wait_s <= 0:
            raise SweepError("worker: --processes and --max-deliver must be >= 1 and --ack-wait > 0")
        self.url = url
        self.processes = processes
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.streams = streams
        self.ack_wait_s = ack_wait_s
        self.max_deliver = max_deliver
        self.stopping = asyncio.Event()
        self.abandoning = asyncio.Event()
        self.done = 0
        self.nc: Any = None

    def signal(self) -> None:
        if self.stopping.is_set():
            log.warning("%s: abandoning the running jobs", self.name)
            self.abandoning.set()
        else:
            log.info("%s: stopping after the running jobs (signal again to give them back now)", self.name)
            self.stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.signal)
        self.nc = nc = await _connect(self.url, f"utp-worker-{self.name}")
        js = nc.jetstream(timeout=10.0)
        pool = _JobPool(self.processes)
        try:
            await ensure_streams(js, self.streams)
            ack_wait = await ensure_worker_consumer(js, self.streams, self.ack_wait_s, self.max_deliver)
            subs = [await js.pull_subscribe_bind(self.streams.consumer, self.streams.jobs_stream)
                    for _ in range(self.processes)]  # fmt: skip
            log.info("%s: waiting for jobs on %s (consumer %s, ack wait %gs, %d processes)",
                     self.name, self.streams.jobs(), self.streams.consumer, ack_wait, self.processes)  # fmt: skip
            await asyncio.gather(*(self._slot(js, sub, pool, ack_wait) for sub in subs))
        finally:
            if self.abandoning.is_set():
                pool.kill()
            else:
                pool.shutdown()
            # close, not drain: every result was published and acknowledged by the server before its job's
            # ack, so nothing is in flight, and draining pull subscriptions waits on queues fetch never drains.
            with contextlib.suppress(Exception):
                await nc.close()
        log.info("%s: stopped after %d jobs", self.name, self.done)
        return 0

    async def _slot(self, js: Any, sub: Any, pool: _JobPool, ack_wait: float) -> None:
        import nats.errors

        while not self.stopping.is_set():
            try:
                msgs = await sub.fetch(1, timeout=1.0)  # short, so that a stop is noticed within a second
            except nats.errors.TimeoutError:
                continue
            except nats.errors.Error as exc:  # disconnected: the client reconnects by itself
                log.warning("%s: fetching a job: %r", self.name, exc)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                try:
                    if self.stopping.is_set():
                        await msg.nak()  # fetched as we stopped: let another worker have it now
                    else:
                        await self._handle(js, msg, pool, ack_wait)
                except nats.errors.Error as exc:
                    # The result or the ack did not get through; the job is redelivered after the ack wait.
                    log.warning("%s: job on %s: %r", self.name, msg.subject, exc)

    def _ids_of(self, msg: Any) -> tuple[str, str]:
        """(sweep id, variant id) of a job message from its subject and Nats-Msg-Id, which a coordinator
        sets even when the payload cannot be read."""
        sweep_id = msg.subject.rsplit(".", 1)[-1]
        msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
        return sweep_id, msg_id.split("/", 1)[1] if msg_id.startswith(sweep_id + "/") else ""

    async def _handle(self, js: Any, msg: Any, pool: _JobPool, ack_wait: float) -> None:
        delivery = int(msg.metadata.num_delivered or 1)
        sweep_id, variant_id = self._ids_of(msg)
        job: rpb.SweepJob | None = None
        try:
            job = rpb.SweepJob.FromString(msg.data)
            problem = "" if (job.sweep_id, job.variant_id) == (sweep_id, variant_id) else (
                f"ids {job.sweep_id!r}/{job.variant_id!r} do not match the subject and message id"
            )  # fmt: skip
        except DecodeError as exc:
            problem = f"not a SweepJob: {exc}"
        if problem or job is None:
            log.error("%s: malformed job on %s (%d bytes): %s", self.name, msg.subject, len(msg.data), problem)
            result = rpb.SweepResult(sweep_id=sweep_id, variant_id=variant_id, error=f"malformed job: {problem}",
                                     worker=self.name, delivery=delivery)  # fmt: skip
        else:
            log.info("%s: running %s/%s (delivery %d)", self.name, sweep_id, variant_id, delivery)
            outcome = await self._run(msg, job, pool, ack_wait, delivery)
            if outcome is None:  # abandoned: JetStream hands it to another worker
                await msg.nak()
                return
            result = outcome
            log.info("%s: %s/%s %s in %.2fs", self.name, sweep_id, variant_id,
                     f"failed: {result.error}" if result.error else "done", result.elapsed_s)  # fmt: skip
        await self._publish(js, result)
        # Acked only now that the result is stored: a worker dying before this line gets the job redelivered.
        await msg.ack()
        self.done += 1

    async def _run(
        self, msg: Any, job: rpb.SweepJob, pool: _JobPool, ack_wait: float, delivery: int
    ) -> rpb.SweepResult | None:
        running = asyncio.wrap_future(pool.submit(msg.data, self.name, delivery))
        abandon = asyncio.ensure_future(self.abandoning.wait())
        try:
            while not running.done():
                await asyncio.wait({running, abandon}, timeout=ack_wait / 3, return_when=asyncio.FIRST_COMPLETED)
                if abandon.done():
                    return None
                if not running.done():
                    await msg.in_progress()  # still alive: restart the ack wait so it is not handed out again
            return rpb.SweepResult.FromString(running.result())
        except Exception as exc:  # noqa: BLE001 - the pool process died (BrokenProcessPool): fail the variant
            return _failed(job, f"the process running the job died: {exc!r}", self.name, delivery)
        finally:
            abandon.cancel()

    async def _publish(self, js: Any, result: rpb.SweepResult) -> None:
        data = result.SerializeToString()
        if len(data) > self.nc.max_payload:
            # A very long backtest's returns do not fit one message: send the summary without them.
            log.warning("%s: %s's equity returns (%d bars) exceed the server's payload limit; sent without them",
                        self.name, result.variant_id, len(result.equity_returns))  # fmt: skip
            del result.equity_returns[:]
            result.returns_omitted = True
            data = result.SerializeToString()
        # The message id covers the delivery: a re-publish of the same answer is dropped by the server,
        # while the answer of another delivery still reaches the coordinator, which keeps the first.
        msg_id = f"{result.sweep_id}/{result.variant_id}/{result.delivery}"
        await js.publish(self.streams.results(result.sweep_id or "_"), data, headers={"Nats-Msg-Id": msg_id})


def run_worker(url: str, **kwargs: Any) -> int:
    return asyncio.run(Worker(url, **kwargs).run())


# -- the table, the DSR and the PBO ------------------------------------------------------------------
#: Summary statistics in the table, besides the one it is sorted by.
TABLE_METRICS = ("sharpe", "total_return", "annual_return", "max_drawdown", "sortino", "calmar", "trades",
                 "win_rate", "profit_factor", "exposure_time", "final_equity")  # fmt: skip
#: Printed with the table, besides the one it is sorted by.
PRINTED_METRICS = ("sharpe", "total_return", "max_drawdown", "trades", "final_equity")
#: Metrics where less is better (max_drawdown is a positive fraction).
LOWER_IS_BETTER = frozenset({"max_drawdown", "max_drawdown_bars", "annual_volatility", "commissions", "turnover"})
_SUMMARY_FIELDS = frozenset(f.name for f in api.BacktestSummary.DESCRIPTOR.fields)


def check_metric(metric: str) -> str:
    if metric not in _SUMMARY_FIELDS:
        raise SweepError(f"--metric {metric!r} is not a summary statistic; one of {', '.join(sorted(_SUMMARY_FIELDS))}")
    return metric


@dataclass(frozen=True)
class SweepReport:
    """One sweep's results: the table (best first) and the overfitting statistics of its variants."""

    sweep_id: str
    metric: str
    table: pl.DataFrame
    n_variants: int
    n_failed: int
    duplicates: int = 0
    #: The Deflated Sharpe Ratio of `dsr_variant`, the best variant by `metric` (None: see `notes`).
    dsr: DeflatedSharpe | None = None
    dsr_variant: str | None = None
    pbo: PBOResult | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: Every variant's result in the table's order (best first), for callers that want more than its columns.
    results: tuple[rpb.SweepResult, ...] = ()


def _param_column(name: str, values: list[Any]) -> pl.Series:
    """A parameter as one typed column: numbers, booleans, or else the values' YAML text."""
    if all(isinstance(v, bool) for v in values):
        return pl.Series(name, values, pl.Boolean)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return pl.Series(name, values, pl.Int64)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return pl.Series(name, [float(v) for v in values], pl.Float64)
    return pl.Series(name, [v if isinstance(v, str) else _yaml_text(v) for v in values], pl.String)


def results_table(results: Sequence[rpb.SweepResult], metric: str = "sharpe") -> pl.DataFrame:
    """One row per variant: id, each parameter, the summary metrics, error, worker; best first."""
    check_metric(metric)
    metrics = list(dict.fromkeys([metric, *TABLE_METRICS]))
    keys = list(dict.fromkeys(k for r in results for k in r.params))
    params = [decode_params(r.params) for r in results]
    summaries = [summary_dict(r.summary) if r.HasField("summary") and not r.error else {} for r in results]
    columns = [pl.Series("variant", [r.variant_id for r in results], pl.String)]
    columns += [_param_column(k, [p.get(k) for p in params]) for k in keys]
    for m in metrics:
        values = [s.get(m) for s in summaries]
        double = api.BacktestSummary.DESCRIPTOR.fields_by_name[m].cpp_type == FieldDescriptor.CPPTYPE_DOUBLE
        dtype = pl.Float64 if double else pl.Int64
        columns.append(pl.Series(m, values, dtype))
    columns += [
        pl.Series("error", [r.error for r in results], pl.String),
        pl.Series("worker", [r.worker for r in results], pl.String),
        pl.Series("elapsed_s", [r.elapsed_s for r in results], pl.Float64),
    ]
    table = pl.DataFrame(columns)
    return table.sort([metric, "variant"], descending=[metric not in LOWER_IS_BETTER, False], nulls_last=True)


def _blocks(rows: int) -> int:
    """CSCV blocks: 16 as in the paper, fewer (even, >= 2 rows each) for short runs."""
    return min(16, rows // 2 // 2 * 2)


def overfitting(
    returns: Mapping[str, np.ndarray], best: str
) -> tuple[DeflatedSharpe | None, PBOResult | None, list[str]]:
    """DSR of `best` among all `returns` (variant -> per-bar returns) as trials, and the PBO over them."""
    notes: list[str] = []
    if len(returns) < 2:
        return None, None, ["DSR and PBO need at least 2 variants with results"]
    lengths = {len(r) for r in returns.values()}
    if len(lengths) > 1:
        return None, None, [f"DSR and PBO need variants over the same bars; these have {sorted(lengths)} bars"]
    ids = list(returns)
    matrix = np.column_stack([returns[v] for v in ids])
    if not np.all(np.isfinite(matrix)):
        return None, None, ["DSR and PBO need finite returns (an equity reached zero?)"]
    dsr: DeflatedSharpe | None = None
    selected = ids.index(best)
    std = matrix.std(axis=0, ddof=1)
    if std[selected] == 0:
        notes.append(f"no DSR: the best variant {best} never changed its equity")
    elif np.all(std > 0):
        dsr = deflated_sharpe_ratio_of_trials(matrix, selected=selected)
    else:
        # A variant that never trades has flat equity: its Sharpe ratio is 0, not undefined, and it was
        # still a trial, so it counts in the number of trials and the variance of their Sharpe ratios.
        sharpes = np.where(std > 0, matrix.mean(axis=0) / np.where(std > 0, std, 1.0), 0.0)
        dsr = deflated_sharpe_ratio(matrix[:, selected], matrix.shape[1], float(np.var(sharpes, ddof=1)))
        dsr = dataclasses.replace(dsr, selected=selected)
    pbo = None
    blocks = _blocks(matrix.shape[0])
    if blocks < 2:
        notes.append(f"no PBO: {matrix.shape[0]} bars are too few for CSCV")
    else:
        pbo = probability_of_backtest_overfitting(matrix, n_blocks=blocks)
    return dsr, pbo, notes


def gather(
    sweep_id: str, results: Sequence[rpb.SweepResult], metric: str = "sharpe", duplicates: int = 0
) -> SweepReport:
    """The report of a sweep from its results (any order)."""
    table = results_table(results, metric)
    failed = [r for r in results if r.error]
    usable = {r.variant_id: np.asarray(r.equity_returns, np.float64) for r in results
              if not r.error and r.HasField("summary") and not r.returns_omitted}  # fmt: skip
    notes = []
    omitted = sum(r.returns_omitted for r in results)
    if omitted:
        notes.append(f"{omitted} variants sent no returns (over the server's payload limit) and are not trials")
    ranked = [v for v in table["variant"] if v in usable]
    dsr = pbo = None
    best = ranked[0] if ranked else None
    if best is not None:
        dsr, pbo, more = overfitting({v: usable[v] for v in ranked}, best)
        notes += more
    else:
        notes.append("no variant has results: no DSR or PBO")
    by_id = {r.variant_id: r for r in results}
    return SweepReport(sweep_id, metric, table, len(results), len(failed), duplicates, dsr,
                       best if dsr is not None else None, pbo, tuple(notes),
                       tuple(by_id[v] for v in table["variant"]))  # fmt: skip


def run_sweep(
    spec: SweepSpec,
    *,
    processes: int | None = None,
    nats_url: str | None = None,
    streams: SweepStreams = SweepStreams(),
    metric: str = "sharpe",
    on_result: ResultCallback | None = None,
    variants: Sequence[Variant] | None = None,
    sweep_id: str | None = None,
) -> SweepReport:
    """Run every variant of the spec (`variants`: its expansion, when the caller has it already) locally,
    or on JetStream with `nats_url`, and gather the report."""
    check_metric(metric)
    sweep_id = sweep_id or new_sweep_id()
    jobs = make_jobs(spec, expand(spec) if variants is None else variants, sweep_id)
    if nats_url:
        results, duplicates = run_distributed(jobs, nats_url, streams, on_result)
    else:
        results, duplicates = run_local(jobs, processes, on_result), 0
    return gather(sweep_id, results, metric, duplicates)


# -- output ------------------------------------------------------------------------------------------
def write_table(table: pl.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        table.write_parquet(path)
    elif path.suffix.lower() == ".csv":
        table.write_csv(path)
    else:
        raise SweepError(f"--out {path}: write .csv or .parquet")
    return path.resolve()


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def report_dict(report: SweepReport) -> dict[str, Any]:
    """Plain JSON-able numbers (NaN -> None), the table's rows best first."""
    dsr = pbo = None
    if report.dsr is not None:
        d = report.dsr
        dsr = {"variant": report.dsr_variant, "dsr": _finite(d.dsr), "psr": _finite(d.psr),
               "sharpe_per_bar": _finite(d.sharpe), "sharpe_threshold_per_bar": _finite(d.sharpe_threshold),
               "n_trials": int(d.n_trials), "n_obs": d.n_obs}  # fmt: skip
    if report.pbo is not None:
        p = report.pbo
        pbo = {"pbo": _finite(p.pbo), "n_blocks": p.n_blocks, "n_combinations": p.n_combinations,
               "n_variants": p.n_variants, "n_observations": p.n_observations,
               "prob_oos_loss": _finite(p.prob_oos_loss), "degradation_slope": _finite(p.degradation_slope)}  # fmt: skip
    rows = [{k: _finite(v) if isinstance(v, float) else v for k, v in row.items()} for row in report.table.iter_rows(named=True)]
    return {"sweep_id": report.sweep_id, "metric": report.metric, "variants": report.n_variants,
            "failed": report.n_failed, "duplicate_results": report.duplicates, "best": rows[0]["variant"] if rows else None,
            "dsr": dsr, "pbo": pbo, "notes": list(report.notes), "rows": rows}  # fmt: skip


def format_report(report: SweepReport, top: int = 10) -> str:
    """The top rows (the main metrics; --out has every column) and the DSR and PBO lines."""
    table = report.table
    params = [c for c in table.columns[1:] if c not in _SUMMARY_FIELDS and c not in ("error", "worker", "elapsed_s")]
    metrics = list(dict.fromkeys([report.metric, *PRINTED_METRICS]))
    shown = table.select(["variant", *params, *metrics, *(["error"] if report.n_failed else [])])
    with pl.Config(tbl_rows=top, tbl_cols=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                   tbl_formatting="ASCII_MARKDOWN", float_precision=4, tbl_width_chars=400, fmt_str_lengths=80):  # fmt: skip
        text = str(shown.head(top))
    lines = [
        f"utp sweep {report.sweep_id}: {report.n_variants} variants ({report.n_failed} failed), "
        f"best first by {report.metric}" + (f"; top {top}" if report.n_variants > top else ""),
        text,
    ]
    if report.dsr is not None:
        d = report.dsr
        lines.append(
            f"Deflated Sharpe Ratio of {report.dsr_variant} (best by {report.metric}): {d.dsr:.4f}, the probability "
            f"that its true Sharpe ratio ({d.sharpe:.4f} per bar) exceeds {d.sharpe_threshold:.4f}, the expected "
            f"maximum of {int(d.n_trials)} skill-less trials; PSR {d.psr:.4f}, {d.n_obs} bars"
        )
    if report.pbo is not None:
        p = report.pbo
        lines.append(
            f"Probability of backtest overfitting: {p.pbo:.4f} (CSCV over {p.n_variants} variants: {p.n_combinations} "
            f"splits of {p.n_blocks} blocks, {p.n_observations} bars; the in-sample best had a negative Sharpe ratio "
            f"out of sample in {p.prob_oos_loss:.0%} of splits)"
        )
    lines += [f"note: {n}" for n in report.notes]
    if report.duplicates:
        lines.append(f"note: {report.duplicates} duplicate results dropped (jobs redelivered while running)")
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------
def add_parsers(sub: Any) -> None:
    """`utp sweep` and `utp worker` (sub: the `utp` parser's subparsers)."""
    sweep = sub.add_parser("sweep", help="grid or random search over settings, in local processes or over NATS")
    sweep.add_argument("spec", metavar="SPEC.yaml", help="sweep spec (see configs/sweep-reference.yaml)")
    sweep.add_argument("--processes", type=int, metavar="N", help="local processes (default: one per CPU)")
    sweep.add_argument("--nats", metavar="URL", help="queue the variants on JetStream for `utp worker`s instead")
    sweep.add_argument("--streams", default="UTP_SWEEP", metavar="PREFIX", help="stream name prefix (default UTP_SWEEP)")
    sweep.add_argument("--out", metavar="FILE", help="write the whole table (.csv or .parquet)")
    sweep.add_argument("--metric", default="sharpe", help="summary statistic to rank by (default sharpe)")
    sweep.add_argument("--top", type=int, default=10, metavar="N", help="rows to print (default 10)")
    sweep.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    sweep.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="show a progress bar (default: when stderr is a terminal)")  # fmt: skip
    sweep.add_argument("--log-level", default="WARNING")

    worker = sub.add_parser("worker", help="run sweep jobs from NATS JetStream until stopped")
    worker.add_argument("--nats", required=True, metavar="URL", help="e.g. nats://127.0.0.1:4222")
    worker.add_argument("--processes", type=int, default=1, metavar="N", help="jobs run at once (default 1)")
    worker.add_argument("--name", help="name in the results (default host:pid)")
    worker.add_argument("--streams", default="UTP_SWEEP", metavar="PREFIX", help="stream name prefix (default UTP_SWEEP)")
    worker.add_argument("--ack-wait", type=float, default=30.0, metavar="S",
                        help="seconds without news before a job goes to another worker (default 30)")  # fmt: skip
    worker.add_argument("--max-deliver", type=int, default=5, metavar="N", help="attempts per job (default 5)")
    worker.add_argument("--log-level", default="INFO")


def _with_progress(total: int, go: Callable[[ResultCallback], SweepReport]) -> SweepReport:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("variants"), TimeElapsedColumn())
    with Progress(*columns, transient=True, console=None) as bar:
        task = bar.add_task("sweep", total=total)
        return go(lambda result: bar.advance(task))


def main(args: argparse.Namespace) -> int:
    """Run `utp sweep` or `utp worker` from parsed arguments."""
    streams = SweepStreams(args.streams)
    if args.command == "worker":
        return run_worker(args.nats, processes=args.processes, name=args.name, streams=streams,
                          ack_wait_s=args.ack_wait, max_deliver=args.max_deliver)  # fmt: skip
    check_metric(args.metric)
    if args.processes is not None and args.processes < 1:
        raise SweepError("--processes must be >= 1")
    spec = load_spec(args.spec)
    variants = expand(spec)

    def go(on_result: ResultCallback | None) -> SweepReport:
        return run_sweep(spec, processes=args.processes, nats_url=args.nats, streams=streams, metric=args.metric,
                         on_result=on_result, variants=variants)  # fmt: skip

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    report = _with_progress(len(variants), go) if progress else go(None)
    if args.out:
        print(f"table: {write_table(report.table, Path(args.out))}", file=sys.stderr)
    print(json.dumps(report_dict(report)) if args.json else format_report(report, args.top))
    return 0
