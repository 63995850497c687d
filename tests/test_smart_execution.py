"""Smart execution (seed 004) in the simulated venue: limit entries at adaptive offsets, the order timeout with
accept / reprice / cancel, partial fills, and entries sliced over bar times, each slice with its own legs.
All on real GOOG bars through the whole engine graph, and batch size never changes a decision."""

from __future__ import annotations

import polars as pl
import pytest

from tests.test_risk_rules import OFF, run_graph
from utp.core.config import Config, load_config
from utp.core.ids import client_order_id
from utp.v1 import events_pb2 as pb

DAY = 86_400 * 10**9


def config(**execution: object) -> Config:
    """The demo's strategy on GOOG 2004-2008 (no model, no portfolio rules) with the given execution settings."""
    return load_config(["configs/demo.yaml"], environ={}, overrides={
        "inference.packaged_fallback": False, "ensemble.weights": {"rsi": 1.0, "ema_cross": 1.0, "macd": 1.0},
        "risk.max_position_pct": 0.95,
        "market_data.end": "2008-12-31", "risk.universe.enabled": False,
        **{f"risk.{k}": v for k, v in OFF.items()}, **{f"execution.{k}": v for k, v in execution.items()}})  # fmt: skip


@pytest.fixture(scope="module")
def goog() -> pl.DataFrame:
    from utp.storage.datasets import dataset

    return dataset("goog").bars(("GOOG",), None, None)


def entries(orders: pl.DataFrame) -> pl.DataFrame:
    """The first event of every entry order (not a leg, not a close)."""
    return orders.filter(pl.col("reason") == pb.INTENT_REASON_ENTRY, pl.col("parent_client_order_id") == "").unique(
        "client_order_id", keep="first", maintain_order=True)  # fmt: skip


def test_limit_entries_are_placed_at_the_close_moved_by_the_offset(goog: pl.DataFrame) -> None:
    out = run_graph(config(entry_order="limit", limit_offset_bps=5.0, spread_weight=0.0, order_timeout_s=0.0))
    placed = entries(out["order"]).filter(pl.col("replaces_client_order_id") == "")
    assert placed.height > 5
    assert set(placed["order_type"]) == {pb.ORDER_TYPE_LIMIT}
    closes = goog.select(pl.col("event_time_ns"), pl.col("close"))
    joined = placed.join(closes, on="event_time_ns")
    assert joined.height == placed.height
    sign = pl.when(pl.col("side") == pb.ORDER_SIDE_BUY).then(1.0).otherwise(-1.0)
    expected = joined.select(pl.col("close") * (1.0 + sign * 5e-4)).to_series()
    assert joined["limit_price"].to_list() == pytest.approx(expected.to_list(), rel=1e-12)


def test_the_offset_adapts_to_the_spread_and_the_volatility() -> None:
    calm = entries(run_graph(config(entry_order="limit", order_timeout_s=0.0, volatility_weight=0.0))["order"])
    wide = entries(run_graph(config(entry_order="limit", order_timeout_s=0.0, volatility_weight=0.5))["order"])
    first = calm.join(wide, on="client_order_id", suffix="_wide").filter(pl.col("side") == pb.ORDER_SIDE_BUY)
    assert first.height > 0
    # Half the last bar's range added to the offset: a buy pays up to more, by exactly that much.
    assert (first["limit_price_wide"] > first["limit_price"]).all()


