"""Energy used while a block of code runs, from the hardware's own meters.

>>> with EnergyMeter("cpu") as meter:
...     work()  # doctest: +SKIP
>>> meter.joules, meter.source  # doctest: +SKIP
(41.7, 'rapl:package-0')

Where the figure comes from (``source``):

* ``cuda``: NVML's total-energy counter of the GPU (``nvmlDeviceGetTotalEnergyConsumption``,
  millijoules since the driver loaded; Volta and newer), read at the start and the end.
  Older GPUs have no counter: their board power (``nvmlDeviceGetPowerUsage``) is sampled
  every 0.1 s and integrated (trapezoids), which misses spikes shorter than a sample. The
  figure is the GPU board's alone, not the host's.
* ``cpu`` and ``emu``: Linux's RAPL counters, ``/sys/class/powercap/intel-rapl:N/energy_uj``
  for every CPU package N (their sum; DRAM and the platform's ``psys`` zone are left out:
  ``psys`` contains the packages). A counter wraps at ``max_energy_range_uj``; the meter reads
  the counters every 10 s in a thread, so it catches each wrap as long as a package draws
  less than its range over 10 s (about 26 kW for the usual 262 kJ range).

Where no meter can be read (no nvidia-ml-py, a VM without powercap, counters readable by
root only, as Linux makes them since 5.10), ``joules`` stays None and ``why_unavailable``
says why: never an estimate from elsewhere. A meter measures its whole device, whatever
else runs on it meanwhile.

The meters are :class:`Reader` objects, so tests (and other hardware) can pass their own.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .device import Device, get_default_device
from .sysinfo import nvml_handle, nvml_module

RAPL_ROOT = "/sys/class/powercap"
COUNTER_POLL_S = 10.0  # reads of wrapping counters: each wrap must fall between two reads
POWER_POLL_S = 0.1  # power samples of GPUs without an energy counter


@dataclass
class Reader:
    """One meter: ``read()`` gives joules of a cumulative counter (``kind="energy"``; it
    wraps to 0 at ``wrap`` joules, None: never) or watts now (``kind="power"``)."""

    name: str
    read: Callable[[], float]
    kind: str = "energy"
    wrap: float | None = None


def rapl_readers(root: str = RAPL_ROOT) -> tuple[list[Reader], str]:
    """A Reader per CPU package's RAPL counter, or ``([], why none)``."""
    if not os.path.isdir(root):
        return [], (f"no RAPL energy counters: {root} is absent (not Linux, or a VM or "
                    "container without powercap)")
    zones = sorted(z for z in os.listdir(root) if re.fullmatch(r"intel-rapl:\d+", z))
    readers, problems = [], []
    for zone in zones:
        path = os.path.join(root, zone)
        try:
            with open(os.path.join(path, "name")) as f:
                name = f.read().strip()
            if not name.startswith("package"):  # psys overlaps the packages
                continue
            with open(os.path.join(path, "max_energy_range_uj")) as f:
                wrap = int(f.read()) / 1e6
            counter = os.path.join(path, "energy_uj")
            with open(counter) as f:
                int(f.read())
        except PermissionError:
            problems.append(f"{path}/energy_uj is readable by root only (Linux 5.10 and "
                            "later; run as root or make it readable: chmod o+r)")
            continue
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: {exc}")
            continue
        readers.append(Reader(f"rapl:{name}", _uj_reader(counter), "energy", wrap))
    if problems:  # a package unread would make the sum too small: none or all
        return [], "RAPL counters unreadable: " + "; ".join(problems)
    if not readers:
        return [], f"no RAPL package counters under {root}"
    return readers, ""


def _uj_reader(path: str) -> Callable[[], float]:
    def read() -> float:
        with open(path) as f:
            return int(f.read()) / 1e6

    return read


def nvml_readers(index: int) -> tuple[list[Reader], str]:
    """GPU ``index``'s NVML energy counter, else its power for sampling, or ``([], why)``."""
    nvml, why = nvml_module()
    if nvml is None:
        return [], why
    try:
        handle = nvml_handle(nvml, index)
    except nvml.NVMLError as exc:
        return [], f"NVML has no handle for GPU {index} ({exc})"
    try:
        nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        return [Reader(f"nvml:gpu{index} energy counter",
                       lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000)], ""
    except nvml.NVMLError:  # before Volta: no counter; sample the power instead
        pass
    try:
        nvml.nvmlDeviceGetPowerUsage(handle)
    except nvml.NVMLError as exc:
        return [], f"NVML reads neither energy nor power of GPU {index} ({exc})"
    return [Reader(f"nvml:gpu{index} power sampled every {POWER_POLL_S} s",
                   lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000, "power")], ""


