"""Samplers: which dataset indices a DataLoader visits, and in what order.

Shuffling is reproducible: every random draw comes from a seeded generator, given as a
:class:`Generator`, an ``int`` seed or a ``numpy.random.Generator``; without one it comes
from dlcore's cpu generator, so ``dlcore.manual_seed`` makes it reproducible too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized
from typing import Any, Generic, TypeVar

import numpy as np

from .. import random as _random
from ..device import Device


class Generator:
    """A seedable source of shuffles for data loading, like ``torch.Generator``.

    Keeping data-order randomness apart from dlcore's global generator means a change in
    model initialisation does not change which batches the model sees.

    >>> g = Generator().manual_seed(0)
    >>> g.permutation(4).tolist() == Generator(0).permutation(4).tolist()
    True
    """

    def __init__(self, seed: int | None = None) -> None:
        self._seed = seed
        self.numpy = np.random.Generator(np.random.PCG64(seed))

    def manual_seed(self, seed: int) -> Generator:
        """Restart the stream from ``seed``; returns ``self`` (as PyTorch's does)."""
        self._seed = int(seed)
        self.numpy = np.random.Generator(np.random.PCG64(self._seed))
        return self

    def initial_seed(self) -> int | None:
        return self._seed

    def get_state(self) -> dict[str, Any]:
        """The PCG64 state (a dict of ints): save it with ``dlcore.save`` to resume."""
        return dict(self.numpy.bit_generator.state)

    def set_state(self, state: dict[str, Any]) -> None:
        self.numpy.bit_generator.state = state

    def permutation(self, n: int) -> np.ndarray:
        return self.numpy.permutation(n)


GeneratorLike = Generator | np.random.Generator | int | None


def numpy_generator(generator: GeneratorLike) -> np.random.Generator | None:
    """The NumPy generator behind ``generator``; ``None`` means "use dlcore's cpu generator
    at draw time" (looked up then, because ``manual_seed`` replaces it)."""
    if generator is None:
        return None
    if isinstance(generator, Generator):
        return generator.numpy
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, int | np.integer) and not isinstance(generator, bool):
        return np.random.Generator(np.random.PCG64(int(generator)))
    raise TypeError(f"generator: expected a dlcore.data.Generator, an int seed or a "
                    f"numpy.random.Generator, got {type(generator).__name__}")


def draw_permutation(n: int, generator: np.random.Generator | None) -> np.ndarray:
    """A permutation of ``range(n)`` from ``generator``, or dlcore's cpu generator."""
    gen = generator if generator is not None else _random.generator_for(Device("cpu"))
    return gen.permutation(n)


T_co = TypeVar("T_co", covariant=True)


class Sampler(Generic[T_co]):
    """Base class: an iterable of dataset indices (``Sampler[int]``), or of batches of them
    (``Sampler[list[int]]``), with a length."""

    def __iter__(self) -> Iterator[T_co]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


class SequentialSampler(Sampler[int]):
    """``0, 1, ..., len(data_source) - 1``."""

    def __init__(self, data_source: Sized) -> None:
        self.data_source = data_source

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.data_source)))

    def __len__(self) -> int:
        return len(self.data_source)


class RandomSampler(Sampler[int]):
    """A fresh permutation each epoch, drawn from ``generator``.

    NOTE: the permutation is drawn when ``iter()`` is called, not lazily on the first
    ``next()``: the DataLoader calls ``iter()`` in the consumer's thread, so the draw
    happens at a fixed point relative to the user's other draws, never racing them from
    a worker thread.
    """

    def __init__(self, data_source: Sized, generator: GeneratorLike = None) -> None:
        self.data_source = data_source
        self.generator = numpy_generator(generator)

    def __iter__(self) -> Iterator[int]:
        return iter(draw_permutation(len(self.data_source), self.generator).tolist())

    def __len__(self) -> int:
        return len(self.data_source)


class BatchSampler(Sampler[list[int]]):
    """Groups a sampler's indices into lists of ``batch_size`` (the last one shorter
    unless ``drop_last``)."""

    def __init__(self, sampler: Sampler[int] | Sequence[int], batch_size: int,
                 drop_last: bool) -> None:
        check_batch_size(batch_size)
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def __iter__(self) -> Iterator[list[int]]:
        return chunks(iter(self.sampler), self.batch_size, self.drop_last)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def chunks(items: Iterator[Any], size: int, drop_last: bool) -> Iterator[list[Any]]:
    """Lists of ``size`` consecutive items (the last may be shorter unless ``drop_last``)."""
    while True:
        chunk = []
        for item in items:
            chunk.append(item)
            if len(chunk) == size:
                break
        if len(chunk) == size or (chunk and not drop_last):
            yield chunk
        if len(chunk) < size:
            return
