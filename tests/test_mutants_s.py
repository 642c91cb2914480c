"""Behaviour pinned down for survivors of mutation sample 5 (letter s: the digits loader,
inspect(), DataLoader, io, the optimizer kernels' check cases, Adadelta, the lr schedulers
and the optimizer's bucket passes): each test checks something no test of the suite checked
before, against an independent reference (PyTorch, NumPy, or values worked out by hand), and
was seen to fail on its mutant."""

from __future__ import annotations

import codecs
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dlcore
from dlcore.amp import GradScaler
from dlcore.data import DataLoader, TensorDataset
from dlcore.data.datasets.digits import load_digits_arrays
from dlcore.data.inspect import inspect
from dlcore.device import Device
from dlcore.ops.optim import OPTIM

CPU = Device("cpu")

# ---- data ---------------------------------------------------------------------------------


def test_digits_without_scikit_learn_says_which_module_needs_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With scikit-learn missing, load_digits_arrays raises ImportError naming the module
    (dlcore.data.datasets.digits, spelled as it is imported) and the extra to install."""
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails
    message = ("dlcore.data.datasets.digits needs scikit-learn, which ships the digits data: "
               "pip install dlcore[datasets]")
    with pytest.raises(ImportError, match="^" + re.escape(message) + "$"):
        load_digits_arrays()  # x_load_digits_arrays__mutmut_3


def test_inspect_of_an_empty_plain_dataset_reports_no_features() -> None:
    """An empty list is a dataset with no sample and no known feature shape: the per-feature
    arrays are empty, so no feature is reported constant (not a phantom feature 0)."""
    report = inspect([])
    assert report.size == 0
    for values in (report.minimum, report.maximum, report.nan_counts, report.inf_counts):
        assert values.shape == (0,)
    assert report.constant_features == []  # x_inspect__mutmut_6


def test_dataloader_persistent_workers_without_workers_message() -> None:
    """persistent_workers=True with num_workers=0 is a ValueError with PyTorch's words
    ("persistent_workers option needs num_workers > 0"), prefixed with the class name."""
    ds = TensorDataset(dlcore.zeros(4, 2))
    with pytest.raises(ValueError, match="^DataLoader: persistent_workers option needs "
                                         "num_workers > 0$"):
        DataLoader(ds, persistent_workers=True)  # __init____mutmut_19


# ---- io: a torch checkpoint whose pickle calls _codecs.encode with another encoding -------


class _EncodeUtf8:
    """Pickles as ``_codecs.encode("x", "utf-8")`` (codecs.encode is _codecs.encode)."""

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return codecs.encode, ("x", "utf-8")


def test_torch_checkpoint_encode_with_utf8_is_refused_with_its_message(tmp_path: Path
                                                                       ) -> None:
    """_codecs.encode is allowed only as protocol 2 writes bytes (latin1): a pickle calling
    it with "utf-8" is an UnpicklingError that names the file and says what is allowed."""
    path = tmp_path / "c.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": _EncodeUtf8()}, protocol=2))
        archive.writestr("archive/byteorder", b"little")
    message = (f"load: {str(path)!r}: _codecs.encode is allowed only for protocol 2's bytes "
               "(latin1)")
    with pytest.raises(pickle.UnpicklingError, match="^" + re.escape(message) + "$"):
        dlcore.load(path)  # _encode__mutmut_12


# ---- ops.optim: the Adam check case is Adam ------------------------------------------------


def test_adam_check_case_is_adam_with_eps_1e_8() -> None:
    """The "adam step" check case (three steps of lr 1e-2 from zero state, seeded parameter
    and gradients) gives the parameter of torch.optim.Adam's algorithm with its defaults
    (betas 0.9, 0.999, eps 1e-8), here written out in float64 (torch's own first step costs
    a second of lazy imports)."""
    out = OPTIM.checks["adam step"](CPU)["param"]
    lr, beta1, beta2, eps = 1e-2, 0.9, 0.999, 1e-8
    p = np.random.default_rng(4).standard_normal(317).astype(np.float32).astype(np.float64)
    m = np.zeros(317)
    v = np.zeros(317)
    for t in range(1, 4):
        g = np.random.default_rng(10 + t).standard_normal(317).astype(np.float32)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g.astype(np.float64) ** 2
        denom = np.sqrt(v) / np.sqrt(1 - beta2 ** t) + eps
        p = p - lr / (1 - beta1 ** t) * m / denom
    np.testing.assert_allclose(out, p, rtol=1e-5, atol=1e-6)
    # _adam_scalars__mutmut_17


# ---- optim: constructors ------------------------------------------------------------------


def test_adadelta_rejects_rho_above_one_with_torch_message() -> None:
    """Adadelta(rho=1.5) is a ValueError saying "Invalid rho value: 1.5", PyTorch's words
    (torch.optim.Adadelta raises the same)."""
    p = dlcore.nn.Parameter(dlcore.zeros(2))
    with pytest.raises(ValueError, match=r"^Invalid rho value: 1\.5$"):
        dlcore.optim.Adadelta([p], rho=1.5)  # __init____mutmut_17


def _sgd(lr: float = 1.0) -> dlcore.optim.SGD:
    return dlcore.optim.SGD([dlcore.nn.Parameter(dlcore.zeros(1))], lr=lr)


def test_exponential_lr_resuming_needs_initial_lr_and_counts_on() -> None:
    """ExponentialLR(last_epoch=2) resumes: without "initial_lr" in the groups it raises
    KeyError naming initial_lr (torch.optim.lr_scheduler.ExponentialLR raises KeyError
    "param 'initial_lr' is not specified in param_groups[0] ..."); with it, the first step
    makes last_epoch 3 (PyTorch's is 3 too)."""
    with pytest.raises(KeyError, match="initial_lr"):
        dlcore.optim.lr_scheduler.ExponentialLR(_sgd(), gamma=0.5, last_epoch=2)
    opt = _sgd()
    opt.param_groups[0]["initial_lr"] = 1.0
    sched = dlcore.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5, last_epoch=2)
    assert sched.last_epoch == 3  # __init____mutmut_5


