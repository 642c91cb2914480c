"""``dlcore train --amp``: forward and loss under autocast -- bfloat16 on the CPU (no loss
scaling), float16 elsewhere, backward through a GradScaler whose state is checkpointed, so an
interrupted --amp run resumes bit-for-bit (float16 forced on the CPU to test that here)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dlcore
from dlcore.amp import GradScaler
from dlcore.cli import main
from dlcore.train import classify, common

# 8 steps an epoch; on the CPU, whose --amp defaults these tests check (a GPU machine's
# "auto" is cuda, where --amp means float16: seen on an H200)
ARGS = ["cnn", "--device", "cpu", "--amp", "--epochs", "2", "--batch-size", "16"]


def _train(out: Path, *args: str) -> dict:
    assert main(["train", *args, "--out", str(out), "--no-progress"]) == 0
    return json.loads((out / "metrics.json").read_text())


def _float16_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """--amp as on cuda and emu: float16 and a GradScaler."""
    monkeypatch.setattr(common.MixedPrecision, "DTYPES",
                        {**common.MixedPrecision.DTYPES, "cpu": dlcore.float16})


@pytest.mark.parametrize("low", ["bfloat16", "float16"])
def test_train_cnn_amp_runs_in_its_low_dtype_and_records_amp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_digits: None, low: str) -> None:
    """bfloat16 by default on the CPU, without a loss scale; float16 with one."""
    if low == "float16":
        _float16_on_cpu(monkeypatch)
    dtypes = []
    real_loss = classify.F.cross_entropy

    def spy(logits: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
        dtypes.append(str(logits.dtype))
        return real_loss(logits, target, *args, **kwargs)

    monkeypatch.setattr(classify.F, "cross_entropy", spy)
    metrics = _train(tmp_path / "amp", *ARGS)
    assert metrics["config"]["amp"] is True and metrics["epochs"] == 2
    # each epoch: 8 training steps' logits, then evaluate()'s (float32 weights, no autocast)
    assert dtypes == ([low] * 8 + ["float32"]) * 2
    assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["test_accuracy"] <= 1.0
    scaler = dlcore.load(tmp_path / "amp" / "checkpoint.safetensors")["scaler"]
    if low == "bfloat16":
        assert scaler == {}  # float32's exponent range: nothing to scale
    else:
        assert scaler["scale"] > 0 and scaler["growth_interval"] == 2000

    dtypes.clear()
    metrics = _train(tmp_path / "plain", "cnn", "--epochs", "1", "--batch-size", "16")
    assert metrics["config"]["amp"] is False and set(dtypes) == {"float32"}
    assert dlcore.load(tmp_path / "plain" / "checkpoint.safetensors")["scaler"] == {}


class _FastGrowth(GradScaler):
    """Doubles the scale after 3 clean steps, so 16 steps see it grow and, once float16
    gradients overflow, back off: a scale sequence worth resuming."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, growth_interval=3, **kwargs)


def _outcome(out: Path) -> tuple[dict[str, np.ndarray], dict, list[dict]]:
    state = dlcore.load(out / "checkpoint.safetensors")
    rows = json.loads((out / "metrics.json").read_text())["history"]
    history = [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}
               for r in rows]
    return ({k: v.numpy() for k, v in state["models"]["model"].items()}, state["scaler"],
            history)


# the scale grows until float16 gradients overflow, on purpose
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_amp_interrupt_and_resume_continue_bit_for_bit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_digits: None) -> None:
    """Ctrl-C at the last step of epoch 1 and at the 3rd step of epoch 2, each resumed: the
    same weights, history and loss-scale state as the straight run."""
    monkeypatch.setattr(common, "GradScaler", _FastGrowth)
    _float16_on_cpu(monkeypatch)
    _train(tmp_path / "straight", *ARGS)
    want_weights, want_scaler, want_history = _outcome(tmp_path / "straight")
    assert want_scaler["scale"] != 2.0 ** 16  # the scale moved during the run
    real_step = classify.ClassifierTask.step
    for interrupt_at, saved_step in ((8, 0), (11, 3)):
        calls = []

        def step_then_interrupt(self: classify.ClassifierTask, batch: tuple,
                                calls: list = calls, at: int = interrupt_at) -> dict:
            calls.append(1)
            if len(calls) == at:
                signal.raise_signal(signal.SIGINT)
            return real_step(self, batch)

        monkeypatch.setattr(classify.ClassifierTask, "step", step_then_interrupt)
        out = tmp_path / f"interrupted_{interrupt_at}"
        assert main(["train", *ARGS, "--out", str(out), "--no-progress"]) == 130
        state = dlcore.load(out / "checkpoint.safetensors")
        assert state["step"] == saved_step and state["scaler"]["scale"] > 0
        assert all(type(v) is float for v in state["sums"].values())  # host floats
        monkeypatch.setattr(classify.ClassifierTask, "step", real_step)
        _train(out, *ARGS, "--resume")
        weights, scaler, history = _outcome(out)
        assert all(np.array_equal(weights[k], want_weights[k]) for k in want_weights)
        assert scaler == want_scaler and history == want_history, interrupt_at


def test_resume_with_or_without_amp_must_match_the_checkpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture, small_digits: None) -> None:
    _train(tmp_path, "cnn", "--epochs", "1", "--batch-size", "64")
    assert main(["train", "cnn", "--amp", "--epochs", "1", "--batch-size", "64", "--out",
                 str(tmp_path), "--resume", "--no-progress"]) == 2
    assert "amp False in the checkpoint, True now" in capsys.readouterr().err


def test_checkpoints_from_before_amp_resume_as_plain_runs(
        tmp_path: Path, small_digits: None) -> None:
    _train(tmp_path, "cnn", "--epochs", "1", "--batch-size", "64")
    path = tmp_path / "checkpoint.safetensors"
    state = dlcore.load(path)
    del state["config"]["amp"], state["scaler"]  # as written before --amp existed
    dlcore.save(state, path)
    assert _train(tmp_path, "cnn", "--epochs", "1", "--batch-size", "64",
                  "--resume")["epochs"] == 1


def test_amp_on_a_device_without_float16_kernels_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        small_digits: None) -> None:
    """The kernel families name the dtypes they take; under --amp that TypeError is the
    whole answer, not a traceback. Without --amp a TypeError is a bug and propagates."""
    def no_float16(self: Any, batch: tuple) -> dict:
        raise TypeError("conv2d: dtype float16 is not supported on device emu; the conv2d "
                        "kernels take float32, float64")

    monkeypatch.setattr(classify.ClassifierTask, "step", no_float16)
    assert main(["train", "cnn", "--device", "cpu", "--amp", "--out", str(tmp_path),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--amp on cpu: conv2d: dtype float16 is not supported" in err
    assert "train without --amp" in err and "Traceback" not in err
    with pytest.raises(TypeError):
        main(["train", "cnn", "--device", "cpu", "--out", str(tmp_path), "--no-progress"])
