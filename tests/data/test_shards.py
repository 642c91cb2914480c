"""ShardDataset: layout, exactly-once epochs, seeded order, and measured bounded memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import dlcore
from dlcore.data import DataLoader, ShardDataset, write_shards


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    n = 1000
    write_shards(tmp_path, {"x": np.arange(n * 3, dtype=np.float32).reshape(n, 3),
                            "y": np.arange(n)}, shard_size=128)
    return tmp_path


def _ids(dataset: ShardDataset) -> list[int]:
    return [int(y) for _, y in dataset]


def test_write_shards_layout(shards: Path) -> None:
    names = sorted(p.name for p in shards.iterdir())
    assert names[:2] == ["x_00000.npy", "x_00001.npy"] and len(names) == 16
    assert np.load(shards / "y_00007.npy").tolist() == list(range(896, 1000))
    with pytest.raises(ValueError, match="same length"):
        write_shards(shards, {"a": np.zeros(3), "b": np.zeros(4)}, 2)


def test_every_sample_exactly_once_per_epoch(shards: Path) -> None:
    ds = ShardDataset(shards, buffer_size=50, generator=0)
    assert len(ds) == 1000 and ds.num_shards == 8 and ds.fields == ("x", "y")
    first, second = _ids(ds), _ids(ds)
    assert sorted(first) == sorted(second) == list(range(1000))
    assert first != second  # a new order each epoch
    x, y = next(iter(ds))
    np.testing.assert_array_equal(x, np.arange(3 * int(y), 3 * int(y) + 3))


def test_order_is_seeded(shards: Path) -> None:
    assert _ids(ShardDataset(shards, generator=1)) == _ids(ShardDataset(shards, generator=1))
    assert _ids(ShardDataset(shards, generator=1)) != _ids(ShardDataset(shards, generator=2))
    dlcore.manual_seed(4)
    unseeded = _ids(ShardDataset(shards))
    dlcore.manual_seed(4)
    assert _ids(ShardDataset(shards)) == unseeded
    assert _ids(ShardDataset(shards, shuffle=False)) == list(range(1000))


def test_shuffle_mixes_across_shards(shards: Path) -> None:
    ids = np.array(_ids(ShardDataset(shards, buffer_size=200, generator=0)))
    # not shard after shard: the first 128 samples come from several shards
    assert len(set((ids[:128] // 128).tolist())) > 1


def test_through_data_loader(shards: Path) -> None:
    loader = DataLoader(ShardDataset(shards, fields=["y"], generator=0), batch_size=100,
                        num_workers=2, device="emu")
    assert len(loader) == 10
    batches = [b[0] for b in loader]
    assert all(str(b.device) == "emu" for b in batches)
    assert sorted(np.concatenate([b.numpy() for b in batches]).tolist()) == list(range(1000))


def test_layout_errors(tmp_path: Path, shards: Path) -> None:
    with pytest.raises(ValueError, match="no <field>_<shard>.npy"):
        ShardDataset(_empty_dir(tmp_path))
    with pytest.raises(ValueError, match="no shards for field"):
        ShardDataset(shards, fields=["z"])
    (shards / "y_00007.npy").unlink()
    with pytest.raises(ValueError, match="has shards"):
        ShardDataset(shards)


def _empty_dir(tmp_path: Path) -> Path:
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


# Streams the shards through a DataLoader and reports the growth of peak resident memory
# (VmHWM, reset through /proc/self/clear_refs); then, as a control, touches every page of
# the shards through long-lived memory maps, to show such a read would blow the budget.
_STREAM = """
import sys
from pathlib import Path
import numpy as np
from dlcore.data import DataLoader, ShardDataset

def status(key):
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith(key)).split()[1]) * 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

loader = DataLoader(ShardDataset(sys.argv[1], buffer_size=256, generator=0), batch_size=64,
                    num_workers=1)
seen = np.zeros(int(sys.argv[2]), dtype=np.int64)
reset_peak()
base = status("VmRSS")
for x, ids in loader:
    seen[ids.numpy()] += 1
    assert (x.numpy()[:, 0] == ids.numpy()).all()
streaming = status("VmHWM") - base
assert (seen == 1).all(), "every sample exactly once"
reset_peak()
base = status("VmRSS")
maps = [np.load(p, mmap_mode="r") for p in sorted(Path(sys.argv[1]).glob("x_*.npy"))]
total = sum(float(m.sum()) for m in maps)
naive = status("VmHWM") - base
print(streaming, naive)
"""


def test_streaming_memory_is_bounded_by_measurement(tmp_path: Path) -> None:
    rows_per_shard, features, shards = 1024, 4096, 16  # 16 MiB shards, 256 MiB in all
    for k in range(shards):
        ids = np.arange(k * rows_per_shard, (k + 1) * rows_per_shard)
        np.save(tmp_path / f"x_{k:05d}.npy",
                np.repeat(ids.astype(np.float32)[:, None], features, axis=1))
        np.save(tmp_path / f"y_{k:05d}.npy", ids)
    budget = 64 << 20
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert on_disk > 4 * budget
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_STREAM), str(tmp_path),
                          str(rows_per_shard * shards)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    streaming, naive = (int(v) for v in out.stdout.split())
    assert streaming < budget, f"streaming grew peak RSS by {streaming / 2**20:.0f} MiB"
    print(f"peak RSS growth: streaming {streaming >> 20} MiB, naive {naive >> 20} MiB")
    assert naive > budget  # the measurement does see memory-mapped pages
