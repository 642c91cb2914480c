"""Checkpoints: ``save``/``load`` nested structures of tensors, arrays and plain values.

Format: one safetensors file (https://github.com/huggingface/safetensors). Each tensor or
array is an entry named by its position (``"0"``, ``"1"``, ...). The structure around them
is JSON in the file's metadata under ``dlcore.structure`` (with ``dlcore.format`` and a
CRC-32 of each entry under ``dlcore.crc32``). A JSON node is one of::

    null | true | false | int (any size) | float | string     -- the value itself
    {"list": [node, ...]}       {"tuple": [node, ...]}
    {"dict": [[key, node], ...]}                               -- str or int keys, in order
    {"tensor": entry, "device": "cuda:0", "requires_grad": false}
    {"ndarray": entry}          {"scalar": entry}              -- NumPy array / scalar

Loading reads JSON and raw buffers only, so a checkpoint never runs code (no pickle).
Writes are atomic: a temporary file in the same directory is written, flushed to disk and
renamed over the target, so a crash mid-save leaves the previous checkpoint intact.
Damaged files raise :class:`CheckpointError` saying what is wrong.
"""

from __future__ import annotations

import json
import os
import secrets
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from safetensors import safe_open

from .creation import as_tensor
from .device import Device
from .dtypes import bfloat16
from .random import get_rng_state, set_rng_state
from .tensor import Tensor

__all__ = ["CheckpointError", "get_rng_state", "load", "save", "set_rng_state"]

FORMAT = "1"
PathLike = str | os.PathLike[str]


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable (truncated, corrupted, or not a dlcore checkpoint) or
    could not be written (the previous file, if any, is then intact)."""

    def __init__(self, path: PathLike, problem: str) -> None:
        super().__init__(f"checkpoint {os.fspath(path)!r}: {problem}")
        self.path = os.fspath(path)


def save(obj: Any, path: PathLike) -> None:
    """Write ``obj`` (nested dicts, lists and tuples of dlcore Tensors, NumPy arrays and
    scalars, and int, float, str, bool, None) to ``path``, atomically.

    >>> dlcore.save({"epoch": 3, "weight": dlcore.ones(2)}, "ckpt.safetensors")
    >>> dlcore.load("ckpt.safetensors")["epoch"]
    3
    """
    arrays: dict[str, np.ndarray] = {}
    structure = _encode(obj, arrays, "obj", set())
    metadata = {"dlcore.format": FORMAT,
                "dlcore.structure": json.dumps(structure),
                "dlcore.crc32": json.dumps({name: _crc32(a) for name, a in arrays.items()})}
    _write_atomic(Path(path), lambda tmp: safetensors.numpy.save_file(arrays, tmp, metadata))


def load(path: PathLike, map_location: str | Device | None = None, *,
         weights_only: bool = True) -> Any:
    """Read a checkpoint written by :func:`save`. Loading never runs code (no pickle), so
    ``weights_only`` (PyTorch's safety switch, accepted for ported code) is always true;
    ``weights_only=False`` is refused rather than implying an unpickler dlcore does not have.

    Tuples come back as tuples, NumPy arrays as NumPy arrays, tensors as dlcore Tensors on
    ``map_location`` (default: the device they were saved from when it exists here, else
    cpu), all with their dtypes.
    """
    if not weights_only:
        raise ValueError("load: dlcore checkpoints hold only tensors and plain values "
                         "(safetensors, no pickle); weights_only=False has nothing to enable")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load: no checkpoint file at {os.fspath(path)!r}")
    try:
        with safe_open(os.fspath(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            arrays = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # SafetensorError, or an OSError while reading
        raise CheckpointError(path, f"not a readable safetensors file ({exc})") from exc
    if metadata.get("dlcore.format") != FORMAT or "dlcore.structure" not in metadata:
        raise CheckpointError(path, f"not a dlcore checkpoint (format "
                                    f"{metadata.get('dlcore.format')!r}, expected {FORMAT!r})")
    if "dlcore.crc32" not in metadata:
        raise CheckpointError(path, "no checksum table (dlcore.crc32): its entries cannot be "
                                    "verified")
    try:
        structure = json.loads(metadata["dlcore.structure"])
        checksums = json.loads(metadata["dlcore.crc32"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(path, f"damaged structure metadata ({exc})") from exc
    for name, array in arrays.items():
        if checksums.get(name) != _crc32(array):
            raise CheckpointError(path, f"entry {name!r} is corrupted (CRC-32 mismatch)")
    target = None if map_location is None else Device(map_location)
    return _Decoder(path, arrays, target).decode(structure, "obj")


def _crc32(array: np.ndarray) -> int:
    # ``.data``: the bytes as a memoryview (no copy), which typeshed knows is a buffer.
    return zlib.crc32(np.require(array, requirements="C").reshape(-1).view(np.uint8).data)


def _encode(obj: Any, arrays: dict[str, np.ndarray], where: str, path: set[int]) -> Any:
    """The JSON node for ``obj``; its arrays are added to ``arrays``. ``where`` names the
    position in the structure for error messages (``obj['model'][2]``); ``path`` holds the
    ids of the containers enclosing it, so a structure that contains itself is refused
    (instead of recursing until Python's limit)."""
    if isinstance(obj, dict | list | tuple):
        if id(obj) in path:
            raise ValueError(f"save: the structure contains itself at {where}; checkpoints "
                             "hold trees of containers")
        path = path | {id(obj)}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, Tensor):
        return {"tensor": _add(arrays, obj.numpy(), where), "device": str(obj.device),
                "requires_grad": obj.requires_grad}
    if isinstance(obj, np.ndarray):
        return {"ndarray": _add(arrays, obj, where)}
    if isinstance(obj, np.generic):
        return {"scalar": _add(arrays, np.asarray(obj), where)}
    if isinstance(obj, dict):
        items = []
        for key, value in obj.items():
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise TypeError(f"save: dict keys must be str or int, got "
                                f"{type(key).__name__} {key!r} in {where}")
            items.append([key, _encode(value, arrays, f"{where}[{key!r}]", path)])
        return {"dict": items}
    if isinstance(obj, list | tuple):
        kind = "tuple" if isinstance(obj, tuple) else "list"
        return {kind: [_encode(v, arrays, f"{where}[{i}]", path) for i, v in enumerate(obj)]}
    raise TypeError(f"save: cannot store {type(obj).__name__} at {where}; checkpoints hold "
                    "tensors, NumPy arrays, dicts, lists, tuples, int, float, str, bool, None")


def _add(arrays: dict[str, np.ndarray], array: np.ndarray, where: str) -> str:
    # bfloat16 (ml_dtypes, kind "V") is safetensors' "BF16"; a cuda tensor's .numpy() gives it
    if array.dtype.kind not in "biuf" and array.dtype != bfloat16:
        raise TypeError(f"save: cannot store an array of dtype {array.dtype} at {where}")
    name = str(len(arrays))
    # NOTE: not np.ascontiguousarray, which turns a 0-d array into a 1-d one.
    arrays[name] = np.require(array.astype(array.dtype.newbyteorder("="), copy=False),
                              requirements="C")
    return name


class _Decoder:
    """Rebuilds the saved object from its JSON structure and entries."""

    def __init__(self, path: Path, arrays: dict[str, np.ndarray], target: Device | None) -> None:
        self.path, self.arrays, self.target = path, arrays, target

    def decode(self, node: Any, where: str) -> Any:
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if not isinstance(node, dict) or len(node) == 0:
            raise self._bad(where, f"unexpected {type(node).__name__}")
        if "tensor" in node:
            tensor = as_tensor(self._entry(node["tensor"], where), device=self._device(node))
            return tensor.requires_grad_() if node.get("requires_grad") else tensor
        if "ndarray" in node:
            return self._entry(node["ndarray"], where)
        if "scalar" in node:
            return self._entry(node["scalar"], where)[()]
        if "dict" in node:
            return {key: self.decode(value, f"{where}[{key!r}]") for key, value in
                    self._pairs(node["dict"], where)}
        kind, items = next(iter(node.items()))
        if kind in ("list", "tuple") and isinstance(items, list):
            values = [self.decode(v, f"{where}[{i}]") for i, v in enumerate(items)]
            return values if kind == "list" else tuple(values)
        raise self._bad(where, f"unknown node {sorted(node)}")

    def _pairs(self, items: Any, where: str) -> list:
        if not isinstance(items, list) or not all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], str | int)
                for p in items):
            raise self._bad(where, "dict items must be [key, value] pairs")
        return items

    def _entry(self, name: Any, where: str) -> np.ndarray:
        if name not in self.arrays:
            raise self._bad(where, f"missing tensor entry {name!r}")
        return self.arrays[name]

    def _device(self, node: dict) -> Device:
        """``map_location``, else the saved device if this machine has it, else cpu."""
        if self.target is not None:
            return self.target
        try:
            saved = Device(node.get("device", "cpu"))
        except (TypeError, ValueError):
            return Device("cpu")
        return saved if saved.is_usable() else Device("cpu")

    def _bad(self, where: str, problem: str) -> CheckpointError:
        return CheckpointError(self.path, f"damaged structure at {where}: {problem}")


