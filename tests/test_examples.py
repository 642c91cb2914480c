"""The programs in examples/ run on dlcore, and on PyTorch with only their imports changed.

Each example runs as a subprocess with small settings (its own argparse options), must exit
with status 0 and print finite losses; the classifier must beat chance and the regression
must find the true coefficients. The PyTorch variant of each program is made by
examples/run_with_torch.py, which rewrites the import lines only: a test checks that every
other line stays byte for byte as written. Where PyTorch is installed the variants run too,
as a cross-check of the rule (CI has no PyTorch, so there they skip).
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
RUNNER = EXAMPLES / "run_with_torch.py"
HAS_TORCH = importlib.util.find_spec("torch") is not None

# Small settings per example: a few seconds each, enough to see learning where it is asserted.
QUICK_ARGS = {
    "cnn_classifier": ["--epochs", "2"],
    "vae": ["--epochs", "1"],
    "dcgan": ["--epochs", "1"],
    "lstm_language_model": ["--epochs", "1", "--sentences", "300"],
    "lstmcell_time_series": ["--epochs", "1", "--sequences", "64", "--length", "30",
                             "--future", "10"],
    "rnn_classifier": ["--epochs", "2", "--hidden", "32"],
    "regression": ["--epochs", "10"],
    "transformer_lm": ["--epochs", "1", "--sentences", "300"],
}
PROGRAMS = sorted(p.stem for p in EXAMPLES.glob("*.py") if p != RUNNER)


def _torch_variant(source: str) -> str:
    spec = importlib.util.spec_from_file_location("run_with_torch", RUNNER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.torch_variant(source)


def _run(command: list[str], device_args: list[str]) -> str:
    # one BLAS thread: the subprocesses share this machine with the rest of the suite
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, *command, *device_args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _check_output(name: str, output: str) -> None:
    losses = [float(v) for v in re.findall(r"(?:loss|perplexity) (\S+)", output)]
    assert losses, f"{name} printed no loss:\n{output}"
    assert all(math.isfinite(v) for v in losses), output
    if name in ("cnn_classifier", "rnn_classifier"):
        accuracy = float(re.search(r"final test accuracy (\S+)", output).group(1))
        assert accuracy > 0.3, output  # ten classes: chance is 0.1
    if name == "regression":
        pairs = re.findall(r"true ([-+.\d]+)\s+learned ([-+.\d]+)", output)
        assert len(pairs) == 4, output  # three coefficients and the bias
        for true, learned in pairs:
            assert abs(float(true) - float(learned)) < 0.1, output


def test_every_program_has_quick_settings() -> None:
    assert PROGRAMS == sorted(QUICK_ARGS)


@pytest.mark.parametrize("name", PROGRAMS)
def test_example_runs_on_dlcore(name: str) -> None:
    output = _run([str(EXAMPLES / f"{name}.py"), *QUICK_ARGS[name]], ["--device", "cpu"])
    _check_output(name, output)


def test_cnn_checkpoint_round_trip(tmp_path: Path) -> None:
    """--save writes the weights with dlcore.save; reloaded, they give the same accuracy."""
    path = tmp_path / "cnn.safetensors"
    output = _run([str(EXAMPLES / "cnn_classifier.py"), "--epochs", "1", "--save", str(path)],
                  ["--device", "cpu"])
    final = re.search(r"final test accuracy (\S+)", output).group(1)
    assert f"reloaded test accuracy {final}" in output, output
    assert path.exists()


@pytest.mark.parametrize("name", PROGRAMS)
def test_torch_variant_changes_import_lines_only(name: str) -> None:
    source = (EXAMPLES / f"{name}.py").read_text()
    assert ast.get_docstring(ast.parse(source)), f"{name}.py starts with no docstring"
    variant = _torch_variant(source)
    original_lines = source.encode().splitlines(keepends=True)
    variant_lines = variant.encode().splitlines(keepends=True)
    assert len(original_lines) == len(variant_lines)
    imports = 0
    for before, after in zip(original_lines, variant_lines):
        if before.startswith((b"import dlcore", b"from dlcore")):
            imports += 1
            assert after == re.sub(rb"\bdlcore\b", b"torch", before)
        else:
            assert after == before  # byte-identical
    assert imports >= 3, f"{name}.py does not import dlcore under PyTorch's names"
    assert "dlcore" not in variant, f"{name}.py names dlcore outside its import lines"


def test_rewrite_leaves_other_mentions_alone() -> None:
    source = ('"""Uses dlcore."""\n'
              "import dlcore as torch\n"
              "from dlcore.utils.data import DataLoader\n"
              "import dlcoreish\n"
              "    import dlcore.nn as nn\n"
              'x = "import dlcore"\r\n')
    assert _torch_variant(source) == ('"""Uses dlcore."""\n'
                                      "import torch as torch\n"
                                      "from torch.utils.data import DataLoader\n"
                                      "import dlcoreish\n"
                                      "    import dlcore.nn as nn\n"
                                      'x = "import dlcore"\r\n')


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed")
@pytest.mark.parametrize("name", PROGRAMS)
def test_example_runs_on_torch(name: str) -> None:
    output = _run([str(RUNNER), str(EXAMPLES / f"{name}.py"), *QUICK_ARGS[name]],
                  ["--device", "cpu"])
    _check_output(name, output)
