"""Configuration: one frozen, keyword-only struct per engine, composed into `Config`.

Layers, later wins: the defaults below (also written out in `configs/utp.yaml`), YAML files given with
`--config`, environment variables `UTP_<SECTION>__<KEY>` (e.g. `UTP_RISK__MAX_POSITION_PCT=0.2`), and
command-line flags. An unknown key in a file or flag, or a value of the wrong type, is an error at
start-up that names the key; it never falls back to a default silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import msgspec
import yaml


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class MarketDataConfig(_Section):
    #: Packaged data set: goog, eurusd or sp500.
    dataset: str = "goog"
    #: Symbols of the data set; empty = all of them.
    symbols: tuple[str, ...] = ()
    #: Inclusive dates YYYY-MM-DD; empty = the whole data set.
    start: str = ""
    end: str = ""
    #: Bar times per published batch. 1 is live-like; backtests use large batches. Never changes a decision.
    batch_bar_times: int = 1
    #: Bar times per second when a session replays data; 0 = as fast as possible.
    replay_rate: float = 1.0
    #: Quarantine outliers (`utp.core.quality.OutlierDetector`) in replayed bars too; the packaged data sets are
    #: vetted, and their genuine shocks (a -50% day) are not bad ticks. Live bars are always checked (data.outliers).
    outliers: bool = False

    def start_date(self) -> date | None:
        return _parse_date("market_data.start", self.start)

    def end_date(self) -> date | None:
        return _parse_date("market_data.end", self.end)


class FeaturesConfig(_Section):
    """Parameters of the feature set (`core.features`); its version hash covers all of them."""

    return_horizons: tuple[int, ...] = (1, 5, 20)
    #: (fast, slow): price to each SMA, and fast SMA to slow SMA (the regime uses them too).
    sma_periods: tuple[int, int] = (20, 50)
    ema_periods: tuple[int, int] = (12, 26)
    tema_period: int = 20
    rsi_period: int = 14
    #: (fast, slow, signal)
    macd: tuple[int, int, int] = (12, 26, 9)
    bbands_period: int = 20
    bbands_deviations: float = 2.0
    atr_period: int = 14
    adx_period: int = 14
    #: (fast %K, slow %K, slow %D)
    stoch: tuple[int, int, int] = (14, 3, 3)
    willr_period: int = 14
    cci_period: int = 20
    roc_period: int = 10
    #: (EMA period, ATR period, ATR multiplier)
    keltner: tuple[int, int, float] = (20, 10, 2.0)
    donchian_period: int = 20
    mfi_period: int = 14
    volume_period: int = 20
    volatility_period: int = 20
    spread_period: int = 20
    #: Features also given as their percentile rank across the universe at each bar time.
    rank_features: tuple[str, ...] = ("ret_20", "rsi_14", "realized_vol_20")
    #: Relative strength: ret_<horizon> minus the benchmark's return over as many of its bars.
    benchmark_horizon: int = 20
    #: "sp500" (skfolio's S&P 500 index) or "" for none (the feature is then NaN).
    benchmark: str = "sp500"
    #: Compute only these features (empty: all). A strategy that reads a few runs faster; models need all.
    only: tuple[str, ...] = ()


class RsiAlphaConfig(_Section):
    """Lean's RsiAlphaModel; Lean hard-codes 70/30 with a 35/65 bounce tolerance."""

    enabled: bool = True
    period: int = 14
    upper: float = 70.0
    lower: float = 30.0
    #: Leave TRIPPED_HIGH only below this.
    upper_reset: float = 65.0
    #: Leave TRIPPED_LOW only above this.
    lower_reset: float = 35.0


class EmaCrossAlphaConfig(_Section):
    """Lean's EmaCrossAlphaModel."""

    enabled: bool = True
    fast: int = 12
    slow: int = 26
    #: Keep Lean's first-ready-bar behaviour: its "fast over slow" flag is updated on every bar, also
    #: while only the fast EMA is ready (the slow one reads 0 then), so the first bar on which both are
    #: ready emits DOWN if slow > fast. False: the flag starts on the first ready bar and nothing is
    #: emitted on it.
    lean_first_ready: bool = True


class MacdAlphaConfig(_Section):
    """Lean's MacdAlphaModel: the MACD signal line over the price against a bounce threshold."""

    enabled: bool = True
    fast: int = 12
    slow: int = 26
    signal: int = 9
    #: Lean hard-codes 0.01: signal / price above it is UP, below its negative DOWN, else FLAT.
    bounce_threshold: float = 0.01


class MeanReversionAlphaConfig(_Section):
    """The seed's intraday mean reversion: z-score of the price against session VWAP, RSI confirming."""

    enabled: bool = False
    #: Bars of the rolling deviation of (close - VWAP) that scales the z-score.
    deviation_period: int = 20
    entry_z: float = 2.0
    exit_z: float = 0.5
    rsi_period: int = 14
    rsi_upper: float = 70.0
    rsi_lower: float = 30.0
    atr_period: int = 14
    #: Stop this many ATRs (at entry) against the position.
    stop_atr: float = 1.5
    #: Minute of the UTC day (bar time) from which positions are closed and none opened: 20:55 for US
    #: equities in winter time (close 21:00 UTC).
    flatten_minute_utc: int = 20 * 60 + 55
    #: How long an insight stays active when no exit comes first: one session of minute bars.
    period_bars: int = 390


