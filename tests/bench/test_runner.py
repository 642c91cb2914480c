"""The benchmark runner (dlcore.bench.runner): a suite that cannot be imported is a failure,
``python -m dlcore.bench`` runs, the conv suite's kernel rows, and the import direction
(dlcore.cli imports dlcore.bench, never the reverse)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import dlcore.bench
from dlcore.bench import conv, runner
from dlcore.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("source, reason", [
    ("import dlcore_no_such_module\n",
     "ModuleNotFoundError: No module named 'dlcore_no_such_module'"),
    ("raise RuntimeError('the broken suite fails at import')\n",
     "RuntimeError: the broken suite fails at import"),
])
def test_suite_failing_to_import_exits_nonzero_after_the_others(
        source: str, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    # The broken suite lives in tmp_path, added to the package's search path for this test only:
    # nothing is written into dlcore/bench.
    (tmp_path / "broken.py").write_text(source)
    monkeypatch.setattr(dlcore.bench, "__path__", [*dlcore.bench.__path__, str(tmp_path)])
    monkeypatch.setattr(runner, "SUITES", (*runner.SUITES, "broken"))
    monkeypatch.delitem(sys.modules, "dlcore.bench.broken", raising=False)
    path = tmp_path / "bench.json"
    assert main(["bench", "broken", "overhead", "--quick", "--json", str(path)]) == 1
    out, err = capsys.readouterr()
    assert f"suite broken: cannot be imported: {reason}" in err
    assert "1 of 2 suites could not be imported: broken" in err
    assert "chain4 16x16 fwd+bwd" in out  # the other suite still ran
    result = json.loads(path.read_text())
    assert result["import_errors"] == {"broken": reason}
    assert [s["suite"] for s in result["suites"]] == ["overhead"]


def test_module_entry_point_runs_a_suite() -> None:
    done = subprocess.run([sys.executable, "-m", "dlcore.bench", "overhead", "--quick"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "overhead  chain4 16x16 fwd+bwd" in done.stdout


def test_bench_does_not_import_the_cli() -> None:
    code = ("import sys, importlib, dlcore.bench.runner as r\n"
            "[importlib.import_module('dlcore.bench.' + s) for s in r.SUITES]\n"
            "print(sorted(m for m in sys.modules if m.startswith('dlcore.cli')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


def test_conv_kernel_rows_on_the_emulator() -> None:
    rows = conv._kernel_rows("emu", quick=True, torch_device=None)
    assert [r["case"].rsplit(" ", 1)[1] for r in rows] == list(conv.KERNELS)
    assert all(r["median_us"] > 0 and r["gflops"] > 0 for r in rows)
    assert "gflops" in runner.format_table(rows).splitlines()[0]
    assert conv._kernel_rows("cpu", quick=True, torch_device=None) == []
