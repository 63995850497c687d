"""The Temporal Fusion Transformer: shapes and ordered quantiles, learning a synthetic problem with honest
coverage, bit-identical refits, the causal attention shortcut, ONNX export against torch, variable
importance and the pinball loss. Tiny data and models, so the file runs in well under a minute on a CPU."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from utp.core.ml.tft import (  # noqa: E402  (after the optional-dependency skips)
    InterpretableMultiHeadAttention,
    TemporalFusionTransformer,
    TftParams,
    export_tft_onnx,
    fit_tft,
    predict_tft,
    quantile_loss,
    variable_importance,
)

LOOKBACK, FEATURES, HORIZONS = 6, 4, 2
SMALL = TftParams(lookback=LOOKBACK, hidden=8, heads=2, dropout=0.05, learning_rate=1e-2, batch_size=64,
                  max_epochs=25, patience=4)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These models are too small to gain from threads, and on a busy machine torch's spinning worker
    threads make them many times slower; the caller's setting comes back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray


def linear_problem(seed: int, n: int, noise: float) -> Split:
    """Features on unlike scales and offsets (so the standardisation matters); each horizon's return is a
    linear function of the last bar's features plus Gaussian noise of std `noise`."""
    rng = np.random.default_rng(seed)
    scale = np.array([0.02, 5.0, 1.0, 100.0])
    offset = np.array([0.0, 50.0, -3.0, 1000.0])
    x = (rng.normal(size=(n, LOOKBACK, FEATURES)) * scale + offset).astype(np.float32)
    last = (x[:, -1] - offset) / scale
    coefficients = np.array([[1.0, -0.5], [0.5, 1.0], [0.0, 0.0], [-0.8, 0.3]])
    y = last @ coefficients * 0.01 + rng.normal(scale=noise, size=(n, HORIZONS))
    return Split(x, y)


@dataclass
class Trained:
    model: TemporalFusionTransformer
    test: Split
    train_losses: list[float]
    valid_losses: list[float]


@pytest.fixture(scope="module")
def trained() -> Trained:
    """One fit on the linear problem, shared by the tests that need a trained model; returns are on a
    realistic scale (about 1%) to exercise the target scaling."""
    train, valid, test = (linear_problem(seed, n, noise=0.005) for seed, n in ((1, 1500), (2, 400), (3, 600)))
    train_losses: list[float] = []
    valid_losses: list[float] = []

    def progress(epoch: int, train_loss: float, valid_loss: float) -> None:
        assert epoch == len(train_losses) + 1
        train_losses.append(train_loss)
        valid_losses.append(valid_loss)

    model = fit_tft(train.x, train.y, valid.x, valid.y, SMALL, progress)
    return Trained(model, test, train_losses, valid_losses)


def random_model(n_features: int = FEATURES, params: TftParams = SMALL) -> TemporalFusionTransformer:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    return TemporalFusionTransformer(n_features, HORIZONS, params, rng.normal(size=n_features),
                                     rng.uniform(0.5, 2.0, size=n_features)).eval()  # fmt: skip


def test_shapes_and_quantiles_do_not_cross_on_random_input() -> None:
    model = random_model()
    x = np.random.default_rng(5).normal(scale=3.0, size=(37, LOOKBACK, FEATURES)).astype(np.float32)
    quantiles = predict_tft(model, x, batch_size=10)
    assert quantiles.shape == (37, HORIZONS, 3) and quantiles.dtype == np.float64
    assert np.isfinite(quantiles).all()
    assert (quantiles[..., 0] < quantiles[..., 1]).all() and (quantiles[..., 1] < quantiles[..., 2]).all()
    # batching does not change the answer, and an empty input gives an empty answer of the right shape
    np.testing.assert_allclose(predict_tft(model, x), quantiles, atol=1e-6)
    assert predict_tft(model, x[:0]).shape == (0, HORIZONS, 3)


def test_training_learns_the_linear_problem_with_calibrated_intervals(trained: Trained) -> None:
    assert trained.valid_losses[0] < trained.train_losses[0]  # the first epoch already learned something
    assert min(trained.train_losses) < 0.6 * trained.train_losses[0]
    assert not trained.model.training
    quantiles = predict_tft(trained.model, trained.test.x)
    low, median, high = quantiles[..., 0], quantiles[..., 1], quantiles[..., 2]
    assert (low < median).all() and (median < high).all()
    y = trained.test.y
    assert np.mean(np.abs(y - median)) < 0.5 * np.mean(np.abs(y))  # far better than predicting zero
    coverage = np.mean((low <= y) & (y <= high))
    assert 0.6 <= coverage <= 0.95, coverage