def _temporaries(path: Path) -> list[tuple[Path, int]]:
    """The temporary files of saves to ``path`` (``.<name>.<pid>.<hex>.tmp``) and their
    writers' process ids."""
    found = []
    prefix = f".{path.name}."
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid, _, token = name[len(prefix):-len(".tmp")].partition(".")
        if pid.isdigit() and len(token) == 8:
            found.append((entry, int(pid)))
    return found


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete what killed saves to ``path`` left behind: temporaries whose writer is gone
    (a live writer's, another save in flight, stays)."""
    for tmp, pid in _temporaries(path):
        if not _alive(pid):
            tmp.unlink(missing_ok=True)


def _write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Run ``write(tmp)`` on a new temporary file next to ``path``, flush it to disk and
    rename it over ``path``: readers see the old file or the new one, never a mix. The one
    temporary is removed on any failure, the temporaries of earlier writers that were killed
    are removed first, and errors name ``path``, not the temporary."""
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # NOTE: safetensors writes its files with mode 0o600; creating the file ourselves first
    # learns the ordinary mode (0o666 less the umask), which the checkpoint then gets.
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        mode = os.stat(tmp).st_mode & 0o777
        write(os.fspath(tmp))
        os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        problem = str(exc).replace(os.fspath(tmp), os.fspath(path))
        raise CheckpointError(path, f"could not be written ({type(exc).__name__}: "
                                    f"{problem})") from exc
    except BaseException:  # KeyboardInterrupt, SystemExit: clean up, then let it through
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
