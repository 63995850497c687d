"""Technical indicators as numba kernels, each in a batch and a streaming form from one definition.

See `_base` for the conventions. Everything public is re-exported here.
"""

from utp.core.indicators._base import IndicatorUpdate
from utp.core.indicators.averages import Dema, Ema, Sma, Tema, Wma, dema, ema, sma, tema, wma
from utp.core.indicators.momentum import Macd, MacdResult, MacdUpdate, Rsi, macd, rsi
from utp.core.indicators.returns import Returns

__all__ = [
    "IndicatorUpdate",
    "Dema", "Ema", "Sma", "Tema", "Wma", "dema", "ema", "sma", "tema", "wma",
    "Macd", "MacdResult", "MacdUpdate", "Rsi", "macd", "rsi",
    "Returns",
]  # fmt: skip
