"""Dead letters: rows an engine keeps failing on go, after bus.max_deliveries deliveries, to `<root>.dlq.<kind>.<symbol>`
with the error; the session goes on without them; once the engine is fixed they can be replayed, once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import polars as pl

from utp.core.bus import InProcessBus
from utp.core.clock import WallClock
from utp.core.kinds import KINDS
from utp.core.runtime import DeadLetter
from utp.daemon.watchdog import Alert, Check, Watchdogs, failed_engines, restart_failed_engines
from utp.storage.state import ImmediateCheckpointer, StateStore
from utp.v1 import events_pb2 as pb
from tests.test_graph import order_log, run
from tests.test_jetstream import GOOG, config, jetstream_session

#: The bar time the risk engine cannot take: 2005-03-01.
POISON_NS = 1109635200 * 10**9


def test_a_step_that_keeps_failing_goes_to_the_dead_letters_and_the_session_goes_on(
    nats_url: str, stream_names: tuple[str, str], tmp_path: Path
) -> None:
    cfg = config(GOOG, 5)  # batches of 5 bar times: the poison must take only its own bar time with it
    reference = order_log(run(cfg))

    async def go() -> tuple:
        store = StateStore(tmp_path / "state", fsync=False)
        session = await jetstream_session(cfg, nats_url, *stream_names, ImmediateCheckpointer(store))
        risk = next(r for r in session.runners if r.engine.name == "risk")
        assert risk.max_deliveries == 3
        real_step, fixed, seen = risk.engine.on_step, [False], []

        def poisoned_step(ctx, through_ns, frames) -> None:  # noqa: ANN001
            bars = frames.get("bar")
            if bars is not None and bars["event_time_ns"].is_in([POISON_NS]).any() and not fixed[0]:
                raise ValueError("cannot price the bar of 2005-03-01")
            late = [f for f in frames.values() if f.height and f["event_time_ns"][0] <= risk.through]
            seen.extend(late)
            real_step(ctx, through_ns, frames)

        risk.engine.on_step = poisoned_step  # type: ignore[method-assign]
        alerts: list[Alert] = []
        runners = lambda: session.runners  # noqa: E731
        watchdogs = Watchdogs([Check("engines", failed_engines(runners), restart_failed_engines(runners),
                                     interval_s=0.1, cooldown_s=0)], alerts.append)  # fmt: skip
        watching = asyncio.create_task(watchdogs.run_forever())
        try:
            await asyncio.wait_for(session.run(), 240)
            letters = await session.bus.read_dead_letters()
            # Fixed: replay them, and once more (the second time changes nothing).
            fixed[0] = True
            replayed = []
            for letter in letters:
                frame = KINDS[letter.kind].to_frame([letter.event])
                replayed.append(await risk.replay_dead_letter(letter.kind, frame, letter.letter_id))
                await session.bus.drop_dead_letter(letter.sequence)
            again = [await risk.replay_dead_letter(x.kind, KINDS[x.kind].to_frame([x.event]), x.letter_id) for x in letters]
            left = await session.bus.read_dead_letters()
            return order_log(session), risk.restarts, risk.dead_lettered, letters, replayed, again, left, seen, alerts
        finally:
            watching.cancel()
            await session.stop()
            await session.bus.close()
            store.close()

    orders, restarts, dead, letters, replayed, again, left, seen, alerts = asyncio.run(go())
    # One failure of the 5-bar-time step, then three of the poisoned bar time's own step.
    assert restarts == 4, alerts
    assert "cannot price the bar of 2005-03-01" in alerts[0].message
    assert dead == len(letters) >= 1
    assert {x.kind for x in letters} <= {"bar", "portfolio_target"} and "bar" in {x.kind for x in letters}
    for letter in letters:
        assert letter.engine == "risk" and letter.deliveries == 3
        assert letter.error == "ValueError: cannot price the bar of 2005-03-01"
        assert letter.event.header.event_time_ns == POISON_NS, "only the poisoned bar time goes"
        assert letter.subject.split(".")[1:3] == ["dlq", letter.kind]
    # The session went on past the poison: orders after it were placed as in the undisturbed run.
    later = [o for o in reference if pb.Order.FromString(o).header.event_time_ns > POISON_NS + 30 * 86_400 * 10**9]
    assert later and set(later) <= set(orders)
    # Replayed once fixed: handed to the engine as late rows, once; the stream no longer holds them.
    assert replayed == [True] * len(letters) and again == [False] * len(letters)
    assert sum(f.height for f in seen) >= len(letters)
    assert left == []


def test_a_command_that_keeps_failing_is_dead_lettered_and_the_in_process_bus_keeps_letters_in_memory() -> None:
    from utp.core.runtime import Engine, EngineRunner, Input, InputMode

    class Picky(Engine):
        name = "picky"
        inputs = (Input("bar"), Input("control_command", InputMode.COMMAND))

        def on_step(self, ctx, through_ns, frames) -> None:  # noqa: ANN001
            pass

        def on_command(self, ctx, kind, frame) -> None:  # noqa: ANN001
            raise RuntimeError("unknown action")

    async def go() -> tuple[list[DeadLetter], int]:
        bus = InProcessBus()
        runner = EngineRunner(Picky(), bus, WallClock(), max_deliveries=1)
        await runner.start()
        command = pb.ControlCommand(header=pb.EventHeader(event_id="control_command/1"), action=pb.CONTROL_ACTION_HALT)
        frame = KINDS["control_command"].to_frame([command])
        from utp.core.batch import Batch

        try:
            await bus.publish(Batch("control_command", "test", frame, None))
        except Exception:  # noqa: BLE001 - the first delivery fails the engine
            pass
        # What a restart would do: deliver it again; this time it goes to the dead letters and the engine goes on.
        runner.state = pb.ENGINE_STATE_RUNNING
        await bus.publish(Batch("control_command", "test", frame, None))
        return bus.dead_letters, runner.dead_lettered

    letters, dead = asyncio.run(go())
    assert dead == 1 and len(letters) == 1
    assert letters[0].error == "RuntimeError: unknown action" and letters[0].kind == "control_command"
    assert isinstance(letters[0].frame, pl.DataFrame) and letters[0].frame["event_id"].to_list() == ["control_command/1"]


def dead_letters_in(url: str, stream: str, root: str, n: int) -> None:
    """What risk's runner publishes after its last failed delivery (tested above), for `n` GOOG bars."""
    from utp.core.jetstream import JetStreamBus
    from utp.storage.datasets import dataset

    rows = dataset("goog").bars(("GOOG",)).slice(100, n).to_dicts()
    bars = KINDS["bar"].to_frame([
        pb.Bar(header=pb.EventHeader(event_id=f"bar/GOOG@{r['event_time_ns']}", correlation_id=f"GOOG@{r['event_time_ns']}",
                                     event_time_ns=r["event_time_ns"], symbol="GOOG"),
               open=r["open"], high=r["high"], low=r["low"], close=r["close"], volume=r["volume"], interval_ns=86_400 * 10**9)
        for r in rows
    ])  # fmt: skip

    async def publish() -> None:
        bus = JetStreamBus(url, stream=stream, subject_root=root)
        await bus.connect()
        await bus.dead_letter(DeadLetter("risk", "bar", bars, "ValueError: cannot price it", 3))
        await bus.close()

    asyncio.run(publish())


