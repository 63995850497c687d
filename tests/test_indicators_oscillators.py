"""Oscillators: equal to TA-Lib (to the bit) on real, synthetic and degenerate bars; streaming = batch."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import NamedTuple

import numpy as np
import pytest
import talib

from tests.indicator_harness import assert_matches_reference, assert_streaming_equals_batch, goog_bars, synthetic
from utp.core.indicators.oscillators import (
    Cci, Mfi, Mom, Obv, Roc, Stoch, StochF, StochFResult, StochResult, Willr,
    cci, mfi, mom, obv, roc, stoch, stochf, willr,
)  # fmt: skip

HLC = ("high", "low", "close")


class Case(NamedTuple):
    name: str
    inputs: tuple[str, ...]
    batch: Callable[..., object]
    stream: type
    reference: Callable[..., object]
    params: list[tuple[int, ...]]  # the first is TA-Lib's default; period 2 and a long one among them


CASES = [
    Case("roc", ("close",), roc, Roc, talib.ROC, [(10,), (1,), (2,), (200,)]),
    Case("mom", ("close",), mom, Mom, talib.MOM, [(10,), (1,), (2,), (200,)]),
    Case("stochf", HLC, stochf, StochF, lambda h, l, c, k, d: talib.STOCHF(h, l, c, k, d, 0),  # noqa: E741
         [(5, 3), (1, 1), (2, 2), (14, 3), (50, 20)]),
    Case("stoch", HLC, stoch, Stoch, lambda h, l, c, k, sk, sd: talib.STOCH(h, l, c, k, sk, 0, sd, 0),  # noqa: E741
         [(5, 3, 3), (1, 1, 1), (2, 2, 2), (14, 3, 5), (50, 10, 20)]),
    Case("willr", HLC, willr, Willr, talib.WILLR, [(14,), (2,), (100,)]),
    Case("cci", HLC, cci, Cci, talib.CCI, [(14,), (2,), (100,)]),
    Case("mfi", (*HLC, "volume"), mfi, Mfi, talib.MFI, [(14,), (2,), (100,)]),
    Case("obv", ("close", "volume"), obv, Obv, talib.OBV, [()]),
]
IDS = [c.name for c in CASES]


@cache
def degenerate(n: int = 3000, seed: int = 5) -> dict[str, np.ndarray]:
    """Bars that exercise TA-Lib 0.8's special cases: prices on a 0.1 tick (repeated closes, equal highs),
    a stretch of 200 flat bars (high = low = close, longer than every window), zero volumes (one stretch
    longer than every window) and exact zeros among the closes (ROC's division)."""
    rng = np.random.default_rng(seed)
    close = np.round(100.0 + np.cumsum(rng.normal(0.0, 0.3, n)), 1)
    high = close + np.round(rng.exponential(0.2, n), 1)
    low = close - np.round(rng.exponential(0.2, n), 1)
    close[1000:1200] = high[1000:1200] = low[1000:1200] = close[999]
    volume = np.round(rng.lognormal(8.0, 1.0, n))
    volume[rng.random(n) < 0.1] = 0.0
    volume[2000:2150] = 0.0
    zero = rng.random(n) < 0.03  # ROC's division by zero; the others just see a close below the low
    zero[990:1210] = False
    close[zero] = 0.0
    return {"high": high, "low": low, "close": close, "volume": volume}


def bars(data: str) -> dict[str, np.ndarray]:
    return {"goog": goog_bars, "synthetic": synthetic, "degenerate": degenerate}[data]()


def as_tuple(x: object) -> tuple[np.ndarray, ...]:
    return tuple(x) if isinstance(x, tuple) else (x,)  # type: ignore[arg-type]


@pytest.mark.parametrize("data", ["goog", "synthetic", "degenerate"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_talib_to_the_bit(data: str, case: Case) -> None:
    b = bars(data)
    inputs = [b[k] for k in case.inputs]
    for params in case.params:
        ours, theirs = case.batch(*inputs, *params), case.reference(*inputs, *params)
        what = f"{case.name}{params} on {data}"
        assert_matches_reference(ours, theirs, what=what)
        for i, (a, r) in enumerate(zip(as_tuple(ours), as_tuple(theirs), strict=True)):
            differ = int(np.sum(~((a == r) | (np.isnan(a) & np.isnan(r)))))
            assert differ == 0, f"{what} output {i}: {differ} values are not equal to TA-Lib's to the bit"


@pytest.mark.parametrize("data", ["goog", "degenerate"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_streams_like_batch(data: str, case: Case) -> None:
    b = bars(data)
    for params in case.params:
        assert_streaming_equals_batch(
            lambda n, p=params: case.stream(n, *p),
            lambda *a, p=params: case.batch(*a, *p),
            {k: b[k] for k in case.inputs},
        )


def test_degenerate_bars_reach_talibs_special_cases() -> None:
    """The degenerate bars are only useful if they hit the branches they are meant to."""
    b = degenerate()
    h, l, c, v = b["high"], b["low"], b["close"], b["volume"]  # noqa: E741
    assert (willr(h, l, c, 14)[1020:1200] == 0.0).all()  # flat window: no range
    assert (stochf(h, l, c, 14, 3).fastk[1020:1200] == 0.0).all()
    assert (cci(h, l, c, 14)[1020:1200] == 0.0).all()  # no deviation
    assert (mfi(h, l, c, v, 14)[2020:2150] == 0.0).all()  # no money flow: the sums restart at 0
    assert np.any(roc(c, 10)[10:][c[:-10] == 0.0] == 0.0)  # division by a zero close reads 0
    assert np.any(np.diff(c[1:]) == 0.0)  # unchanged closes, for OBV


def test_obv_ignores_the_volume_of_an_unchanged_close() -> None:
    close = np.array([10.0, 10.0, 11.0, 11.0, 10.5, 10.5, 12.0])
    volume = np.array([5.0, np.nan, 3.0, np.inf, 2.0, 0.0, 1.0])  # not even a NaN or infinite one
    expected = talib.OBV(close, volume)
    assert expected.tolist() == [5.0, 5.0, 8.0, 8.0, 6.0, 6.0, 7.0]
    np.testing.assert_array_equal(obv(close, volume), expected)
    np.testing.assert_array_equal(Obv(1).update(np.zeros(7, np.int64), close, volume), expected)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_short_and_empty_series(case: Case) -> None:
    b = goog_bars()
    for n in (0, 1, 3):
        inputs = [b[k][:n] for k in case.inputs]
        for params in case.params:
            ours = as_tuple(case.batch(*inputs, *params))
            assert all(got.shape == (n,) for got in ours)
            if n:  # TA-Lib's wrapper answers [] for empty inputs; otherwise NaN where it has no value
                assert_matches_reference(ours, as_tuple(case.reference(*inputs, *params)), what=f"{params}, {n} bars")


def test_values_before_readiness() -> None:
    b = goog_bars()
    h, l, c, v = (b[k][:12] for k in ("high", "low", "close", "volume"))  # noqa: E741
    rows = np.zeros(12, np.int64)

    # %R and CCI over the bars so far: TA-Lib's with the window of the bars so far, to the bit
    u = Willr(1, 5).update_current(rows, h, l, c)
    assert u.ready.tolist() == [False] * 4 + [True] * 8
    for k in range(1, 4):
        assert u.value[k] == talib.WILLR(h[: k + 1], l[: k + 1], c[: k + 1], k + 1)[-1]
    u = Cci(1, 5).update_current(rows, h, l, c)
    assert u.ready.tolist() == [False] * 4 + [True] * 8
    for k in range(1, 4):
        assert u.value[k] == talib.CCI(h[: k + 1], l[: k + 1], c[: k + 1], k + 1)[-1]

    # fast %K over the bars so far; %D from the first full %K window on, the mean of the %K values so far
    f = StochF(1, 5, 3).update_current(rows, h, l, c)
    for k in range(4):
        assert f.fastk[k] == talib.STOCHF(h[: k + 1], l[: k + 1], c[: k + 1], k + 1, 1, 0)[0][-1]
    assert np.isnan(f.fastd[:4]).all()
    assert f.fastd[4] == f.fastk[4]
    assert f.fastd[5] == pytest.approx((f.fastk[4] + f.fastk[5]) / 2, rel=1e-14)
    assert f.ready.tolist() == [False] * 6 + [True] * 6

    # slow %K from the first full %K window on, slow %D from the first full slow %K window on
    s = Stoch(1, 5, 3, 3).update_current(rows, h, l, c)
    assert np.isnan(s.slowk[:4]).all() and not np.isnan(s.slowk[4:]).any()
    assert s.slowk[4] == f.fastk[4]
    assert np.isnan(s.slowd[:6]).all() and not np.isnan(s.slowd[6:]).any()
    assert s.slowd[6] == s.slowk[6]
    assert s.ready.tolist() == [False] * 8 + [True] * 4
    np.testing.assert_array_equal(s.slowk[6:], stochf(h, l, c, 5, 3).fastd[6:])  # slow %K is fast %D

    # MFI: no flow on the first bar, then over the flows so far
    m = Mfi(1, 3).update_current(rows, h, l, c, v)
    assert m.value[0] == 0.0
    assert m.value[2] == talib.MFI(h[:3], l[:3], c[:3], v[:3], 2)[-1]
    assert m.ready.tolist() == [False] * 3 + [True] * 9

    for indicator in (Roc(1, 3), Mom(1, 3)):
        r = indicator.update_current(rows, c)
        assert np.isnan(r.value[:3]).all() and not np.isnan(r.value[3:]).any()
        assert r.ready.tolist() == [False] * 3 + [True] * 9
    o = Obv(1).update_current(rows, c, v)
    assert o.ready.all() and o.value[0] == v[0]


def test_multi_output_types() -> None:
    b = goog_bars()
    h, l, c = (b[k] for k in HLC)  # noqa: E741
    assert isinstance(stoch(h, l, c), StochResult) and isinstance(stochf(h, l, c), StochFResult)
    rows = np.zeros(h.size, np.int64)
    assert isinstance(Stoch(1).update(rows, h, l, c), StochResult)
    assert isinstance(StochF(1).update(rows, h, l, c), StochFResult)


MINIMUMS = [  # (what, our call with a period, TA-Lib's call with a period, minimum period)
    ("ROC period", lambda x, p: roc(x, p), lambda x, p: talib.ROC(x, p), 1),
    ("MOM period", lambda x, p: mom(x, p), lambda x, p: talib.MOM(x, p), 1),
    ("WILLR period", lambda x, p: willr(x + 1, x - 1, x, p), lambda x, p: talib.WILLR(x + 1, x - 1, x, p), 2),
    ("CCI period", lambda x, p: cci(x + 1, x - 1, x, p), lambda x, p: talib.CCI(x + 1, x - 1, x, p), 2),
    ("MFI period", lambda x, p: mfi(x + 1, x - 1, x, x, p), lambda x, p: talib.MFI(x + 1, x - 1, x, x, p), 2),
    ("STOCH fastk period", lambda x, p: stoch(x + 1, x - 1, x, p), lambda x, p: talib.STOCH(x + 1, x - 1, x, p), 1),
    ("STOCH slowk period", lambda x, p: stoch(x + 1, x - 1, x, 5, p),
     lambda x, p: talib.STOCH(x + 1, x - 1, x, 5, p), 1),
    ("STOCH slowd period", lambda x, p: stoch(x + 1, x - 1, x, 5, 3, p),
     lambda x, p: talib.STOCH(x + 1, x - 1, x, 5, 3, 0, p), 1),
    ("STOCHF fastk period", lambda x, p: stochf(x + 1, x - 1, x, p),
     lambda x, p: talib.STOCHF(x + 1, x - 1, x, p), 1),
    ("STOCHF fastd period", lambda x, p: stochf(x + 1, x - 1, x, 5, p),
     lambda x, p: talib.STOCHF(x + 1, x - 1, x, 5, p), 1),
]


@pytest.mark.parametrize(("what", "ours", "theirs", "minimum"), MINIMUMS, ids=[m[0] for m in MINIMUMS])
def test_periods_below_talibs_minimum_are_refused(what: str, ours, theirs, minimum: int) -> None:  # noqa: ANN001
    x = np.linspace(10.0, 20.0, 40)
    with pytest.raises(ValueError, match=f"{what} must be an integer >= {minimum}"):
        ours(x, minimum - 1)
    with pytest.raises(Exception, match="TA_BAD_PARAM"):  # the same minimum as TA-Lib's
        theirs(x, minimum - 1)
    ours(x, minimum)
    theirs(x, minimum)


def test_bad_arguments_are_refused() -> None:
    x = np.linspace(10.0, 20.0, 40)
    with pytest.raises(ValueError, match="ROC period must be an integer"):
        roc(x, 2.5)
    for make, what in [
        (lambda: Roc(2, 0), "ROC period"), (lambda: Mom(2, 0), "MOM period"), (lambda: Willr(2, 1), "WILLR period"),
        (lambda: Cci(2, 1), "CCI period"), (lambda: Mfi(2, 1), "MFI period"),
        (lambda: Stoch(2, 5, 3, 0), "STOCH slowd period"), (lambda: StochF(2, 0), "STOCHF fastk period"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=what):
            make()
    with pytest.raises(ValueError, match="same length"):
        willr(x, x[:-1], x)
    with pytest.raises(ValueError, match="symbol index outside the universe"):
        Obv(2).update(np.array([2]), np.array([1.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="differ in length"):
        Willr(2).update(np.array([0, 1]), x[:1], x[:1], x[:1])
