"""Anomaly mode (dlcore/anomaly.py): planted NaN and Inf in backward and forward are named
with the op and the line of this file that created it."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

import dlcore
from dlcore import autograd
from dlcore.autograd import detect_anomaly, is_anomaly_enabled, set_detect_anomaly
from dlcore.cli import main
from dlcore.data import TensorDataset, datasets
from dlcore.train import classify

HERE = Path(__file__).name
# NumPy warns on the planted sqrt(-1), log(0) and x/0: they are the point here
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _line(fn: object, text: str) -> int:
    """The line number of ``text`` in the source of ``fn`` (robust to edits above it)."""
    lines, first = inspect.getsourcelines(fn)  # type: ignore[arg-type]
    return first + next(i for i, line in enumerate(lines) if text in line)


def _sqrt_of_negative() -> dlcore.Tensor:
    x = dlcore.tensor([-1.0, 4.0], requires_grad=True)
    return x.sqrt().sum()  # the planted NaN


def _log_of_zero() -> dlcore.Tensor:
    x = dlcore.tensor([0.0, 1.0], requires_grad=True)
    return (x.log() * 2).sum()  # log(0) = -inf: its gradient 1/0 is inf


def _divide_by_zero() -> dlcore.Tensor:
    a = dlcore.tensor([0.0, 1.0], requires_grad=True)
    b = dlcore.tensor([0.0, 2.0], requires_grad=True)
    return (a / b).sum()  # d(a/b)/da = 1/b: inf at b = 0


@pytest.mark.parametrize("make, op, kind, text", [
    (_sqrt_of_negative, "SqrtBackward", "nan", "x.sqrt().sum()"),
    (_log_of_zero, "LogBackward", "inf", "(x.log() * 2).sum()"),
    (_divide_by_zero, "DivBackward", "inf", "(a / b).sum()"),
])
def test_backward_names_the_op_and_the_line(make: object, op: str, kind: str,
                                            text: str) -> None:
    with detect_anomaly():
        loss = make()  # type: ignore[operator]
        with pytest.raises(RuntimeError) as err:
            loss.backward()
    message = str(err.value)
    assert message.startswith(f"{op} returned {kind} values in its 0th output")
    assert f"{HERE}:{_line(make, text)}, in {make.__name__}: " in message  # type: ignore[attr-defined]
    assert text in message and "Traceback of the forward call" in message
    assert not is_anomaly_enabled()


def test_without_anomaly_mode_the_nan_passes_silently() -> None:
    x = dlcore.tensor([-1.0, 4.0], requires_grad=True)
    with np.errstate(invalid="ignore"):
        x.sqrt().sum().backward()
    assert np.isnan(x.grad.numpy()[0])
    assert autograd._anomaly is None  # the ops' one check, off


def test_forward_check_names_the_first_non_finite_op() -> None:
    x = dlcore.tensor([1.0, 4.0], requires_grad=True)
    with detect_anomaly(check_forward=True), pytest.raises(RuntimeError) as err:
        y = (x - 2).sqrt()  # the first non-finite output
        (y * 3).log()
    message = str(err.value)
    assert message.startswith("Sqrt returned nan values in its 0th output (forward check")
    assert "y = (x - 2).sqrt()" in message and "already held" not in message


def test_forward_check_says_when_the_input_was_already_bad() -> None:
    data = dlcore.tensor([1.0, float("inf")])
    with detect_anomaly(check_forward=True), pytest.raises(RuntimeError) as err:
        data * 2
    assert "its input 0 already held non-finite values" in str(err.value)


def test_a_graph_built_outside_the_mode_still_names_the_op() -> None:
    loss = _sqrt_of_negative()
    with detect_anomaly(), pytest.raises(RuntimeError, match="created outside anomaly mode"):
        loss.backward()


def test_check_nan_false_only_records() -> None:
    with detect_anomaly(check_nan=False):
        loss = _sqrt_of_negative()
        with np.errstate(invalid="ignore"):
            loss.backward()
    assert not is_anomaly_enabled()


def test_decorator_and_setter_forms() -> None:
    @detect_anomaly()
    def inside() -> bool:
        return is_anomaly_enabled() and dlcore.is_anomaly_check_nan_enabled()

    assert inside() and not is_anomaly_enabled()
    set_detect_anomaly(True)
    try:
        assert is_anomaly_enabled()
        with set_detect_anomaly(False):
            assert not is_anomaly_enabled()
        assert is_anomaly_enabled()
    finally:
        set_detect_anomaly(False)
    assert not dlcore.is_anomaly_enabled()


def test_train_detect_anomaly_stops_at_the_planted_nan(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    full = datasets.digits

    def small() -> tuple[TensorDataset, TensorDataset]:
        train, test = full()
        return (TensorDataset(*(t[:64] for t in train.tensors)),
                TensorDataset(*(t[:32] for t in test.tensors)))

    class Faulty(classify.LeNet):  # type: ignore[misc, name-defined]
        def forward(self, x: dlcore.Tensor) -> dlcore.Tensor:
            return super().forward(x) * (x.sum() * 0 - 1).sqrt()  # planted

    monkeypatch.setattr(datasets, "digits", small)
    monkeypatch.setattr(classify, "LeNet", Faulty)
    args = ["train", "cnn", "--epochs", "1", "--batch-size", "16", "--out", str(tmp_path),
            "--no-progress", "--device", "cpu"]
    with pytest.raises(RuntimeError, match=r"Sqrt returned nan values") as err:
        main(args + ["--detect-anomaly"])
    assert f"{HERE}:" in str(err.value) and "(x.sum() * 0 - 1).sqrt()" in str(err.value)