class TrendFollowingAlphaConfig(_Section):
    """The seed's swing trend following: EMA cross with ADX strength, entry on a pullback."""

    enabled: bool = False
    fast: int = 20
    slow: int = 50
    adx_period: int = 14
    adx_min: float = 20.0
    atr_period: int = 14
    #: Trailing stop this many ATRs from the best close since entry.
    trail_atr: float = 3.0
    period_bars: int = 100


class AlphaConfig(_Section):
    rsi: RsiAlphaConfig = RsiAlphaConfig()
    ema_cross: EmaCrossAlphaConfig = EmaCrossAlphaConfig()
    macd: MacdAlphaConfig = MacdAlphaConfig()
    mean_reversion: MeanReversionAlphaConfig = MeanReversionAlphaConfig()
    trend_following: TrendFollowingAlphaConfig = TrendFollowingAlphaConfig()


class EnsembleConfig(_Section):
    #: Vote weights by source (the seeds' defaults). Weights of sources without an active signal drop
    #: out and the rest renormalise.
    weights: dict[str, float] = msgspec.field(
        default_factory=lambda: {"tft": 0.5, "rsi": 0.2, "ema_cross": 0.2, "macd": 0.1}
    )
    #: Below this confidence the ensemble direction is FLAT.
    min_confidence: float = 0.65
    #: SMA periods (features) that classify the regime: bull when close and the fast SMA are above the slow.
    regime_sma_fast: int = 20
    regime_sma_slow: int = 50
    #: Per-bar realised volatility (the feature realized_vol_<features.volatility_period>) above which an
    #: uptrend counts as sideways: a trend that noisy is not one to lean on. 0 turns the test off.
    regime_max_volatility: float = 0.03
    regime_volatility_feature: str = "realized_vol_20"
    #: The ensemble confidence (and score) is multiplied by the regime's scale (the seeds' 1.0/0.7/0.5).
    regime_scale: dict[str, float] = msgspec.field(
        default_factory=lambda: {"bull": 1.0, "bear": 0.7, "sideways": 0.5}
    )
    #: A model's vote is UP/DOWN only when the median forecast of its signal horizon is at least this
    #: return away from 0 (the seeds' quantile-return threshold); closer, it votes FLAT.
    min_expected_return: float = 0.005
    #: Platt scaling of the ensemble confidence, [a, b]: p = 1 / (1 + exp(a * confidence + b)), fitted by
    #: `utp train` on out-of-sample scored signals; [0, 0] leaves the confidence as it is.
    platt: tuple[float, float] = (0.0, 0.0)


class DriftConfig(_Section):
    enabled: bool = True
    #: Predictions (of one model) in the rolling window the monitor measures.
    window: int = 500
    #: Pause when the window's median confidence is this share below the model's training reference.
    confidence_drop: float = 0.2
    #: Pause when any feature's population stability index against training exceeds this (0.25 is the
    #: usual "significant shift").
    psi_threshold: float = 0.25


class InferenceConfig(_Section):
    #: Registered models served; each votes in the ensemble under its name when it has a weight there.
    models: tuple[str, ...] = ("tft",)
    #: ONNX files to serve instead of the registry's champion, by model name (research and tests).
    model_files: dict[str, str] = msgspec.field(default_factory=dict)
    #: In a backtest with no file for the TFT, serve the TFT that ships with utp (daemon/models.py says how
    #: it is made); the demo does. A live session serves only champions, whatever this says.
    packaged_fallback: bool = False
    #: Seconds between looks at the registry for a new champion in a live session (hot reload).
    registry_poll_s: float = 5.0
    #: Run on the CUDA provider when onnxruntime has it; the CPU provider otherwise.
    use_cuda: bool = False
    #: onnxruntime intra-op threads; 0 = its default.
    threads: int = 0
    #: Feature vectors kept per symbol for sequence models (at least the longest lookback served).
    history_bars: int = 64
    drift: DriftConfig = DriftConfig()


class GateConfig(_Section):
    #: The promotion gate (the seeds'): a model that misses any of these cannot become champion.
    min_oos_sharpe: float = 0.5
    min_win_rate: float = 0.45
    min_fold_sharpe: float = 0.0


class TrainConfig(_Section):
    """`utp train`: data, labels, walk-forward folds, the out-of-sample backtest and the gate."""

    dataset: str = "sp500"
    symbols: tuple[str, ...] = ()
    start: str = "2005-01-01"
    end: str = ""
    #: Forward-return horizons in bars (labels and forecasts).
    horizons: tuple[int, ...] = (1, 5, 20)
    #: The horizon the model's vote trades on.
    signal_horizon: int = 5
    folds: int = 12
    train_bars: int = 756
    test_bars: int = 63
    #: Bars dropped between training and test windows beyond the purge (the longest horizon).
    embargo_bars: int = 5
    #: Share of a fold's training bars (the latest) held out for early stopping, after a purge gap.
    validation_share: float = 0.15
    gate: GateConfig = GateConfig()
    #: Parameters of the models (core/ml/lgbm.py LgbmParams, core/ml/tft.py TftParams); empty = defaults.
    lgbm: dict[str, Any] = msgspec.field(default_factory=dict)
    tft: dict[str, Any] = msgspec.field(default_factory=dict)
    #: Settings of the out-of-sample backtest, dotted ({"portfolio.top_n": 5}), over the ones utp train
    #: picks (the model voting alone; rank long/short for many symbols, fixed for one).
    backtest: dict[str, Any] = msgspec.field(default_factory=dict)


