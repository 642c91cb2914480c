"""``python -m dlcore.kernels.resources``: ptxas parsing, and a real nvcc run where installed."""

from __future__ import annotations

import shutil

import pytest

from dlcore.kernels import kernel_source
from dlcore.kernels.resources import main, parse_ptxas, resource_usage
from kernel_samples import SAMPLES

LOG = """\
ptxas info    : Compiling entry function 'histogram' for 'sm_90'
ptxas info    : Function properties for histogram
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 14 registers, used 1 barriers, 4096 bytes smem, 384 bytes cmem[0]
"""


def test_parse_ptxas() -> None:
    (u,) = parse_ptxas(LOG)
    assert (u.kernel, u.registers, u.shared_bytes) == ("histogram", 14, 4096)
    assert (u.stack_bytes, u.spill_stores, u.spill_loads) == (8, 4, 4)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_nvcc_reports_every_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    source = kernel_source(SAMPLES)
    usages = {u.kernel.split("(")[0].removeprefix("void "): u for u in resource_usage(source)}
    assert set(usages) == set(source.entry_points)
    assert usages["histogram"].shared_bytes == 4096
    assert main([str(SAMPLES)]) == 0
    assert "block_sum<float>" in capsys.readouterr().out
