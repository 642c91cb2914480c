"""Behaviour pinned down for survivors of mutation sample k (mutmut over dlcore/io.py,
dlcore/data/inspect.py and dlcore/data/loader.py): each test checks something no test of the
suite checked before, against an independent reference (NumPy, values worked out by hand, or
the documented format), and was seen to fail on its mutant."""

from __future__ import annotations

import re
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import dlcore
from dlcore.data import DataLoader, TensorDataset
from dlcore.data.inspect import inspect

# ---- inspect() ----------------------------------------------------------------------------


def test_inspect_integer_features_of_lone_array_samples() -> None:
    """A dataset whose samples are lone uint8 arrays (features only, no labels) is read
    sample by sample: per-feature ranges are NumPy's min/max, nothing is non-finite, equal
    samples are grouped and there are no label counts."""
    x = np.array([[3, 200, 7], [0, 5, 7], [3, 200, 7], [9, 1, 7]], dtype=np.uint8)
    samples = [x[i] for i in range(len(x))]  # a list is a dataset: len() and [i]
    report = inspect(samples)
    assert report.size == 4 and report.feature_shape == (3,)
    np.testing.assert_array_equal(report.minimum, x.min(axis=0))
    np.testing.assert_array_equal(report.maximum, x.max(axis=0))
    assert report.nan_counts.tolist() == [0, 0, 0] and report.inf_counts.tolist() == [0, 0, 0]
    assert report.nonfinite_samples == []
    assert report.duplicates == [[0, 2]]  # rows 0 and 2 are equal, no other pair is
    assert report.constant_features == [2]  # feature 2 is 7 throughout
    assert report.label_counts is None and report.conflicting == []  # _chunks_64, inspect_116


def test_inspect_nan_and_inf_counts_are_integer_arrays() -> None:
    """nan_counts and inf_counts are counts: integer arrays, one per feature (NaN in
    sample 0 feature 1; +Inf and -Inf in feature 0 of samples 1 and 2)."""
    x = np.array([[1.0, np.nan], [np.inf, 2.0], [-np.inf, 3.0]], dtype=np.float32)
    report = inspect(TensorDataset(x), label=None)
    assert report.nan_counts.dtype.kind == "i" and report.inf_counts.dtype.kind == "i"
    assert report.nan_counts.tolist() == [0, 1] and report.inf_counts.tolist() == [2, 0]
    assert report.nonfinite_samples == [0, 1, 2]  # inspect_42


def test_inspect_of_an_empty_dataset_is_a_one_line_summary() -> None:
    """An empty dataset reports size 0 and its summary is the one line saying so (nothing
    else can be said of no samples)."""
    report = inspect([])
    assert report.size == 0
    lines = str(report).splitlines()
    assert len(lines) == 1 and lines[0].startswith("0 samples")  # __str___7


# ---- DataLoader ---------------------------------------------------------------------------


def test_prefetch_factor_one_is_accepted_and_sets_prefetch() -> None:
    """prefetch_factor=1 (PyTorch's minimum) is valid: with 2 workers, 1 * 2 = 2 batches are
    prepared ahead, and the batches still come in order."""
    loader = DataLoader(TensorDataset(dlcore.arange(7)), batch_size=3, num_workers=2,
                        prefetch_factor=1)
    assert loader.prefetch == 2
    assert [b[0].tolist() for b in loader] == [[0, 1, 2], [3, 4, 5], [6]]  # __init___32


# ---- io: damaged dlcore checkpoints ---------------------------------------------------------


def _checkpoint(path: Path, structure: str, arrays: dict[str, np.ndarray] | None = None
                ) -> None:
    """A dlcore checkpoint with the given structure JSON and entries, with true CRCs."""
    arrays = arrays or {}
    crc = {name: zlib.crc32(a.tobytes()) for name, a in arrays.items()}
    safetensors.numpy.save_file(arrays, path, metadata={
        "dlcore.format": "1", "dlcore.structure": structure,
        "dlcore.crc32": str(crc).replace("'", '"')})


@pytest.mark.parametrize(("structure", "problem"), [
    ("[1]", "at obj: unexpected list"),
    ("{}", "at obj: unexpected dict"),
    ('{"list": [{"set": []}]}', "at obj[0]: unknown node ['set']"),
    ('{"dict": [["k", {"tensor": "3"}]]}', "at obj['k']: missing tensor entry '3'"),
])
def test_damaged_structure_errors_say_where_and_what(tmp_path: Path, structure: str,
                                                     problem: str) -> None:
    """A structure node that is not one of the format's (a bare JSON list, an empty object,
    an unknown kind) or names a missing entry raises CheckpointError naming its position in
    the structure and what is wrong there."""
    path = tmp_path / "c.safetensors"
    _checkpoint(path, structure)
    with pytest.raises(dlcore.io.CheckpointError,
                       match=re.escape(f"damaged structure {problem}") + "$"):
        dlcore.load(path)  # decode_10


# ---- io: PyTorch checkpoints, written opcode by opcode (no torch needed) --------------------