class ModelsConfig(_Section):
    #: MLflow tracking and registry URI; empty = SQLite under <data dir>/mlflow.
    mlflow_uri: str = ""
    experiment: str = "utp"


PORTFOLIO_METHODS = (
    "fixed", "equal", "confidence", "insight", "rank", "mean_variance", "risk_parity", "hrp", "black_litterman",
)  # fmt: skip
OPTIMIZER_METHODS = ("mean_variance", "risk_parity", "hrp", "black_litterman")


class PortfolioConfig(_Section):
    """Portfolio construction (Lean's step between alpha and risk): scored signals -> target weights.

    fixed: each UP signal asks for +risk.max_position_pct of equity, DOWN for flat (or the negative with
    risk.allow_short), and a held position is never resized: the reference strategy's behaviour.
    The other methods weight the symbols with an active UP (or, with shorts, DOWN) signal so that their
    gross weights sum to `gross`, and resize held positions as the weights move:
    equal: 1/N each. confidence: proportional to the ensemble confidence (Lean's confidence-weighted).
    insight: proportional to the share of the ensemble's total weight backing the direction (Lean's
    insight-weighted, the insight's weight being its vote). rank: long the `top_n` symbols by latest
    ensemble score, short the `bottom_n`, equal weights. mean_variance, risk_parity, hrp and
    black_litterman: skfolio's optimisers fitted on the last `lookback` bars of returns of those symbols;
    Black-Litterman takes each signal as a view (direction x confidence x `view_return` a year).
    Risk still caps each target at risk.max_position_pct.
    """

    method: str = "fixed"
    #: Sum of the absolute target weights of the weighting methods.
    gross: float = 1.0
    #: Bars of returns the optimisers are fitted on; fewer than `min_history` complete rows -> equal weight.
    lookback: int = 252
    min_history: int = 60
    #: mean_variance objective: min_risk (minimum variance), max_ratio (maximum Sharpe) or max_utility.
    objective: str = "max_ratio"
    risk_aversion: float = 1.0
    #: Black-Litterman: a view's yearly excess return at full confidence.
    view_return: float = 0.10
    #: Resize a held position when it is off its target by more than this share of equity.
    rebalance_band: float = 0.02
    #: rank: long the top_n symbols by their latest ensemble score (score > 0), short the bottom_n
    #: (score < 0, with risk.allow_short), equal weights (a model's cross-sectional portfolio).
    top_n: int = 3
    bottom_n: int = 3


#: GICS sectors of the packaged universes (skfolio's 20 S&P 500 stocks and GOOG), for the sector rule.
DEFAULT_SECTORS: dict[str, str] = {
    "AAPL": "information_technology", "AMD": "information_technology", "MSFT": "information_technology",
    "BAC": "financials", "JPM": "financials",
    "BBY": "consumer_discretionary", "HD": "consumer_discretionary",
    "CVX": "energy", "RRC": "energy", "XOM": "energy",
    "GE": "industrials",
    "JNJ": "health_care", "LLY": "health_care", "MRK": "health_care", "PFE": "health_care", "UNH": "health_care",
    "KO": "consumer_staples", "PEP": "consumer_staples", "PG": "consumer_staples", "WMT": "consumer_staples",
    "GOOG": "communication_services",
}  # fmt: skip


class SignalFilterConfig(_Section):
    """Filters on entries (exits are never filtered), each a reason code of the risk engine; 0 / empty = off."""

    #: Entries only from entry_start to entry_end (exchange time) of an exchange session, and not in its last 15
    #: minutes (half days end 12:45); applies to intraday bars only.
    market_hours: bool = True
    calendar: str = "XNYS"
    entry_start: str = "09:30"
    entry_end: str = "15:45"
    #: Average volume over volume_period bars at least this (a symbol whose volume is unknown, all 0, passes).
    min_avg_volume: float = 500_000.0
    volume_period: int = 20
    #: Quoted spread below this share of the mid, when quotes exist.
    max_spread: float = 0.001
    #: No entries within this many exchange sessions of a symbol's earnings (earnings_file: CSV/Parquet with
    #: symbol and date columns; empty = no earnings calendar).
    earnings_blackout_days: int = 2
    earnings_file: str = ""


class UniverseConfig(_Section):
    """The tradable universe, screened once per exchange session from the bars seen so far (seed 004)."""

    enabled: bool = True
    lookback: int = 20
    min_price: float = 5.0
    max_price: float = 500.0
    #: Average close x volume over the lookback (skipped for a symbol whose volume is unknown, all 0).
    min_dollar_volume: float = 5_000_000.0
    #: Median quoted spread (when quotes exist; seed 004: 50 bps).
    max_spread: float = 0.005
    #: Without quotes, the Corwin-Schultz estimate from highs and lows runs well above quoted spreads (daily bars
    #: of a liquid stock read 50-60 bps): its own limit, 0 = not screened on it.
    max_estimated_spread: float = 0.0
    #: Average dollar volume at which tiers 1, 2, 3 start.
    tiers: tuple[float, ...] = (5e8, 5e7, 5e6)


