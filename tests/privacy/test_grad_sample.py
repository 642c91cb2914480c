"""Per-sample gradients from one batched backward pass equal a loop over the samples, each
with its own forward and backward (float64, to 1e-12), for every supported layer and for
compositions (LeNet-like CNNs, the recurrent classifiers of dlcore.models)."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
from dlcore import nn
from dlcore.models import GRUClassifier, LSTMClassifier, SequenceRegressor
from dlcore.nn import functional as F
from dlcore.privacy import per_sample_gradients
from dlcore.privacy.grad_sample import unfold
from dlcore.train.private import PrivateCNN

N = 5


def _sum_ce(out: dlcore.Tensor, y: dlcore.Tensor) -> dlcore.Tensor:
    return F.cross_entropy(out, y, reduction="sum")


def _loop(model: nn.Module, loss_fn, x, y) -> dict[str, np.ndarray]:
    """The reference: one forward and backward per sample."""
    grads: dict[str, list] = {}
    for i in range(len(y)):
        model.zero_grad()
        loss_fn(model(x[i:i + 1]), y[i:i + 1]).backward()
        for name, p in model.named_parameters():
            grads.setdefault(name, []).append(p.grad.numpy().copy())
    model.zero_grad()
    return {k: np.stack(v) for k, v in grads.items()}


def _check(model: nn.Module, x: dlcore.Tensor, classes: int, loss_fn=_sum_ce,
           atol: float = 1e-12) -> None:
    y = dlcore.randint(0, classes, (len(x),))
    got = per_sample_gradients(model, loss_fn, x, y)
    want = _loop(model, loss_fn, x, y)
    assert set(got) == set(want)
    for name in want:
        assert tuple(got[name].shape) == want[name].shape, name
        np.testing.assert_allclose(got[name].numpy(), want[name], rtol=0, atol=atol,
                                   err_msg=name)


class _Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 3, padding_idx=0)
        self.head = nn.Linear(3, 4)

    def forward(self, x: dlcore.Tensor) -> dlcore.Tensor:
        return self.head(self.embed(x).sum(1))


class _CellLoop(nn.Module):
    """A cell stepped through time by hand: one module called T times (shared weights)."""

    def __init__(self, cell: type, steps: int = 4) -> None:
        super().__init__()
        self.cell, self.steps = cell(3, 5), steps
        self.head = nn.Linear(5, 4)

    def forward(self, x: dlcore.Tensor) -> dlcore.Tensor:
        state = None
        for t in range(self.steps):
            state = self.cell(x[:, t], state)
        h = state[0] if isinstance(state, tuple) else state
        return self.head(h)


def _flat(*layers: nn.Module) -> nn.Module:
    return nn.Sequential(*layers, nn.Flatten())


LAYERS = {
    "linear": lambda: (nn.Linear(4, 3), dlcore.randn(N, 4), 3),
    "linear, no bias, 3-D input": lambda: (_flat(nn.Linear(4, 3, bias=False)),
                                           dlcore.randn(N, 2, 4), 6),
    "conv2d stride 2, groups 2": lambda: (_flat(nn.Conv2d(4, 6, 3, stride=2, padding=1,
                                                          groups=2)),
                                          dlcore.randn(N, 4, 7, 6), 10),
    "conv2d same, dilated": lambda: (_flat(nn.Conv2d(2, 3, (2, 3), padding="same",
                                                     dilation=(2, 1))),
                                     dlcore.randn(N, 2, 5, 5), 10),
    "conv1d": lambda: (_flat(nn.Conv1d(2, 4, 3, stride=2, padding=1)),
                       dlcore.randn(N, 2, 9), 10),
    "conv1d no bias, groups 2": lambda: (_flat(nn.Conv1d(2, 4, 2, groups=2, bias=False)),
                                         dlcore.randn(N, 2, 6), 10),
    "layernorm": lambda: (_flat(nn.LayerNorm((3, 4))), dlcore.randn(N, 3, 4), 12),
    "layernorm over the last dim": lambda: (_flat(nn.LayerNorm(4)),
                                            dlcore.randn(N, 3, 4), 12),
    "groupnorm": lambda: (_flat(nn.GroupNorm(2, 4)), dlcore.randn(N, 4, 3, 2), 24),
    "embedding, padding_idx": lambda: (_Embed(), dlcore.randint(0, 7, (N, 4)), 4),
    "rnn cell through time": lambda: (_CellLoop(nn.RNNCell), dlcore.randn(N, 4, 3), 4),
    "lstm cell through time": lambda: (_CellLoop(nn.LSTMCell), dlcore.randn(N, 4, 3), 4),
    "gru cell through time": lambda: (_CellLoop(nn.GRUCell), dlcore.randn(N, 4, 3), 4),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_per_sample_loop(name: str) -> None:
    dlcore.manual_seed(0)
    model, x, classes = LAYERS[name]()
    model.double()
    _check(model, x.double() if x.dtype.kind == "f" else x, classes)


MODELS = {
    "lstm classifier, 2 layers": lambda: LSTMClassifier(3, 4, hidden_size=5, num_layers=2),
    "gru classifier": lambda: GRUClassifier(3, 4, hidden_size=5),
    "rnn regressor (tanh)": lambda: SequenceRegressor(3, 4, hidden_size=5, cell="rnn"),
    "private cnn (conv, groupnorm, tanh, pooling, linear)": lambda: PrivateCNN((4, 6), 2),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_composition_matches_per_sample_loop(name: str) -> None:
    dlcore.manual_seed(1)
    model = MODELS[name]().double()
    x = dlcore.randn(N, 1, 8, 8) if "cnn" in name else dlcore.randn(N, 6, 3)
    _check(model, x.double(), 4 if "cnn" not in name else 10)


def test_bidirectional_relu_rnn_with_lengths_not_batch_first() -> None:
    """(T, N, I) input, both directions, padded steps: the recurrent rule's sums over time
    skip the padded steps, as the fused layer's backward does."""
    dlcore.manual_seed(2)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(3, 4, num_layers=2, nonlinearity="relu", bidirectional=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x: dlcore.Tensor) -> dlcore.Tensor:
            y, _ = self.rnn(x, lengths=[5, 2, 4, 1, 3])
            return self.head(y.sum(0))

    model = Net().double()
    x = dlcore.randn(5, N, 3).double()
    y = dlcore.randint(0, 3, (N,))
    got = per_sample_gradients(model, _sum_ce, x, y)
    want = _loop_time_major(model, x, y)
    for name in want:
        np.testing.assert_allclose(got[name].numpy(), want[name], rtol=0, atol=1e-12)