def test_the_daemon_lists_replays_and_drops_dead_letters(nats_url, stream_names, daemon_factory) -> None:  # noqa: ANN001
    import grpc

    from utp.v1 import core_service_pb2 as api
    from tests.test_operations import code_of, ctl
    from tests.test_replay import daemon_args

    # (daemon_factory after stream_names: the daemon stops before its stream is deleted.)
    stream, root = stream_names
    daemon = daemon_factory(*daemon_args(nats_url, stream, root)).start()
    assert daemon.stub.ListDeadLetters(api.ListDeadLettersRequest()).letters == []
    dead_letters_in(nats_url, stream, root, 2)
    letters = daemon.stub.ListDeadLetters(api.ListDeadLettersRequest()).letters
    assert [(x.engine, x.event.bar.header.symbol, x.deliveries, x.error) for x in letters] == [
        ("risk", "GOOG", 3, "ValueError: cannot price it")] * 2
    assert [x.subject for x in letters] == [f"{root}.dlq.bar.GOOG"] * 2
    listed = ctl(daemon, "dead-letters")
    assert listed.returncode == 0 and f"#{letters[0].sequence}" in listed.stdout and "cannot price it" in listed.stdout

    first, second = (x.sequence for x in letters)
    replayed = ctl(daemon, "replay-letters", str(first), "--reason", "fixed the pricer")
    assert replayed.returncode == 0 and "replayed 1, dropped 0" in replayed.stdout, replayed.stderr
    dropped = daemon.stub.ReplayDeadLetters(api.ReplayDeadLettersRequest(all=True, drop=True, reason="stale"))
    assert (dropped.replayed, dropped.dropped, list(dropped.errors)) == (0, 1, [])
    assert daemon.stub.ListDeadLetters(api.ListDeadLettersRequest()).letters == []
    unknown = daemon.stub.ReplayDeadLetters(api.ReplayDeadLettersRequest(sequences=[second], reason="again"))
    assert list(unknown.errors) == [f"{second}: no such dead letter"]
    assert code_of(lambda: daemon.stub.ReplayDeadLetters(api.ReplayDeadLettersRequest())) == grpc.StatusCode.INVALID_ARGUMENT
    audit = daemon.stub.ListAudit(api.ListAuditRequest(method="ReplayDeadLetters")).entries
    assert any(e.reason == "fixed the pricer" for e in audit)
    assert daemon.status().session_state in (api.SESSION_STATE_RUNNING, api.SESSION_STATE_COMPLETED)
    assert not [e for e in daemon.status().engines if e.state == pb.ENGINE_STATE_FAILED]