class RiskConfig(_Section):
    """Risk limits, defaults from the seeds' risk tables; 0 turns a limit off. See `utp.core.risk_guard` for the
    portfolio rules (applied by execution at placement) and `utp.engines.risk` for the checks of each target."""

    #: Target position per symbol as a share of equity: an UP signal asks for +this, DOWN for 0 (or -this
    #: with shorts). Execution sizes the order from the portfolio when it places it.
    max_position_pct: float = 0.10
    allow_short: bool = False
    #: An entry's loss to its stop (exit.stop_loss_pct) at most this share of equity: larger entries are capped.
    max_position_risk_pct: float = 0.02
    #: The day's loss (from the day's opening equity) beyond which no new entries are placed that day.
    max_daily_loss_pct: float = 0.05
    #: The day's loss beyond which nothing at all is placed until the operator resumes (kill switch).
    kill_switch_loss_pct: float = 0.10
    #: Drawdown from the equity peak beyond which every position is liquidated.
    max_drawdown_pct: float = 0.10
    #: A position whose close falls back from its best close since it opened by more than this is closed.
    trailing_stop_pct: float = 0.05
    #: Gross exposure of one sector (risk.sectors) as a share of equity.
    max_sector_exposure_pct: float = 0.30
    sectors: dict[str, str] = msgspec.field(default_factory=lambda: dict(DEFAULT_SECTORS))
    #: Gross exposure of the portfolio and of one symbol, in the account's currency.
    max_total_exposure: float = 50_000.0
    max_symbol_exposure: float = 10_000.0
    #: Order throttles: orders placed in the last minute, and for one symbol in a day (exits always go).
    max_orders_per_minute: int = 5
    max_orders_per_symbol_day: int = 3
    #: Losing round trips in a row after which entries pause until the next day.
    max_consecutive_losses: int = 3
    #: A fill slipping more than this multiple of the expected slippage blocks its symbol's entries for
    #: slippage_block_minutes. Expected: expected_slippage_bps, or 0 = execution.slippage_bps.
    max_slippage_multiple: float = 3.0
    slippage_block_minutes: float = 30.0
    expected_slippage_bps: float = 0.0
    max_positions: int = 30
    #: Short exposure as a share of gross exposure.
    max_short_share: float = 0.5
    #: Historical CVaR-95 of the portfolio over the last cvar_window bar times, as a share of equity (once at
    #: least cvar_min_history bar times are known).
    max_cvar_pct: float = 0.03
    cvar_window: int = 250
    cvar_min_history: int = 20
    filters: SignalFilterConfig = SignalFilterConfig()
    universe: UniverseConfig = UniverseConfig()


class ExecutionConfig(_Section):
    initial_cash: float = 100_000.0
    #: fixed: slippage_bps; spread: the larger of slippage_bps and half the Corwin-Schultz spread of the
    #: previous two bars (smoothed over spread_period bars); volatility: slippage_bps plus
    #: volatility_factor x the previous bar's (high - low) / close. Market and stop fills pay it.
    slippage_model: str = "fixed"
    slippage_bps: float = 1.0
    spread_period: int = 20
    volatility_factor: float = 0.1
    #: A fill takes at most this share of the bar's volume (0 = no limit); the rest fills on later bars.
    volume_limit: float = 0.0
    #: Commission = max(commission_min, commission_per_share x shares) + commission_bps of the notional.
    commission_per_share: float = 0.005
    commission_min: float = 1.0
    commission_bps: float = 0.0
    fractional_shares: bool = False
    #: Yearly fee on the market value of short positions, accrued bar by bar.
    borrow_rate: float = 0.0
    #: Market orders of the decisions: DAY or GTC.
    time_in_force: str = "day"
    #: Smart execution (seed 004), the same with the simulated venue and a real broker. Entries as `market`
    #: orders, or as `limit` orders at the decision's close moved limit_offset_bps plus spread_weight x half the
    #: estimated spread plus volatility_weight x the last bar's range (share of the close) towards paying more.
    entry_order: str = "market"
    limit_offset_bps: float = 5.0
    spread_weight: float = 1.0
    volatility_weight: float = 0.0
    #: An entry not done within order_timeout_s (0 = never) is accepted when at least min_fill_ratio of it filled
    #: (the rest cancelled), else a limit is repriced at the latest close, at most max_reprices times, then
    #: cancelled. Checked at each bar time, on the bars' clock.
    order_timeout_s: float = 60.0
    min_fill_ratio: float = 0.8
    max_reprices: int = 2
    #: Entries of more than this notional go as slices of at most this much, one per bar time, each with its own
    #: protective legs (0 = never sliced).
    slice_notional: float = 0.0
    #: blanket: every order risk approves goes while execution is approved. per_order: each waits in the
    #: approval queue for the operator (console, DecideApprovals, `utp ctl approve`); the operator can switch.
    approval_mode: str = "blanket"
    #: A pending order not decided within this much bar time expires (and a newer target for its symbol
    #: replaces it at once).
    approval_timeout_s: float = 300.0