def device_readers(device: str | Device | None = None) -> tuple[list[Reader], str]:
    """The meters of ``device`` (default: dlcore's default device): NVML for a GPU, RAPL
    for the CPU (``cpu``, and ``emu``, which runs on it)."""
    dev = get_default_device() if device is None else Device(device)
    if dev.type == "cuda":
        return nvml_readers(dev.index or 0)
    return rapl_readers()


class EnergyMeter:
    """Context manager: joules used by a device during the block (see the module's
    docstring). After the block: ``joules`` (None when no meter is readable), ``seconds``,
    ``source`` (the meters summed) and ``why_unavailable`` ("" when measured).

    ``readers`` replaces the device's meters; ``poll_seconds`` is the period of the reading
    thread (default: 0.1 s when sampling power, else 10 s; 0: no thread, reads at the start,
    the end and on :meth:`poll`); ``clock`` gives seconds (tests pass a fake one).
    """

    def __init__(self, device: str | Device | None = None, readers: list[Reader] | None = None,
                 poll_seconds: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if readers is None:
            self.readers, self.why_unavailable = device_readers(device)
        else:
            self.readers = list(readers)
            self.why_unavailable = "" if readers else "no meters given"
        if poll_seconds is None:
            power = any(r.kind == "power" for r in self.readers)
            poll_seconds = POWER_POLL_S if power else COUNTER_POLL_S
        self.poll_seconds, self.clock = poll_seconds, clock
        self.source = "+".join(r.name for r in self.readers) if self.readers else None
        self.joules: float | None = None
        self.seconds = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> EnergyMeter:
        self._start = self.clock()
        self._sums = [0.0] * len(self.readers)
        self._last: list[float] = []
        self._last_time = self._start
        try:
            self._last = [r.read() for r in self.readers]
        except Exception as exc:  # a meter that went away: report it, never a guess
            self._fail(f"reading {self.source} failed ({exc})")
        if self.readers and self.poll_seconds > 0:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="dlcore-energy-meter")
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.poll()
        self.seconds = self.clock() - self._start
        if self.readers:
            self.joules = sum(self._sums)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.poll()

    def _fail(self, why: str) -> None:
        self.readers, self.source, self.why_unavailable = [], None, why

    def poll(self) -> None:
        """Read every meter and add what was used since the previous read."""
        with self._lock:
            if not self.readers:
                return
            now = self.clock()
            try:
                values = [r.read() for r in self.readers]
            except Exception as exc:
                self._fail(f"reading {self.source} failed ({exc})")
                return
            for i, (r, value, last) in enumerate(zip(self.readers, values, self._last)):
                if r.kind == "power":  # trapezoid between the two samples
                    self._sums[i] += (value + last) / 2 * (now - self._last_time)
                elif value >= last:
                    self._sums[i] += value - last
                elif r.wrap is not None:  # the counter wrapped (once: reads are frequent)
                    self._sums[i] += value + r.wrap - last
                else:
                    self._fail(f"{r.name} went backwards ({last} J, then {value} J: a driver "
                               "reload?)")
                    return
            self._last, self._last_time = values, now

    @property
    def watts(self) -> float | None:
        """Mean power over the block."""
        if self.joules is None or self.seconds <= 0:
            return None
        return self.joules / self.seconds

    def metrics(self, samples: int | None = None, prefix: str = "") -> dict[str, Any]:
        """The figures for a metrics file: ``{prefix}energy_joules``, ``joules_per_sample``
        (with ``samples``) and ``energy_source``, or ``energy_unavailable_because``."""
        if self.joules is None:
            return {f"{prefix}energy_joules": None,
                    **({"joules_per_sample": None} if samples is not None else {}),
                    "energy_source": None,
                    "energy_unavailable_because": self.why_unavailable}
        per_sample = {} if samples is None else {
            "joules_per_sample": self.joules / samples if samples else None}
        return {f"{prefix}energy_joules": self.joules, **per_sample,
                "energy_source": self.source}
