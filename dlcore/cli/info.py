"""``dlcore info``: versions of dlcore and its array libraries, CUDA runtime and driver, and
every GPU with its name, memory and compute capability, plus NVML's live clocks, power and
utilisation when nvidia-ml-py is installed. Says why when no GPU is usable.

The facts are gathered by :func:`dlcore.sysinfo.collect`; this module formats them."""

from __future__ import annotations

from typing import Any


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{key:<12} {report[key]}" for key in ("dlcore", "numpy", "python", "platform",
                                                   "blas_threads", "blas", "host_malloc", "cupy",
                                                   "cuda_runtime", "cuda_driver")
             if key in report]
    if report["gpu_unavailable_because"]:
        lines.append(f"GPU          none usable: {report['gpu_unavailable_because']}; dlcore "
                     "runs on the CPU (device 'cpu', or 'emu' to run the CUDA kernels on "
                     "the CPU emulator)")
        return "\n".join(lines)
    lines.append(f"NVML         {report['nvml']}")
    for gpu in report["gpus"]:
        lines.append(f"cuda:{gpu['index']}       {gpu['name']}, compute capability "
                     f"{gpu['compute_capability']}, {gpu['memory_total_gib']} GiB "
                     f"({gpu['memory_free_gib']} GiB free)")
        extra = {k: v for k, v in gpu.items() if k not in ("index", "name",
                                                           "compute_capability",
                                                           "memory_total_gib",
                                                           "memory_free_gib")}
        if extra:
            lines.append(" " * 13 + ", ".join(f"{k} {v}" for k, v in extra.items()))
    return "\n".join(lines)
