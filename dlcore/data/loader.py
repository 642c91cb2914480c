"""DataLoader: batches from a dataset, prepared in background threads while the model runs.

Pipeline (one DataLoader iteration):

    consumer thread: iter(loader) -> draws the epoch's order, starts the threads
    loader threads:  take the next batch's indices (in order, under a lock)
                     -> fetch samples -> collate -> start the copy to ``device``
    consumer thread: next() -> the batches in order -> wait for the copy -> hand out

At most ``prefetch`` batches are in flight (being built or waiting), which bounds memory.
Threads, not processes: NumPy releases the GIL in copies and most array work, and threads
need no pickling of datasets. An exception in a loader thread is re-raised by ``next()``
with its original traceback; leaving the loop early (``break``, an exception, or dropping
the iterator) stops the threads.

Threads budget: the loader threads and NumPy's BLAS threads share the machine's CPUs. While
an iteration's loader threads run, BLAS is held to at most ``max(1, cpus - loader
threads)`` threads and given its count back when the iteration ends
(:func:`dlcore.threads.loader_threads_started`), so the two never ask for more CPUs than the
process may use; a thread count the user chose (``dlcore.set_num_threads``,
``OMP_NUM_THREADS`` and the like) is left alone.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .. import threads as _threads
from ..device import Device
from .collate import default_collate
from .dataset import IterableDataset
from .inspect import check_finite as check_batch_finite
from .sampler import (BatchSampler, GeneratorLike, RandomSampler, Sampler, SequentialSampler,
                      check_batch_size, chunks)
from .transfer import Staged, make_transfer


class DataLoader:
    """Iterate over ``dataset`` in batches of ``batch_size``.

    ``shuffle`` draws a new order each epoch from ``generator`` (a
    :class:`~dlcore.data.Generator`, an int seed or a ``numpy.random.Generator``), or,
    without one, from dlcore's cpu generator, so ``dlcore.manual_seed`` makes it
    reproducible. ``device`` is where batches land (``None``: they stay on the cpu);
    on ``cuda`` they go through pinned memory and a separate stream. ``num_workers``
    threads build batches (``0`` still uses one background thread); ``prefetch=0`` builds
    each batch in the calling thread instead, which is handy under a debugger.

    >>> ds = TensorDataset(dlcore.arange(10))
    >>> [b[0].tolist() for b in DataLoader(ds, batch_size=4)]
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    """

    def __init__(self, dataset: Any, batch_size: int = 1, shuffle: bool = False,
                 drop_last: bool = False, collate_fn: Callable[[list], Any] | None = None,
                 generator: GeneratorLike = None, num_workers: int = 0, prefetch: int = 2,
                 device: str | Device | None = None,
                 sampler: Sampler[int] | Sequence[int] | None = None, *,
                 pin_memory: bool = False, persistent_workers: bool = False,
                 worker_init_fn: Callable[[int], None] | None = None,
                 prefetch_factor: int | None = None, check_finite: bool = False) -> None:
        """PyTorch's names, with dlcore's meaning: workers are threads (``num_workers`` of
        them; ``worker_init_fn(i)`` runs in worker ``i`` before it loads anything);
        ``prefetch_factor`` batches per worker are prepared ahead (``prefetch`` counts them
        in total); batches for a ``device="cuda"`` loader always go through pinned memory,
        so ``pin_memory`` changes nothing (dlcore has no pinned CPU tensors); worker
        threads are cheap to start, so ``persistent_workers`` is accepted and each epoch
        starts its own. ``check_finite=True`` (dlcore's) rejects a batch whose floating-point
        tensors hold NaN or Inf with a ValueError naming the samples' dataset indices."""
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"DataLoader: num_workers must be an int >= 0, got {num_workers!r}")
        if persistent_workers and num_workers == 0:
            raise ValueError("DataLoader: persistent_workers option needs num_workers > 0")
        if prefetch_factor is not None:
            if num_workers == 0:
                raise ValueError("DataLoader: prefetch_factor option could only be specified "
                                 "in multiprocessing; let num_workers > 0 to enable it")
            if not isinstance(prefetch_factor, int) or prefetch_factor < 1:
                raise ValueError(f"DataLoader: prefetch_factor must be an int >= 1, got "
                                 f"{prefetch_factor!r}")
            prefetch = prefetch_factor * num_workers
        if worker_init_fn is not None and not callable(worker_init_fn):
            raise TypeError("DataLoader: worker_init_fn must be callable")
        self.pin_memory, self.persistent_workers = bool(pin_memory), bool(persistent_workers)
        self.worker_init_fn = worker_init_fn
        self.check_finite = bool(check_finite)
        if not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"DataLoader: prefetch must be an int >= 0, got {prefetch!r}")
        if prefetch == 0 and num_workers > 0:
            raise ValueError(f"DataLoader: prefetch=0 loads in the calling thread, so "
                             f"num_workers must be 0, got {num_workers}")
        self.dataset = dataset
        self.batch_size, self.drop_last = batch_size, drop_last
        self.collate_fn = default_collate if collate_fn is None else collate_fn
        self.num_workers, self.prefetch = num_workers, prefetch
        self.device = None if device is None else Device(device)
        self.batch_sampler: BatchSampler | None = None
        if isinstance(dataset, IterableDataset):
            if shuffle or sampler is not None:
                raise ValueError("DataLoader: an IterableDataset sets its own order; shuffle "
                                 "and sampler are for map-style datasets")
            check_batch_size(batch_size)
            return
        if shuffle and sampler is not None:
            raise ValueError("DataLoader: give either shuffle=True or a sampler, not both")
        if sampler is None:
            sampler = (RandomSampler(dataset, generator) if shuffle
                       else SequentialSampler(dataset))
        self.sampler = sampler
        self.batch_sampler = BatchSampler(sampler, batch_size, drop_last)

    def __len__(self) -> int:
        """Number of batches per epoch (an IterableDataset needs a ``__len__``)."""
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        transfer = make_transfer(self.device)
        if self.batch_sampler is None:
            work = chunks(iter(self.dataset), self.batch_size, self.drop_last)
            build = self.collate_fn
        else:
            work = iter(self.batch_sampler)
            dataset, collate = self.dataset, self.collate_fn

            def build(indices: list[int]) -> Any:
                return collate([dataset[i] for i in indices])

        check, indexed = self.check_finite, self.batch_sampler is not None

        def make_batch(item: Any) -> Staged:
            batch = build(item)
            if check:  # before the copy to the device: the batch is still on the host
                check_batch_finite(batch, item if indexed else None)
            return Staged(batch, None, ()) if transfer is None else transfer.prepare(batch)

        if self.prefetch == 0:
            return _InlineIterator(work, make_batch, transfer)
        count = max(1, self.num_workers)
        release = _threads.loader_threads_started(count)  # BLAS makes room for them
        try:
            pipeline = _Pipeline(work, make_batch, count, self.prefetch, self.worker_init_fn)
        except BaseException:
            release()
            raise
        return _ThreadedIterator(pipeline, transfer, release)


