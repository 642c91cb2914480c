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

``save``/``load`` also take a binary file object (``io.BytesIO``, ``open(..., "wb")``), which
is written or read in one piece, without the atomic rename. ``load`` also reads PyTorch
checkpoints (``torch.save``'s zip format, PyTorch >= 1.6) without importing torch: see
:func:`_load_torch`.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import secrets
import zipfile
import zlib
from collections.abc import Callable
from io import BytesIO, TextIOBase
from pathlib import Path
from typing import IO, Any

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
FileLike = PathLike | IO[bytes]
_ZIP_MAGIC = b"PK\x03\x04"
# torch.save's format before 1.6 begins with this pickled magic number
_LEGACY_TORCH_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable (truncated, corrupted, or not a dlcore checkpoint) or
    could not be written (the previous file, if any, is then intact)."""

    def __init__(self, path: PathLike, problem: str) -> None:
        super().__init__(f"checkpoint {os.fspath(path)!r}: {problem}")
        self.path = os.fspath(path)


def save(obj: Any, f: FileLike) -> None:
    """Write ``obj`` (nested dicts, lists and tuples of dlcore Tensors, NumPy arrays and
    scalars, and int, float, str, bool, None) to ``f``: a path, written atomically, or a
    binary file object (anything with ``write``), written in one call at its position with
    no atomic rename (a failed write may leave part of the checkpoint there).

    >>> dlcore.save({"epoch": 3, "weight": dlcore.ones(2)}, "ckpt.safetensors")
    >>> dlcore.load("ckpt.safetensors")["epoch"]
    3
    """
    arrays: dict[str, np.ndarray] = {}
    structure = _encode(obj, arrays, "obj", set())
    metadata = {"dlcore.format": FORMAT,
                "dlcore.structure": json.dumps(structure),
                "dlcore.crc32": json.dumps({name: _crc32(a) for name, a in arrays.items()})}
    if not _is_file_object(f, "write", "save"):
        _write_atomic(Path(_as_path(f, "save", "write")),
                      lambda tmp: safetensors.numpy.save_file(arrays, tmp, metadata))
        return
    data = safetensors.numpy.save(arrays, metadata)
    try:
        f.write(data)  # type: ignore[union-attr]
    except Exception as exc:
        raise CheckpointError(_label(f), f"could not be written ({type(exc).__name__}: "
                                         f"{exc})") from exc


def load(f: FileLike, map_location: str | Device | None = None, *,
         weights_only: bool = True) -> Any:
    """Read a checkpoint written by :func:`save`, or a PyTorch one written by
    ``torch.save``, from a path or a binary file object (anything with ``read``; it is
    read to its end). Loading never runs code, so ``weights_only`` (PyTorch's safety
    switch, accepted for ported code) is always true; ``weights_only=False`` is refused
    rather than implying an unrestricted unpickler dlcore does not have.

    Tuples come back as tuples, NumPy arrays as NumPy arrays, tensors as dlcore Tensors on
    ``map_location`` (default: the device they were saved from when it exists here, else
    cpu; for PyTorch checkpoints, cpu), all with their dtypes.
    """
    if not weights_only:
        raise ValueError("load: dlcore reads only tensors and plain values (safetensors, or "
                         "PyTorch checkpoints through a restricted unpickler); "
                         "weights_only=False has nothing to enable")
    target = None if map_location is None else Device(map_location)
    if _is_file_object(f, "read", "load"):
        label = _label(f)
        data = f.read()  # type: ignore[union-attr]
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"load: f.read() returned {type(data).__name__}, not bytes; "
                            "open the file in binary mode ('rb')")
        data = bytes(data)
        if data.startswith(_ZIP_MAGIC):
            return _load_torch(BytesIO(data), label, target)
        _refuse_legacy_torch(data, label)
        metadata, arrays = _read_safetensors_bytes(data, label)
    else:
        path = Path(_as_path(f, "load", "read"))
        label = os.fspath(path)
        if not path.is_file():
            raise FileNotFoundError(f"load: no checkpoint file at {label!r}")
        with open(path, "rb") as file:
            head = file.read(len(_LEGACY_TORCH_MAGIC))
        if head.startswith(_ZIP_MAGIC):
            return _load_torch(path, label, target)
        _refuse_legacy_torch(head, label)
        metadata, arrays = _read_safetensors_file(path)
    return _decode_checkpoint(label, metadata, arrays, target)


def _is_file_object(f: Any, method: str, op: str) -> bool:
    """Whether ``f`` is a binary file object with ``method``; a text one raises."""
    if isinstance(f, str | os.PathLike) or not hasattr(f, method):
        return False
    if isinstance(f, TextIOBase):
        mode = "wb" if method == "write" else "rb"
        raise TypeError(f"{op}: f is a text file object; open it in binary mode ({mode!r})")
    return True


def _as_path(f: Any, op: str, method: str) -> PathLike:
    if not isinstance(f, str | os.PathLike):
        raise TypeError(f"{op}: f must be a path (str or os.PathLike) or a binary file "
                        f"object with {method}(), got {type(f).__name__}")
    return f


def _label(f: Any) -> str:
    """How errors name a file object: its file name, if it has one."""
    name = getattr(f, "name", None)
    return name if isinstance(name, str) else f"<{type(f).__name__}>"


def _refuse_legacy_torch(head: bytes, label: str) -> None:
    if head.startswith(_LEGACY_TORCH_MAGIC):
        raise CheckpointError(label, "a PyTorch checkpoint in the legacy (pre-1.6) format, "
                                     "which dlcore cannot read; re-save it with a newer "
                                     "torch (torch.save(torch.load(old), new))")


def _read_safetensors_file(path: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    try:
        with safe_open(os.fspath(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            arrays = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # SafetensorError, or an OSError while reading
        raise CheckpointError(path, f"not a readable safetensors file ({exc})") from exc
    return metadata, arrays


def _read_safetensors_bytes(data: bytes, label: str
                            ) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Entries and metadata of a safetensors file in memory: an 8-byte little-endian
    header size, then the JSON header (metadata under ``__metadata__``), then the data."""
    try:
        arrays = safetensors.numpy.load(data)
        size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + size]).get("__metadata__") or {}
    except Exception as exc:  # SafetensorError, or a header safetensors accepted oddly
        raise CheckpointError(label, f"not a readable safetensors file ({exc})") from exc
    return metadata, arrays


