"""The benchmark runner behind ``python -m dlcore.bench`` and ``dlcore bench``: run suites,
print a table, write JSON with the machine, versions, peak memory and power.

Each suite is a module ``dlcore.bench.<name>`` with ``run(device, quick) -> rows``. Per suite the
runner records the process's peak resident memory (``resource.getrusage``: the high-water
mark since start, so it only grows from suite to suite) and, on a GPU, the CuPy pool's
peak (``dlcore.cuda.max_memory_allocated``) and, through NVML when nvidia-ml-py is
installed, the board power sampled every 100 ms while the suite runs (mean and max), and the
energy the suite used where a meter is readable (``suite_energy_joules``, from
:mod:`dlcore.energy`: NVML's counter on a GPU, RAPL on the CPU; else the reason why not).
Suites compare with PyTorch whenever it is importable; ``--compare torch`` makes its
absence an error instead of a silent omission. ``--threads N`` runs every suite with N BLAS
threads for dlcore (``dlcore.threads.limit``) and ``torch.set_num_threads(N)`` for PyTorch
(and ``OMP_NUM_THREADS=N``, which the rnn suite reads), all restored afterwards; the JSON's
``threads`` records what ran (without it: dlcore's default, ``dlcore.threads``).

A suite that cannot be imported (any exception while importing its module) is a failure, not
an omission: the runner names it and the exception, runs the other suites, and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import json
import os
import platform
import resource
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import dlcore

from .. import threads as _threads
from ..energy import EnergyMeter
from ..sysinfo import collect, nvml_handle, nvml_module
from .timing import energy_per_case

SUITES = ("overhead", "launch", "optim", "conv", "pool", "rnn", "models", "graphs",
          "distributed", "load")


def environment(device: str) -> dict[str, Any]:
    """Date, machine, versions and GPUs (what ``dlcore info`` reports)."""
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": device, "machine": platform.machine(), "processor": platform.processor(),
           **collect()}
    # float32 convolutions on TF32 tensor cores (dlcore's and cuDNN's, set alike by the conv
    # suite); float32 GEMMs are full float32 in both (cuBLAS without TF32)
    env["conv_tf32"] = bool(dlcore.backends.cudnn.allow_tf32)
    try:
        import torch  # optional: a comparison, never a dependency

        env["torch"] = torch.__version__
    except ImportError:
        pass
    return env


class PowerSampler:
    """Board power of one GPU every ``period`` seconds in a thread, through NVML."""
    def __init__(self, nvml: Any, index: int, period: float = 0.1) -> None:
        self.handle = nvml_handle(nvml, index)
        self.nvml, self.period = nvml, period
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000)
            self._stop.wait(self.period)

    def __enter__(self) -> PowerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        return {"power_mean_w": sum(self.samples) / len(self.samples),
                "power_max_w": max(self.samples)}


def _peak_rss_mb() -> float:
    """The process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def import_suite(name: str) -> ModuleType | str:
    """The module of suite ``name``, or why it cannot be imported (the exception, one line)."""
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except Exception as exc:  # a suite's import may fail any way: report it, run the others
        return f"{type(exc).__name__}: {exc}"


def run_suite(module: ModuleType, name: str, device: str,
              quick: bool) -> tuple[list[dict], dict[str, Any]]:
    """The suite's rows, and its memory and power figures."""
    gpu = device.startswith("cuda")
    sampler = None
    if gpu:
        dlcore.cuda.reset_peak_memory_stats(device)
        nvml, _ = nvml_module()
        if nvml is not None:
            sampler = PowerSampler(nvml, dlcore.device(device).index or 0)
    meter = EnergyMeter(device)
    with energy_per_case(device) as measured:
        if sampler is not None:
            with sampler, meter:
                rows = module.run(device, quick=quick)
        else:
            with meter:
                rows = module.run(device, quick=quick)
    # per case: the joules per call of the loop a row's time came from (timing.time_host)
    for row in rows:
        for time_key, energy_key in (("median_us", "joules"), ("reference_us",
                                                               "reference_joules")):
            if row.get(time_key) in measured:
                row[energy_key] = measured[row[time_key]]
    stats: dict[str, Any] = {"suite": name, "peak_rss_mb": _peak_rss_mb()}
    # and the whole suite's, warm-ups and references included
    stats.update({k: v for k, v in meter.metrics(prefix="suite_").items() if v is not None})
    if gpu:
        stats["peak_gpu_pool_mb"] = dlcore.cuda.max_memory_allocated(device) / 2**20
    if sampler is not None:
        stats.update(sampler.summary())
    return rows, stats