class _Pipeline:
    """Loader threads and the ordered hand-over of their batches.

    Threads take work items in order under ``_work_lock`` (batch ``n`` is the ``n``-th item)
    and file results by number, so the consumer gets batches in order whichever thread
    finishes first. A thread reserves one of ``prefetch`` slots before taking work; the
    consumer frees a slot per batch it takes.
    """

    def __init__(self, work: Iterator[Any], make_batch: Callable[[Any], Staged],
                 threads: int, prefetch: int,
                 worker_init_fn: Callable[[int], None] | None = None) -> None:
        self._work, self._make_batch, self._prefetch = work, make_batch, prefetch
        self._worker_init_fn = worker_init_fn
        self._work_lock = threading.Lock()
        self._cond = threading.Condition()
        self._results: dict[int, tuple[bool, Any]] = {}
        self._taken = 0  # work items taken (guarded by _work_lock)
        self._delivered = 0
        self._in_flight = 0  # slots reserved by threads and not yet freed by the consumer
        self._end: int | None = None  # number of batches, once the work ran out
        self._stopped = False
        self.threads = [threading.Thread(target=self._run, args=(i,),
                                         name=f"dlcore-loader-{i}", daemon=True)
                         for i in range(threads)]
        for thread in self.threads:
            thread.start()

    def _run(self, worker: int) -> None:
        if self._worker_init_fn is not None:
            try:
                self._worker_init_fn(worker)
            except BaseException as exc:  # reported to the consumer like a batch's failure
                self._fail_init(exc)
                return
        while True:
            with self._cond:
                while not self._done() and self._in_flight >= self._prefetch:
                    self._cond.wait()
                if self._done():
                    return
                self._in_flight += 1
            with self._work_lock:
                n = self._taken
                try:
                    item: tuple[bool, Any] | None = (True, next(self._work))
                except StopIteration:
                    item = None
                except BaseException as exc:  # the sampler or an IterableDataset failed
                    item = (False, exc)
                if item is not None:
                    self._taken += 1
            if item is None:
                with self._cond:
                    self._in_flight -= 1
                    self._end = n if self._end is None else self._end
                    self._cond.notify_all()
                return
            if item[0]:
                try:
                    item = (True, self._make_batch(item[1]))
                except BaseException as exc:
                    item = (False, exc)
            with self._cond:
                self._results[n] = item
                self._cond.notify_all()

    def _fail_init(self, exc: BaseException) -> None:
        """A worker's ``worker_init_fn`` raised: file it as the next batch's failure, so the
        consumer raises it where it would have got that batch."""
        with self._work_lock:
            n = self._taken
            self._taken += 1
        with self._cond:
            self._in_flight += 1  # the slot the consumer frees when it takes this result
            self._results[n] = (False, exc)
            self._cond.notify_all()

    def _done(self) -> bool:
        return self._stopped or self._end is not None

    def get(self) -> tuple[bool, Any]:
        """``(True, staged batch)`` or ``(False, exception)`` for the next batch in order;
        raises StopIteration at the end."""
        with self._cond:
            n = self._delivered
            while n not in self._results and not self._stopped and (
                    self._end is None or n < self._end):
                self._cond.wait()
            if n not in self._results:
                raise StopIteration
            self._delivered += 1
            self._in_flight -= 1
            self._cond.notify_all()
            return self._results.pop(n)

    def stop(self) -> None:
        """Tell the threads to finish: each returns once its current batch is done."""
        with self._cond:
            self._stopped = True
            self._results.clear()
            self._cond.notify_all()


