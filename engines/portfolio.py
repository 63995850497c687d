"""Portfolio construction: scored signals become target weights (Lean's step between alpha and risk).

Consumes: `scored_signal`, and `bar` with the weighting methods. Produces: `portfolio_target`,
the position wanted per symbol as a signed share of equity; risk checks and caps it, execution places it.

Methods (`portfolio.method`, see `core.config.PortfolioConfig`):

* fixed: an UP signal asks for +risk.max_position_pct, DOWN for flat (or the negative with shorts), FLAT
  for nothing, and a position already held is never resized (the reference strategy's all-in behaviour).
* equal, confidence, insight (Lean's EqualWeighting, ConfidenceWeighted and InsightWeighting models) and
  mean_variance, risk_parity, hrp, black_litterman (skfolio's MeanRisk, RiskBudgeting,
  HierarchicalRiskParity and MeanRisk on a BlackLitterman prior): the weights are over the symbols whose
  latest UP/DOWN signal holds them in the portfolio (a FLAT signal leaves a symbol where it was, as in
  fixed), recomputed at every bar time with a signal. Each signal's symbol gets a target, and so does
  every other symbol whose weight moved; execution resizes a held position when it is off its target by
  more than `rebalance_band` of equity.

The optimisers are fitted on the last `lookback` bars of simple returns of the symbols in the portfolio
(closes up to and including the decision bar: no look-ahead). A short position is fitted as a long one
on negated returns, so every optimiser stays long-only with a budget of one and the signal keeps the
direction. Too little history, or an optimiser that cannot solve (e.g. maximum Sharpe when every
expected return is negative), falls back to equal weights for that bar time and says so in the log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from utp.core.columns import formatted, joined, take
from utp.core.config import OPTIMIZER_METHODS, PortfolioConfig, RiskConfig
from utp.core.kinds import KINDS
from utp.core.runtime import Engine, EngineContext, Input
from utp.core.universe import Universe
from utp.v1 import events_pb2 as pb


class PortfolioConstructionEngine(Engine):
    name = "portfolio"
    outputs = ("portfolio_target",)

    def __init__(
        self, config: PortfolioConfig, risk: RiskConfig, universe: Universe, *, periods_per_year: float = 252.0
    ) -> None:
        self.config = config
        self.cap = risk.max_position_pct
        self.allow_short = risk.allow_short
        self.universe = universe
        self.periods_per_year = periods_per_year
        self.optimizer = config.method in OPTIMIZER_METHODS
        # The weighting methods read closes (the optimisers' returns; the reference price of a symbol
        # resized without a signal of its own); fixed does not even subscribe to bars.
        fixed = config.method == "fixed"
        self.inputs = (Input("scored_signal"),) if fixed else (Input("scored_signal"), Input("bar"))
        n = len(universe)
        self.sign = np.zeros(n, np.int64)  # +1 long, -1 short, 0 out of the portfolio
        self.confidence = np.zeros(n)
        self.insight = np.zeros(n)
        self.score = np.full(n, np.nan)  # rank: the latest ensemble score per symbol
        self.strategy = np.full(n, "", dtype=object)
        self.last_target = np.zeros(n)
        self.last_close = np.full(n, np.nan)
        # Closes of the last lookback + 1 bar times, oldest first (rows: bar times, columns: symbols).
        self.history_times = np.zeros(0, np.int64)
        self.history = np.zeros((0, n))
        self.fallbacks = 0

    # -- the step ------------------------------------------------------------------------------------
    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        bars = frames.get("bar")
        if bars is not None and bars.height:
            bars, sid, unknown = self.universe.split(bars)
            if unknown:
                ctx.count_rejected(unknown)
            self._add_history(bars, sid)
        signals = frames.get("scored_signal")
        if signals is None or not signals.height:
            self._trim_history()
            return
        signals, sid, unknown = self.universe.split(signals)
        if unknown:
            ctx.log.warning("dropped %d scored signals of symbols outside the universe", unknown)
            ctx.count_rejected(unknown)
        targets = self.fixed_targets(signals) if self.config.method == "fixed" else self.weighted_targets(ctx, signals, sid)
        self._trim_history()
        if targets.height:
            ctx.emit("portfolio_target", targets)

    # -- fixed: one target per signal, vectorised ----------------------------------------------------
    def fixed_targets(self, signals: pl.DataFrame) -> pl.DataFrame:
        direction = signals["direction"].to_numpy()
        down = -self.cap if self.allow_short else 0.0
        target = np.where(direction == pb.DIRECTION_UP, self.cap, np.where(direction == pb.DIRECTION_DOWN, down, np.nan))
        keep = ~np.isnan(target)
        if not keep.any():
            return KINDS["portfolio_target"].empty_frame()
        rows = np.flatnonzero(keep)
        columns = {name: take(signals.get_column(name), rows) for name in (
            "correlation_id", "event_time_ns", "symbol", "reference_price", "direction", "confidence")}  # fmt: skip
        return self._frame({**columns, "strategy": joined(take(signals.get_column("active_alphas"), rows), "+")},
                           target[keep], 0.0)  # fmt: skip

    # -- the weighting methods: per bar time with a signal --------------------------------------------
    def weighted_targets(self, ctx: EngineContext, signals: pl.DataFrame, sid: np.ndarray) -> pl.DataFrame:
        times = signals["event_time_ns"].to_numpy()
        direction = signals["direction"].to_numpy()
        confidence = signals["confidence"].to_numpy()
        price = signals["reference_price"].to_numpy()
        score = signals["score"].to_numpy()
        ranked = self.config.method == "rank"
        strategy = signals["active_alphas"].list.join("+").to_list()
        correlation = signals["correlation_id"].to_list()
        # Only the insight method reads the vote behind each signal (an explode of every signal's components).
        insight = self._insight_weights(signals) if self.config.method == "insight" else np.zeros(signals.height)
        out: dict[str, list] = {k: [] for k in ("correlation_id", "event_time_ns", "symbol", "reference_price",
                                                "direction", "confidence", "strategy", "target")}  # fmt: skip
        starts = np.flatnonzero(np.r_[True, times[1:] != times[:-1]])
        ends = np.r_[starts[1:], times.size]
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            t = int(times[a])
            signalled = {}
            for i in range(a, b):
                s = int(sid[i])
                self.last_close[s] = price[i]
                if ranked:  # every signal moves its symbol's rank, FLAT ones too
                    self.score[s], self.confidence[s], self.strategy[s] = score[i], confidence[i], strategy[i]
                    signalled[s] = i
                    continue
                if direction[i] == pb.DIRECTION_UP:
                    self.sign[s] = 1
                elif direction[i] == pb.DIRECTION_DOWN:
                    self.sign[s] = -1 if self.allow_short else 0
                else:
                    continue  # FLAT: the symbol stays where it was
                self.confidence[s], self.insight[s], self.strategy[s] = confidence[i], insight[i], strategy[i]
                signalled[s] = i
            if not signalled:
                continue
            if ranked:
                self.sign = self._ranked_signs()
            weights = self.weights(ctx, t)
            for s in range(len(self.universe)):
                if s not in signalled and abs(weights[s] - self.last_target[s]) <= 1e-12:
                    continue
                i = signalled.get(s)
                out["correlation_id"].append(correlation[i] if i is not None else f"rebalance/{self.universe.symbols[s]}/{t}")
                out["event_time_ns"].append(t)
                out["symbol"].append(self.universe.symbols[s])
                out["reference_price"].append(price[i] if i is not None else self._close(s, t))
                out["direction"].append(int(direction[i]) if i is not None else _direction(self.sign[s]))
                out["confidence"].append(float(confidence[i]) if i is not None else float(self.confidence[s]))
                out["strategy"].append(strategy[i] if i is not None else str(self.strategy[s]))
                out["target"].append(float(weights[s]))
            self.last_target = weights
        if not out["target"]:
            return KINDS["portfolio_target"].empty_frame()
        target = np.array(out.pop("target"))
        rows = {**out, "correlation_id": pl.Series("correlation_id", out["correlation_id"], pl.Utf8)}
        return self._frame(rows, target, self.config.rebalance_band)

    def weights(self, ctx: EngineContext, time_ns: int) -> np.ndarray:
        """Signed target weight of every symbol of the universe at `time_ns` (0 outside the portfolio)."""
        members = np.flatnonzero(self.sign != 0)
        weights = np.zeros(len(self.universe))
        if members.size == 0:
            return weights
        gross, method = self.config.gross, self.config.method
        signs = self.sign[members].astype(np.float64)
        if method in ("equal", "rank") or (self.optimizer and members.size == 1):
            w = np.full(members.size, 1.0 / members.size)
        elif method in ("confidence", "insight"):
            # Lean's rule: proportional to the insight's confidence (or weight), scaled down only when
            # they would sum to more than the whole portfolio.
            x = np.clip(self.confidence[members] if method == "confidence" else self.insight[members], 0.0, None)
            w = x / max(1.0, float(x.sum()))
        else:
            w = self._optimised(ctx, time_ns, members, signs)
        weights[members] = signs * w * gross
        return weights

    def _ranked_signs(self) -> np.ndarray:
        """+1 for the top_n symbols by score (score > 0), -1 for the bottom_n (score < 0, shorts allowed);
        ties go to the symbol earlier in the universe."""
        sign = np.zeros(len(self.universe), np.int64)
        known = np.flatnonzero(np.isfinite(self.score))
        by_score = known[np.argsort(-self.score[known], kind="stable")]
        top = [s for s in by_score[: self.config.top_n] if self.score[s] > 0]
        sign[top] = 1
        if self.allow_short and self.config.bottom_n:
            by_low = known[np.argsort(self.score[known], kind="stable")]
            bottom = [s for s in by_low[: self.config.bottom_n] if self.score[s] < 0 and sign[s] == 0]
            sign[bottom] = -1
        return sign

    def _optimised(self, ctx: EngineContext, time_ns: int, members: np.ndarray, signs: np.ndarray) -> np.ndarray:
        k = int(np.searchsorted(self.history_times, time_ns, side="right"))
        closes = self.history[max(0, k - self.config.lookback - 1) : k][:, members]
        with np.errstate(divide="ignore", invalid="ignore"):
            returns = closes[1:] / closes[:-1] - 1.0
        returns = returns[np.isfinite(returns).all(axis=1)] * signs  # a short is a long on negated returns
        equal = np.full(members.size, 1.0 / members.size)
        if returns.shape[0] < self.config.min_history:
            return self._fallback(ctx, time_ns, f"{returns.shape[0]} complete bars of returns < min_history")
        try:
            w = np.asarray(self._fit(returns), np.float64)
        except (ValueError, ArithmeticError) as exc:  # the solver could not find a portfolio
            return self._fallback(ctx, time_ns, str(exc).splitlines()[0][:200])
        if w.shape != equal.shape or not np.isfinite(w).all() or w.sum() <= 0:
            return self._fallback(ctx, time_ns, "the optimiser returned no usable weights")
        w = np.clip(w, 0.0, None)
        return w / w.sum()

    def _fit(self, returns: np.ndarray) -> np.ndarray:
        import pandas as pd  # skfolio's own dependency; names the assets for Black-Litterman's views
        from skfolio import RiskMeasure
        from skfolio.optimization import HierarchicalRiskParity, MeanRisk, ObjectiveFunction, RiskBudgeting

        c = self.config
        frame = pd.DataFrame(returns, columns=[f"a{i}" for i in range(returns.shape[1])])
        objective = {"min_risk": ObjectiveFunction.MINIMIZE_RISK, "max_ratio": ObjectiveFunction.MAXIMIZE_RATIO,
                     "max_utility": ObjectiveFunction.MAXIMIZE_UTILITY}[c.objective]  # fmt: skip
        if c.method == "hrp":
            model: Any = HierarchicalRiskParity()
        elif c.method == "risk_parity":
            model = RiskBudgeting(risk_measure=RiskMeasure.VARIANCE)
        elif c.method == "mean_variance":
            model = MeanRisk(risk_measure=RiskMeasure.VARIANCE, objective_function=objective,
                             risk_aversion=c.risk_aversion)  # fmt: skip
        else:  # black_litterman: each member's signal is a view on its (direction-adjusted) return
            from skfolio.prior import BlackLitterman

            members = np.flatnonzero(self.sign != 0)
            per_bar = c.view_return / self.periods_per_year
            views = [f"a{i} == {per_bar * float(self.confidence[s]):.12g}" for i, s in enumerate(members)]
            model = MeanRisk(risk_measure=RiskMeasure.VARIANCE, objective_function=objective,
                             risk_aversion=c.risk_aversion, prior_estimator=BlackLitterman(views=views))  # fmt: skip
        model.fit(frame)
        return model.weights_

    def _fallback(self, ctx: EngineContext, time_ns: int, why: str) -> np.ndarray:
        self.fallbacks += 1
        if self.fallbacks <= 3:  # the rest are counted and told once at the end
            ctx.log.warning("portfolio %s at %d: %s; equal weights instead", self.config.method, time_ns, why)
        n = int((self.sign != 0).sum())
        return np.full(n, 1.0 / n)

    def finish(self, ctx: EngineContext) -> None:
        if self.fallbacks > 3:
            ctx.log.warning("portfolio %s fell back to equal weights at %d bar times in all", self.config.method,
                            self.fallbacks)  # fmt: skip

    # -- helpers -------------------------------------------------------------------------------------
    def _insight_weights(self, signals: pl.DataFrame) -> np.ndarray:
        """Share of the ensemble's vote backing each signal's direction (its components' weight x
        confidence on that side): the insight's weight in Lean's InsightWeighting."""
        components = signals.select(
            pl.col("direction").alias("d"), pl.col("components")
        ).with_row_index("r").explode("components").unnest("components")
        if "weight" not in components.columns:
            return np.zeros(signals.height)
        backing = (
            components.filter(pl.col("direction") == pl.col("d"))
            .group_by("r")
            .agg((pl.col("weight") * pl.col("confidence")).sum().alias("w"))
        )
        out = np.zeros(signals.height)
        out[backing["r"].to_numpy()] = backing["w"].to_numpy()
        return out

    def _add_history(self, bars: pl.DataFrame, sid: np.ndarray) -> None:
        times = bars["event_time_ns"].to_numpy()
        unique, row = np.unique(times, return_inverse=True)
        block = np.full((unique.size, len(self.universe)), np.nan)
        block[row, sid] = bars["close"].to_numpy()
        self.history_times = np.concatenate([self.history_times, unique])
        self.history = np.concatenate([self.history, block])
        self.last_close[sid] = bars["close"].to_numpy()

    def _trim_history(self) -> None:
        keep = self.config.lookback + 1
        if self.history_times.size > keep:
            self.history_times, self.history = self.history_times[-keep:], self.history[-keep:]

    def _close(self, s: int, time_ns: int) -> float:
        k = int(np.searchsorted(self.history_times, time_ns, side="right"))
        column = self.history[:k, s]
        finite = column[np.isfinite(column)]
        return float(finite[-1]) if finite.size else float(self.last_close[s])

    def _frame(self, rows: dict[str, Any], target: np.ndarray, band: float) -> pl.DataFrame:
        """Targets from their signals' columns (correlation_id a Series), built column by column."""
        return KINDS["portfolio_target"].frame({
            **rows, "event_id": formatted("event_id", "portfolio_target/{}", rows["correlation_id"]),
            "target_percent": target.astype(np.float64), "method": self.config.method, "rebalance_band": band,
        }, target.size)  # fmt: skip

    _STATE = ("sign", "confidence", "insight", "score", "strategy", "last_target", "last_close", "history_times", "history",
              "fallbacks")  # fmt: skip

    def snapshot(self) -> Any:
        return {k: getattr(self, k) for k in self._STATE}

    def restore(self, state: Any) -> None:
        for key in self._STATE:
            setattr(self, key, state[key])


def _direction(sign: int) -> int:
    return pb.DIRECTION_UP if sign > 0 else pb.DIRECTION_DOWN if sign < 0 else pb.DIRECTION_FLAT
