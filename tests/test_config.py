"""Configuration: the shipped defaults file is the code's defaults; typos are errors; layers override."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from utp.core.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def test_configs_utp_yaml_holds_exactly_the_defaults() -> None:
    assert load_config([REPO / "configs" / "utp.yaml"], environ={}) == Config()


def test_an_unknown_key_is_an_error_that_names_it(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("risk:\n  max_positon_pct: 0.2\n")
    with pytest.raises(ConfigError, match=r"max_positon_pct.*\$\.risk"):
        load_config([path], environ={})


def test_a_wrong_type_is_an_error_that_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"\$\.execution\.initial_cash"):
        load_config(environ={}, overrides={"execution.initial_cash": "lots"})


def test_layers_files_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("risk:\n  max_position_pct: 0.2\nmarket_data:\n  end: 2008-06-30\n")
    env = {"UTP_RISK__MAX_POSITION_PCT": "0.3", "UTP_NATS_URL": "nats://elsewhere:4222", "HOME": "/x"}
    assert load_config([path], environ={}).risk.max_position_pct == 0.2
    config = load_config([path], environ=env)
    assert config.risk.max_position_pct == 0.3
    assert config.market_data.end == "2008-06-30"  # YAML dates stay ISO strings
    assert config.bus.nats_url == ""  # UTP_NATS_URL belongs to the tests, not to the config
    assert load_config([path], environ=env, overrides={"risk.max_position_pct": 0.4}).risk.max_position_pct == 0.4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"market_data.start": "yesterday"}, "market_data.start"),
        ({"alpha.ema_cross.fast": 30}, "fast must be < "),
        ({"alpha.rsi.lower_reset": 20.0}, "alpha.rsi"),
        ({"ensemble.min_confidence": 2.0}, "min_confidence"),
        ({"features.sma_periods": [10, 40]}, "must equal features.sma_periods"),
        ({"features.rank_features": ["nope"]}, "unknown features: nope"),
    ],
)
def test_values_that_cannot_work_are_refused_at_start(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(environ={}, overrides=overrides)


def test_cli_reports_a_bad_setting_and_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "utp.daemon.cli", "backtest", "--set", "risk.nonsense=1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "nonsense" in result.stderr
