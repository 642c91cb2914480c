"""Facts about this machine: versions of dlcore and its array libraries, the CUDA runtime and
driver, and every GPU with its name, memory and compute capability, plus NVML's live clocks,
power and utilisation when nvidia-ml-py is installed.

Below both of its users: ``dlcore info`` (:mod:`dlcore.cli.info`) prints :func:`collect`, and
the benchmark runner (:mod:`dlcore.bench.runner`) stores it with its results and samples board
power through :func:`nvml_handle`. NOTE: keep it free of imports from ``dlcore.cli`` and
``dlcore.bench`` so that neither depends on the other.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np

from . import cuda, host_memory
from ._version import __version__
from .device import cupy_import_error, cupy_module
from .threads import get_num_threads


def _cuda_version(code: int) -> str:
    return f"{code // 1000}.{code % 1000 // 10}" if code else "none"


def nvml_module() -> tuple[Any, str]:
    """``(pynvml, "")`` initialised, or ``(None, why not)``; imported only when asked for,
    so dlcore never needs nvidia-ml-py."""
    try:
        import pynvml  # the nvml extra (nvidia-ml-py)
    except ImportError:
        return None, "nvidia-ml-py is not installed (pip install dlcore[nvml])"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, f"NVML could not start ({exc})"
    return pynvml, ""


def nvml_handle(nvml: Any, index: int) -> Any:
    """NVML's handle for CUDA device ``index``, found by PCI bus id.

    NOTE: CUDA numbers GPUs fastest first and after ``CUDA_VISIBLE_DEVICES``; NVML numbers
    all of them in PCI order. The bus id is the one name both agree on."""
    try:
        bus_id = cupy_module().cuda.runtime.deviceGetPCIBusId(index)
        return nvml.nvmlDeviceGetHandleByPciBusId(bus_id)
    except Exception:  # an old driver or binding: fall back to NVML's own order
        return nvml.nvmlDeviceGetHandleByIndex(index)


def nvml_readings(nvml: Any, index: int) -> dict[str, Any]:
    """Clocks (MHz), power (W) and utilisation (%) of CUDA device ``index`` now; a reading
    the device does not support is left out."""
    handle = nvml_handle(nvml, index)
    readings: dict[str, Any] = {}
    queries = {
        "sm_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM),
        "memory_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM),
        "max_sm_clock_mhz": lambda: nvml.nvmlDeviceGetMaxClockInfo(handle,
                                                                   nvml.NVML_CLOCK_SM),
        "power_w": lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000,
        "power_limit_w": lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
        "gpu_utilisation_percent": lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu,
        "memory_utilisation_percent":
            lambda: nvml.nvmlDeviceGetUtilizationRates(handle).memory,
        "temperature_c": lambda: nvml.nvmlDeviceGetTemperature(handle,
                                                               nvml.NVML_TEMPERATURE_GPU),
    }
    for key, query in queries.items():
        try:
            readings[key] = query()
        except nvml.NVMLError:
            continue
    return readings


def blas_description() -> str:
    """NumPy's BLAS, its version and the kernel set it runs (threadpoolctl), and whether the
    environment chose that set: OpenBLAS's ``OPENBLAS_CORETYPE`` overrides its CPU detection,
    and GEMM speed follows it (seen: a Zen 5 VM whose environment set Haswell, AVX2 only,
    ran a 2048^3 float32 GEMM at 106 GFLOP/s on one core; OpenBLAS's own choice there,
    SkylakeX, ran it at 196), so a CPU benchmark records it."""
    from threadpoolctl import threadpool_info  # a core dependency (dlcore.threads)

    for info in threadpool_info():
        if info.get("user_api") == "blas":
            text = f"{info.get('internal_api')} {info.get('version')}"
            if info.get("architecture"):
                text += f", {info['architecture']} kernels"
            forced = os.environ.get("OPENBLAS_CORETYPE")
            if info.get("internal_api") == "openblas":
                text += (f" (OPENBLAS_CORETYPE={forced} in the environment)" if forced
                         else " (OpenBLAS's own choice for this CPU)")
            return text
    return "none found by threadpoolctl"


def collect() -> dict[str, Any]:
    """Everything ``dlcore info`` prints, as a dict (``dlcore bench`` stores it too)."""
    report: dict[str, Any] = {"dlcore": __version__, "numpy": np.__version__,
                              "python": platform.python_version(),
                              "platform": platform.platform()}
    report["blas_threads"] = get_num_threads()
    report["blas"] = blas_description()
    report["host_malloc"] = host_memory.describe()
    cp = cupy_module()
    if cp is None:
        report["cupy"] = f"not importable ({cupy_import_error()})"
    else:
        report["cupy"] = cp.__version__
        runtime = cp.cuda.runtime
        report["cuda_runtime"] = _cuda_version(runtime.runtimeGetVersion())
        try:
            report["cuda_driver"] = _cuda_version(runtime.driverGetVersion())
        except runtime.CUDARuntimeError as exc:
            report["cuda_driver"] = f"unknown ({exc})"
    report["gpu_unavailable_because"] = cuda.why_unavailable()
    gpus = []
    if cuda.is_available():
        nvml, why_no_nvml = nvml_module()
        report["nvml"] = "available" if nvml is not None else why_no_nvml
        for index in range(cuda.device_count()):
            free, total = cuda.mem_get_info(index)
            gpu = {"index": index, "name": cuda.get_device_name(index),
                   "memory_total_gib": round(total / 2**30, 2),
                   "memory_free_gib": round(free / 2**30, 2),
                   "compute_capability": "{}.{}".format(*cuda.get_device_capability(index))}
            if nvml is not None:
                gpu.update(nvml_readings(nvml, index))
            gpus.append(gpu)
    report["gpus"] = gpus
    return report
