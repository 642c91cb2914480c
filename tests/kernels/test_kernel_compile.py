"""Every kernel source compiles with NVRTC for sm_70, sm_80 and sm_90 with no error or warning,
for every entry point it declares. Needs CuPy and the NVRTC wheel (the test extra), no GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlcore.kernels import SOURCE_DIR, kernel_source, product_sources
from dlcore.kernels.compile_check import ARCHS, compile_for_arch, nvrtc_archs
from kernel_samples import CU_DIR

SOURCES = [*product_sources(), *sorted(CU_DIR.glob("*.cu"))]

try:
    from dlcore.kernels.compile_check import nvrtc_bindings

    nvrtc_bindings()
    NVRTC_ERROR = None
except Exception as exc:  # no CuPy or no libnvrtc: the test extra is not installed
    NVRTC_ERROR = f"{type(exc).__name__}: {exc}"

def skip_unless_nvrtc_targets(arch: int) -> None:
    """sm_70 under NVRTC 13 (CUDA 13 dropped Volta): a platform limit, not a kernel fault."""
    if arch not in nvrtc_archs():
        pytest.skip(f"this NVRTC does not target sm_{arch}")


needs_nvrtc = pytest.mark.skipif(NVRTC_ERROR is not None,
                                 reason=f"NVRTC unavailable: {NVRTC_ERROR}")


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_compiles_clean(path: Path, arch: int) -> None:
    skip_unless_nvrtc_targets(arch)
    source = kernel_source(path)
    assert source.entry_points, f"{path.name} declares no entry point"
    compile_for_arch(source, arch)


def test_every_header_is_compiled_through_some_source() -> None:
    included = "\n".join(p.read_text() for p in SOURCES)
    for header in SOURCE_DIR.glob("*.cuh"):
        assert f'#include "{header.name}"' in included, f"{header.name} is never compiled"