class ExitConfig(_Section):
    #: The seeds' bracket: every entry gets a take-profit limit at +3% and a stop-loss stop at -1.5% from
    #: its reference price (the close it was decided on), one-cancels-other, resting at the broker.
    #: 0 leaves that leg out.
    take_profit_pct: float = 0.03
    stop_loss_pct: float = 0.015
    #: A position held this long (from the bar time it opened) is closed at the next bar time's close; 0 = never.
    max_holding_hours: float = 0.0


class BrokerConfig(_Section):
    """Where orders go, and the gates in front of real money.

    `simulated`: the simulated venue (backtests, the embedded paper session). `alpaca-paper`: Alpaca's paper
    endpoint through alpaca-py. `alpaca-live`: real money; refused unless `live_enabled` is set as well (a
    separate, explicit setting), the operator has approved execution, and `dry_run` is off.
    Credentials come from the environment variables named here, never from a file.
    """

    name: str = "simulated"
    #: The separate, explicit setting without which no order reaches a live (real-money) endpoint.
    live_enabled: bool = False
    #: Decide and log every order, send none.
    dry_run: bool = False
    paper_url: str = "https://paper-api.alpaca.markets"
    live_url: str = "https://api.alpaca.markets"
    #: The trade-updates WebSocket; empty = the one of the REST endpoint in use.
    stream_url: str = ""
    key_env: str = "APCA_API_KEY_ID"
    secret_env: str = "APCA_API_SECRET_KEY"
    #: Seconds one request may take before it counts as a (retryable) timeout.
    timeout_s: float = 10.0
    #: Retries of a retryable failure (HTTP 429, 5xx, timeouts, dropped connections), with exponential
    #: backoff from backoff_s up to backoff_max_s; other errors are never retried.
    retries: int = 3
    backoff_s: float = 0.25
    backoff_max_s: float = 8.0
    #: The circuit opens after this many failures within breaker_window_s and stays open breaker_cooldown_s.
    breaker_failures: int = 5
    breaker_window_s: float = 60.0
    breaker_cooldown_s: float = 30.0
    #: Seconds between reconciliations of positions and open orders against the broker (0 = only at start).
    reconcile_interval_s: float = 60.0


class DataConfig(_Section):
    """Live market data from vendors (`utp core --data alpaca|polygon`) and the local bar store.

    With no primary source the session replays `market_data.dataset`. When the primary goes quiet for
    `failover_after_s` during market hours, bars come from the secondary, and the switch is announced.
    """

    primary: str = ""
    secondary: str = ""
    #: Bar interval of the live stream and of backfills: 1Min, 5Min, 15Min, 1Hour, 1Day.
    timeframe: str = "1Min"
    failover_after_s: float = 90.0
    #: Alpaca's data feed: iex (free) or sip.
    alpaca_feed: str = "iex"
    alpaca_data_url: str = "https://data.alpaca.markets"
    #: The market-data WebSocket; empty = Alpaca's for the feed.
    alpaca_stream_url: str = ""
    polygon_url: str = "https://api.polygon.io"
    #: host[:port] of Polygon's WebSocket, and whether it is TLS.
    polygon_stream_host: str = "socket.polygon.io"
    polygon_stream_secure: bool = True
    polygon_key_env: str = "POLYGON_API_KEY"
    #: Folder of the bar store (Parquet by symbol and date); empty = <data dir>/bars.
    store_dir: str = ""
    #: Quarantine outlier bars from the live feed: a close beyond outlier_sigma x the symbol's recent volatility
    #: and beyond outlier_min_move (log return), or a volume beyond outlier_volume_multiple x its recent volume.
    outliers: bool = True
    outlier_sigma: float = 10.0
    outlier_min_move: float = 0.2
    outlier_volume_multiple: float = 50.0
    #: Freshness: a symbol without a bar for this long during an exchange session is stale (an alert).
    max_bar_age_s: float = 1800.0
    #: Splits and dividends (CSV/Parquet: symbol, ex_date, split_ratio, cash_dividend) applied to bars read
    #: from the bar store; empty = none.
    corporate_actions: str = ""


class BusConfig(_Section):
    #: nats://host:port for JetStream; empty = the in-process bus.
    nats_url: str = ""
    stream: str = "UTP"
    subject_root: str = "utp"
    #: JetStream de-duplication window; a restart within it can never publish an event twice.
    duplicate_window_s: float = 600.0
    #: Deliveries of a step an engine fails on (each failure restarts it from its checkpoint) before the step's
    #: rows go to the dead letters (`<root>.dlq.<kind>.<symbol>`) and the engine goes on without them.
    max_deliveries: int = 3
    #: Engines the daemon leaves to `utp engine NAME` processes (JetStream only): features, alpha, ensemble,
    #: portfolio, risk, exit.
    remote_engines: list[str] = msgspec.field(default_factory=list)
    #: Remote engines whose symbols several `utp engine NAME` processes share: engine -> partitions (alpha, and
    #: features without cross-sectional ranks; both the same count). The processes lease the partitions among
    #: themselves. Market data then publishes its bars split into the same partitions, so that a process reads only
    #: its partitions' bars.
    partitions: dict[str, int] = msgspec.field(default_factory=dict)
    #: Seconds a partition's lease lasts unless its process renews it: how long a dead process's partitions
    #: wait before another takes them over (a process that stops gives them back at once).
    partition_lease_s: float = 5.0
    #: Engines of one process take a batch published in it as it is published (no round trip through the server,
    #: no decode), committing nothing before the server has stored it; off: everything comes from the server.
    deliver_in_process: bool = True


