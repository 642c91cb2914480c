"""The ``dlcore`` command: ``info``, ``train``, ``bench`` and ``check``.

``dlcore train`` runs on one thread of BLAS by default (``--threads``): the reference
models' matrices are small (64x128), and on a 2-core machine OpenBLAS's threads cost more
in hand-offs than they gain; a GAN step measured 4 ms with one thread and 30 ms with two on
a shared 2-core VM. Under ``mpiexec -n N`` that is one thread per rank, which is what ranks
sharing a machine's cores want (``--threads`` sets it per rank).

Under ``mpiexec -n N`` (detected from the launcher's environment) ``dlcore train`` runs
data-parallel (:mod:`dlcore.train.parallel`); only rank 0 prints and writes files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from .. import cuda
from ..bench import runner as bench_runner  # the CLI imports the bench, never the reverse
from ..device import Device
from ..io import CheckpointError
from ..random import manual_seed
from ..sysinfo import collect
from ..train import (Interrupted, OptionError, Options, Ranks, ResumeError, TrainingDiverged,
                     adding, classify, fit, gan, parallel, resolve_device)
from ..train import private  # dlcore train cnn --dp-epsilon
from .check import run_checks
from .info import format_report

TASKS = ("cnn", "rnn", "gan", "adding")


def _cmd_info(args: argparse.Namespace) -> int:
    report = collect()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _threads(count: int | None) -> Any:
    """A context limiting BLAS to ``count`` threads (``None``: leave it alone)."""
    if count is None:
        return nullcontext()
    from ..threads import limit  # an explicit choice: the DataLoader's budget leaves it alone

    return limit(count)


def _cmd_train(args: argparse.Namespace) -> int:
    out = Path("runs") / args.task if args.out is None else Path(args.out)
    # under mpiexec every rank makes the same refusals: rank 0 says them
    say = _stderr if parallel.launched()[0] == 0 else _silent
    for flag, value in (("--data", args.data), ("--pack", args.pack)):
        if value is not None and args.task != "gan":
            say(f"dlcore train {args.task}: {flag} applies to the gan task only")
            return 2
    if args.dp_epsilon is not None and args.task != "cnn":
        say(f"dlcore train {args.task}: --dp-epsilon applies to the cnn task only")
        return 2
    options = Options(device=args.device, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, seed=args.seed, out=str(out), resume=args.resume,
                      data=args.data or "ring", pack=args.pack,
                      threads=args.threads or None, progress=not args.no_progress,
                      amp=args.amp, graphs=args.graphs, detect_anomaly=args.detect_anomaly)
    device = resolve_device(options.device)
    if not device.is_usable():
        why = cuda.why_unavailable() or "no such GPU"
        say(f"dlcore train: {device} is not usable here ({why}); use --device cpu or auto")
        return 2
    if options.graphs and not device.runs_kernels:
        say(f"dlcore train --graphs: CUDA graphs need --device cuda (or emu), not {device}")
        return 2
    try:
        ranks, device = parallel.start(device, options.device)
    except (OptionError, RuntimeError) as exc:  # an index under mpiexec; NCCL missing
        say(f"dlcore train {args.task}: {exc}")
        return 2
    problem = ranks.share(lambda: _unwritable(out))  # rank 0 writes, so rank 0 probes
    if problem:
        say(f"dlcore train {args.task}: --out {out}: {problem}")
        ranks.close()
        return 2
    # NOTE: an uncaught exception skips close(): the excepthook of init_process_group must
    # stay in place to end the other ranks (MPI_Abort), which would wait for this one
    code = _train(args, options, device, ranks, out)
    ranks.close()
    return code


def _train(args: argparse.Namespace, options: Options, device: Device, ranks: Ranks,
           out: Path) -> int:
    """Build and fit the task; the exit status. Under several ranks every failure handled
    here is seen by all of them alike (the figures, the resume checks and Ctrl-C are agreed
    at collectives), except those of rank 0's writes, which end the job (MPI_Abort)."""
    say = _stderr if ranks.main else _silent
    manual_seed(options.seed)
    with _threads(options.threads):
        try:
            if args.task == "cnn" and args.dp_epsilon is not None:
                task, epochs = private.build(options, device, args.dp_epsilon, args.dp_delta,
                                             ranks)
            elif args.task in ("cnn", "rnn"):
                task, epochs = classify.build(args.task, options, device, ranks)
            elif args.task == "gan":
                task, epochs = gan.build(options, device, ranks)
            else:
                task, epochs = adding.build(options, device, ranks)
        except OptionError as exc:
            say(f"dlcore train {args.task}: {exc}")
            return 2
        ranks.seed(options.seed)  # initial weights from --seed; dropout, noise per rank
        try:
            metrics = fit(task, options, out, epochs)
        except TrainingDiverged as exc:
            say(f"dlcore train {args.task}: stopped, the training diverged: {exc}. The "
                f"checkpoint in {out} (if any) is the last good one.")
            return 1
        except CheckpointError as exc:  # e.g. the disk filled up mid-run
            say(f"dlcore train {args.task}: {exc}")
            if ranks.main and ranks.parallel:
                ranks.abort(1)  # a failed write is rank 0's alone: the others wait for it
            return 1
        except ResumeError as exc:
            say(f"dlcore train {args.task}: {exc}")
            return 2
        except TypeError as exc:
            if not options.amp:
                raise
            # a kernel family without float16 on this device (they say which dtypes they take)
            say(f"dlcore train {args.task} --amp on {device}: {exc}; train without --amp or "
                "on --device cpu")
            return 2
        except KeyboardInterrupt as exc:
            if ranks.parallel and not isinstance(exc, Interrupted):
                # a second Ctrl-C, or one outside the loop: this rank alone stops here
                _stderr(f"\ndlcore train: interrupted on rank {ranks.rank} of "
                        f"{ranks.world_size}; ending every rank")
                ranks.abort(130)
            say(f"\ninterrupted: checkpoint written to {out / 'checkpoint.safetensors'}; "
                f"continue with the same command and --resume")
            return 130
    if not ranks.main:
        return 0
    skip = ("history", "config", "published", "date", "machine", "task",
            "energy_unavailable_because")
    where = f"{device}" + (f" x {ranks.world_size} ranks" if ranks.parallel else "")
    print(f"dlcore train {args.task} on {where}: " + ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in metrics.items() if k not in skip))
    if args.task == "gan" and options.data == "ring":
        print(gan.comparison_table(metrics))
    print(f"wrote {out}/metrics.json, metrics.csv, curves.png, checkpoint.safetensors"
          + (", attributions.png" if args.task == "cnn" else "")
          + (", samples.png" if args.task == "gan" else "")
          + (", samples.npy" if args.task == "gan" and options.data == "ring" else ""))
    return 0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _silent(message: str) -> None:
    """What ranks other than 0 do with a message rank 0 prints too."""


