"""DataLoader: order and seeding, batching, devices, threads, errors, early exit."""

from __future__ import annotations

import threading
import time
import traceback

import numpy as np
import pytest

import dlcore
from dlcore.data import DataLoader, Dataset, Generator, IterableDataset, TensorDataset


def _dataset(n: int = 23) -> TensorDataset:
    return TensorDataset(dlcore.arange(n), dlcore.arange(n) * 10)


def _ids(loader: DataLoader) -> list[list[int]]:
    return [batch[0].tolist() for batch in loader]


def _loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dlcore-loader")]


def _wait_for_no_loader_threads(timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _loader_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _loader_threads()


def test_sequential_batches_len_and_drop_last() -> None:
    loader = DataLoader(_dataset(), batch_size=5)
    assert len(loader) == 5
    assert _ids(loader) == [list(range(i, min(i + 5, 23))) for i in range(0, 23, 5)]
    dropping = DataLoader(_dataset(), batch_size=5, drop_last=True)
    assert len(dropping) == 4 and [len(b) for b in _ids(dropping)] == [5, 5, 5, 5]
    x, y = next(iter(loader))
    assert (y.numpy() == x.numpy() * 10).all()


@pytest.mark.parametrize("workers", [0, 3])
def test_seeded_shuffle_is_reproducible(workers: int) -> None:
    def run(generator: object) -> list[list[int]]:
        loader = DataLoader(_dataset(), batch_size=4, shuffle=True, generator=generator,
                            num_workers=workers)
        return _ids(loader) + _ids(loader)  # two epochs

    first = run(Generator(0))
    assert first == run(0) and first != run(1)
    assert first[:6] != first[6:]  # a new order each epoch
    assert sorted(i for b in first[:6] for i in b) == list(range(23))


def test_shuffle_without_generator_follows_manual_seed() -> None:
    dlcore.manual_seed(3)
    first = _ids(DataLoader(_dataset(), batch_size=4, shuffle=True))
    dlcore.manual_seed(3)
    assert _ids(DataLoader(_dataset(), batch_size=4, shuffle=True)) == first


def test_many_workers_keep_order() -> None:
    class Jittery(Dataset):
        def __getitem__(self, i: int) -> int:
            time.sleep(0.002 * (i % 3))
            return i

        def __len__(self) -> int:
            return 40

    loader = DataLoader(Jittery(), batch_size=3, num_workers=4, prefetch=6)
    assert [b.tolist() for b in loader] == [list(range(i, min(i + 3, 40)))
                                            for i in range(0, 40, 3)]


def test_prefetch_bounds_batches_in_flight() -> None:
    fetched: list[int] = []

    class Counting(Dataset):
        def __getitem__(self, i: int) -> int:
            fetched.append(i)
            return i

        def __len__(self) -> int:
            return 100

    it = iter(DataLoader(Counting(), batch_size=2, num_workers=2, prefetch=3))
    next(it)
    time.sleep(0.2)
    assert len(fetched) <= (1 + 3) * 2  # the batch taken plus `prefetch` more
    it.close()
    _wait_for_no_loader_threads()


def test_inline_loading_with_prefetch_zero() -> None:
    loader = DataLoader(_dataset(), batch_size=10, prefetch=0)
    before = len(_loader_threads())
    assert _ids(loader)[0] == list(range(10))
    assert len(_loader_threads()) == before
    with pytest.raises(ValueError, match="prefetch=0"):
        DataLoader(_dataset(), prefetch=0, num_workers=2)


def test_batches_land_on_device(device: str) -> None:
    loader = DataLoader(_dataset(), batch_size=8, device=device)
    for x, y in loader:
        assert str(x.device).startswith(device) and str(y.device).startswith(device)
    assert _ids(loader)[1] == list(range(8, 16))


def test_dict_samples_collate_through_loader() -> None:
    class Records(Dataset):
        def __getitem__(self, i: int) -> dict:
            return {"x": np.full(3, i, np.float32), "pair": (i, -i)}

        def __len__(self) -> int:
            return 5

    batch = next(iter(DataLoader(Records(), batch_size=5, device="emu")))
    assert batch["x"].shape == (5, 3) and str(batch["x"].device) == "emu"
    assert isinstance(batch["pair"], tuple) and batch["pair"][1].tolist() == [0, -1, -2, -3, -4]


def test_custom_collate_and_sampler() -> None:
    loader = DataLoader(_dataset(), batch_size=2, sampler=[5, 3, 1],
                        collate_fn=lambda samples: [int(s[0].item()) for s in samples])
    assert list(loader) == [[5, 3], [1]] and len(loader) == 2
    with pytest.raises(ValueError, match="not both"):
        DataLoader(_dataset(), shuffle=True, sampler=[0])


class _Broken(Dataset):
    def __getitem__(self, i: int) -> int:
        if i == 7:
            raise KeyError(f"sample {i} is broken")
        return i

    def __len__(self) -> int:
        return 20


@pytest.mark.parametrize("workers", [0, 2])
def test_worker_exception_reraised_with_original_traceback(workers: int) -> None:
    loader = DataLoader(_Broken(), batch_size=2, num_workers=workers)
    seen = []
    with pytest.raises(KeyError, match="sample 7 is broken") as info:
        for batch in loader:
            seen.append(batch.tolist())
    assert seen == [[0, 1], [2, 3], [4, 5]]  # the batches before the failure, in order
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "__getitem__" in frames
    _wait_for_no_loader_threads()


def test_early_break_stops_threads() -> None:
    class Slow(Dataset):
        def __getitem__(self, i: int) -> int:
            time.sleep(0.001)
            return i

        def __len__(self) -> int:
            return 10_000

    for _ in range(3):
        for i, _batch in enumerate(DataLoader(Slow(), batch_size=4, num_workers=3)):
            if i == 2:
                break
    _wait_for_no_loader_threads()


class _Stream(IterableDataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        return iter(np.arange(self.n))

    def __len__(self) -> int:
        return self.n


def test_iterable_dataset_batches() -> None:
    loader = DataLoader(_Stream(10), batch_size=4, num_workers=2)
    assert [b.tolist() for b in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(loader) == 3
    assert len(DataLoader(_Stream(10), batch_size=4, drop_last=True)) == 2
    with pytest.raises(ValueError, match="own order"):
        DataLoader(_Stream(10), shuffle=True)


def test_iterable_dataset_error_is_reraised() -> None:
    class Failing(IterableDataset):
        def __iter__(self):
            yield 1
            raise RuntimeError("stream broke")

    with pytest.raises(RuntimeError, match="stream broke"):
        list(DataLoader(Failing(), batch_size=1))
    _wait_for_no_loader_threads()


def test_argument_validation() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(_dataset(), batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        DataLoader(_dataset(), num_workers=-1)


def test_pytorch_worker_options_have_their_meaning():
    """pin_memory, persistent_workers, worker_init_fn and prefetch_factor, as ported code
    passes them: worker_init_fn runs once in each worker thread before it loads."""
    ds = TensorDataset(dlcore.arange(20.0))
    seen = []
    loader = DataLoader(ds, batch_size=4, num_workers=2, pin_memory=True,
                        persistent_workers=True, prefetch_factor=3,
                        worker_init_fn=lambda i: seen.append((i, threading.current_thread().name)))
    assert [b[0].tolist() for b in loader] == [[4.0 * k + j for j in range(4)] for k in range(5)]
    assert sorted(seen) == [(0, "dlcore-loader-0"), (1, "dlcore-loader-1")]
    assert loader.prefetch == 6  # 3 per worker


def test_worker_init_fn_failure_reaches_the_consumer():
    def bad(worker: int) -> None:
        raise ValueError(f"init {worker} failed")

    with pytest.raises(ValueError, match=r"init \d failed"):
        list(DataLoader(TensorDataset(dlcore.arange(8.0)), batch_size=2, num_workers=2,
                        worker_init_fn=bad))


@pytest.mark.parametrize("options, message", [
    ({"persistent_workers": True}, "persistent_workers option needs num_workers > 0"),
    ({"prefetch_factor": 2}, "prefetch_factor option could only be specified"),
    ({"num_workers": 1, "prefetch_factor": 0}, "prefetch_factor must be an int >= 1"),
])
def test_worker_options_misuse(options, message):
    with pytest.raises(ValueError, match=message):
        DataLoader(TensorDataset(dlcore.arange(4.0)), **options)
