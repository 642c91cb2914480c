"""The ``dlcore`` command: info, check on the emulator, one quick bench suite, and tiny
training runs (metrics files, plots, checkpoints, bit-for-bit resume, Ctrl-C)."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dlcore
from dlcore.cli import main
from dlcore.train import classify

ROOT = Path(__file__).resolve().parents[1]


def test_info_states_versions_and_why_no_gpu(capsys: pytest.CaptureFixture) -> None:
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^dlcore\s+0\.", text, re.M) and re.search(r"^numpy\s+\d", text, re.M)
    if not dlcore.cuda.is_available():
        assert dlcore.cuda.why_unavailable() in text
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"dlcore", "numpy", "cupy", "gpus", "gpu_unavailable_because"} <= set(report)


def test_console_script_and_module_entry_point() -> None:
    out = subprocess.run([sys.executable, "-m", "dlcore", "info"], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    assert "dlcore" in out
    script = Path(sys.executable).with_name("dlcore")
    if script.exists():
        assert subprocess.run([str(script), "--help"], capture_output=True).returncode == 0


def test_check_on_emulator_passes(capsys: pytest.CaptureFixture) -> None:
    assert main(["check", "--device", "emu"]) == 0
    text = capsys.readouterr().out
    assert "FAIL" not in text and re.search(r"emu: (\d+) of \1 kernel cases pass", text)
    for family in ("conv2d", "conv_transpose2d", "max_pool2d", "lstm", "gru", "adam"):
        assert family in text


def test_check_reports_failures(monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture) -> None:
    from dlcore.cli import check

    def broken(device: dlcore.Device) -> dict[str, np.ndarray]:
        return {"forward": np.zeros(3) if device.type == "cpu" else np.ones(3)}

    monkeypatch.setattr(check, "cases", lambda: {"broken kernel": broken})
    assert main(["check", "--device", "emu"]) == 1
    assert "broken kernel: forward" in capsys.readouterr().out


def test_check_against_the_emulator_compares_same_kernel_outputs(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """``--reference emu``: integers exactly, floats to 1e-6 of their scale (or the case's
    stated bound), NaN where both are NaN agrees; here the "device" is the emulator too, with
    a planted difference per case."""
    from dlcore.cli import check

    def case(shift: float, index_shift: int) -> Any:
        def run(device: dlcore.Device) -> dict[str, np.ndarray]:
            base = np.array([100.0, -3.0, np.nan, 0.5], np.float32)
            idx = np.array([0, 5, 7], np.int64)
            calls.append(device)
            if len(calls) % 2:  # the checked device runs first, the reference second
                base = base + np.float32(shift) * np.array([1, 0, 0, 0], np.float32)
                idx = idx + index_shift
            return {"forward": base, "indices": idx}
        return run

    calls: list[dlcore.Device] = []
    monkeypatch.setattr(check, "cases", lambda: {
        "exact": case(0.0, 0),
        "last bits": case(2 * 7.62939453125e-06, 0),  # two float32 ulps of 100: 1.5e-7
        "off by 1e-4": case(1e-2, 0), "index moved": case(0.0, 1)})
    rows = check.run_checks(dlcore.Device("emu"), "emu")
    verdict = {(r["case"], r["quantity"]): r["ok"] for r in rows}
    assert verdict == {("exact", "forward"): True, ("exact", "indices"): True,
                       ("last bits", "forward"): True, ("last bits", "indices"): True,
                       ("off by 1e-4", "forward"): False, ("off by 1e-4", "indices"): True,
                       ("index moved", "forward"): True, ("index moved", "indices"): False}
    assert all(d.type == "emu" for d in calls)
    with pytest.raises(ValueError, match="reference"):
        check.run_checks(dlcore.Device("emu"), "cuda")
    assert main(["check", "--device", "emu", "--reference", "emu"]) == 1
    assert "index moved: indices" in capsys.readouterr().out


def test_bench_quick_one_suite_writes_json(tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "bench.json"
    assert main(["bench", "overhead", "--quick", "--json", str(path)]) == 0
    assert "overhead" in capsys.readouterr().out
    result = json.loads(path.read_text())
    assert result["environment"]["numpy"] == np.__version__
    assert result["suites"][0]["suite"] == "overhead"
    assert result["suites"][0]["peak_rss_mb"] > 0
    assert result["results"] and all(r["suite"] == "overhead" for r in result["results"])
    assert "import_errors" not in result


def test_bench_compare_torch_needs_torch(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    from dlcore.bench import runner

    real_find_spec = runner.importlib.util.find_spec
    monkeypatch.setattr(runner.importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "overhead", "--quick", "--compare", "torch"])
    assert exit_info.value.code == 2
    assert "--compare torch: PyTorch is not importable" in capsys.readouterr().err


def _train(tmp_path: Path, *args: str) -> dict:
    assert main(["train", *args, "--out", str(tmp_path), "--no-progress"]) == 0
    return json.loads((tmp_path / "metrics.json").read_text())


def _check_outputs(out: Path, metrics: dict, keys: set[str]) -> None:
    assert keys | {"seconds", "history", "config"} <= set(metrics)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == metrics["epochs"]
    state = dlcore.load(out / "checkpoint.safetensors")
    assert {"models", "optimizers", "epoch", "rng"} <= set(state)


def test_train_cnn_one_epoch(tmp_path: Path) -> None:
    metrics = _train(tmp_path, "cnn", "--epochs", "1", "--batch-size", "64")
    _check_outputs(tmp_path, metrics, {"test_accuracy"})
    assert 0.5 < metrics["test_accuracy"] <= 1.0


def test_train_gan_ring_and_digits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    metrics = _train(tmp_path / "ring", "gan", "--epochs", "1", "--pack", "2")
    _check_outputs(tmp_path / "ring", metrics, {"modes_covered", "high_quality_fraction"})
    assert np.load(tmp_path / "ring" / "samples.npy").shape == (2500, 2)
    assert (tmp_path / "ring" / "samples.png").is_file()
    assert "PacGAN2 [dlcore, this run, seed 0]" in capsys.readouterr().out
    metrics = _train(tmp_path / "digits", "gan", "--data", "digits", "--epochs", "1",
                     "--batch-size", "128")
    assert metrics["config"]["data"] == "digits"
    assert (tmp_path / "digits" / "samples.png").read_bytes()[:4] == b"\x89PNG"


def test_train_adding_one_epoch(tmp_path: Path) -> None:
    metrics = _train(tmp_path, "adding", "--epochs", "1", "--batch-size", "800")
    _check_outputs(tmp_path, metrics, {"test_mse"})
    assert 0 < metrics["test_mse"] < 2


def _model_arrays(out: Path) -> dict[str, np.ndarray]:
    state = dlcore.load(out / "checkpoint.safetensors")
    return {k: v.numpy() for k, v in state["models"]["model"].items()}


def _history(out: Path) -> list[dict]:
    rows = json.loads((out / "metrics.json").read_text())["history"]
    return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}
            for r in rows]


def test_interrupt_and_resume_continue_bit_for_bit(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C at the last step of epoch 1 (11 steps per epoch at batch 128) and in the middle
    of epoch 2 (its 3rd step), each resumed: the same weights and history as a straight run."""
    args = ["rnn", "--batch-size", "128", "--epochs", "2"]
    _train(tmp_path / "straight", *args)
    real_step = classify.ClassifierTask.step
    for interrupt_at, saved_step in ((11, 0), (14, 3)):
        calls = []

        def step_then_interrupt(self: classify.ClassifierTask, batch: tuple,
                                calls: list = calls, at: int = interrupt_at) -> dict:
            calls.append(1)
            if len(calls) == at:
                signal.raise_signal(signal.SIGINT)
            return real_step(self, batch)

        monkeypatch.setattr(classify.ClassifierTask, "step", step_then_interrupt)
        out = tmp_path / f"interrupted_{interrupt_at}"
        assert main(["train", *args, "--out", str(out), "--no-progress"]) == 130
        assert dlcore.load(out / "checkpoint.safetensors")["step"] == saved_step
        monkeypatch.setattr(classify.ClassifierTask, "step", real_step)
        _train(out, *args, "--resume")
        want, got = _model_arrays(tmp_path / "straight"), _model_arrays(out)
        assert all(np.array_equal(got[k], want[k]) for k in want), interrupt_at
        assert _history(out) == _history(tmp_path / "straight"), interrupt_at