class StateConfig(_Section):
    #: fsync every commit (survives power loss); off survives process crashes only.
    fsync: bool = True
    #: On JetStream, an engine that acts only through the bus commits its checkpoint at most this often (0: after
    #: every step). A crash replays at most this much; execution with a real broker commits every step.
    checkpoint_interval_ms: int = 200


class ServerConfig(_Section):
    #: The gRPC address. Loopback by default: reach a remote daemon through an SSH tunnel (README), or listen
    #: on another address only with TLS.
    listen: str = "127.0.0.1:50051"
    #: RunBacktest calls running at once, each in a process of its own; more wait their turn.
    max_backtests: int = 4
    #: Bearer tokens (<data dir>/auth/admin.token and read.token): every CoreService call needs one. Off only
    #: for a throwaway daemon on a machine nobody else uses.
    auth: bool = True
    #: TLS: the server's certificate chain and key (PEM). With tls_client_ca, mutual TLS: clients must
    #: present a certificate that CA signed.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    #: Prometheus metrics (HTTP) address; empty = no metrics endpoint.
    metrics_listen: str = "127.0.0.1:9101"
    #: One JSON object per log line (for journald, Loki, ...), instead of text.
    json_logs: bool = False


class OperationsConfig(_Section):
    """The daemon's own operations: the scheduler's jobs and the watchdogs (seed 004)."""

    #: Run the jobs on the NYSE calendar: pre_market 08:30 New York, end_of_day 16:30 (30 min after an early
    #: close), nightly 02:00 before each session. The operator can run any of them at any time.
    scheduler: bool = True
    #: end_of_day closes every position (for intraday strategies; the packaged alphas hold overnight).
    end_of_day_flatten: bool = False
    #: nightly retrains these models when the last retrain is this many days old (0 = never retrain).
    retrain_every_days: int = 0
    retrain_models: list[str] = msgspec.field(default_factory=lambda: ["lgbm"])
    #: pre_market alerts when a served champion is older than this (0 = never).
    model_max_age_days: float = 30.0
    #: Watchdogs, probed every watchdog_interval_s: data feed staleness (data.max_bar_age_s, live sessions),
    #: engine lag and silence, the broker's connection (a real broker), memory and disk.
    watchdogs: bool = True
    watchdog_interval_s: float = 15.0
    engine_max_lag_s: float = 300.0
    max_rss_mb: float = 8192.0
    min_free_disk_mb: float = 1024.0


class Config(_Section):
    #: Folder of the hot state; empty = the user's data folder (XDG).
    data_dir: str = ""
    #: Execution approval of a new session. Stays off unless the operator says otherwise.
    approve_execution_on_start: bool = False
    #: Seconds between engine status messages in a session.
    status_interval_s: float = 1.0
    market_data: MarketDataConfig = MarketDataConfig()
    features: FeaturesConfig = FeaturesConfig()
    alpha: AlphaConfig = AlphaConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    portfolio: PortfolioConfig = PortfolioConfig()
    risk: RiskConfig = RiskConfig()
    execution: ExecutionConfig = ExecutionConfig()
    exit: ExitConfig = ExitConfig()
    broker: BrokerConfig = BrokerConfig()
    data: DataConfig = DataConfig()
    bus: BusConfig = BusConfig()
    state: StateConfig = StateConfig()
    server: ServerConfig = ServerConfig()
    operations: OperationsConfig = OperationsConfig()
    inference: InferenceConfig = InferenceConfig()
    train: TrainConfig = TrainConfig()
    models: ModelsConfig = ModelsConfig()


class ConfigError(ValueError):
    pass


def _parse_date(name: str, value: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a date YYYY-MM-DD") from None


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key != "weights":
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
    node[leaf] = value


def _plain_dates(value: Any) -> Any:
    """YAML reads 2008-06-30 as a date; settings hold dates as ISO strings, so turn them back."""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: _plain_dates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_dates(v) for v in value]
    return value


def parse_yaml(text: str, what: str) -> Any:
    """YAML text -> Python values; `ConfigError` naming `what` for anything YAML refuses, including values its
    constructors cannot build (a date 0000-00-00 is a ValueError inside PyYAML, not a YAMLError)."""
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{what}: not valid YAML: {first}") from None


def _scalar(text: str) -> Any:
    """Parse a flag or environment value the way YAML would: 0.2 -> float, true -> bool, [1, 2] -> list."""
    return parse_yaml(text, "value") if text.strip() else ""


