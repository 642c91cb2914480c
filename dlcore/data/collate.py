"""Collation: turning a list of samples into one batch.

A batch has the structure of one sample with every leaf stacked along a new first
dimension: tuples stay tuples (namedtuples keep their type), dicts stay dicts, lists stay
lists, and numbers and arrays become dlcore Tensors, as ``torch.utils.data.default_collate``
does. Strings and ``None`` are gathered into lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..device import Device
from ..tensor import Tensor


def default_collate(batch: Sequence[Any]) -> Any:
    """Stack a list of samples into a batch.

    >>> b = default_collate([(np.zeros(3), 1), (np.ones(3), 2)])
    >>> b[0].shape, b[1].tolist()
    ((2, 3), [1, 2])
    """
    if len(batch) == 0:
        raise ValueError("default_collate: got an empty batch")
    first = batch[0]
    if isinstance(first, Tensor):
        return _stack_tensors(batch)
    if isinstance(first, np.ndarray | np.generic):
        if first.dtype.kind in "OUS":
            raise TypeError(f"default_collate: cannot stack arrays of dtype {first.dtype}")
        return Tensor._make(np.stack(batch), Device("cpu"))
    if isinstance(first, bool):
        return Tensor._make(np.array(batch, dtype=np.bool_), Device("cpu"))
    if isinstance(first, int):
        return Tensor._make(np.array(batch, dtype=np.int64), Device("cpu"))
    if isinstance(first, float):
        # NOTE: float64, as PyTorch; cast in the model or return float32 arrays instead.
        return Tensor._make(np.array(batch, dtype=np.float64), Device("cpu"))
    if isinstance(first, str | bytes) or first is None:
        return list(batch)
    if isinstance(first, Mapping):
        return {key: default_collate([sample[key] for sample in batch]) for key in first}
    if isinstance(first, tuple | list):
        sizes = {len(sample) for sample in batch}
        if len(sizes) != 1:
            raise ValueError(f"default_collate: samples have different lengths {sorted(sizes)}")
        fields = [default_collate(list(column)) for column in zip(*batch, strict=True)]
        if isinstance(first, list):
            return fields
        if hasattr(first, "_fields"):  # namedtuple
            return type(first)(*fields)
        return tuple(fields)
    raise TypeError(f"default_collate: samples must be tensors, arrays, numbers, strings, "
                    f"dicts, tuples or lists; got {type(first).__name__}")


def _stack_tensors(batch: Sequence[Tensor]) -> Tensor:
    device = batch[0].device
    if any(t.device is not device for t in batch):
        raise ValueError(f"default_collate: tensors on different devices "
                         f"{sorted({str(t.device) for t in batch})}")
    shapes = {tuple(t.shape) for t in batch}
    if len(shapes) != 1:
        raise ValueError(f"default_collate: cannot stack tensors of shapes {sorted(shapes)}")
    with device.use():
        return Tensor._make(device.xp.stack([t._data for t in batch]), device)