def test_an_unfilled_limit_is_repriced_then_cancelled_at_the_order_timeout() -> None:
    """Daily bars and a 60 s timeout: an entry gets one bar to fill, then is repriced at that bar's close, at most
    twice, then cancelled; a reprice replaces the order (REPLACED), takes over its legs and names what it replaces.
    (A passive limit, 1.5% better than the close, so that many entries miss.)"""
    out = run_graph(config(entry_order="limit", limit_offset_bps=-150.0, spread_weight=0.0, order_timeout_s=60.0,
                           max_reprices=2))  # fmt: skip
    orders = out["order"]
    replaced = orders.filter(pl.col("status") == pb.ORDER_STATUS_REPLACED)
    assert replaced.height > 0
    assert replaced["message"].str.contains("repriced").all()
    repriced = entries(orders).filter(pl.col("replaces_client_order_id") != "")
    assert set(repriced["replaces_client_order_id"]) == set(replaced["client_order_id"])
    # The replacement is placed at the bar time the old one timed out, a day after it was placed.
    old_time = orders.filter(pl.col("status") == pb.ORDER_STATUS_NEW).select(
        "client_order_id", pl.col("event_time_ns").alias("placed"))  # fmt: skip
    gaps = repriced.join(old_time, left_on="replaces_client_order_id", right_on="client_order_id")
    assert (gaps["event_time_ns"] > gaps["placed"]).all()
    # Deterministic ids: the n-th reprice of an intent.
    first = repriced.filter(pl.col("client_order_id") == pl.col("intent_id").map_elements(
        lambda i: client_order_id(f"{i}/reprice1"), return_dtype=pl.Utf8))  # fmt: skip
    assert first.height > 0
    # Never more than two reprices: a third timeout cancels.
    cancelled = orders.filter(pl.col("message") == "not filled within the order timeout")
    assert cancelled.height > 0
    assert not repriced["client_order_id"].is_in(
        [client_order_id(f"{i}/reprice3") for i in repriced["intent_id"].to_list()]).any()  # fmt: skip
    # The legs follow the reprice: a leg's parent is always an order that was placed.
    legs = orders.filter(pl.col("parent_client_order_id") != "")
    assert set(legs["parent_client_order_id"]) <= set(entries(orders)["client_order_id"])


def test_partial_fills_are_accepted_above_the_ratio_and_repriced_below() -> None:
    """A venue that fills at most 0.003% of a bar's volume (a few hundred GOOG shares): entries fill in parts."""
    out = run_graph(config(entry_order="limit", order_timeout_s=60.0, volume_limit=3e-5, min_fill_ratio=0.8,
                           limit_offset_bps=50.0))  # fmt: skip
    orders = out["order"]
    accepted = orders.filter(pl.col("message").str.starts_with("the order timeout ran out with enough"))
    assert accepted.height > 0
    assert (accepted["filled_quantity"] >= 0.8 * accepted["quantity"] - 1e-9).all()
    assert (accepted["filled_quantity"] < accepted["quantity"]).all()
    repriced = entries(orders).filter(pl.col("replaces_client_order_id") != "")
    partly = orders.filter(pl.col("status") == pb.ORDER_STATUS_REPLACED, pl.col("filled_quantity") > 0)
    assert partly.height > 0  # a remainder repriced: the new order is for what was left
    joined = partly.join(repriced, left_on="client_order_id", right_on="replaces_client_order_id")
    assert joined.height == partly.height
    assert (joined["quantity_right"] == joined["quantity"] - joined["filled_quantity"]).all()


def test_large_entries_go_in_slices_one_per_bar_time_each_with_its_legs() -> None:
    whole = run_graph(config())
    sliced = run_graph(config(slice_notional=20_000.0))
    first = entries(whole["order"])
    parts = entries(sliced["order"])
    assert parts.height > 2 * first.height
    slices = parts.filter(pl.col("client_order_id") != pl.col("intent_id").map_elements(client_order_id,
                                                                                       return_dtype=pl.Utf8))  # fmt: skip
    assert slices.height > 0
    assert (slices["notional"] <= 20_000.0 + 1e-6).all()
    # One slice of an intent per bar time.
    assert slices.group_by("intent_id", "event_time_ns").len()["len"].max() == 1
    # Each slice carries its own take-profit and stop-loss.
    legs = sliced["order"].filter(pl.col("parent_client_order_id").is_in(slices["client_order_id"].implode()))
    per_slice = legs.unique("client_order_id").group_by("parent_client_order_id").len()
    assert per_slice.height == slices.height and set(per_slice["len"]) == {2}


@pytest.mark.parametrize("settings", [
    {"entry_order": "limit", "order_timeout_s": 60.0, "volume_limit": 3e-5},
    {"entry_order": "limit", "slice_notional": 20_000.0},
])  # fmt: skip
def test_smart_execution_gives_the_same_orders_whatever_the_batch_size(settings: dict[str, object]) -> None:
    one = run_graph(load_config(base=config(**settings), environ={}, overrides={"market_data.batch_bar_times": 1}))
    many = run_graph(load_config(base=config(**settings), environ={}, overrides={"market_data.batch_bar_times": 700}))
    assert one["order"].height > 0
    assert one["order"].equals(many["order"])
    assert one["fill"].equals(many["fill"])
