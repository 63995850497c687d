"""Historical bars through the vendors' real clients (alpaca-py, polygon-api-client) against the loopback REST
server, and `utp data backfill` end to end: checkpoints, a vendor failing mid-way, and --resume."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from tests.loopback.market_data_rest import MarketDataRestServer
from utp.core.config import DataConfig
from utp.core.vendors.history import RetrySettings, VendorError, fetch_bar_chunks, fetch_bars
from utp.daemon.cli import main
from utp.storage.bars import BarStore
from utp.storage.datasets import dataset, synthetic_bars

# Six sessions of minute bars from Monday 2000-01-03 to Monday 2000-01-10 (a weekend in between).
START, END = datetime(2000, 1, 3, tzinfo=UTC), datetime(2000, 1, 11, tzinfo=UTC)
SESSIONS = 6
PREFIX = {"alpaca": "/v2/stocks/bars", "polygon": "/v2/aggs/ticker/"}
FAST = RetrySettings(retries=2, wait_s=0.01, timeout_s=5.0)


@pytest.fixture(scope="module")
def minute_bars() -> pl.DataFrame:
    return pl.concat([
        synthetic_bars(SESSIONS * 390, symbol="AAPL"), synthetic_bars(SESSIONS * 390, seed=3, symbol="MSFT"),
    ]).sort(["event_time_ns", "symbol"])  # fmt: skip


@pytest.fixture
def server(minute_bars: pl.DataFrame) -> Iterator[MarketDataRestServer]:
    # Pages far below what the clients ask for (10,000 / 50,000), so every chunk takes several pages.
    with MarketDataRestServer(minute_bars, alpaca_page_size=250, polygon_page_size=300) as running:
        yield running


def _settings(server: MarketDataRestServer, timeframe: str = "1Min") -> DataConfig:
    return DataConfig(alpaca_data_url=server.url, polygon_url=server.url, timeframe=timeframe)


def _environ(server: MarketDataRestServer) -> dict[str, str]:
    return {"APCA_API_KEY_ID": server.key, "APCA_API_SECRET_KEY": server.secret, "POLYGON_API_KEY": server.polygon_key}


def _fetch(source: str, server: MarketDataRestServer, symbols=("AAPL", "MSFT"), **kwargs) -> pl.DataFrame:
    frames = fetch_bars(source, _settings(server, kwargs.pop("timeframe", "1Min")), list(symbols),
                        kwargs.pop("start", START), kwargs.pop("end", END), environ=_environ(server),
                        retry=kwargs.pop("retry", FAST), **kwargs)  # fmt: skip
    return pl.concat(list(frames)).sort(["event_time_ns", "symbol"])


# -- fetching through the vendors' clients ---------------------------------------------------------------
@pytest.mark.parametrize("source", ["alpaca", "polygon"])
def test_both_vendors_return_exactly_the_served_bars_across_pages(
    source: str, server: MarketDataRestServer, minute_bars: pl.DataFrame
) -> None:
    got = _fetch(source, server, chunk_days=3)
    assert got.equals(minute_bars)  # every value and time, bit for bit
    pages = [r for r in server.requests if r.path.startswith(PREFIX[source])]
    assert all(r.status == 200 for r in pages)
    # 2 symbols x 3 chunks (3, 3 and 2 days) and 390 bars a session: at least 2 pages per non-empty chunk.
    assert len(pages) >= 2 * 2 * 3
    if source == "alpaca":
        assert sum("page_token" in r.query for r in pages) >= 6
        assert {r.query["feed"] for r in pages} == {"iex"} and {r.query["timeframe"] for r in pages} == {"1Min"}
        assert {r.headers["APCA-API-KEY-ID"] for r in pages} == {server.key}
    else:
        assert sum("cursor" in r.query for r in pages) >= 6
        assert {r.headers["Authorization"] for r in pages} == {f"Bearer {server.polygon_key}"}
        assert all("apiKey" not in r.query for r in pages)


@pytest.mark.parametrize("source", ["alpaca", "polygon"])
def test_chunks_cover_the_range_weekends_included(source: str, server: MarketDataRestServer) -> None:
    chunks = list(fetch_bar_chunks(source, _settings(server), ["AAPL"], START, END, environ=_environ(server),
                                   chunk_days=2, retry=FAST))  # fmt: skip
    assert [(c.start.date(), c.last_day) for c in chunks] == [
        (date(2000, 1, 3), date(2000, 1, 4)), (date(2000, 1, 5), date(2000, 1, 6)),
        (date(2000, 1, 7), date(2000, 1, 8)), (date(2000, 1, 9), date(2000, 1, 10)),
    ]  # fmt: skip
    assert [c.bars.height for c in chunks] == [780, 780, 390, 390]


@pytest.mark.parametrize("source", ["alpaca", "polygon"])
def test_real_daily_bars_round_trip(source: str) -> None:
    goog = dataset("goog").bars(start=date(2012, 1, 1), end=date(2012, 12, 31))
    with MarketDataRestServer(goog, alpaca_page_size=40, polygon_page_size=50) as server:
        got = _fetch(source, server, symbols=["GOOG"], timeframe="1Day",
                     start=datetime(2012, 1, 1, tzinfo=UTC), end=datetime(2013, 1, 1, tzinfo=UTC))  # fmt: skip
        assert got.equals(goog)
        assert len(server.requests) >= goog.height // 50


@pytest.mark.parametrize("source", ["alpaca", "polygon"])
def test_five_minute_bars_are_aggregated_by_the_vendor(
    source: str, server: MarketDataRestServer, minute_bars: pl.DataFrame
) -> None:
    got = _fetch(source, server, symbols=["AAPL"], timeframe="5Min", end=datetime(2000, 1, 4, tzinfo=UTC))
    assert got.height == 390 // 5  # 14:30 .. 20:55
    assert (got["event_time_ns"] % (300 * 10**9) == 0).all()
    minutes = minute_bars.filter(pl.col("symbol") == "AAPL")
    last = minutes.slice(385, 5)  # the session's last five minutes: 20:55 .. 20:59
    assert got.row(-1) == (
        last["event_time_ns"][0], "AAPL", last["open"][0], last["high"].max(), last["low"].min(), last["close"][-1],
        last["volume"].sum(),
    )  # fmt: skip


@pytest.mark.parametrize("source", ["alpaca", "polygon"])
def test_a_rate_limit_is_retried_by_the_client(
    source: str, server: MarketDataRestServer, minute_bars: pl.DataFrame
) -> None:
    server.fail_next(PREFIX[source], 429, times=2)
    got = _fetch(source, server, symbols=["AAPL"], end=datetime(2000, 1, 4, tzinfo=UTC))
    assert got.equals(minute_bars.filter(pl.col("symbol") == "AAPL").head(390))
    statuses = [r.status for r in server.requests]
    assert statuses[:3] == [429, 429, 200]


@pytest.mark.parametrize("source", ["alpaca", "polygon"])
def test_a_persistent_server_error_fails_after_the_retries(source: str, server: MarketDataRestServer) -> None:
    server.fail_next(PREFIX[source], 500, times=100)
    with pytest.raises(VendorError, match="AAPL 2000-01-03") as failure:
        _fetch(source, server, symbols=["AAPL"], retry=RetrySettings(retries=2, wait_s=0.01))
    assert failure.value.status == 500
    assert [r.status for r in server.requests] == [500, 500, 500]  # the first try and 2 retries


@pytest.mark.parametrize("source", ["alpaca", "polygon"])
def test_a_slow_answer_times_out_and_is_asked_again(
    source: str, server: MarketDataRestServer, minute_bars: pl.DataFrame
) -> None:
    _fetch(source, server, symbols=["AAPL"], end=datetime(2000, 1, 4, tzinfo=UTC))  # the clients' imports, warm
    server.clear_requests()
    server.delay_next(PREFIX[source], 1.0)
    began = time.monotonic()
    got = _fetch(source, server, symbols=["AAPL"], end=datetime(2000, 1, 4, tzinfo=UTC),
                 retry=RetrySettings(retries=2, wait_s=0.01, timeout_s=0.2))  # fmt: skip
    assert time.monotonic() - began < 0.9  # it gave up on the slow answer instead of waiting for it
    assert got.equals(minute_bars.filter(pl.col("symbol") == "AAPL").head(390))
    # Two pages, the first asked twice; the slow answer is logged when it is finally sent.
    deadline = time.monotonic() + 3
    while len(server.requests) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(server.requests) == 3


@pytest.mark.parametrize("source", ["alpaca", "polygon"])
def test_refused_credentials_are_not_retried(source: str, server: MarketDataRestServer) -> None:
    environ = {"APCA_API_KEY_ID": "wrong", "APCA_API_SECRET_KEY": "wrong", "POLYGON_API_KEY": "wrong"}
    with pytest.raises(VendorError) as failure:
        list(fetch_bars(source, _settings(server), ["AAPL"], START, END, environ=environ, retry=FAST))
    assert failure.value.status == 401
    assert [r.status for r in server.requests] == [401]


def test_missing_credentials_and_bad_settings_name_the_fix(server: MarketDataRestServer) -> None:
    settings = _settings(server)
    with pytest.raises(ValueError, match="APCA_API_SECRET_KEY"):
        fetch_bars("alpaca", settings, ["AAPL"], START, END, environ={"APCA_API_KEY_ID": "k"})
    with pytest.raises(ValueError, match="POLYGON_API_KEY"):
        fetch_bars("polygon", settings, ["AAPL"], START, END, environ={})
    with pytest.raises(ValueError, match="choose one of alpaca, polygon"):
        fetch_bars("iex", settings, ["AAPL"], START, END, environ=_environ(server))
    with pytest.raises(ValueError, match="data.timeframe"):
        fetch_bars("alpaca", _settings(server, "2Weeks"), ["AAPL"], START, END, environ=_environ(server))
    assert server.requests == []


# -- utp data backfill ---------------------------------------------------------------------------------------
@pytest.fixture
def cli_env(server: MarketDataRestServer, monkeypatch: pytest.MonkeyPatch) -> MarketDataRestServer:
    for name, value in _environ(server).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("UTP_DATA__ALPACA_DATA_URL", server.url)
    monkeypatch.setenv("UTP_DATA__POLYGON_URL", server.url)
    monkeypatch.setenv("UTP_BROKER__RETRIES", "1")
    monkeypatch.setenv("UTP_BROKER__BACKOFF_S", "0.01")
    return server


def _backfill(source: str, store: Path, *extra: str) -> int:
    return main(["data", "backfill", "--source", source, "--symbols", "AAPL,MSFT", "--from", "2000-01-03",
                 "--to", "2000-01-10", "--timeframe", "1Min", "--chunk-days", "2", "--store", str(store), *extra])


@pytest.mark.parametrize("source", ["alpaca", "polygon"])
def test_backfill_fills_the_store(
    source: str, cli_env: MarketDataRestServer, minute_bars: pl.DataFrame, tmp_path: Path, capsys
) -> None:
    assert _backfill(source, tmp_path, "--progress") == 0
    out, err = capsys.readouterr()
    assert f"backfill {source} 1Min 2000-01-03..2000-01-10" in out and "AAPL 2340 rows, MSFT 2340 rows" in out
    assert "8/8" in err  # the progress bar: 2 symbols x 4 chunks
    assert BarStore(tmp_path).read().equals(minute_bars)
    assert main(["data", "show", "--store", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "AAPL" in shown and "2000-01-03 14:30" in shown and "2000-01-10 20:59" in shown and "2340" in shown


@pytest.mark.parametrize("source", ["alpaca", "polygon"])
def test_a_failing_vendor_stops_the_backfill_and_resume_finishes_it(
    source: str, cli_env: MarketDataRestServer, minute_bars: pl.DataFrame, tmp_path: Path, capsys
) -> None:
    server = cli_env
    # MSFT's third chunk keeps failing: AAPL (4 chunks) and MSFT's first two are stored by then.
    msft_prefix = "/v2/aggs/ticker/MSFT" if source == "polygon" else "/v2/stocks/bars"
    pages_before = _pages_per_chunk(minute_bars, server, source)
    server.fail_next(msft_prefix, 500, times=100, after=pages_before["MSFT_first_two"])
    assert _backfill(source, tmp_path) == 1
    err = capsys.readouterr().err
    assert "--resume" in err and "Traceback" not in err and "500" in err
    partial = BarStore(tmp_path).read()
    assert partial.filter(pl.col("symbol") == "AAPL").height == SESSIONS * 390
    assert partial.filter(pl.col("symbol") == "MSFT").height == 4 * 390  # 01-03..01-06: 4 sessions

    # The same job again without --resume is refused: the checkpoint would be ignored.
    assert _backfill(source, tmp_path) == 2
    assert "--resume" in capsys.readouterr().err

    server.clear_faults()
    server.clear_requests()
    assert _backfill(source, tmp_path, "--resume") == 0
    assert "MSFT 780 rows" in capsys.readouterr().out  # only 2000-01-07 and 2000-01-10 were left
    fetched = server.requests
    assert fetched and all("AAPL" not in (r.path + r.query.get("symbols", "")) for r in fetched)
    assert all(_request_start_day(r, source) >= date(2000, 1, 7) for r in fetched if _request_start_day(r, source))
    # The resumed store is the store of a clean run.
    clean = tmp_path / "clean"
    assert _backfill(source, clean) == 0
    assert BarStore(tmp_path).read().equals(BarStore(clean).read())
    assert BarStore(tmp_path).read().equals(minute_bars)
    # A finished job resumed again fetches nothing.
    server.clear_requests()
    assert _backfill(source, tmp_path, "--resume") == 0
    assert server.requests == []


def _pages_per_chunk(minute_bars: pl.DataFrame, server: MarketDataRestServer, source: str) -> dict[str, int]:
    """Requests the backfill makes before MSFT's third chunk, counted on the path the fault watches."""
    page = server.alpaca_page_size if source == "alpaca" else server.polygon_page_size
    per_chunk = [780, 780, 390, 390]  # bars of a symbol per two-day chunk
    pages = [-(-n // page) for n in per_chunk]
    msft_first_two = pages[0] + pages[1]
    # Alpaca's path is shared by both symbols: AAPL's requests count as well.
    return {"MSFT_first_two": msft_first_two + (sum(pages) if source == "alpaca" else 0)}


def _request_start_day(request, source: str) -> date | None:
    if source == "alpaca":
        return datetime.fromisoformat(request.query["start"]).date() if "start" in request.query else None
    segment = request.path.split("/")[-2]
    return datetime.fromtimestamp(int(segment) / 1000, UTC).date() if segment.isdigit() else None


def test_backfill_without_credentials_exits_2_with_the_fix(
    cli_env: MarketDataRestServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    monkeypatch.delenv("APCA_API_SECRET_KEY")
    assert _backfill("alpaca", tmp_path) == 2
    err = capsys.readouterr().err
    assert "APCA_API_SECRET_KEY" in err and "Traceback" not in err
    assert cli_env.requests == [] and not any(tmp_path.iterdir())


def test_backfill_with_refused_credentials_exits_2(
    cli_env: MarketDataRestServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    monkeypatch.setenv("POLYGON_API_KEY", "not-the-key")
    assert _backfill("polygon", tmp_path) == 2
    assert "refused the credentials" in capsys.readouterr().err


def test_backfill_usage_errors_exit_2(cli_env: MarketDataRestServer, tmp_path: Path, capsys) -> None:
    base = ["data", "backfill", "--source", "alpaca", "--symbols", "AAPL", "--store", str(tmp_path)]
    assert main([*base, "--from", "2000-01-10", "--to", "2000-01-03"]) == 2
    assert "before --from" in capsys.readouterr().err
    assert main([*base, "--from", "2000-01-03", "--to", "2000-01-04", "--timeframe", "7Days"]) == 2
    assert "data.timeframe" in capsys.readouterr().err
    assert main([*base, "--from", "2000-13-03", "--to", "2000-01-04"]) == 2
    assert "--from" in capsys.readouterr().err
    assert cli_env.requests == []


def test_store_defaults_to_the_data_dir(cli_env: MarketDataRestServer, tmp_path: Path) -> None:
    args = ["data", "backfill", "--source", "polygon", "--symbols", "AAPL", "--from", "2000-01-03",
            "--to", "2000-01-03", "--data-dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    assert BarStore(tmp_path / "bars").symbols() == ["AAPL"]


def test_the_server_answers_the_other_documented_forms(server: MarketDataRestServer) -> None:
    """Alpaca's single-symbol endpoint and Polygon's apiKey parameter, which the clients above do not use."""
    import requests

    headers = {"APCA-API-KEY-ID": server.key, "APCA-API-SECRET-KEY": server.secret}
    query = {"timeframe": "1Hour", "start": "2000-01-03", "end": "2000-01-03T23:59:59Z", "limit": 5}
    single = requests.get(f"{server.url}/v2/stocks/MSFT/bars", params=query, headers=headers, timeout=5).json()
    assert single["symbol"] == "MSFT" and len(single["bars"]) == 5 and single["next_page_token"]
    assert [bar["t"] for bar in single["bars"][:2]] == ["2000-01-03T14:00:00Z", "2000-01-03T15:00:00Z"]
    assert requests.get(f"{server.url}/v2/stocks/MSFT/bars", params=query, timeout=5).status_code == 401
    aggs = f"{server.url}/v2/aggs/ticker/AAPL/range/1/day/2000-01-03/2000-01-04"
    daily = requests.get(aggs, params={"apiKey": server.polygon_key}, timeout=5).json()
    assert daily["status"] == "OK" and daily["resultsCount"] == 2 and "next_url" not in daily
    assert requests.get(aggs, timeout=5).json()["error"] == "API Key was not provided"