def _decode_checkpoint(label: PathLike, metadata: dict[str, str],
                       arrays: dict[str, np.ndarray], target: Device | None) -> Any:
    if metadata.get("dlcore.format") != FORMAT or "dlcore.structure" not in metadata:
        raise CheckpointError(label, f"not a dlcore checkpoint (format "
                                     f"{metadata.get('dlcore.format')!r}, expected {FORMAT!r})")
    if "dlcore.crc32" not in metadata:
        raise CheckpointError(label, "no checksum table (dlcore.crc32): its entries cannot "
                                     "be verified")
    try:
        structure = json.loads(metadata["dlcore.structure"])
        checksums = json.loads(metadata["dlcore.crc32"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(label, f"damaged structure metadata ({exc})") from exc
    for name, array in arrays.items():
        if checksums.get(name) != _crc32(array):
            raise CheckpointError(label, f"entry {name!r} is corrupted (CRC-32 mismatch)")
    return _Decoder(label, arrays, target).decode(structure, "obj")


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

    def __init__(self, path: PathLike, arrays: dict[str, np.ndarray],
                 target: Device | None) -> None:
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


# ---- PyTorch checkpoints ------------------------------------------------------------
# torch.save's zip format (PyTorch >= 1.6): ``<name>/data.pkl`` pickles the object, each
# tensor storage pickled as a persistent id ``("storage", <Dtype>Storage, key, location,
# numel)`` whose bytes are ``<name>/data/<key>``; ``<name>/byteorder`` says their byte order.

_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32), "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": bfloat16,
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16), "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
}
_PLAIN_BUILTINS = {"set": set, "frozenset": frozenset, "bytearray": bytearray,
                   "complex": complex, "slice": slice}