def test_an_in_process_daemon_has_no_dead_letters_and_says_why_it_cannot_replay(daemon_factory) -> None:  # noqa: ANN001
    import grpc

    from utp.v1 import core_service_pb2 as api
    from tests.test_operations import code_of

    daemon = daemon_factory("--replay-rate", "5").start()
    assert daemon.stub.ListDeadLetters(api.ListDeadLettersRequest()).letters == []
    call = lambda: daemon.stub.ReplayDeadLetters(api.ReplayDeadLettersRequest(all=True))  # noqa: E731
    assert code_of(call) == grpc.StatusCode.FAILED_PRECONDITION


def test_the_console_lists_a_dead_letter_and_replays_it(nats_url, stream_names, daemon_factory) -> None:  # noqa: ANN001
    from utp.console.widgets import Table
    from utp.v1 import core_service_pb2 as api
    from tests.test_console import confirm, console, wait_until
    from tests.test_replay import daemon_args

    stream, root = stream_names
    daemon = daemon_factory(*daemon_args(nats_url, stream, root)).start()
    dead_letters_in(nats_url, stream, root, 1)

    async def go() -> None:
        app = console(daemon)
        async with app.run_test(size=(140, 50)) as pilot:
            await pilot.press("8")
            table = app.query_one("#dead-letters", Table)
            await wait_until(lambda: table.row_count == 1, 20, "the dead letter in the console")
            row = table.get_row(table.selected_key)
            assert (row[2], row[3], row[4], row[5]) == ("risk", "bar", "GOOG", "3")
            table.focus()
            await pilot.pause()
            await pilot.press("l")
            await confirm(app, pilot)
            await wait_until(lambda: not daemon.stub.ListDeadLetters(api.ListDeadLettersRequest()).letters, 20,
                             "the letter to leave the stream")  # fmt: skip
            await wait_until(lambda: table.row_count == 0, 20, "the console to show it gone")

    asyncio.run(go())
    entry = daemon.stub.ListAudit(api.ListAuditRequest(method="ReplayDeadLetters")).entries[0]
    assert entry.reason == "replayed from the console" and entry.outcome == "OK"
