"""ShardDataset: stream a dataset larger than memory from ``.npy`` shards on disk.

Layout: one directory holding one ``.npy`` file per field per shard, named
``<field>_<shard>.npy`` with the shard number in five or more digits from ``00000``::

    data/x_00000.npy  data/y_00000.npy     # shard 0: rows 0.. of x and of y
    data/x_00001.npy  data/y_00001.npy     # shard 1
    ...

Within a shard every field has the same number of rows, and row ``i`` of each field
together is one sample; shards may differ in length. Anything that follows the naming
works (``numpy.save`` in a loop over data generated piecewise); :func:`write_shards` does
it for arrays in memory or ``numpy.memmap`` arrays.

Order and memory: each epoch visits the shards in a random order, reads each in chunks of
about 4 MiB from a memory map, and shuffles samples through a buffer of ``buffer_size``
(each incoming sample takes the place of a randomly chosen buffered one, which is
yielded). Resident memory is about ``buffer_size`` samples plus one chunk, whatever the
dataset's size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import random as _random
from ..device import Device
from .dataset import IterableDataset
from .sampler import GeneratorLike, numpy_generator

_SHARD_FILE = re.compile(r"^(?P<field>.+)_(?P<shard>\d{5,})\.npy$")
CHUNK_BYTES = 4 << 20


def write_shards(directory: str | Path, arrays: Mapping[str, np.ndarray],
                 shard_size: int) -> int:
    """Write ``arrays`` (field name -> array, equal first dimensions) as shards of
    ``shard_size`` rows in ``directory``; returns the number of shards.

    >>> write_shards(tmp, {"x": np.zeros((10, 3)), "y": np.arange(10)}, shard_size=4)
    3
    """
    if not arrays:
        raise ValueError("write_shards: no arrays given")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"write_shards: shard_size must be a positive int, got {shard_size!r}")
    lengths = {name: len(arr) for name, arr in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"write_shards: arrays must have the same length, got {lengths}")
    for name in arrays:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"write_shards: field name {name!r} must be a plain file-name "
                             "part (letters, digits, _ . -)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = next(iter(lengths.values()))
    count = math.ceil(n / shard_size)
    for shard in range(count):
        rows = slice(shard * shard_size, (shard + 1) * shard_size)
        for name, arr in arrays.items():
            np.save(directory / f"{name}_{shard:05d}.npy", np.ascontiguousarray(arr[rows]))
    return count


class ShardDataset(IterableDataset):
    """Samples (a tuple of one NumPy row per field) streamed from the shards in
    ``directory`` (layout in the module docstring).

    ``fields`` picks and orders the fields (default: all found, sorted by name).
    ``shuffle=False`` reads shards and rows in order (for evaluation). The order is
    reproducible: drawn from ``generator`` (a seed, :class:`~dlcore.data.Generator` or
    ``numpy.random.Generator``), or from dlcore's cpu generator; a new order each epoch.
    """

    def __init__(self, directory: str | Path, fields: Sequence[str] | None = None,
                 buffer_size: int = 1024, shuffle: bool = True,
                 generator: GeneratorLike = None) -> None:
        if not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"ShardDataset: buffer_size must be a positive int, "
                             f"got {buffer_size!r}")
        self.directory = Path(directory)
        self.buffer_size, self.shuffle = buffer_size, shuffle
        self._generator = numpy_generator(generator)
        found = _find_shards(self.directory)
        self.fields = tuple(sorted(found) if fields is None else fields)
        missing = [f for f in self.fields if f not in found]
        if missing:
            raise ValueError(f"ShardDataset: no shards for field(s) {missing} in "
                             f"{self.directory} (found {sorted(found)})")
        numbers = sorted(found[self.fields[0]])
        for field in self.fields:
            if sorted(found[field]) != numbers:
                raise ValueError(f"ShardDataset: field {field!r} has shards "
                                 f"{sorted(found[field])}, field {self.fields[0]!r} has "
                                 f"{numbers} in {self.directory}")
        self._paths = [tuple(found[field][k] for field in self.fields) for k in numbers]
        self._rows = [_shard_rows(paths) for paths in self._paths]
        heads = [np.load(path, mmap_mode="r") for path in self._paths[0]]
        row_bytes = sum(h.dtype.itemsize * math.prod(h.shape[1:]) for h in heads)
        self._chunk_rows = max(1, CHUNK_BYTES // max(1, row_bytes))

    def __len__(self) -> int:
        return sum(self._rows)

    @property
    def num_shards(self) -> int:
        return len(self._paths)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        # The shard order is drawn here, when iteration starts, not on the first sample.
        gen = self._generator or _random.generator_for(Device("cpu"))
        order = gen.permutation(self.num_shards) if self.shuffle else range(self.num_shards)
        return self._samples([int(k) for k in order], gen)

    def _samples(self, order: list[int], gen: np.random.Generator) -> Iterator[tuple]:
        buffer: list[tuple] = []
        for shard in order:
            for chunk in self._chunks(shard):
                # NOTE: copy each row: a view would keep its whole chunk alive in the buffer.
                samples = [tuple(col[r].copy() for col in chunk) for r in range(len(chunk[0]))]
                if not self.shuffle:
                    yield from samples
                    continue
                picks = gen.integers(0, self.buffer_size, size=len(samples)).tolist()
                for sample, j in zip(samples, picks, strict=True):
                    if len(buffer) < self.buffer_size:
                        buffer.append(sample)
                    else:
                        yield buffer[j]
                        buffer[j] = sample
        for j in gen.permutation(len(buffer)).tolist():
            yield buffer[j]

    def _chunks(self, shard: int) -> Iterator[tuple[np.ndarray, ...]]:
        rows, step = self._rows[shard], self._chunk_rows
        for start in range(0, rows, step):
            yield tuple(_read_rows(path, start, start + step) for path in self._paths[shard])


def _read_rows(path: Path, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a ``.npy`` file, copied out of a memory map.

    NOTE: the pages a mapping touches count toward the process's resident memory until it
    is unmapped, so each chunk gets its own short-lived mapping (opening one costs tens of
    microseconds, against milliseconds to read 4 MiB).
    """
    return np.array(np.load(path, mmap_mode="r")[start:stop])


def _find_shards(directory: Path) -> dict[str, dict[int, Path]]:
    """field -> shard number -> path, for the shard files in ``directory``."""
    if not directory.is_dir():
        raise FileNotFoundError(f"ShardDataset: {directory} is not a directory")
    found: dict[str, dict[int, Path]] = {}
    for path in directory.iterdir():
        match = _SHARD_FILE.match(path.name)
        if match:
            found.setdefault(match["field"], {})[int(match["shard"])] = path
    if not found:
        raise ValueError(f"ShardDataset: no <field>_<shard>.npy files in {directory}")
    return found


def _shard_rows(paths: tuple[Path, ...]) -> int:
    rows = {path.name: np.load(path, mmap_mode="r").shape[0] for path in paths}
    if len(set(rows.values())) != 1:
        raise ValueError(f"ShardDataset: fields of one shard differ in length: {rows}")
    return next(iter(rows.values()))
