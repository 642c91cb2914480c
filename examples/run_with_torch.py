"""Run one of these examples on PyTorch instead of dlcore.

    python examples/run_with_torch.py examples/cnn_classifier.py --epochs 2

The examples import dlcore under PyTorch's names (``import dlcore as torch``,
``import dlcore.nn as nn``, ``from dlcore.utils.data import ...``). The PyTorch variant of a
program is the same text with ``dlcore`` replaced by ``torch`` on its import lines only (lines
that start with ``import dlcore`` or ``from dlcore``); every other line is left byte for byte
as it is, which is the project's rule for these programs.
"""

import re
import sys
from pathlib import Path

IMPORT_PREFIXES = ("import dlcore", "from dlcore")


def torch_variant(source: str) -> str:
    """``source`` with ``dlcore`` renamed to ``torch`` on its import lines, nothing else."""
    lines = source.splitlines(keepends=True)
    return "".join(re.sub(r"\bdlcore\b", "torch", line) if line.startswith(IMPORT_PREFIXES)
                   else line for line in lines)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} EXAMPLE.py [ARGS...]")
    path = Path(sys.argv[1])
    code = compile(torch_variant(path.read_text()), f"{path} (PyTorch variant)", "exec")
    sys.argv = [str(path), *sys.argv[2:]]
    exec(code, {"__name__": "__main__", "__file__": str(path)})


if __name__ == "__main__":
    main()