def test_refit_with_the_same_seed_is_bit_identical_and_leaves_global_state_alone() -> None:
    train, valid = linear_problem(11, 300, noise=0.005), linear_problem(12, 100, noise=0.005)
    params = TftParams(**{**SMALL.__dict__, "max_epochs": 3})
    torch.manual_seed(123)
    determinism_before = torch.are_deterministic_algorithms_enabled()
    first = fit_tft(train.x, train.y, valid.x, valid.y, params)
    draw_after_fit = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(draw_after_fit, torch.rand(3))  # fitting did not consume the caller's random stream
    assert torch.are_deterministic_algorithms_enabled() == determinism_before
    second = fit_tft(train.x, train.y, valid.x, valid.y, params)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert np.array_equal(predict_tft(first, valid.x), predict_tft(second, valid.x))
    other_seed = fit_tft(train.x, train.y, valid.x, valid.y, TftParams(**{**params.__dict__, "seed": 8}))
    assert not np.array_equal(predict_tft(first, valid.x), predict_tft(other_seed, valid.x))


def test_single_query_attention_equals_the_last_row_of_full_causal_attention() -> None:
    torch.manual_seed(0)
    attention = InterpretableMultiHeadAttention(hidden=8, heads=2, dropout=0.0).eval()
    window = torch.randn(5, 7, 8)
    with torch.no_grad():
        full = attention(window, window)
        last_only = attention(window[:, -1:], window)
        torch.testing.assert_close(last_only, full[:, -1:], rtol=0, atol=1e-6)
        changed_future = window.clone()
        changed_future[:, 4:] += 1.0
        earlier = attention(changed_future, changed_future)
    torch.testing.assert_close(earlier[:, :4], full[:, :4], rtol=0, atol=1e-6)  # the mask hides later bars
    assert not torch.allclose(earlier[:, 4:], full[:, 4:])


def test_onnx_export_matches_torch_with_a_dynamic_batch_and_keeps_metadata(trained: Trained) -> None:
    metadata = {"model": "tft", "features": "a,b,c,d", "horizons": "1,5"}
    graph_bytes = export_tft_onnx(trained.model, metadata)
    graph = onnx.load_from_string(graph_bytes)
    onnx.checker.check_model(graph)
    assert {prop.key: prop.value for prop in graph.metadata_props} == metadata
    assert [i.name for i in graph.graph.input] == ["features"]
    assert [o.name for o in graph.graph.output] == ["quantiles"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(graph_bytes, options, providers=["CPUExecutionProvider"])
    x = np.concatenate([trained.test.x] * 2)[:500]
    expected = predict_tft(trained.model, x)
    for batch in (1, 7, 500):
        (quantiles,) = session.run(["quantiles"], {"features": x[:batch]})
        assert quantiles.shape == (batch, HORIZONS, 3) and quantiles.dtype == np.float32
        np.testing.assert_allclose(quantiles, expected[:batch], rtol=0, atol=1e-5)
    assert not trained.model.training


def test_variable_importance_finds_the_only_feature_that_matters() -> None:
    rng = np.random.default_rng(21)
    x = rng.normal(size=(1400, LOOKBACK, FEATURES)).astype(np.float32)
    y = np.stack([x[:, -1, 0], x[:, -2:, 0].mean(axis=1)], axis=1) + rng.normal(scale=0.05, size=(1400, 2))
    params = TftParams(**{**SMALL.__dict__, "max_epochs": 15})
    model = fit_tft(x[:1100], y[:1100], x[1100:], y[1100:], params)
    importance = variable_importance(model, x[1100:])
    assert importance.shape == (FEATURES,)
    assert importance.sum() == pytest.approx(1.0)
    assert np.argmax(importance) == 0, importance
    assert importance[0] > 1.5 * np.max(importance[1:]), importance


def test_quantile_loss_is_the_mean_pinball_loss() -> None:
    pred = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]])  # one sample, two horizons
    target = torch.tensor([[1.5, 0.0]])
    # horizon 1, errors 1.5, 0.5, -0.5: 0.1*1.5 + 0.5*0.5 + 0.1*0.5 = 0.45
    # horizon 2, errors -1 for all:   0.9*1   + 0.5*1   + 0.1*1   = 1.5
    loss = quantile_loss(pred, target, (0.1, 0.5, 0.9))
    assert loss.item() == pytest.approx((0.45 + 1.5) / 6)


def test_attention_by_lag_is_the_forecasts_pattern_over_the_window() -> None:
    from utp.core.ml.tft import attention_by_lag

    model = random_model()
    x = np.random.default_rng(8).normal(size=(50, LOOKBACK, FEATURES)).astype(np.float32)
    lags = attention_by_lag(model, x, batch_size=16)
    assert lags.shape == (LOOKBACK,) and (lags >= 0).all() and lags.sum() == pytest.approx(1.0)
    per_sample = model.attention_by_lag(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(per_sample.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(per_sample.mean(axis=0), lags, atol=1e-6)
    # With one value projection shared by the heads, the head-averaged pattern is the whole story of what
    # the attention reads: its output is the output projection of pattern @ values.
    attention = model.attention
    with torch.no_grad():
        temporal, _ = model._temporal(torch.from_numpy(x))
        pattern = attention.pattern(temporal[:, -1:], temporal)
        values = attention.value(temporal)
        by_hand = attention.output(pattern @ values)
        torch.testing.assert_close(attention(temporal[:, -1:], temporal), by_hand, rtol=0, atol=1e-6)