def _loop_time_major(model: nn.Module, x: dlcore.Tensor, y: dlcore.Tensor) -> dict:
    """Per-sample reference for a (T, N, I) model: sample n alone, with its length, is the
    batch with all others' losses masked out (their gradients are exactly zero)."""
    grads: dict[str, list] = {}
    for i in range(len(y)):
        model.zero_grad()
        mask = dlcore.zeros(len(y), dtype=dlcore.float64)
        mask[i] = 1.0
        out = model(x)
        (F.cross_entropy(out, y, reduction="none") * mask).sum().backward()
        for name, p in model.named_parameters():
            grads.setdefault(name, []).append(p.grad.numpy().copy())
    return {k: np.stack(v) for k, v in grads.items()}


def test_unrolled_forward_equals_fused() -> None:
    """While captured, a recurrent layer runs unrolled: same outputs as the fused op."""
    dlcore.manual_seed(3)
    from dlcore.privacy.grad_sample import Capture

    lstm = nn.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True).double()
    x = dlcore.randn(N, 6, 3).double()
    fused, (h, c) = lstm(x)
    with Capture(lstm).active():
        unrolled, (h2, c2) = lstm(x)
    for a, b in ((fused, unrolled), (h, h2), (c, c2)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-13)
    assert "forward" not in lstm.__dict__  # the fused forward is back


def test_mean_reduction_scales_by_batch_size() -> None:
    dlcore.manual_seed(4)
    model = nn.Linear(4, 3).double()
    x, y = dlcore.randn(N, 4).double(), dlcore.randint(0, 3, (N,))
    total = per_sample_gradients(model, _sum_ce, x, y)
    mean = per_sample_gradients(model, lambda o, t: F.cross_entropy(o, t), x, y,
                                loss_reduction="mean")
    np.testing.assert_allclose(mean["weight"].numpy(), total["weight"].numpy(), atol=1e-13)


def test_frozen_parameters_and_parameter_free_layers_are_skipped() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    grads = per_sample_gradients(model, _sum_ce, dlcore.randn(3, 4), dlcore.tensor([0, 1, 1]))
    assert sorted(grads) == ["2.bias", "2.weight"]


def test_leaves_grad_alone() -> None:
    model = nn.Linear(4, 2)
    per_sample_gradients(model, _sum_ce, dlcore.randn(3, 4), dlcore.tensor([0, 1, 1]))
    assert model.weight.grad is None


def test_batchnorm_is_refused_like_opacus() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten())
    with pytest.raises(NotImplementedError, match="BatchNorm2d.*GroupNorm"):
        per_sample_gradients(model, _sum_ce, dlcore.randn(2, 1, 4, 4), dlcore.tensor([0, 1]))


def test_unsupported_layer_is_named() -> None:
    model = nn.Sequential(nn.ConvTranspose2d(1, 2, 2), nn.Flatten())
    with pytest.raises(NotImplementedError, match=r"ConvTranspose2d \(layer '0'\)"):
        per_sample_gradients(model, _sum_ce, dlcore.randn(2, 1, 3, 3), dlcore.tensor([0, 1]))


def test_inplace_change_of_an_output_is_caught() -> None:
    class Doubled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, 3)

        def forward(self, x: dlcore.Tensor) -> dlcore.Tensor:
            return self.linear(x).mul_(2.0)  # the Linear's own output, changed in place

    model = Doubled()
    with pytest.raises(RuntimeError, match="modified in place"):
        per_sample_gradients(model, _sum_ce, dlcore.randn(2, 3), dlcore.tensor([0, 1]))


def test_unfold_matches_the_convolution() -> None:
    """The im2col behind the conv rule, checked against conv2d itself."""
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 5))
    w = np.random.default_rng(1).standard_normal((4, 3, 3, 2))
    cols = unfold(x, (1, 1, 0, 0), (3, 2), (2, 1), (1, 2))
    mine = np.einsum("ncijpq,ocij->nopq", cols, w)
    ref = F.conv2d(dlcore.tensor(x), dlcore.tensor(w), stride=(2, 1), padding=(1, 0),
                   dilation=(1, 2)).numpy()
    np.testing.assert_allclose(mine, ref, atol=1e-12)


def test_float32_cnn_on_each_device(device: str) -> None:
    """The rules run on the layer's device (NumPy on cpu and emu, CuPy on cuda)."""
    dlcore.manual_seed(5)
    model = PrivateCNN((2, 4), 2).to(device)
    x = dlcore.randn(3, 1, 8, 8).to(device)
    y = dlcore.tensor([1, 2, 3]).to(device)
    got = per_sample_gradients(model, _sum_ce, x, y)
    want = _loop(model, _sum_ce, x, y)
    for name in want:
        np.testing.assert_allclose(got[name].numpy(), want[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)