def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + len(data).to_bytes(4, "little") + data  # BINUNICODE


def _ints(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(b"I%d\n" % v for v in values) + b"t"  # MARK, INTs, TUPLE


def _tensor(key: str, numel: int, size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    """The pickle of ``_rebuild_tensor_v2(<FloatStorage key of numel>, 0, size, stride,
    False, {})``, as torch.save writes a tensor."""
    storage = (b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text(key) +
               _text("cpu") + b"I%d\ntQ" % numel)  # a persistent id tuple, BINPERSID
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"I0\n" + _ints(size) +
            _ints(stride) + b"\x89}tR")  # offset 0, requires_grad False, hooks {}


def _torch_zip(path: Path, pickled: bytes, storages: dict[str, np.ndarray],
               byteorder: bytes = b"little") -> None:
    """A torch.save zip archive: ``archive/data.pkl`` holding ``{"w": <pickled>}``."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}" + _text("w") + pickled + b"s.")
        archive.writestr("archive/byteorder", byteorder)
        archive.writestr("archive/version", b"3\n")
        for key, array in storages.items():
            archive.writestr(f"archive/data/{key}", array.tobytes())


def test_torch_checkpoint_with_an_empty_tensor_loads_it(tmp_path: Path) -> None:
    """A tensor with a zero-length dim (torch.empty(0, 3): size (0, 3), stride (3, 1), an
    empty storage) is well formed and loads as an empty float32 tensor of that shape."""
    path = tmp_path / "c.pt"
    _torch_zip(path, _tensor("0", 0, (0, 3), (3, 1)), {"0": np.zeros(0, np.float32)})
    w = dlcore.load(path)["w"]
    assert w.shape == (0, 3) and w.dtype == dlcore.float32  # _rebuild_tensor_v2_16


def test_torch_checkpoint_list_of_tensors_loads_as_a_list(tmp_path: Path) -> None:
    """A list of tensors (EMPTY_LIST, MARK, two tensors, APPENDS) comes back as a list of
    dlcore Tensors, each with its storage's values."""
    path = tmp_path / "c.pt"
    pickled = b"](" + _tensor("0", 2, (2,), (1,)) + _tensor("1", 3, (3,), (1,)) + b"e"
    _torch_zip(path, pickled, {"0": np.array([1.5, -2.0], np.float32),
                               "1": np.array([0.0, 4.0, 8.0], np.float32)})
    w = dlcore.load(path)["w"]
    assert isinstance(w, list) and [type(t) for t in w] == [dlcore.Tensor, dlcore.Tensor]
    assert [t.tolist() for t in w] == [[1.5, -2.0], [0.0, 4.0, 8.0]]  # _to_tensors_20


def test_torch_checkpoint_with_an_undecodable_byteorder_names_it(tmp_path: Path) -> None:
    """A byteorder record that is not ASCII is an unknown byteorder, reported as such (its
    undecodable byte shown as U+FFFD), not as an unreadable archive."""
    path = tmp_path / "c.pt"
    _torch_zip(path, _tensor("0", 1, (1,), (1,)), {"0": np.ones(1, np.float32)},
               byteorder=b"\xfflittle")
    with pytest.raises(dlcore.io.CheckpointError,
                       match=re.escape("unknown byteorder '\ufffdlittle'")):
        dlcore.load(path)  # _load_torch_44


# ---- DataLoader: argument errors ------------------------------------------------------------


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"num_workers": 1.5}, ValueError, "DataLoader: num_workers must be an int >= 0, got 1.5"),
    ({"num_workers": -1}, ValueError, "DataLoader: num_workers must be an int >= 0, got -1"),
    ({"prefetch": -1}, ValueError, "DataLoader: prefetch must be an int >= 0, got -1"),
    ({"prefetch": 2.0}, ValueError, "DataLoader: prefetch must be an int >= 0, got 2.0"),
    ({"prefetch": 0, "num_workers": 2}, ValueError,
     "DataLoader: prefetch=0 loads in the calling thread, so num_workers must be 0, got 2"),
    ({"num_workers": 1, "prefetch_factor": 1.5}, ValueError,
     "DataLoader: prefetch_factor must be an int >= 1, got 1.5"),
    ({"worker_init_fn": 5}, TypeError, "DataLoader: worker_init_fn must be callable"),
    ({"shuffle": True, "sampler": [0, 1]}, ValueError,
     "DataLoader: give either shuffle=True or a sampler, not both"),
])
def test_dataloader_argument_errors_say_what_is_wrong(options: dict, error: type,
                                                      message: str) -> None:
    """Each invalid DataLoader argument raises the documented exception class with a message
    naming the argument and the value given."""
    with pytest.raises(error, match="^" + re.escape(message) + "$"):
        DataLoader(TensorDataset(dlcore.arange(4)), **options)


def test_dataloader_keeps_pytorch_option_attributes() -> None:
    """pin_memory and persistent_workers default to False and are kept as given (PyTorch's
    DataLoader exposes both attributes; ported code reads them)."""
    ds = TensorDataset(dlcore.arange(4))
    default = DataLoader(ds)
    assert default.pin_memory is False and default.persistent_workers is False
    given = DataLoader(ds, num_workers=1, pin_memory=1, persistent_workers=1)
    assert given.pin_memory is True and given.persistent_workers is True