def format_table(rows: list[dict]) -> str:
    cols = ["suite", "case", "device", "median_us", "gflops", "us_per_op", "numpy_floor_us",
            "samples_s", "quiet_us", "slowdown", "reference_us", "ratio",
            "reference_slowdown", "joules", "note"]
    cols = [c for c in cols if any(c in r for r in rows)]
    table = [cols] + [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The runner's options, shared by ``python -m dlcore.bench`` and ``dlcore bench``."""
    ap.add_argument("suites", nargs="*", metavar="SUITE",
                    help=f"suites to run (default: all of {', '.join(SUITES)})")
    ap.add_argument("--device", default="cpu", help="cpu, cuda[:i] or emu (default cpu)")
    ap.add_argument("--json", dest="json_path", metavar="FILE", help="write results here")
    ap.add_argument("--quick", action="store_true", help="fewer cases and repetitions")
    ap.add_argument("--compare", choices=["torch"],
                    help="require PyTorch for the reference columns (an error if absent)")
    ap.add_argument("--threads", type=_thread_count, metavar="N",
                    help="CPU threads for the run: dlcore's BLAS and torch.set_num_threads "
                         "(default: dlcore's default, see dlcore.threads; PyTorch's own)")


def _thread_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text}")
    return n


def _torch_module() -> Any:
    if importlib.util.find_spec("torch") is None:
        return None
    import torch  # optional: a comparison, never a dependency

    return torch


@contextlib.contextmanager
def thread_setting(n: int | None) -> Iterator[dict[str, Any]]:
    """Within it, ``n`` threads for dlcore's BLAS and PyTorch's intra-op pool (``None``: as
    they are); yields the record of what ran (the JSON's ``threads``)."""
    torch = _torch_module() if n is not None else None
    torch_before = torch.get_num_threads() if torch is not None else None
    env_before = os.environ.get("OMP_NUM_THREADS")
    with contextlib.ExitStack() as stack:
        if n is not None:
            stack.enter_context(_threads.limit(n))
            os.environ["OMP_NUM_THREADS"] = str(n)
            if torch is not None:
                torch.set_num_threads(n)
        try:
            record: dict[str, Any] = {"requested": n, "blas": dlcore.get_num_threads(),
                                      "usable_cpus": _threads.usable_cpus(),
                                      "choice": _threads.user_choice() or "dlcore default"}
            torch_now = _torch_module()
            if torch_now is not None:
                record["torch"] = torch_now.get_num_threads()
            yield record
        finally:
            if n is not None:
                if env_before is None:
                    os.environ.pop("OMP_NUM_THREADS", None)
                else:
                    os.environ["OMP_NUM_THREADS"] = env_before
                if torch is not None and torch_before is not None:
                    torch.set_num_threads(torch_before)


def run(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    """Run the suites ``args`` name; print the table; write JSON if asked. Returns 1 when a
    suite could not be imported, else 0."""
    if args.compare == "torch" and importlib.util.find_spec("torch") is None:
        ap.error("--compare torch: PyTorch is not importable here (pip install torch)")
    suites = args.suites or list(SUITES)
    for name in suites:
        if name not in SUITES:
            ap.error(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
    rows: list[dict] = []
    stats: list[dict] = []
    failed: dict[str, str] = {}
    with thread_setting(getattr(args, "threads", None)) as threads:
        for name in suites:
            module = import_suite(name)
            if isinstance(module, str):
                failed[name] = module
                print(f"suite {name}: cannot be imported: {module}", file=sys.stderr)
                continue
            suite_rows, suite_stats = run_suite(module, name, args.device, args.quick)
            rows += suite_rows
            stats.append(suite_stats)
    print(format_table(rows))
    for s in stats:
        print(", ".join(f"{k} {_cell(v)}" for k, v in s.items()))
    if args.json_path:
        result: dict[str, Any] = {"environment": environment(args.device),
                                  "threads": threads, "suites": stats, "results": rows}
        if failed:
            result["import_errors"] = failed
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)
    if failed:
        print(f"{len(failed)} of {len(suites)} suites could not be imported: "
              f"{', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dlcore.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv), ap)
