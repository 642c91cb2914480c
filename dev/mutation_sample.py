"""Estimate the mutation kill rate of the test suite from a random sample of mutants.

mutmut generates about 19,000 mutants over autograd, ops, optim, io and data (the modules
in ``[tool.mutmut] source_paths``); running them all takes days on a 2-core machine. A
uniform random sample estimates the kill rate with a known error: n = 400 gives a 95%
interval of about +-3 points near 90%. Run from the project root, after ``mutmut run`` has
generated the mutants and collected its per-test coverage once (``mutmut run 'no_such'``
does both and then stops):

    python dev/mutation_sample.py sample --n 400 --seed 1 > sample.txt
    mutmut run $(cat sample.txt)
    python dev/mutation_sample.py report sample.txt

A mutant counts as killed when a test failed or timed out on it (mutmut's verdicts); a
mutant no test reaches ("no tests") counts as survived: the estimate is of the whole code,
not only of the covered part. Draw a fresh sample (another seed) after writing tests for the
survivors of one: re-measuring the sample the tests were written for would overstate the
rate.

The mutation score proper leaves out the equivalent mutants (those no program can tell from
the original). Which survivors are equivalent is a judgement made by reading each one, so
it is recorded in a file, a name and its reason per line, and checked against the verdicts
(a killed mutant cannot be equivalent):

    python dev/mutation_sample.py report sample.txt --equivalent equivalent.txt
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import Counter, defaultdict
from pathlib import Path

# -11: the test run died of SIGSEGV (a mutant building an impossible strided view): the
# suite fails on the mutant, so it is detected, though mutmut calls it "suspicious".
KILLED = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout",
          152: "timeout", 255: "timeout", 37: "type check", -11: "crashed"}
NAMES = {0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", None: "not checked"}


def _metas(root: Path) -> list[Path]:
    return sorted((root / "mutants").rglob("*.py.meta"))


def all_mutants(root: Path) -> dict[str, int | None]:
    """Mutant name -> mutmut's exit code (None: not run yet)."""
    out: dict[str, int | None] = {}
    for meta in _metas(root):
        out.update(json.loads(meta.read_text()).get("exit_code_by_key", {}))
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _verdict(code: int | None) -> str:
    if code in KILLED:
        return "killed"
    return NAMES.get(code, "suspicious")


def _equivalents(path: Path) -> set[str]:
    """Names in an equivalence file: the first word of each line that is not blank or a
    ``#`` comment; every name must come with a reason (the rest of the line)."""
    names = set()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, reason = line.strip().partition(" ")
        if not reason.strip():
            raise SystemExit(f"{path}:{number}: {name} has no reason")
        names.add(name)
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="print a uniform random sample of mutant names")
    s.add_argument("--n", type=int, default=400)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--exclude", type=Path, nargs="*", default=[],
                   help="sample files whose names must not be drawn again")
    r = sub.add_parser("report", help="kill rate of the mutants named in a sample file")
    r.add_argument("sample", type=Path)
    r.add_argument("--survivors", action="store_true", help="list the survivors' names")
    r.add_argument("--equivalent", type=Path,
                   help="file of mutants read and judged equivalent, one per line: the name, "
                        "then the reason (no observable difference); the report adds the "
                        "mutation score over the non-equivalent mutants")
    args = ap.parse_args()
    root = Path.cwd()
    mutants = all_mutants(root)
    if args.cmd == "sample":
        used = {line.strip() for f in args.exclude for line in f.read_text().split()}
        pool = sorted(set(mutants) - used)
        for name in sorted(random.Random(args.seed).sample(pool, args.n)):
            print(name)
        return
    names = args.sample.read_text().split()
    verdicts = {n: _verdict(mutants.get(n)) for n in names}
    counts = Counter(verdicts.values())
    judged = len(names) - counts["not checked"] - counts["skipped"]
    killed = counts["killed"]
    lo, hi = wilson(killed, judged)
    print(f"{len(names)} sampled of {len(mutants)} mutants: " +
          ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    print(f"kill rate {killed}/{judged} = {100 * killed / max(judged, 1):.1f}% "
          f"(95% Wilson interval {100 * lo:.1f}-{100 * hi:.1f}%)")
    if args.equivalent:
        judged_equivalent = _equivalents(args.equivalent)
        stray = sorted(judged_equivalent - set(names))
        if stray:
            raise SystemExit(f"{args.equivalent}: not in {args.sample}: {', '.join(stray)}")
        wrongly = sorted(n for n in judged_equivalent if verdicts[n] == "killed")
        if wrongly:  # a killed mutant is observably different: it cannot be equivalent
            raise SystemExit(f"{args.equivalent}: killed, so not equivalent: {', '.join(wrongly)}")
        k = len(judged_equivalent & {n for n, v in verdicts.items()
                                     if v not in ("not checked", "skipped")})
        lo, hi = wilson(killed, judged - k)
        print(f"mutation score without the {k} equivalent: {killed}/{judged - k} = "
              f"{100 * killed / max(judged - k, 1):.1f}% "
              f"(95% Wilson interval {100 * lo:.1f}-{100 * hi:.1f}%)")
    by_module: dict[str, Counter] = defaultdict(Counter)
    for n, v in verdicts.items():
        by_module[n.split(".x_")[0].split(".xǁ")[0]][v] += 1
    for module, c in sorted(by_module.items()):
        print(f"  {module}: {c['killed']}/{sum(c.values())} killed")
    if args.survivors:
        for n, v in sorted(verdicts.items()):
            if v != "killed":
                print(v, n)


if __name__ == "__main__":
    main()
