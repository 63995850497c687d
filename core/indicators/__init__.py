"""Technical indicators as numba kernels, each in a batch and a streaming form from one definition.

See `_base` for the conventions. Everything public is re-exported here:
* averages: SMA, EMA, WMA, DEMA, TEMA
* momentum: RSI, MACD
* oscillators: ROC, MOM, STOCH, STOCHF, WILLR, CCI, MFI, OBV, lag (the value n bars back)
* bands: STDDEV, Bollinger bands (with %B), true range, ATR, NATR, ADX/+DI/-DI, DX, Keltner, Donchian,
  rolling max/min
* statistics: rolling z-score, realized / Parkinson / Garman-Klass volatility, session VWAP and the
  distance to it, volume z-score
* microstructure: Corwin-Schultz and Roll spread estimates
"""

from utp.core.indicators._base import IndicatorUpdate
from utp.core.indicators.averages import Dema, Ema, Sma, Tema, Wma, dema, ema, sma, tema, wma
from utp.core.indicators.bands import (
    Adx, AdxResult, AdxUpdate, Atr, Bbands, BbandsResult, BbandsUpdate, Donchian, DonchianResult, DonchianUpdate,
    Dx, Keltner, KeltnerResult, KeltnerUpdate, Natr, RollingMax, RollingMin, Stddev, TrueRange, adx, atr, bbands,
    donchian, dx, keltner, natr, rolling_max, rolling_min, stddev, trange,
)  # fmt: skip
from utp.core.indicators.microstructure import CorwinSchultzSpread, RollSpread, corwin_schultz_spread, roll_spread
from utp.core.indicators.momentum import Macd, MacdResult, MacdUpdate, Rsi, macd, rsi
from utp.core.indicators.oscillators import (
    Cci, Lag, Mfi, Mom, Obv, Roc, Stoch, StochF, StochFResult, StochFUpdate, StochResult, StochUpdate, Willr, cci, mfi, mom,
    obv, roc, stoch, stochf, willr, lag,
)  # fmt: skip
from utp.core.indicators.statistics import (
    GarmanKlassVolatility, ParkinsonVolatility, RealizedVolatility, SessionVwap, VolumeZScore, VwapDistance, ZScore,
    garman_klass_volatility, parkinson_volatility, realized_volatility, session_vwap, volume_zscore, vwap_distance,
    zscore,
)  # fmt: skip

__all__ = [
    "Adx",
    "AdxResult",
    "AdxUpdate",
    "Atr",
    "Bbands",
    "BbandsResult",
    "BbandsUpdate",
    "Cci",
    "CorwinSchultzSpread",
    "Dema",
    "Donchian",
    "DonchianResult",
    "DonchianUpdate",
    "Dx",
    "Ema",
    "GarmanKlassVolatility",
    "IndicatorUpdate",
    "Keltner",
    "KeltnerResult",
    "KeltnerUpdate",
    "Lag",
    "Macd",
    "MacdResult",
    "MacdUpdate",
    "Mfi",
    "Mom",
    "Natr",
    "Obv",
    "ParkinsonVolatility",
    "RealizedVolatility",
    "Roc",
    "RollSpread",
    "RollingMax",
    "RollingMin",
    "Rsi",
    "SessionVwap",
    "Sma",
    "Stddev",
    "Stoch",
    "StochF",
    "StochFResult",
    "StochFUpdate",
    "StochResult",
    "StochUpdate",
    "Tema",
    "TrueRange",
    "VolumeZScore",
    "VwapDistance",
    "Willr",
    "Wma",
    "ZScore",
    "adx",
    "atr",
    "bbands",
    "cci",
    "corwin_schultz_spread",
    "dema",
    "donchian",
    "dx",
    "ema",
    "garman_klass_volatility",
    "keltner",
    "lag",
    "macd",
    "mfi",
    "mom",
    "natr",
    "obv",
    "parkinson_volatility",
    "realized_volatility",
    "roc",
    "roll_spread",
    "rolling_max",
    "rolling_min",
    "rsi",
    "session_vwap",
    "sma",
    "stddev",
    "stoch",
    "stochf",
    "tema",
    "trange",
    "volume_zscore",
    "vwap_distance",
    "willr",
    "wma",
    "zscore",
]