def parse_assignments(items: Iterable[str], what: str = "--set") -> dict[str, Any]:
    """`KEY=VALUE` strings -> {KEY: value}, values parsed the way YAML would (0.2 -> float, [a, b] -> list)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {item[:80]!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = _scalar(value)
        except ConfigError:
            raise ConfigError(f"{what} {item[:80]!r}: the value is not valid YAML") from None
    return out


def _sections() -> set[str]:
    return {f for f in Config.__struct_fields__ if isinstance(getattr(Config(), f), _Section)}


def load_config(
    files: Iterable[str | Path] = (),
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    documents: Iterable[str] = (),
    base: Config | None = None,
) -> Config:
    """Build the configuration from defaults (or `base`), files, YAML `documents` (text, after the files),
    environment and `overrides` ({"risk.max_position_pct": 0.2})."""
    tree: dict[str, Any] = to_dict(base) if base is not None else {}
    named = [(str(path), Path(path).read_text()) for path in files]
    named += [(f"configuration document {i + 1}", text) for i, text in enumerate(documents)]
    for name, text in named:
        loaded = parse_yaml(text, name) or {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{name}: the top level must be a mapping of sections")
        tree = _merge(tree, loaded)
    env = os.environ if environ is None else environ
    sections = _sections()
    for name, raw in sorted(env.items()):
        if not name.startswith("UTP_"):
            continue
        # Only UTP_<SECTION>__<KEY> or UTP_<top-level key> that names a real setting is configuration;
        # other UTP_ variables (UTP_NATS_URL for the tests) belong to someone else.
        dotted = name[4:].lower().replace("__", ".")
        head = dotted.split(".", 1)[0]
        if head in sections or dotted in Config.__struct_fields__:
            _set_path(tree, dotted, _scalar(raw))
    for dotted, value in (overrides or {}).items():
        _set_path(tree, dotted, value)
    try:
        config = msgspec.convert(_plain_dates(tree), Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    validate(config)
    return config


#: Engines that can run as `utp engine NAME` processes. Market data, execution (the daemon's positions and orders
#: are its hot state) and inference (the daemon follows the model registry's champions) stay in the daemon.
REMOTE_ENGINES = ("features", "alpha", "ensemble", "portfolio", "risk", "exit")


def validate(config: Config) -> None:
    """Checks that cross fields or need more than a type."""
    md = config.market_data
    md.start_date(), md.end_date()
    if config.server.max_backtests < 1:
        raise ConfigError("server.max_backtests must be >= 1")
    if md.batch_bar_times < 1:
        raise ConfigError("market_data.batch_bar_times must be >= 1")
    if config.bus.max_deliveries < 1:
        raise ConfigError("bus.max_deliveries must be >= 1")
    unknown = sorted(set(config.bus.remote_engines) - set(REMOTE_ENGINES))
    if unknown:
        raise ConfigError(f"bus.remote_engines: {', '.join(unknown)} cannot run in a process of its own; "
                          f"these can: {', '.join(REMOTE_ENGINES)}")  # fmt: skip
    for engine, count in config.bus.partitions.items():
        from utp.core.partitions import PARTITIONABLE_ENGINES

        if engine not in PARTITIONABLE_ENGINES:
            raise ConfigError(f"bus.partitions: {engine} keeps state across symbols and cannot be partitioned; "
                              f"these can: {', '.join(PARTITIONABLE_ENGINES)}")  # fmt: skip
        if engine not in config.bus.remote_engines:
            raise ConfigError(f"bus.partitions: {engine} is not among bus.remote_engines (partitions run in "
                              "`utp engine` processes)")  # fmt: skip
        if not 1 <= count <= 256:
            raise ConfigError(f"bus.partitions: {engine} needs 1 to 256 partitions, not {count}")
        if engine == "features" and config.features.rank_features:
            raise ConfigError("bus.partitions: features ranks symbols against each other (features.rank_features); "
                              "empty it to partition features")  # fmt: skip
    if len(set(config.bus.partitions.values())) > 1:
        # Both read the bars, which market data publishes split into the partitions of the engines reading them.
        raise ConfigError("bus.partitions: features and alpha read the same bars, split into one set of partitions; "
                          f"give them the same count, not {config.bus.partitions}")  # fmt: skip
    if config.bus.partition_lease_s <= 0:
        raise ConfigError("bus.partition_lease_s must be > 0")
    if config.bus.remote_engines and not config.bus.nats_url:
        raise ConfigError("bus.remote_engines needs the JetStream bus (bus.nats_url, --nats): other processes "
                          "cannot reach the in-process bus")  # fmt: skip
    if md.replay_rate < 0:
        raise ConfigError("market_data.replay_rate must be >= 0")
    if config.state.checkpoint_interval_ms < 0:
        raise ConfigError("state.checkpoint_interval_ms must be >= 0")
    pc = config.portfolio
    if pc.method not in PORTFOLIO_METHODS:
        raise ConfigError(f"portfolio.method must be one of {', '.join(PORTFOLIO_METHODS)}, not {pc.method!r}")
    if pc.objective not in ("min_risk", "max_ratio", "max_utility"):
        raise ConfigError("portfolio.objective must be min_risk, max_ratio or max_utility")
    if not 0 < pc.gross <= 10:
        raise ConfigError("portfolio.gross must be in (0, 10]")
    if not 2 <= pc.min_history <= pc.lookback:
        raise ConfigError("portfolio needs 2 <= min_history <= lookback")
    if not 0 < pc.rebalance_band <= 1:
        raise ConfigError("portfolio.rebalance_band must be in (0, 1]")
    if pc.risk_aversion < 0 or not pc.view_return == pc.view_return:
        raise ConfigError("portfolio.risk_aversion must be >= 0 and view_return a number")
    if not 0 < config.risk.max_position_pct <= 10:
        raise ConfigError("risk.max_position_pct must be in (0, 10]")
    ex = config.execution
    if ex.slippage_model not in ("fixed", "spread", "volatility"):
        raise ConfigError("execution.slippage_model must be fixed, spread or volatility")
    if ex.time_in_force not in ("day", "gtc"):
        raise ConfigError("execution.time_in_force must be day or gtc")
    if not 0 <= ex.volume_limit <= 1:
        raise ConfigError("execution.volume_limit must be in [0, 1]")
    if ex.spread_period < 1:
        raise ConfigError("execution.spread_period must be >= 1")
    if min(ex.initial_cash, ex.slippage_bps, ex.volatility_factor, ex.commission_per_share, ex.commission_min,
           ex.commission_bps, ex.borrow_rate) < 0:  # fmt: skip
        raise ConfigError("execution: cash, slippage, commissions and the borrow rate must be >= 0")
    if not (0 <= config.exit.take_profit_pct and 0 <= config.exit.stop_loss_pct < 1):
        raise ConfigError("exit.take_profit_pct must be >= 0 and exit.stop_loss_pct in [0, 1)")
    if any(w < 0 for w in config.ensemble.weights.values()):
        raise ConfigError("ensemble.weights must be >= 0")
    if not 0 <= config.ensemble.min_confidence <= 1:
        raise ConfigError("ensemble.min_confidence must be in [0, 1]")
    if (config.ensemble.regime_sma_fast, config.ensemble.regime_sma_slow) != config.features.sma_periods:
        raise ConfigError("ensemble.regime_sma_fast/slow must equal features.sma_periods (the regime reads them)")
    f = config.features
    if f.benchmark_horizon not in f.return_horizons:
        raise ConfigError("features.benchmark_horizon must be one of features.return_horizons")
    if 1 not in f.return_horizons:
        raise ConfigError("features.return_horizons must include 1")
    if f.benchmark not in ("", "sp500"):
        raise ConfigError("features.benchmark must be 'sp500' or ''")
    from utp.core.features import FeatureSpec  # the definition knows its own names

    try:
        feature_names = FeatureSpec(f).names
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    en = config.ensemble
    if en.regime_max_volatility > 0 and en.regime_volatility_feature not in feature_names:
        raise ConfigError(f"ensemble.regime_volatility_feature {en.regime_volatility_feature!r} is not a feature "
                          "(set regime_max_volatility: 0 to classify the regime without volatility)")
    if config.alpha.ema_cross.fast >= config.alpha.ema_cross.slow:
        raise ConfigError("alpha.ema_cross.fast must be < alpha.ema_cross.slow")
    if config.alpha.macd.fast >= config.alpha.macd.slow:
        raise ConfigError("alpha.macd.fast must be < alpha.macd.slow")
    if config.alpha.macd.bounce_threshold < 0:
        raise ConfigError("alpha.macd.bounce_threshold must be >= 0")
    rsi = config.alpha.rsi
    if not rsi.lower < rsi.lower_reset <= rsi.upper_reset < rsi.upper:
        raise ConfigError("alpha.rsi needs lower < lower_reset <= upper_reset < upper")
    if set(en.regime_scale) != {"bull", "bear", "sideways"} or any(not 0 <= v <= 1 for v in en.regime_scale.values()):
        raise ConfigError("ensemble.regime_scale needs bull, bear and sideways, each in [0, 1]")
    if en.min_expected_return < 0 or en.regime_max_volatility < 0:
        raise ConfigError("ensemble.min_expected_return and regime_max_volatility must be >= 0")
    inf = config.inference
    if inf.history_bars < 1 or inf.registry_poll_s <= 0 or inf.threads < 0:
        raise ConfigError("inference.history_bars >= 1, registry_poll_s > 0 and threads >= 0")
    unknown = set(inf.model_files) - set(inf.models)
    if unknown:
        raise ConfigError(f"inference.model_files names models not in inference.models: {', '.join(sorted(unknown))}")
    d = inf.drift
    if d.window < 10 or not 0 < d.confidence_drop < 1 or d.psi_threshold <= 0:
        raise ConfigError("inference.drift needs window >= 10, confidence_drop in (0, 1), psi_threshold > 0")
    tr = config.train
    _parse_date("train.start", tr.start), _parse_date("train.end", tr.end)
    if not tr.horizons or any(h < 1 for h in tr.horizons) or tr.signal_horizon not in tr.horizons:
        raise ConfigError("train.horizons must be positive and include train.signal_horizon")
    if tr.folds < 1 or tr.train_bars < 20 or tr.test_bars < 1 or tr.embargo_bars < 0:
        raise ConfigError("train needs folds >= 1, train_bars >= 20, test_bars >= 1, embargo_bars >= 0")
    if not 0 < tr.validation_share < 0.5:
        raise ConfigError("train.validation_share must be in (0, 0.5)")
    if pc.top_n < 0 or pc.bottom_n < 0 or (pc.method == "rank" and pc.top_n + pc.bottom_n == 0):
        raise ConfigError("portfolio.top_n and bottom_n must be >= 0, and rank needs one of them > 0")


def to_dict(config: Config) -> dict[str, Any]:
    return msgspec.to_builtins(config)
