"""A small Temporal Fusion Transformer (Lim et al. 2019, arXiv:1912.09363) for quantile forecasts of
forward returns, trained in torch on a CPU and served through its ONNX export.

The model sees only observed past inputs: a window of `lookback` bars of features per sample. This use
has no static covariates and no known-future inputs, so the parts of the paper that exist only for them
are left out: the static covariate encoders (their context vectors would condition the variable
selection, the LSTM's initial state and the static enrichment), the known-future decoder LSTM and the
static enrichment layer (a GRN with no context is just another GRN before the attention). What remains
is the paper's temporal path: variable selection per bar, an LSTM encoder, gated skips with LayerNorm,
interpretable multi-head self-attention under a causal mask, a position-wise GRN and quantile heads read
from the last bar, one per forecast horizon.

Torch is the optional `utp[train]` dependency: only training code imports this module, serving runs the
ONNX graph with onnxruntime alone.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# A feature whose training spread is below this is centred but not scaled: dividing by a near-zero std
# would turn any value it never took in training into an enormous input.
STD_FLOOR = 1e-8
# Global norm the gradients are clipped to, as in the paper's training setup; it keeps the early epochs,
# when the attention and the gates are still random, from taking destructive steps.
MAX_GRADIENT_NORM = 1.0
ONNX_INPUT = "features"
ONNX_OUTPUT = "quantiles"


@dataclass(frozen=True)
class TftParams:
    """Architecture and training settings. The serving cost of a call grows with rows * lookback *
    (features + hidden) * hidden, so lookback and hidden are the knobs that trade accuracy for latency."""

    lookback: int = 20  # bars in the encoder window
    hidden: int = 16
    heads: int = 4
    dropout: float = 0.1
    lstm_layers: int = 1
    learning_rate: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 30
    patience: int = 4  # early stopping on the validation quantile loss
    seed: int = 7
    quantiles: tuple[float, float, float] = (0.1, 0.5, 0.9)

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        low, median, high = self.quantiles
        if not 0.0 < low < median < high < 1.0:
            raise ValueError(f"quantiles must be increasing inside (0, 1), got {self.quantiles}")


class InputStandardizer(nn.Module):
    """Standardises raw features with the training set's mean and std, kept as buffers so the exported
    graph takes raw feature values and serving needs no separate scaler."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        mean = np.asarray(mean, dtype=np.float64)
        std = np.asarray(std, dtype=np.float64)
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(f"mean and std must be vectors of one shape, got {mean.shape} and {std.shape}")
        std = np.where(std > STD_FLOOR, std, 1.0)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class GatedLinearUnit(nn.Module):
    """sigmoid(W1 x) * (W2 x): a gate that can shut a whole block off, letting the network skip
    non-linear processing it does not need (the paper's GLU)."""

    def __init__(self, input_size: int, output_size: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(input_size, 2 * output_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.glu(self.linear(self.dropout(x)), dim=-1)


class GatedResidualNetwork(nn.Module):
    """LayerNorm(skip(x) + GLU(W2 ELU(W1 x))): a non-linear block the gate can reduce to the skip path,
    so depth costs nothing where the data do not call for it. The skip is the identity when input and
    output sizes agree, a linear projection otherwise."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int, dropout: float) -> None:
        super().__init__()
        self.skip = nn.Identity() if input_size == output_size else nn.Linear(input_size, output_size)
        self.hidden = nn.Linear(input_size, hidden_size)
        self.intermediate = nn.Linear(hidden_size, hidden_size)
        self.gate = GatedLinearUnit(hidden_size, output_size, dropout)
        self.norm = nn.LayerNorm(output_size)

    def forward(self, x: Tensor) -> Tensor:
        eta = self.intermediate(F.elu(self.hidden(x)))
        return self.norm(self.skip(x) + self.gate(eta))


class GatedSkip(nn.Module):
    """LayerNorm(residual + GLU(x)): the gated residual connection around the LSTM, the attention and the
    position-wise GRN, so each of them can be bypassed."""

    def __init__(self, size: int, dropout: float) -> None:
        super().__init__()
        self.gate = GatedLinearUnit(size, size, dropout)
        self.norm = nn.LayerNorm(size)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.norm(residual + self.gate(x))


class VariableSelectionNetwork(nn.Module):
    """A softmax-weighted sum of the variables' embeddings; the weights are the model's variable
    importance. Each variable is embedded linearly (x_j w_j + b_j) and the weighted sum is taken before
    anything is non-linear: sum_j v_j (x_j w_j + b_j) = (v * x) W + v B, one [rows, features] x
    [features, hidden] product, never a [features, rows, hidden] tensor.

    Two departures from the paper, both for serving speed (a 500-symbol call in a few milliseconds on a
    CPU, where the paper's form took 200 ms, over 90% of it here): the weights are chosen once per sample
    from its latest bar (a GRN on the standardised feature vector), not for every bar of the window, and
    the paper's per-variable GRNs are left out (the LSTM and the GRNs after it supply the non-linearity)."""

    def __init__(self, n_variables: int, hidden: int, dropout: float) -> None:
        super().__init__()
        bound = 1.0  # nn.Linear's default for one input
        self.embedding_weight = nn.Parameter(torch.empty(n_variables, hidden).uniform_(-bound, bound))
        self.embedding_bias = nn.Parameter(torch.empty(n_variables, hidden).uniform_(-bound, bound))
        self.weight_grn = GatedResidualNetwork(n_variables, hidden, n_variables, dropout)

    def forward(self, x: Tensor, standardize: InputStandardizer) -> tuple[Tensor, Tensor]:
        """x: [batch, time, variables] raw. Returns the selected input [batch, time, hidden] (of the
        standardised variables) and the selection weights [batch, variables].

        The standardisation is folded into the weights, so the window itself is never standardised:
        sum_j v_j ((x_j - m_j) / s_j) w_j = sum_j (v_j / s_j) x_j w_j - sum_j (v_j / s_j) m_j w_j."""
        weights = torch.softmax(self.weight_grn(standardize(x[:, -1])), dim=-1)
        scaled = weights / standardize.std
        constant = weights @ self.embedding_bias - (scaled * standardize.mean) @ self.embedding_weight
        selected = (scaled.unsqueeze(1) * x) @ self.embedding_weight + constant.unsqueeze(1)
        return selected, weights


class InterpretableMultiHeadAttention(nn.Module):
    """Multi-head attention whose heads share the value projection and are averaged rather than
    concatenated, so the mean attention pattern is one interpretable set of weights over the window.

    Queries are the last `q` positions of the window and may be fewer than the keys: query i stands at
    window position L - q + i and, under the causal mask, sees only positions up to its own."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_size = hidden // heads
        self.queries = nn.Linear(hidden, hidden)  # all heads' query projections side by side
        self.keys = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, self.head_size)  # shared by the heads
        self.output = nn.Linear(self.head_size, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        """query: [batch, q, hidden], key: [batch, L, hidden] (also the values' input), q <= L.
        Returns [batch, q, hidden]."""
        attention = self.dropout(self._attention(query, key))
        values = self.value(key).unsqueeze(1)  # [batch, 1, L, head_size], broadcast over the heads
        return self.output((attention @ values).mean(dim=1))

    def pattern(self, query: Tensor, key: Tensor) -> Tensor:
        """The attention weights averaged over the heads, [batch, q, L]: with one shared value projection
        this is exactly how much each position contributed (the paper's interpretable pattern)."""
        return self._attention(query, key).mean(dim=1)

    def _attention(self, query: Tensor, key: Tensor) -> Tensor:
        batch, n_queries, _ = query.shape
        n_keys = key.shape[1]
        queries = self.queries(query).view(batch, n_queries, self.heads, self.head_size).transpose(1, 2)
        keys = self.keys(key).view(batch, n_keys, self.heads, self.head_size).transpose(1, 2)
        scores = queries @ keys.transpose(-1, -2) / math.sqrt(self.head_size)  # [batch, heads, q, L]
        query_positions = torch.arange(n_keys - n_queries, n_keys).unsqueeze(-1)
        future = torch.arange(n_keys).unsqueeze(0) > query_positions  # [q, L]
        return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


class TemporalFusionTransformer(nn.Module):
    """The TFT's temporal path for observed inputs only (no static covariates, no known-future inputs):
    raw features [batch, lookback, features] in, quantiles [batch, horizons, 3] of the forward return out.

    Only the last bar's representation feeds the forecast, so the attention computes that one query: under
    the causal mask it attends to the whole window, and the gated skips and the position-wise GRN act per
    position, so this equals running them over every bar and reading the last. Each horizon's head gives
    the median and two softplus spreads below and above it, so the quantiles never cross. The targets'
    training mean and std, kept as buffers, put the heads' outputs on the return's scale."""

    def __init__(
        self,
        n_features: int,
        n_horizons: int,
        params: TftParams,
        feature_mean: np.ndarray,
        feature_std: np.ndarray,
        target_mean: np.ndarray | None = None,
        target_std: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.params = params
        self.n_features = n_features
        self.n_horizons = n_horizons
        hidden, dropout = params.hidden, params.dropout
        self.standardize = InputStandardizer(feature_mean, feature_std)
        if self.standardize.mean.shape != (n_features,):
            raise ValueError(f"feature mean/std have shape {tuple(self.standardize.mean.shape)}, "
                             f"expected ({n_features},)")  # fmt: skip
        self.variable_selection = VariableSelectionNetwork(n_features, hidden, dropout)
        self.encoder = nn.LSTM(hidden, hidden, num_layers=params.lstm_layers, batch_first=True,
                               dropout=dropout if params.lstm_layers > 1 else 0.0)  # fmt: skip
        self.encoder_skip = GatedSkip(hidden, dropout)
        self.attention = InterpretableMultiHeadAttention(hidden, params.heads, dropout)
        self.attention_skip = GatedSkip(hidden, dropout)
        self.positionwise = GatedResidualNetwork(hidden, hidden, hidden, dropout)
        self.output_skip = GatedSkip(hidden, dropout)
        self.head = nn.Linear(hidden, n_horizons * 3)
        target_mean = np.zeros(n_horizons) if target_mean is None else np.asarray(target_mean)
        target_std = np.ones(n_horizons) if target_std is None else np.asarray(target_std)
        if target_mean.shape != (n_horizons,) or target_std.shape != (n_horizons,) or np.any(target_std <= 0):
            raise ValueError("target mean/std must be vectors of n_horizons values with a positive std")
        self.register_buffer("target_mean", torch.as_tensor(target_mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.as_tensor(target_std, dtype=torch.float32))

    def forward(self, features: Tensor) -> Tensor:
        return self.forward_with_selection(features)[0]

    def forward_with_selection(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """The quantiles [batch, horizons, 3] and the variable selection weights [batch, features] that
        produced them."""
        temporal, selection_weights = self._temporal(features)
        last = temporal[:, -1:]
        attended = self.attention_skip(self.attention(last, temporal), last)
        fused = self.output_skip(self.positionwise(attended), last)[:, 0]  # [batch, hidden]
        median, below, above = self.head(fused).view(fused.shape[0], self.n_horizons, 3).unbind(-1)
        quantiles = torch.stack([median - F.softplus(below), median, median + F.softplus(above)], dim=-1)
        return quantiles * self.target_std.unsqueeze(-1) + self.target_mean.unsqueeze(-1), selection_weights

    def attention_by_lag(self, features: Tensor) -> Tensor:
        """How much each bar of the window (oldest first) fed the forecast, [batch, lookback]: the latest
        bar's attention over the window; each row sums to 1."""
        temporal, _ = self._temporal(features)
        return self.attention.pattern(temporal[:, -1:], temporal)[:, 0]

    def _temporal(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """The gated LSTM encoding of the selected inputs [batch, lookback, hidden], and the selection
        weights [batch, features]."""
        selected, selection_weights = self.variable_selection(features, self.standardize)
        encoded, _ = self.encoder(selected)
        return self.encoder_skip(encoded, selected), selection_weights


def quantile_loss(pred: Tensor, target: Tensor, quantiles: tuple[float, ...]) -> Tensor:
    """Pinball loss averaged over samples, horizons and quantiles: pred [B, H, Q], target [B, H]. Its
    minimiser per quantile q is the q-th conditional quantile, which is what the heads are meant to give."""
    levels = torch.as_tensor(quantiles, dtype=pred.dtype)
    error = target.unsqueeze(-1) - pred
    return torch.maximum(levels * error, (levels - 1.0) * error).mean()


@contextlib.contextmanager
def _deterministic_training(seed: int) -> Iterator[None]:
    """Seeds torch and asks for deterministic kernels for the duration of a fit, then puts the caller's
    random state and determinism setting back, so fitting has no side effects on the process."""
    previous = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous)


def _check_dataset(name: str, x: np.ndarray, y: np.ndarray, lookback: int) -> None:
    if x.ndim != 3 or y.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{name}: x must be [N, L, F] and y [N, H] with the same N > 0, "
                         f"got {x.shape} and {y.shape}")  # fmt: skip
    if x.shape[1] != lookback:
        raise ValueError(f"{name}: x has windows of {x.shape[1]} bars, params.lookback is {lookback}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(f"{name}: x and y must be finite")


def _mean_loss(model: TemporalFusionTransformer, x: Tensor, y: Tensor, batch_size: int) -> float:
    """Quantile loss over a whole set, in batches, weighting each batch by its size."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch_x, batch_y = x[start : start + batch_size], y[start : start + batch_size]
            total += quantile_loss(model(batch_x), batch_y, model.params.quantiles).item() * len(batch_x)
    return total / len(x)


def fit_tft(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    params: TftParams = TftParams(),
    progress: Callable[[int, float, float], None] | None = None,
) -> TemporalFusionTransformer:
    """Trains with Adam on shuffled mini-batches and stops early on the validation quantile loss, returning
    the best epoch's weights in eval mode.

    x: float32 [N, lookback, features] raw features, y: [N, horizons] forward returns, all finite. The
    feature and target scalers come from the training set only. The same inputs and params give
    bit-identical weights on a CPU with the same torch thread count (a different count can change the
    order of floating-point sums): the initialisation, the dropout masks and the batch order all draw
    from generators seeded with params.seed. progress(epoch, train_loss, valid_loss) runs after each
    epoch, epochs counted from 1."""
    x_train = np.asarray(x_train, dtype=np.float32)
    x_valid = np.asarray(x_valid, dtype=np.float32)
    y_train = np.asarray(y_train, dtype=np.float32)
    y_valid = np.asarray(y_valid, dtype=np.float32)
    _check_dataset("train", x_train, y_train, params.lookback)
    _check_dataset("valid", x_valid, y_valid, params.lookback)
    if x_valid.shape[2] != x_train.shape[2] or y_valid.shape[1] != y_train.shape[1]:
        raise ValueError("train and valid sets must have the same features and horizons")
    n_features, n_horizons = x_train.shape[2], y_train.shape[1]
    feature_mean = x_train.mean(axis=(0, 1), dtype=np.float64)
    feature_std = x_train.std(axis=(0, 1), dtype=np.float64)
    target_mean = y_train.mean(axis=0, dtype=np.float64)
    target_std = y_train.std(axis=0, dtype=np.float64)
    target_std = np.where(target_std > STD_FLOOR, target_std, 1.0)
    train_x, train_y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    valid_x, valid_y = torch.from_numpy(x_valid), torch.from_numpy(y_valid)

    with _deterministic_training(params.seed):
        model = TemporalFusionTransformer(n_features, n_horizons, params, feature_mean, feature_std,
                                          target_mean, target_std)  # fmt: skip
        optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
        shuffle = torch.Generator().manual_seed(params.seed)
        best_loss, best_state, epochs_without_gain = math.inf, copy.deepcopy(model.state_dict()), 0
        for epoch in range(1, params.max_epochs + 1):
            model.train()
            train_total = 0.0
            for batch in torch.randperm(len(train_x), generator=shuffle).split(params.batch_size):
                loss = quantile_loss(model(train_x[batch]), train_y[batch], params.quantiles)
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), MAX_GRADIENT_NORM)
                optimizer.step()
                train_total += loss.item() * len(batch)
            model.eval()
            valid_loss = _mean_loss(model, valid_x, valid_y, params.batch_size)
            if progress is not None:
                progress(epoch, train_total / len(train_x), valid_loss)
            if valid_loss < best_loss:
                best_loss, best_state, epochs_without_gain = valid_loss, copy.deepcopy(model.state_dict()), 0
            else:
                epochs_without_gain += 1
                if epochs_without_gain >= params.patience:
                    break
    model.load_state_dict(best_state)
    return model.eval()


def predict_tft(model: TemporalFusionTransformer, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Quantiles [N, horizons, 3] (q10, q50, q90) as float64, in batches so memory stays bounded."""
    return _in_batches(x, batch_size, model, model)


def variable_importance(model: TemporalFusionTransformer, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Mean variable selection weight per feature [features] over the samples of x; it sums to 1 and says
    how much of the selected input each feature supplied."""
    weights = _in_batches(x, batch_size, model, lambda features: model.forward_with_selection(features)[1])
    importance = weights.mean(axis=0)
    return importance / importance.sum()


def attention_by_lag(model: TemporalFusionTransformer, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Mean attention of the forecast on each bar of the window [lookback] (oldest first; sums to 1):
    which lags the model reads."""
    return _in_batches(x, batch_size, model, model.attention_by_lag).mean(axis=0)


def _in_batches(x: np.ndarray, batch_size: int, model: TemporalFusionTransformer,
                compute: Callable[[Tensor], Tensor]) -> np.ndarray:  # fmt: skip
    """Runs compute over x in eval mode without gradients, restoring the model's mode afterwards."""
    features = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # an empty x still makes one (empty) batch, so the result has its usual trailing shape
            starts = range(0, max(len(features), 1), batch_size)
            parts = [compute(features[start : start + batch_size]) for start in starts]
    finally:
        model.train(was_training)
    return torch.cat(parts).double().numpy()


def export_tft_onnx(model: TemporalFusionTransformer, metadata: dict[str, str] | None = None,
                    opset: int = 18) -> bytes:  # fmt: skip
    """The model as a serialized ONNX graph: input "features" float32 [batch, lookback, features] of raw
    values, output "quantiles" float32 [batch, horizons, 3], batch dynamic, metadata in metadata_props.

    The dynamo exporter (which needs opset 18 or later) gives a clean graph: nn.LSTM becomes one ONNX LSTM
    node, which onnxruntime runs as a fused kernel. It can silently fix an axis declared dynamic when the
    code reads its size as a Python int, so the batch axis is checked."""
    was_training = model.training
    model.eval()
    example = torch.zeros(2, model.params.lookback, model.n_features)  # 2: a size-1 axis would be fixed
    # The exporter narrates (torchvision ops it skips, deprecations of its own internals) on the root log
    # and as warnings; none of it is about this model, whose graph is checked below and by the tests.
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
                                        dynamo=True, verbose=False)  # fmt: skip
    finally:
        exporter_log.setLevel(level)
        model.train(was_training)
    graph = program.model_proto
    if not graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param:
        raise RuntimeError("the ONNX export fixed the batch size; the model must keep it symbolic")
    for key, value in (metadata or {}).items():
        graph.metadata_props.add(key=key, value=value)
    return graph.SerializeToString()
