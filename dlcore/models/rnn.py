"""Recurrent models: sequence classifiers (LSTM, GRU) and a sequence regressor.

Shape letters: N batch, T time steps, I input features, H hidden size.

All read ``(N, T, I)`` batch-first input (the layout data loaders produce) and predict
from the last layer's final hidden state ``h_n[-1]``: the state that has seen the whole
sequence. For the digits as rows (T = 8 rows of I = 8 pixels) that is a 10-way
classifier; for the adding problem (I = 2: value and marker) a one-number regressor.
"""

from __future__ import annotations

from .. import nn
from ..tensor import Tensor


class _LastStateHead(nn.Module):
    """A recurrent layer (``rnn_type``) followed by a linear layer on ``h_n[-1]``."""

    def __init__(self, rnn_type: type[nn.RNNBase], input_size: int, hidden_size: int,
                 out_features: int, num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.rnn = rnn_type(input_size, hidden_size, num_layers=num_layers,
                                 batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear(hidden_size, out_features)

    def forward(self, x: Tensor) -> Tensor:
        _, state = self.rnn(x)
        h_n = state[0] if isinstance(state, tuple) else state  # LSTM returns (h_n, c_n)
        return self.head(h_n[-1])


class LSTMClassifier(_LastStateHead):
    """``(N, T, input_size) -> (N, num_classes)`` logits from an LSTM's last state.

    >>> LSTMClassifier(8, 10)(dlcore.zeros(4, 8, 8)).shape
    (4, 10)
    """

    def __init__(self, input_size: int, num_classes: int, hidden_size: int = 128,
                 num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__(nn.LSTM, input_size, hidden_size, num_classes, num_layers, dropout)


class GRUClassifier(_LastStateHead):
    """``(N, T, input_size) -> (N, num_classes)`` logits from a GRU's last state.

    >>> GRUClassifier(8, 10)(dlcore.zeros(4, 8, 8)).shape
    (4, 10)
    """

    def __init__(self, input_size: int, num_classes: int, hidden_size: int = 128,
                 num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__(nn.GRU, input_size, hidden_size, num_classes, num_layers, dropout)


class SequenceRegressor(_LastStateHead):
    """``(N, T, input_size) -> (N, out_features)`` from a GRU's (or LSTM's) last state.

    The GRU is the default because it leaves the adding problem's plateau (MSE 1/6, the
    answer "always 1.0") sooner: with T = 100, hidden 64, Adam 3e-3, batch 64 and seed 0,
    after about 500 steps, where an LSTM of the same size took about 1,400.

    >>> SequenceRegressor(2)(dlcore.zeros(4, 100, 2)).shape
    (4, 1)
    """

    def __init__(self, input_size: int, out_features: int = 1, hidden_size: int = 64,
                 cell: str = "gru", num_layers: int = 1) -> None:
        kinds = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}
        if cell not in kinds:
            raise ValueError(f"SequenceRegressor: cell must be one of {sorted(kinds)}, "
                             f"got {cell!r}")
        super().__init__(kinds[cell], input_size, hidden_size, out_features, num_layers)