class _Record:
    """A read-only record. The pickle's BUILD opcode calls ``__setstate__`` or sets
    attributes of any object the pickle holds; on these both raise. (A frozen dataclass
    would not do: its slotted ``__setstate__`` sets the fields.)"""

    __slots__: tuple[str, ...] = ()

    def __init__(self, **fields: Any) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __setstate__(self, state: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")


class _Rebuilder(_Record):
    """One of the unpickler's rebuilders, as the pickle calls it."""

    __slots__ = ("function",)
    function: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)


class _StorageType(_Record):
    """What a ``torch.<Dtype>Storage`` global unpickles to: its name and NumPy dtype."""

    __slots__ = ("name", "dtype")
    name: str
    dtype: np.dtype


class _Storage(_Record):
    """A storage's elements, as the unpickler hands them around."""

    __slots__ = ("array",)
    array: np.ndarray


class _Rebuilt(_Record):
    """A rebuilt tensor's elements; made a dlcore Tensor after unpickling (a Tensor's
    slots could be set by BUILD)."""

    __slots__ = ("array", "requires_grad")
    array: np.ndarray
    requires_grad: bool


class _TorchUnpickler(pickle.Unpickler):
    """Rebuilds tensors (as :class:`_Rebuilt` records) and plain containers, nothing else: like
    ``torch.load(weights_only=True)``, every other global raises UnpicklingError, so a
    pickle cannot call anything but the rebuilders below.

    NOTE: the pickle's BUILD opcode sets attributes of any object it holds. So what it gets
    from us is immutable: builtin types and read-only records (a function would let it
    set ``__defaults__``, an ndarray's ``__setstate__`` its dtype and shape).
    """

    def __init__(self, archive: zipfile.ZipFile, prefix: str, byteorder: str,
                 label: str) -> None:
        super().__init__(BytesIO(archive.read(prefix + "data.pkl")))
        self.archive, self.prefix, self.byteorder, self.label = archive, prefix, byteorder, label
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        allowed: dict[tuple[str, str], Any] = {
            ("torch._utils", "_rebuild_tensor_v2"): _Rebuilder(function=self._rebuild_tensor_v2),
            ("torch._utils", "_rebuild_parameter"): _Rebuilder(function=self._rebuild_parameter),
            ("collections", "OrderedDict"): collections.OrderedDict,
            # protocol 2 pickles bytes as _codecs.encode(text, "latin1")
            ("_codecs", "encode"): _Rebuilder(function=self._encode),
            **{("builtins", n): v for n, v in _PLAIN_BUILTINS.items()},
        }
        if (module, name) in allowed:
            return allowed[module, name]
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return _StorageType(name=name, dtype=_TORCH_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(
            f"load: {self.label!r}: global {module}.{name} is not allowed in a checkpoint; "
            "dlcore rebuilds only tensors and plain containers (like torch.load with "
            "weights_only=True) and never runs a checkpoint's code")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise pickle.UnpicklingError(f"load: {self.label!r}: unsupported persistent id "
                                         f"{pid!r:.200}")
        _, storage_type, key, _location, numel = pid
        if key not in self.storages:  # tensors sharing a storage share its one read
            data = self.archive.read(f"{self.prefix}data/{key}")
            dtype = storage_type.dtype
            if len(data) < numel * dtype.itemsize:
                raise CheckpointError(self.label, f"storage {key!r} holds {len(data)} bytes, "
                                                  f"expected {numel * dtype.itemsize}")
            # as unsigned words in the file's byte order, swapped to ours, then reinterpreted
            # (ml_dtypes' bfloat16 has no byte-swapped variant)
            order = "<" if self.byteorder == "little" else ">"
            words = np.frombuffer(data, f"{order}u{dtype.itemsize}", count=numel)
            self.storages[key] = _Storage(
                array=words.astype(f"=u{dtype.itemsize}").view(dtype))
        return self.storages[key]

    def _rebuild_tensor_v2(self, storage: Any, storage_offset: Any, size: Any, stride: Any,
                           requires_grad: Any, backward_hooks: Any, metadata: Any = None
                           ) -> _Rebuilt:
        if not (isinstance(storage, _Storage) and _ints(size) and _ints(stride)
                and len(size) == len(stride) and isinstance(storage_offset, int)
                and storage_offset >= 0 and all(n >= 0 for n in size)
                and all(s >= 0 for s in stride)):
            raise pickle.UnpicklingError(f"load: {self.label!r}: malformed tensor "
                                         f"(size {size!r:.100}, stride {stride!r:.100})")
        array = storage.array
        # NOTE: as_strided reads whatever memory the strides reach: check the bound first.
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if 0 not in size and last >= array.size:
            raise CheckpointError(self.label, f"a tensor of size {tuple(size)} and stride "
                                              f"{tuple(stride)} at offset {storage_offset} "
                                              f"overruns its storage of {array.size}")
        view = np.lib.stride_tricks.as_strided(
            array[storage_offset:] if 0 not in size else array[:0], shape=tuple(size),
            strides=tuple(s * array.itemsize for s in stride), writeable=False)
        return _Rebuilt(array=np.array(view), requires_grad=requires_grad is True)

    def _rebuild_parameter(self, data: Any, requires_grad: Any, backward_hooks: Any
                           ) -> _Rebuilt:
        if not isinstance(data, _Rebuilt):
            raise pickle.UnpicklingError(f"load: {self.label!r}: malformed parameter")
        return _Rebuilt(array=data.array, requires_grad=requires_grad is True)

    def _encode(self, text: Any, encoding: Any = "utf-8") -> bytes:
        if not (isinstance(text, str) and encoding in ("latin1", "latin-1")):
            raise pickle.UnpicklingError(f"load: {self.label!r}: _codecs.encode is allowed "
                                         "only for protocol 2's bytes (latin1)")
        return text.encode("latin1")


def _ints(values: Any) -> bool:
    return isinstance(values, tuple | list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in values)


def _to_tensors(obj: Any, target: Device, done: dict[int, Any]) -> Any:
    """``obj`` with its rebuilt tensors made dlcore Tensors on ``target``: lists and dicts
    in place (keeping OrderedDict and its ``_metadata``), tuples anew. ``done`` maps the ids
    of objects already seen to their results, for shared and self-containing parts."""
    if id(obj) in done:
        return done[id(obj)]
    if isinstance(obj, _Rebuilt):
        tensor = as_tensor(obj.array, device=target)
        done[id(obj)] = tensor.requires_grad_() if obj.requires_grad else tensor
    elif isinstance(obj, list):
        done[id(obj)] = obj
        obj[:] = [_to_tensors(v, target, done) for v in obj]
    elif isinstance(obj, dict):
        done[id(obj)] = obj
        for key, value in obj.items():
            obj[key] = _to_tensors(value, target, done)
    elif isinstance(obj, tuple | set | frozenset):  # a set of tensors is torch-hashable
        done[id(obj)] = type(obj)(_to_tensors(v, target, done) for v in obj)
    else:  # plain values
        return obj
    return done[id(obj)]


def _load_torch(source: Path | BytesIO, label: str, target: Device | None) -> Any:
    """The object a ``torch.save`` zip checkpoint holds, its tensors as dlcore Tensors on
    ``target`` (default cpu), read with :class:`_TorchUnpickler`; torch is not imported."""
    try:
        with zipfile.ZipFile(source) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")
                       and n.count("/") == 1]
            if not pickles:
                raise CheckpointError(label, "a zip archive without <name>/data.pkl: not a "
                                             "PyTorch checkpoint")
            prefix = pickles[0][:-len("data.pkl")]
            names = set(archive.namelist())
            byteorder = "little"  # files from before PyTorch 1.10 have no byteorder record
            if prefix + "byteorder" in names:
                byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace")
            if byteorder not in ("little", "big"):
                raise CheckpointError(label, f"unknown byteorder {byteorder!r:.40}")
            obj = _TorchUnpickler(archive, prefix, byteorder, label).load()
            return _to_tensors(obj, target or Device("cpu"), {})
    except (CheckpointError, pickle.UnpicklingError):
        raise
    except Exception as exc:  # BadZipFile, a missing storage (KeyError), EOFError, ...
        raise CheckpointError(label, f"not a readable PyTorch checkpoint "
                                     f"({type(exc).__name__}: {exc})") from exc


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