def test_resume_needs_a_checkpoint_of_the_same_task(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "cnn", "--epochs", "1", "--out", str(tmp_path), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    _train(tmp_path, "rnn", "--epochs", "1", "--batch-size", "256")
    assert main(["train", "cnn", "--epochs", "2", "--out", str(tmp_path), "--resume",
                 "--no-progress"]) == 2
    assert "not 'cnn'" in capsys.readouterr().err


def test_resume_with_other_options_is_refused(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    """--epochs shapes the learning-rate schedule: resuming with another value used to
    continue without a word."""
    _train(tmp_path, "cnn", "--epochs", "1")
    before = (tmp_path / "checkpoint.safetensors").read_bytes()
    assert main(["train", "cnn", "--epochs", "3", "--out", str(tmp_path), "--resume",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "epochs 1 in the checkpoint, 3 now" in err and "Traceback" not in err
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["--lr", "nan"], "--lr: must be a finite number > 0, got nan"),
    (["--lr", "inf"], "--lr: must be a finite number > 0, got inf"),
    (["--threads", "-1"], "--threads: must be >= 0, got -1"),
    (["--epochs", "0"], "--epochs: must be a finite number > 0, got 0"),
])
def test_train_refuses_bad_numbers(tmp_path: Path, capsys: pytest.CaptureFixture,
                                   args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "cnn", *args, "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("task", ["cnn", "rnn", "adding"])
@pytest.mark.parametrize("flag", [["--data", "digits"], ["--pack", "2"]])
def test_gan_only_options_are_refused_elsewhere(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               task: str, flag: list[str]) -> None:
    """cnn used to ignore --data digits silently."""
    assert main(["train", task, *flag, "--out", str(tmp_path)]) == 2
    assert f"{flag[0]} applies to the gan task only" in capsys.readouterr().err


def test_diverging_run_stops_with_an_error_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--lr 1e10 used to train to NaN and exit 0; now it stops at the first read of the
    losses (every 10 steps) that sees a non-finite one, before any checkpoint or metrics of
    the diverged state are written."""
    assert main(["train", "cnn", "--lr", "1e10", "--epochs", "2", "--out", str(tmp_path),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "the training diverged: epoch 1/2, between step 1 and 10: loss turned nan" in err
    assert not (tmp_path / "metrics.json").exists()
    assert not (tmp_path / "checkpoint.safetensors").exists()


def test_dockerfile_has_the_required_instructions() -> None:
    text = (ROOT / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines()
                    if line.strip() and not line.lstrip().startswith("#")
                    and not line.startswith((" ", "\t"))]
    names = [parts[0].upper() for parts in instructions]
    base = dict(instructions)["FROM"]
    assert re.match(r"nvidia/cuda:12\.\d+(\.\d+)?-(cudnn-)?runtime", base) or \
        base.startswith("python:")
    assert "USER" in names and dict(instructions)["USER"].strip() not in ("root", "0")
    assert re.search(r'pip install[^\n]*"?\.\[[^\]]*cuda12[^\]]*\]', text)
    assert re.search(r'\.\[[^\]]*nvml[^\]]*\]', text)
    assert dict(instructions)["ENTRYPOINT"].strip() == '["dlcore"]'
    assert dict(instructions)["CMD"].strip() == '["bench"]'
    assert names.index("USER") < names.index("ENTRYPOINT")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)


def test_train_out_that_is_a_file_or_unwritable_prints_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert main(["train", "cnn", "--out", str(a_file)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert main(["train", "cnn", "--out", str(a_file / "sub")]) == 2
    err = capsys.readouterr().err
    assert "cannot write there" in err and "Traceback" not in err
