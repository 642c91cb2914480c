"""dlcore.energy with fake meters: RAPL's sysfs files in a temporary folder (several packages,
wraparound), a fake NVML (its counter in millijoules; power sampling without one), the
failures (absent, unreadable, a counter going backwards), and the figures dlcore train and
dlcore bench record."""

from __future__ import annotations

import json
import time
import types
from pathlib import Path
from typing import Any

import pytest

from dlcore import energy
from dlcore.bench import runner
from dlcore.cli import main
from dlcore.data import TensorDataset, datasets
from dlcore.energy import EnergyMeter, Reader
from dlcore.train import common


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _zone(root: Path, zone: str, name: str, uj: int, max_uj: int = 1_000_000) -> Path:
    path = root / zone
    path.mkdir(parents=True)
    (path / "name").write_text(name + "\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (path / "energy_uj").write_text(f"{uj}\n")
    return path / "energy_uj"


def test_rapl_sums_the_packages_and_undoes_wraparound(tmp_path: Path) -> None:
    p0 = _zone(tmp_path, "intel-rapl:0", "package-0", 900_000)  # 0.1 J from the 1 J wrap
    p1 = _zone(tmp_path, "intel-rapl:1", "package-1", 10_000)
    _zone(tmp_path, "intel-rapl:0:0", "core", 5)  # inside package 0: not added again
    _zone(tmp_path, "intel-rapl:2", "psys", 5)  # the platform: contains the packages
    readers, why = energy.rapl_readers(str(tmp_path))
    assert why == "" and [r.name for r in readers] == ["rapl:package-0", "rapl:package-1"]
    clock = Clock()
    with EnergyMeter(readers=readers, poll_seconds=0, clock=clock) as meter:
        p0.write_text("950000\n")
        p1.write_text("410000\n")
        meter.poll()
        p0.write_text("150000\n")  # wrapped: 0.05 + 0.15 J since the last read
        p1.write_text("610000\n")
        clock.now += 2.0
    assert meter.joules == pytest.approx((0.05 + 0.2) + (0.4 + 0.2), abs=1e-12)
    assert meter.seconds == 2.0 and meter.watts == pytest.approx(0.425)
    assert meter.source == "rapl:package-0+rapl:package-1" and meter.why_unavailable == ""


def test_a_polling_thread_catches_every_wrap() -> None:
    """Each read advances 0.6 of the range: read only at the start and the end, the wraps
    between would be lost; the thread's reads each add 0.6."""
    reads = [0]

    def read() -> float:
        reads[0] += 1
        return (reads[0] * 0.6) % 1.0

    with EnergyMeter(readers=[Reader("fake", read, wrap=1.0)], poll_seconds=0.002) as meter:
        time.sleep(0.05)
    assert reads[0] > 3
    assert meter.joules == pytest.approx((reads[0] - 1) * 0.6, rel=1e-9)


def test_missing_and_unreadable_rapl_say_why(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    meter = EnergyMeter(readers=energy.rapl_readers(str(tmp_path / "none"))[0])
    assert energy.rapl_readers(str(tmp_path / "none"))[1].startswith("no RAPL energy counters")
    with meter:
        pass
    assert meter.joules is None and meter.source is None
    _zone(tmp_path, "intel-rapl:0", "package-0", 1)
    real_open = open

    def denied(path: Any, *args: Any) -> Any:
        if str(path).endswith("energy_uj"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args)

    monkeypatch.setattr(energy, "open", denied, raising=False)
    readers, why = energy.rapl_readers(str(tmp_path))
    assert readers == [] and "readable by root only" in why
    monkeypatch.setattr(energy, "rapl_readers", lambda: ([], why))
    with EnergyMeter("cpu") as meter:
        pass
    assert meter.joules is None and meter.why_unavailable == why
    assert meter.metrics(10) == {"energy_joules": None, "joules_per_sample": None,
                                 "energy_source": None, "energy_unavailable_because": why}


class FakeNVML(types.SimpleNamespace):
    """pynvml's calls the meter makes; ``energy_mj`` None: a GPU without the counter."""

    class NVMLError(Exception):
        pass

    def __init__(self, energy_mj: list[int] | None, power_mw: list[int]) -> None:
        super().__init__(energy_mj=energy_mj, power_mw=power_mw)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        if self.energy_mj is None:
            raise self.NVMLError("Not Supported")
        return self.energy_mj.pop(0)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return self.power_mw.pop(0)


def _fake_nvml(monkeypatch: pytest.MonkeyPatch, nvml: FakeNVML) -> None:
    monkeypatch.setattr(energy, "nvml_module", lambda: (nvml, ""))
    monkeypatch.setattr(energy, "nvml_handle", lambda nvml, index: f"handle {index}")


def test_nvml_counter_is_in_millijoules(monkeypatch: pytest.MonkeyPatch) -> None:
    # one read probes the counter, then the start and the end
    _fake_nvml(monkeypatch, FakeNVML([5_000, 1_000_000, 1_250_500], []))
    with EnergyMeter("cuda:1", poll_seconds=0) as meter:
        pass
    assert meter.joules == pytest.approx(250.5) and meter.source == "nvml:gpu1 energy counter"


def test_without_a_counter_nvml_power_is_integrated(monkeypatch: pytest.MonkeyPatch) -> None:
    # the probe, then 100 W at the start, 300 W after 2 s, 200 W after 1 s more
    _fake_nvml(monkeypatch, FakeNVML(None, [0, 100_000, 300_000, 200_000]))
    clock = Clock()
    with EnergyMeter("cuda", poll_seconds=0, clock=clock) as meter:
        clock.now += 2
        meter.poll()
        clock.now += 1
    assert meter.joules == pytest.approx((100 + 300) / 2 * 2 + (300 + 200) / 2 * 1)
    assert "power sampled" in (meter.source or "")


def test_no_nvml_and_a_counter_going_back_give_no_figure(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(energy, "nvml_module", lambda: (None, "nvidia-ml-py is not installed"))
    with EnergyMeter("cuda") as meter:
        pass
    assert meter.joules is None and meter.why_unavailable == "nvidia-ml-py is not installed"
    values = [10.0, 4.0]
    with EnergyMeter(readers=[Reader("gpu", lambda: values.pop(0))], poll_seconds=0) as meter:
        pass
    assert meter.joules is None and "went backwards" in meter.why_unavailable

    def broken() -> float:
        raise OSError("gone")

    with EnergyMeter(readers=[Reader("gpu", broken)], poll_seconds=0) as meter:
        pass
    assert meter.joules is None and "failed (gone)" in meter.why_unavailable


class _Meters:
    """A stand-in for EnergyMeter(device): 1.5 J per counter step of a fake reader."""

    def __init__(self) -> None:
        self.devices: list[Any] = []

    def __call__(self, device: Any = None) -> EnergyMeter:
        self.devices.append(device)
        values = iter([10.0, 11.5, 13.0, 14.5])
        return EnergyMeter(readers=[Reader("fake meter", lambda: next(values))],
                           poll_seconds=0)


def test_train_records_energy_in_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    full = datasets.digits

    def small() -> tuple[TensorDataset, TensorDataset]:
        train, test = full()
        return (TensorDataset(*(t[:128] for t in train.tensors)),
                TensorDataset(*(t[:64] for t in test.tensors)))

    monkeypatch.setattr(datasets, "digits", small)
    meters = _Meters()
    monkeypatch.setattr(common, "EnergyMeter", meters)
    assert main(["train", "cnn", "--epochs", "1", "--batch-size", "16", "--out",
                 str(tmp_path), "--no-progress", "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert meters.devices == ["cpu"]
    assert metrics["energy_joules"] == 1.5 and metrics["energy_source"] == "fake meter"
    assert metrics["joules_per_sample"] == pytest.approx(1.5 / 128)  # 8 steps of 16


def test_train_without_a_meter_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    monkeypatch.setattr(energy, "rapl_readers", lambda: ([], "no RAPL here"))
    task = _TinyTask()
    metrics = common.fit(task, common.Options(progress=False), tmp_path, 1)
    assert metrics["energy_joules"] is None and metrics["joules_per_sample"] is None
    assert metrics["energy_unavailable_because"] == "no RAPL here"
    assert json.loads((tmp_path / "metrics.json").read_text())["energy_source"] is None


class _TinyTask(common.Task):
    def __init__(self) -> None:
        import dlcore
        from dlcore.device import Device

        data = TensorDataset(dlcore.zeros(8, 1))
        super().__init__(name="tiny", modules={}, optimizers={},
                         batches=common.Batches(data, 4, 0, Device("cpu")),
                         config={"device": "cpu"})

    def step(self, batch: Any) -> dict:
        import dlcore

        return {"loss": dlcore.tensor(0.5)}

    def evaluate(self) -> dict[str, float]:
        return {}


def test_bench_adds_the_suites_joules(monkeypatch: pytest.MonkeyPatch) -> None:
    meters = _Meters()
    monkeypatch.setattr(runner, "EnergyMeter", meters)
    suite = types.SimpleNamespace(run=lambda device, quick: [{"case": "a", "median_us": 1.0}])
    rows, stats = runner.run_suite(suite, "fake", "cpu", quick=True)  # type: ignore[arg-type]
    assert meters.devices == ["cpu"] and rows == [{"case": "a", "median_us": 1.0}]
    assert stats["suite_energy_joules"] == 1.5 and stats["energy_source"] == "fake meter"
    monkeypatch.setattr(energy, "rapl_readers", lambda: ([], "no RAPL here"))
    monkeypatch.setattr(runner, "EnergyMeter", EnergyMeter)
    _, stats = runner.run_suite(suite, "fake", "cpu", quick=True)  # type: ignore[arg-type]
    assert "suite_energy_joules" not in stats
    assert stats["energy_unavailable_because"] == "no RAPL here"


def test_bench_gives_each_case_the_joules_of_its_timed_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A row's joules are its timed loop's (not the warm-up's) per call; the reference's
    likewise; a figure derived from several loops gets none."""
    from dlcore.bench import timing

    meters = _Meters()  # 1.5 J between the two reads of each meter
    monkeypatch.setattr(timing, "EnergyMeter", meters)
    calls = []

    def suite_run(device: str, quick: bool) -> list[dict]:
        us = timing.time_host(lambda: calls.append(1), reps=6, warmup=4, inner=3)
        ref = timing.time_host(lambda: None, reps=10, warmup=0, inner=5)
        return [{"case": "a", "median_us": us, "reference_us": ref},
                {"case": "derived", "median_us": us / 2}]

    suite = types.SimpleNamespace(run=suite_run)
    rows, _ = runner.run_suite(suite, "fake", "cpu", quick=True)  # type: ignore[arg-type]
    assert len(calls) == 4 + 6  # warm-up, then 2 samples of 3 calls
    assert rows[0]["joules"] == 1.5 / 6 and rows[0]["reference_joules"] == 1.5 / 10
    assert "joules" not in rows[1]
    assert meters.devices[:2] == ["cpu", "cpu"]
    assert timing._meter_device is None  # outside a suite run, no meter is read