class _ThreadedIterator:
    """The consumer's side of a :class:`_Pipeline`."""

    def __init__(self, pipeline: _Pipeline, transfer: Any,
                 release: Callable[[], None] = lambda: None) -> None:
        self._pipeline, self._transfer = pipeline, transfer
        # NOTE: the threads hold the pipeline, never this iterator, so dropping the
        # iterator (a ``break`` out of the for loop) runs the finalizer and stops them;
        # it also gives BLAS its threads back (``release``).
        self._stop = weakref.finalize(self, _stop_pipeline, pipeline, release)

    def __iter__(self) -> _ThreadedIterator:
        return self

    def __next__(self) -> Any:
        try:
            ok, value = self._pipeline.get()
        except StopIteration:
            self._stop()
            raise
        if not ok:
            self._stop()
            raise value
        return value.batch if self._transfer is None else self._transfer.deliver(value)

    def close(self) -> None:
        """Stop the loader threads now (also done when the iterator is dropped)."""
        self._stop()


def _stop_pipeline(pipeline: _Pipeline, release: Callable[[], None]) -> None:
    try:
        pipeline.stop()
    finally:
        release()


class _InlineIterator:
    """``prefetch=0``: each batch is built in the consumer's thread on ``next()``."""

    def __init__(self, work: Iterator[Any], make_batch: Callable[[Any], Staged],
                 transfer: Any) -> None:
        self._work, self._make_batch, self._transfer = work, make_batch, transfer

    def __iter__(self) -> _InlineIterator:
        return self

    def __next__(self) -> Any:
        staged = self._make_batch(next(self._work))
        return staged.batch if self._transfer is None else self._transfer.deliver(staged)
