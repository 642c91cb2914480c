"""The launch layer: finding sources through the package, memoised runners, clear errors."""

from __future__ import annotations

import importlib.resources
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import dlcore.kernels as K
from dlcore.device import Device
from dlcore.kernels.errors import KernelCompileError
from kernel_samples import CU_DIR

EMU = Device("emu")
REPO = Path(__file__).resolve().parents[2]


def test_sources_are_found_through_the_package() -> None:
    package_dir = importlib.resources.files("dlcore.kernels") / "cuda_src"
    assert (package_dir / "common.cuh").is_file()
    assert (package_dir / "README.md").is_file()
    assert K.SOURCE_DIR.resolve() == Path(str(package_dir)).resolve()
    assert "index_t" in K.kernel_source("common.cuh").code


def test_missing_source_lists_what_exists() -> None:
    with pytest.raises(FileNotFoundError, match="no_such.cu not found"):
        K.kernel_source("no_such.cu")


def test_grid_helpers() -> None:
    assert [K.ceil_div(a, 4) for a in (0, 1, 4, 5)] == [0, 1, 1, 2]
    assert K.grid_1d(0) == (1,)
    assert K.grid_1d(1000, 256) == (4,)
    assert K.grid_1d(10**6, 256, max_blocks=80) == (80,)


def test_runner_is_per_device_and_memoised() -> None:
    assert K.runner_for(EMU) is EMU.kernels
    samples = CU_DIR / "samples.cu"
    assert (EMU.kernels.function(samples, "scale<float>")
            is EMU.kernels.function(samples, "scale<float>"))
    with pytest.raises(ValueError, match="runs no CUDA kernels"):
        K.runner_for(Device("cpu"))


def test_module_level_launch() -> None:
    x = np.arange(10, dtype=np.float32)
    y = np.empty_like(x)
    K.launch(EMU, CU_DIR / "samples.cu", "scale<float>", K.grid_1d(10), 256,
             (x, y, np.float32(3), np.int64(10)))
    np.testing.assert_array_equal(y, 3 * x)


def test_unknown_entry_point_lists_declared_ones() -> None:
    with pytest.raises(KeyError, match=r"no entry point 'scale<int>'.*scale<float>"):
        EMU.kernels.function(CU_DIR / "samples.cu", "scale<int>")


def test_emulator_compile_error_names_file_and_line() -> None:
    src = K.KernelSource("broken.cu",
                         'extern "C" __global__ void k(float* x) {\n  x[0] = oops;\n}\n')
    with pytest.raises(KernelCompileError) as info:
        EMU.kernels.function(src, "k")
    assert (info.value.filename, info.value.line) == ("broken.cu", 2)
    assert "oops" in str(info.value)


def test_nvrtc_log_is_parsed() -> None:
    log = 'conv2d.cu(41): error: identifier "n" is undefined\n1 error detected'
    err = KernelCompileError.from_nvrtc_log("conv2d.cu", log)
    assert (err.filename, err.line) == ("conv2d.cu", 41)
    assert str(err).startswith("NVRTC failed to compile conv2d.cu:41")


def test_scalar_of_the_wrong_size_is_rejected() -> None:
    """The emulator's own check, under the launch layer's (tests/kernels/test_launch_layer.py):
    the module's function called directly still refuses a scalar of the wrong width."""
    x = np.ones(4, np.float32)
    run = EMU.kernels.module(CU_DIR / "samples.cu").get_function("scale<float>")
    with pytest.raises(Exception,
                       match=r"argument 'alpha' \(#2\): the kernel takes a 4-byte scalar"):
        run((1,), (32,), (x, x.copy(), 2.0, np.int64(4)))
    with pytest.raises(TypeError, match=r"parameter 'alpha' is float, a NumPy float32 scalar"):
        EMU.kernels.function(CU_DIR / "samples.cu", "scale<float>")(
            (1,), (32,), (x, x.copy(), 2.0, np.int64(4)))


def _has_setuptools(major: int) -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= major


def test_wheel_ships_kernel_sources(tmp_path: Path) -> None:
    # Build from a copy, so the checkout gets no build/ or egg-info leftovers.
    tree = tmp_path / "src"
    for name in ("pyproject.toml", "README.md", "dlcore", "kernels"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, tree / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            tree.mkdir(exist_ok=True)
            shutil.copy(src, tree / name)
    # the environment's own setuptools where it meets the build requirement: an isolated build
    # must download one, and a GPU machine without a package index cannot (seen on an H200)
    isolation = ["--no-build-isolation"] if _has_setuptools(68) else []
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation,
                           "-w", str(tmp_path), str(tree)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("dlcore-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("dlcore/kernels/cuda_src/common.cuh", "dlcore/kernels/cuda_src/README.md",
              "dlcore/kernels/emu/dlcore_emu.h", "dlcore/kernels/emu/dlcore_emu_launch.h"):
        assert f in names, f"{f} missing from {wheel.name}"
