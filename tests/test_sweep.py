"""Parameter sweeps: spec expansion and validation, local process pools that equal direct backtests, and
the distributed path over JetStream: workers killed mid-job, malformed jobs, exhausted deliveries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from utp.core.config import load_config
from utp.core.performance import simple_returns
from utp.core.validation import deflated_sharpe_ratio_of_trials, probability_of_backtest_overfitting
from utp.daemon import cli
from utp.daemon import sweep
from utp.daemon.session import MarketData, backtest
from utp.v1 import research_pb2 as rpb

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "configs" / "reference.yaml"
GRID = {"alpha.ema_cross.fast": [8, 12], "alpha.ema_cross.slow": [26, 40]}
#: Jobs of a second or two: small batches make the same backtest slower (batch size never changes a
#: decision), so a worker can be killed in the middle of one.
SLOW = {"market_data.start": "2008-01-01", "market_data.batch_bar_times": 4}


def _spec(grid: dict | None = None, overrides: dict | None = None, **extra: object) -> sweep.SweepSpec:
    data = {"config": [str(REFERENCE)], "overrides": {"market_data.dataset": "goog", **(overrides or {})}, **extra}
    if grid is not None:
        data["grid"] = grid
    return sweep.parse_spec(data)


def _direct(params: dict, overrides: dict | None = None):
    """The variant backtested without any sweep machinery."""
    config = load_config([REFERENCE], overrides={"market_data.dataset": "goog", **(overrides or {}), **params},
                         environ={})  # fmt: skip
    return backtest(config, market_data=MarketData.from_config(config), include_details=True)


def _summary_bytes(result) -> bytes:
    # Bytes, not ==: undefined statistics are NaN, and NaN != NaN.
    return result.summary.SerializeToString(deterministic=True)


# -- the spec ----------------------------------------------------------------------------------------
def test_grid_expands_to_every_combination_in_key_order() -> None:
    variants = sweep.expand(_spec({"alpha.ema_cross.fast": [8, 10, 12], "alpha.ema_cross.slow": [26, 30]}))
    assert [v.variant_id for v in variants] == [f"v00{i}" for i in range(6)]
    assert [tuple(v.params.values()) for v in variants] == [(8, 26), (8, 30), (10, 26), (10, 30), (12, 26), (12, 30)]


def test_random_draws_are_seeded_bounded_and_combined_with_the_grid() -> None:
    random = {
        "alpha.ema_cross.fast": {"low": 5, "high": 20, "int": True},
        "alpha.ema_cross.slow": {"low": 25, "high": 100, "int": True, "log": True},
        "risk.max_position_pct": [0.5, 1.0],
        "execution.slippage_bps": {"low": 0.0, "high": 5.0},
    }
    one = sweep.expand(_spec(random=random, samples=8, seed=3))
    again = sweep.expand(_spec(random=random, samples=8, seed=3))
    other = sweep.expand(_spec(random=random, samples=8, seed=4))
    assert len(one) == 8
    assert [v.params for v in one] == [v.params for v in again]
    assert [v.params for v in one] != [v.params for v in other]
    for v in one:
        p = v.params
        assert isinstance(p["alpha.ema_cross.fast"], int) and 5 <= p["alpha.ema_cross.fast"] <= 20
        assert isinstance(p["alpha.ema_cross.slow"], int) and 25 <= p["alpha.ema_cross.slow"] <= 100
        assert p["risk.max_position_pct"] in (0.5, 1.0)
        assert 0.0 <= p["execution.slippage_bps"] <= 5.0
    both = sweep.expand(_spec({"exit.stop_loss_pct": [0.0, 0.05]}, random=random, samples=3, seed=3))
    assert len(both) == 6
    assert [v.params["exit.stop_loss_pct"] for v in both] == [0.0] * 3 + [0.05] * 3
    assert [v.params["alpha.ema_cross.fast"] for v in both[:3]] == [v.params["alpha.ema_cross.fast"] for v in both[3:]]


def test_bad_specs_are_rejected_with_the_reason() -> None:
    with pytest.raises(sweep.SweepError, match=r"alpha.ema_cross.fastt is not a setting; alpha.ema_cross has enabled, fast"):
        _spec({"alpha.ema_cross.fastt": [8, 10]})
    with pytest.raises(sweep.SweepError, match=r"risk.max_position_pct.x is not a setting"):
        _spec(random={"risk.max_position_pct.x": [1]}, samples=1)
    with pytest.raises(sweep.SweepError, match=r"(?s)no valid variant among 2.*alpha.ema_cross.fast=abc.*Expected `int`"):
        sweep.expand(_spec({"alpha.ema_cross.fast": ["abc", "def"]}))  # a known setting, a wrong type
    with pytest.raises(sweep.SweepError, match=r"gird"):
        _spec(gird={"alpha.ema_cross.fast": [8]})
    with pytest.raises(sweep.SweepError, match=r"alpha.ema_cross contains alpha.ema_cross.fast"):
        _spec({"alpha.ema_cross": [{"fast": 8}], "alpha.ema_cross.fast": [8]})
    with pytest.raises(sweep.SweepError, match=r"nothing to sweep"):
        _spec()
    with pytest.raises(sweep.SweepError, match=r"random needs samples"):
        _spec(random={"alpha.ema_cross.fast": [8, 10]})
    # fast must stay below slow: the variant (30, 26) is invalid; the sweep refuses unless told to skip it.
    grid = {"alpha.ema_cross.fast": [8, 30], "alpha.ema_cross.slow": [26]}
    with pytest.raises(sweep.SweepError, match=r"(?s)1 of 2 variants are invalid.*alpha.ema_cross.fast=30"):
        sweep.expand(_spec(grid))
    assert [v.params for v in sweep.expand(_spec(grid, skip_invalid=True))] == [
        {"alpha.ema_cross.fast": 8, "alpha.ema_cross.slow": 26}
    ]
    with pytest.raises(sweep.SweepError, match=r"not a summary statistic"):
        sweep.check_metric("sharp")


def test_parameters_survive_their_yaml_text() -> None:
    values = {"a": 8, "b": 0.1, "c": 1e-05, "d": "true", "e": "a, b", "f": [20, 50], "g": True, "h": 1 / 3}
    assert sweep.decode_params(sweep.encode_params(values)) == values


def test_the_sample_spec_is_valid() -> None:
    spec = sweep.load_spec(REPO / "configs" / "sweep-reference.yaml")
    variants = sweep.expand(spec)
    assert len(variants) == 9 and spec.base.alpha.ema_cross.enabled and not spec.base.alpha.rsi.enabled


# -- local runs --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_results() -> tuple[list[sweep.Variant], list[rpb.SweepResult]]:
    spec = _spec(GRID)
    variants = sweep.expand(spec)
    return variants, sweep.run_local(sweep.make_jobs(spec, variants, "local-test"), processes=2)


def test_local_sweep_equals_direct_backtests(local_results) -> None:
    variants, results = local_results
    by_id = {r.variant_id: r for r in results}
    assert sorted(by_id) == [v.variant_id for v in variants] and len(results) == len(variants)
    matrix = []
    for v in variants:
        result, direct = by_id[v.variant_id], _direct(v.params)
        assert result.error == ""
        assert _summary_bytes(result) == _summary_bytes(direct)
        curve = np.concatenate([[direct.summary.initial_equity], np.asarray(direct.equity_curve.equity)])
        assert np.array_equal(np.asarray(result.equity_returns), simple_returns(curve))
        assert result.worker.startswith("local:") and result.delivery == 1
        matrix.append(simple_returns(curve))
    # The report ranks by the metric and computes the DSR and PBO from exactly those returns.
    report = sweep.gather("local-test", results)
    sharpes = report.table["sharpe"].to_list()
    assert sharpes == sorted(sharpes, reverse=True) and report.n_failed == 0
    best = report.table["variant"][0]
    ids = [v.variant_id for v in variants]
    expected_dsr = deflated_sharpe_ratio_of_trials(np.column_stack(matrix), selected=ids.index(best))
    assert report.dsr_variant == best and report.dsr is not None
    assert report.dsr.dsr == pytest.approx(expected_dsr.dsr, abs=1e-12) and report.dsr.n_trials == len(variants)
    assert report.pbo is not None and report.pbo.n_variants == len(variants)
    order = [ids.index(v) for v in report.table["variant"]]
    assert report.pbo.pbo == probability_of_backtest_overfitting(np.column_stack(matrix)[:, order]).pbo
    text = sweep.format_report(report, top=2)
    assert f"Deflated Sharpe Ratio of {best}" in text and "Probability of backtest overfitting" in text
    assert "4 variants (0 failed)" in text and text.count("| v0") == 2


def test_a_failing_variant_is_a_row_with_its_error(local_results) -> None:
    _, results = local_results
    spec = _spec({"market_data.symbols": [["NOPE"]]})  # a symbol GOOG's data set does not have
    failed = sweep.run_job(sweep.make_jobs(spec, sweep.expand(spec), "bad")[0], "here")
    assert failed.error and not failed.HasField("summary")
    report = sweep.gather("mixed", [*results, failed])
    assert report.n_failed == 1 and report.table["error"][-1] == failed.error
    assert report.table["sharpe"][-1] is None  # sorted last
    assert report.dsr is not None and report.dsr.n_trials == len(results)  # failures are not trials


def test_cli_sweep_prints_json_and_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "config": [str(REFERENCE)], "overrides": {"market_data.dataset": "goog"},
        "grid": {"alpha.ema_cross.fast": [8, 12]}, "random": {"alpha.ema_cross.slow": {"low": 26, "high": 60, "int": True}},
        "samples": 2, "seed": 5,
    }))  # fmt: skip
    out = tmp_path / "table.parquet"
    args = ["sweep", str(spec_path), "--processes", "1", "--out", str(out), "--json", "--no-progress",
            "--metric", "max_drawdown"]  # fmt: skip
    assert cli.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["variants"] == 4 and report["failed"] == 0 and report["metric"] == "max_drawdown"
    drawdowns = [row["max_drawdown"] for row in report["rows"]]
    assert drawdowns == sorted(drawdowns)  # less is better
    assert 0 <= report["dsr"]["dsr"] <= 1 and report["dsr"]["n_trials"] == 4 and report["dsr"]["variant"] == report["best"]
    assert 0 <= report["pbo"]["pbo"] <= 1 and report["pbo"]["n_variants"] == 4
    table = pl.read_parquet(out)
    assert table["variant"].to_list() == [row["variant"] for row in report["rows"]]
    assert table.schema["alpha.ema_cross.slow"] == pl.Int64
    assert cli.main(["sweep", str(spec_path), "--metric", "sharp"]) == 2
    assert "not a summary statistic" in capsys.readouterr().err


# -- distributed runs --------------------------------------------------------------------------------
@pytest.fixture
def streams(nats_url: str) -> Iterator[sweep.SweepStreams]:
    """Streams of this test only, deleted afterwards."""
    names = sweep.SweepStreams(f"TEST_SWEEP_{uuid.uuid4().hex[:10]}")
    yield names

    async def delete() -> None:
        import nats

        nc = await nats.connect(nats_url)
        for stream in (names.jobs_stream, names.results_stream):
            with contextlib.suppress(Exception):
                await nc.jetstream().delete_stream(stream)
        await nc.close()

    asyncio.run(delete())


class WorkerProcess:
    """`utp worker` in a subprocess; its log lines are read as they come."""

    def __init__(self, nats_url: str, streams: sweep.SweepStreams, name: str, *extra: str) -> None:
        cmd = [sys.executable, "-m", "utp.daemon.cli", "worker", "--nats", nats_url, "--streams", streams.prefix,
               "--name", name, "--log-level", "INFO", *extra]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if text in line:
                return line
        raise AssertionError(f"worker never logged {text!r}:\n{''.join(self.log)}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(30)


def _stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name: state, parent pid, ... (Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _running(pid: int) -> bool:
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"  # a zombie has exited; only its parent has not reaped it


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and int(fields[1]) == pid:
            children.append(int(entry.name))
    return [c for c in children if _running(c)]


def _in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, list]:
    out: list = []

    def go() -> None:
        try:
            out.append(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            out.append(exc)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, out


async def _stream_messages(nats_url: str, stream: str, settle_s: float = 10.0) -> int:
    """Messages left in a work-queue stream once acks have landed: a worker acks after it publishes the
    result, so a reader of the result can look before the ack reaches the server. Waits up to settle_s
    for the count to reach zero and returns what is left then."""
    import nats

    nc = await nats.connect(nats_url)
    try:
        deadline = time.monotonic() + settle_s
        while True:
            left = (await nc.jetstream().stream_info(stream)).state.messages
            if left == 0 or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.1)
    finally:
        await nc.close()


def test_distributed_sweep_survives_a_worker_killed_mid_job(nats_url: str, streams: sweep.SweepStreams) -> None:
    spec = _spec(GRID, overrides=SLOW)
    variants = sweep.expand(spec)
    jobs = sweep.make_jobs(spec, variants, "killed")
    # A short ack wait makes the killed job come back quickly. It is also shorter than every job, and B
    # runs two at a time, so one slot asks for work while the other runs a job: without the workers'
    # "in progress" that running job would be handed out again and answered twice.
    a = WorkerProcess(nats_url, streams, "A", "--ack-wait", "1.5")
    b = WorkerProcess(nats_url, streams, "B", "--ack-wait", "1.5", "--processes", "2")
    try:
        a.wait_for("waiting for jobs")
        b.wait_for("waiting for jobs")
        thread, out = _in_thread(sweep.run_distributed, jobs, nats_url, streams)
        killed = a.wait_for("running killed/").split("killed/")[1].split()[0]
        pool = _children(a.process.pid)  # the process running the job
        assert pool
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(10)
        thread.join(180)
        assert out, "the coordinator did not finish"
        if isinstance(out[0], BaseException):
            raise out[0]
        results, duplicates = out[0]
        local = {r.variant_id: r for r in sweep.run_local(jobs, processes=2)}
        assert sorted(r.variant_id for r in results) == [v.variant_id for v in variants]  # each exactly once
        assert duplicates == 0
        for r in results:
            assert r.error == "" and r.worker == "B"  # A finished nothing: its job came back to B
            assert _summary_bytes(r) == _summary_bytes(local[r.variant_id])
            assert list(r.equity_returns) == list(local[r.variant_id].equity_returns)
            assert r.delivery == (2 if r.variant_id == killed else 1)
        report = sweep.gather("killed", results)
        assert report.dsr is not None and report.pbo is not None and report.n_variants == len(variants)
        assert asyncio.run(_stream_messages(nats_url, streams.jobs_stream)) == 0  # acked or purged
        assert b.stop() == 0
        b.wait_for("stopped after")
        # The killed worker's pool process noticed and left, rather than living on as an orphan.
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid in pool) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_running(pid) for pid in pool)
    finally:
        a.stop(signal.SIGKILL)
        b.stop(signal.SIGKILL)


def test_a_malformed_job_is_answered_with_an_error_and_the_worker_goes_on(
    nats_url: str, streams: sweep.SweepStreams
) -> None:
    import nats

    spec = _spec(GRID)
    good = sweep.make_jobs(spec, sweep.expand(spec)[:1], "mixed")[0]
    worker = WorkerProcess(nats_url, streams, "W")

    async def exchange() -> list[rpb.SweepResult]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await sweep.ensure_streams(js, streams)
        await js.publish(streams.jobs("mixed"), b"\xff not a protobuf", headers={"Nats-Msg-Id": "mixed/bad"})
        await js.publish(streams.jobs("mixed"), good.SerializeToString(), headers={"Nats-Msg-Id": "mixed/v000"})
        sub = await js.subscribe(streams.results("mixed"), ordered_consumer=True)
        answers = [rpb.SweepResult.FromString((await sub.next_msg(timeout=60)).data) for _ in range(2)]
        await nc.close()
        return answers

    try:
        worker.wait_for("waiting for jobs")
        bad, ok = asyncio.run(exchange())
        assert (bad.sweep_id, bad.variant_id, bad.worker) == ("mixed", "bad", "W")
        assert bad.error.startswith("malformed job: not a SweepJob") and not bad.HasField("summary")
        assert ok.variant_id == "v000" and ok.error == "" and ok.summary.trades > 0
        assert worker.process.poll() is None
        assert asyncio.run(_stream_messages(nats_url, streams.jobs_stream)) == 0  # both acked
        assert worker.stop() == 0
    finally:
        worker.stop(signal.SIGKILL)


def test_a_job_out_of_deliveries_is_reported_failed(nats_url: str, streams: sweep.SweepStreams) -> None:
    """This test plays a worker that takes the job and dies (never acks); with max_deliver 1, JetStream
    gives up on it and the coordinator, told by the advisory, records the variant as failed."""
    import nats
    import nats.errors

    spec = _spec(GRID)
    jobs = sweep.make_jobs(spec, sweep.expand(spec)[:1], "lost")

    async def play_dying_worker(thread: threading.Thread) -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await sweep.ensure_streams(js, streams)
        await sweep.ensure_worker_consumer(js, streams, ack_wait_s=1.0, max_deliver=1)
        sub = await js.pull_subscribe_bind(streams.consumer, streams.jobs_stream)
        taken = await sub.fetch(1, timeout=30)
        assert rpb.SweepJob.FromString(taken[0].data).variant_id == "v000"
        # Keep asking for work, as live workers do: JetStream notices the exhausted job on such a request.
        deadline = time.monotonic() + 30
        while thread.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(nats.errors.TimeoutError):
                extra = await sub.fetch(1, timeout=1)
                raise AssertionError(f"the job was delivered again: {extra}")
        await nc.close()

    async def run() -> None:
        # The consumer exists before the coordinator publishes, as when workers are already running.
        nc = await nats.connect(nats_url)
        await sweep.ensure_streams(nc.jetstream(), streams)
        await sweep.ensure_worker_consumer(nc.jetstream(), streams, ack_wait_s=1.0, max_deliver=1)
        await nc.close()

    asyncio.run(run())
    thread, out = _in_thread(sweep.run_distributed, jobs, nats_url, streams)
    asyncio.run(play_dying_worker(thread))
    thread.join(30)
    assert out and not isinstance(out[0], BaseException), out
    (result,), duplicates = out[0]
    assert result.variant_id == "v000" and "no result after 1 deliveries" in result.error and result.worker == ""