def test_dataloader_default_batch_size_is_one() -> None:
    """Without batch_size a DataLoader yields one sample per batch (PyTorch's default
    batch_size=1): 3 samples give 3 batches of shape (1,)."""
    loader = DataLoader(TensorDataset(dlcore.arange(3)))
    assert len(loader) == 3
    assert [b[0].tolist() for b in loader] == [[0], [1], [2]]  # __init___1


def test_dataloader_with_one_prefetch_slot_delivers_every_batch() -> None:
    """prefetch=1 (one batch in flight at a time) still delivers every batch, in order; the
    loop runs in a helper thread so a loader that stalls fails the test instead of hanging
    it."""
    loader = DataLoader(TensorDataset(dlcore.arange(5)), batch_size=2, prefetch=1)
    got: list = []
    consumer = threading.Thread(target=lambda: got.extend(b[0].tolist() for b in loader),
                                daemon=True)
    consumer.start()
    consumer.join(timeout=10)
    assert not consumer.is_alive(), "the loader stalled with prefetch=1"
    assert got == [[0, 1], [2, 3], [4]]  # _Pipeline.__init___11


# ---- DatasetReport's summary ------------------------------------------------------------------


def test_report_summary_in_full() -> None:
    """str(report) line by line for 3 samples of 2 features, samples 0 and 2 equal with
    different labels (0 and 1): range -1.5..1e7 (``.6g``), no constant feature, one group of
    duplicates, labels {0: 1, 1: 2} so imbalance 2 / 1 = 2."""
    x = np.array([[-1.5, 2.0], [0.25, 1e7], [-1.5, 2.0]], dtype=np.float32)
    report = inspect(TensorDataset(x, np.array([0, 1, 1])))
    assert str(report).splitlines() == [
        "3 samples, features of shape (2,) (2 per sample)",
        "values: -1.5 to 1e+07; per feature in .minimum and .maximum",
        "non-finite: none",
        "constant features: none",
        "duplicates: 1 groups of equal samples (1 extra copies), e.g. [0, 2]",
        "conflicting labels: 1 groups of equal features with different labels, e.g. [0, 2]",
        "labels: 2 classes (0: 1, 1: 2); imbalance (largest / smallest class) 2",
    ]  # __str___13


def test_report_summary_with_nan_and_many_constant_features() -> None:
    """Two all-zero samples of 10 features, a NaN in sample 1's feature 9: every feature is
    constant over its finite values (ten of them, eight quoted then "..."), the NaN is named
    by sample and feature, the samples differ (NaN) so there are no duplicates, and without
    labels there is no labels line."""
    x = np.zeros((2, 10), np.float32)
    x[1, 9] = np.nan
    report = inspect(TensorDataset(x))
    assert str(report).splitlines() == [
        "2 samples, features of shape (10,) (10 per sample)",
        "values: 0 to 0; per feature in .minimum and .maximum",
        "non-finite: 1 NaN, 0 Inf, in 1 samples [1], features [9]",
        "constant features: 10 [0, 1, 2, 3, 4, 5, 6, 7, ...]",
        "duplicates: none",
    ]  # __str___18


# ---- io: PyTorch checkpoints, continued ----------------------------------------------------


def test_torch_checkpoint_with_a_zero_stride_tensor_repeats_its_element(tmp_path: Path
                                                                         ) -> None:
    """An expanded tensor (torch.tensor([2.5]).expand(3): size (3,), stride (0,), a storage
    of one element) is well formed and loads as that element three times."""
    path = tmp_path / "c.pt"
    _torch_zip(path, _tensor("0", 1, (3,), (0,)), {"0": np.array([2.5], np.float32)})
    assert dlcore.load(path)["w"].tolist() == [2.5, 2.5, 2.5]  # _rebuild_tensor_v2_19


def test_torch_checkpoint_with_protocol_2_bytes_loads_them(tmp_path: Path) -> None:
    """Protocol 2 pickles bytes as _codecs.encode(text, "latin1"), which the loader allows:
    b"\\x00\\xff" comes back as those two bytes."""
    path = tmp_path / "c.pt"
    pickled = b"c_codecs\nencode\n(" + _text("\x00\xff") + _text("latin1") + b"tR"
    _torch_zip(path, pickled, {})
    assert dlcore.load(path)["w"] == b"\x00\xff"  # find_class_19


def test_load_refuses_weights_only_false_with_its_whole_message(tmp_path: Path) -> None:
    """load(weights_only=False) is refused before the file is read (here it does not even
    exist) with a ValueError that says, in full, why there is nothing to enable."""
    message = ("load: dlcore reads only tensors and plain values (safetensors, or PyTorch "
               "checkpoints through a restricted unpickler); weights_only=False has nothing "
               "to enable")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        dlcore.load(tmp_path / "absent.safetensors", weights_only=False)  # load_9