def test_one_cycle_lr_without_a_length_names_both_ways_to_give_it() -> None:
    """OneCycleLR with neither total_steps nor epochs and steps_per_epoch is a ValueError
    naming both ways, in PyTorch's words: total_steps OR (epochs AND steps_per_epoch)."""
    message = ("OneCycleLR: you must define either total_steps OR (epochs AND "
               "steps_per_epoch)")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        dlcore.optim.lr_scheduler.OneCycleLR(_sgd(), max_lr=0.1, epochs=3)
    # __init____mutmut_20


def test_reduce_lr_on_plateau_wrong_min_lr_count_names_min_lr() -> None:
    """ReduceLROnPlateau given two min_lr values for one group is a ValueError naming the
    argument as spelled (min_lr) with both counts."""
    with pytest.raises(ValueError, match=r"^expected 1 values for min_lr, got 2$"):
        dlcore.optim.lr_scheduler.ReduceLROnPlateau(_sgd(), min_lr=[0.0, 0.1])
    # __init____mutmut_41


# ---- optim: GradScaler's host pass over several buckets on one device ----------------------


def test_gradscaler_host_pass_finds_an_inf_in_the_first_of_two_groups() -> None:
    """Parameters on cpu, the scaler on emu: the unscale goes through the host, one flag per
    device for all buckets. An inf in the first group's gradient (the second's clean) skips
    the step for both and halves the scale, as torch.amp.GradScaler does."""
    a = dlcore.nn.Parameter(dlcore.tensor([1.0, 2.0]))
    b = dlcore.nn.Parameter(dlcore.tensor([3.0]))
    opt = dlcore.optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1)
    scaler = GradScaler(device="emu", init_scale=4.0)
    loss = (a * dlcore.tensor([float("inf"), 1.0])).sum() + b.sum()
    scaler.scale(loss).backward()  # the gradients land in the buckets' flat buffers
    scaler.unscale_(opt)
    assert scaler.step(opt) is None
    scaler.update()
    np.testing.assert_array_equal(a.numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(b.numpy(), [3.0])
    assert scaler.get_scale() == 2.0  # _unscale_grads___mutmut_7