def _unwritable(out: Path) -> str | None:
    """Why the output folder cannot be used (None: it can): made if missing, then probed."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except FileExistsError:
        return "exists and is not a folder"
    except OSError as exc:
        return f"cannot write there ({exc.strerror or exc})"
    return None


def _cmd_check(args: argparse.Namespace) -> int:
    name = args.device
    if name == "auto":
        if not cuda.is_available():
            print(f"dlcore check: no GPU ({cuda.why_unavailable()}); use --device emu to run "
                  "the kernels on the CPU emulator", file=sys.stderr)
            return 2
        name = "cuda"
    device = Device(name)
    if not device.runs_kernels:
        print("dlcore check: the cpu device is the reference; choose cuda or emu",
              file=sys.stderr)
        return 2
    rows = run_checks(device, args.reference)
    width = max(len(f"{r['case']}: {r['quantity']}") for r in rows)
    for r in rows:
        label = f"{r['case']}: {r['quantity']}"
        verdict = "pass" if r["ok"] else "FAIL"
        print(f"{label:<{width}}  max |err| {r['max_abs_error']:.2e}  {verdict}"
              + (f"  {r['error']}" if "error" in r else ""))
    failed = sorted({r["case"] for r in rows if not r["ok"]})
    cases = len({r["case"] for r in rows})
    print(f"{device}: {cases - len(failed)} of {cases} kernel cases pass"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _positive(kind: type, minimum: int | None = None) -> Any:
    """An argparse type accepting only finite numbers of ``kind`` that are > 0, or >=
    ``minimum`` when one is given."""
    def parse(text: str) -> Any:
        value = kind(text)
        if not math.isfinite(value) or (value <= 0 if minimum is None else value < minimum):
            raise argparse.ArgumentTypeError(
                f"must be a finite number > 0, got {text}" if minimum is None
                else f"must be >= {minimum}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dlcore", description="dlcore: info, train, bench, "
                                 "check (see 'dlcore COMMAND --help')")
    sub = ap.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="versions, CUDA, GPUs (NVML clocks, power, use)")
    info.add_argument("--json", action="store_true", help="print as JSON")

    train = sub.add_parser("train", help="train a reference model on the shipped data")
    train.add_argument("task", choices=TASKS)
    train.add_argument("--device", default="auto", help="auto (default), cpu, cuda[:i], emu")
    train.add_argument("--epochs", type=_positive(int))
    train.add_argument("--batch-size", type=_positive(int))
    train.add_argument("--lr", type=_positive(float))
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", help="output folder (default runs/TASK)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its checkpoint (give the same "
                            "options: --epochs shapes the learning-rate schedule)")
    train.add_argument("--data", choices=["ring", "digits"],
                       help="gan: 8 Gaussians on a ring (default) or the digit images")
    train.add_argument("--pack", type=_positive(int),
                       help="gan ring: samples per discriminator input (default 1, the "
                            "plain GAN; 2 = PacGAN2)")
    train.add_argument("--threads", type=_positive(int, minimum=0), default=1,
                       help="BLAS threads (default 1; 0 = the library's default)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--amp", action="store_true",
                       help="mixed precision: forward and loss under autocast (bfloat16 on "
                            "the CPU; float16 with a GradScaler on cuda/emu)")

    train.add_argument("--detect-anomaly", action="store_true",
                       help="debug NaN/Inf: stop at the first op whose forward output or "
                            "backward gradient is not finite, naming it and the line that "
                            "made it (slow; not with --amp's float16, whose scaler expects "
                            "infinite gradients)")
    train.add_argument("--graphs", action="store_true",
                       help="capture each epoch's training step as a CUDA graph and replay "
                            "it per batch (cuda, emu; the step must draw no random numbers)")
    train.add_argument("--dp-epsilon", type=_positive(float),
                       help="cnn: train with DP-SGD to this (epsilon, --dp-delta) differential "
                            "privacy of the training images (dlcore.train.private)")
    train.add_argument("--dp-delta", type=_positive(float), default=1e-5,
                       help="the delta of --dp-epsilon (default 1e-5, below 1/N)")

    bench = sub.add_parser("bench", help="benchmark suites (dlcore.bench), table and JSON")
    bench_runner.add_arguments(bench)

    check = sub.add_parser("check", help="kernel-backed ops on a GPU (or emu) vs the CPU")
    check.add_argument("--device", default="auto", help="cuda[:i] or emu (default: cuda)")
    check.add_argument("--reference", choices=["cpu", "emu"], default="cpu",
                       help="compare with the NumPy path (cpu, default) or with the same "
                            "kernels on the emulator (emu: integers exact, floats to 1e-6 of "
                            "their scale)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.command == "info":
        return _cmd_info(args)
    if args.command == "train":
        return _cmd_train(args)
    if args.command == "bench":
        return bench_runner.run(args, ap)
    return _cmd_check(args)
