"""Tests that pin behaviour for survivors of mutation sample 3 in dlcore.data, dlcore.io and
dlcore.optim: each one passes on dlcore and was checked to fail on its mutant."""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dlcore
from dlcore import optim
from dlcore.data import DataLoader, IterableDataset, TensorDataset
from dlcore.data.inspect import inspect
from dlcore.data.shards import ShardDataset, write_shards
from dlcore.nn.parameter import Parameter
from dlcore.optim import lbfgs

# ---- data: DataLoader(check_finite=True), inspect(), shards ------------------------------


def _finite_error(loader: DataLoader) -> str:
    with pytest.raises(ValueError, match=r"^DataLoader\(check_finite=True\)") as info:
        for _ in loader:
            pass
    return str(info.value)


def test_check_finite_quotes_eight_indices_in_full_and_elides_only_beyond() -> None:
    """A batch with exactly 8 (the number quoted) non-finite samples lists all 8 with no
    ellipsis; with 9 the list shows 8 and then '...': the '...' must mean 'and more'."""
    x = np.full((9, 2), np.nan, np.float32)
    message = _finite_error(DataLoader(TensorDataset(x), batch_size=8, check_finite=True))
    assert message.endswith("in 8 samples, at dataset indices [0, 1, 2, 3, 4, 5, 6, 7]")
    message = _finite_error(DataLoader(TensorDataset(x), batch_size=9, check_finite=True))
    assert message.endswith("in 9 samples, at dataset indices [0, 1, 2, 3, 4, 5, 6, 7, ...]")


class _Stream(IterableDataset):
    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(4):
            yield np.array([np.inf if i == 1 else float(i)], np.float32)


def test_check_finite_on_an_iterable_dataset_names_batch_positions() -> None:
    """An IterableDataset has no indices, so a non-finite sample is named by its position in
    the batch, and the message says why."""
    message = _finite_error(DataLoader(_Stream(), batch_size=4, check_finite=True))
    assert message.endswith("at positions [1] of the batch (an IterableDataset has no "
                            "indices)")


def test_inspect_does_not_merge_samples_differing_by_a_tiny_value() -> None:
    """Duplicates are samples with equal features: 0.0 and 1e-20 differ, so they are not
    duplicates, while -0.0 and 0.0 compare equal and are (NumPy's == as the reference)."""
    x = np.array([[0.0, 2.0], [1e-20, 2.0], [-0.0, 2.0], [5.0, 1.0]])
    report = inspect(TensorDataset(x), label=None)
    want = [[i, j] for i in range(4) for j in range(i + 1, 4) if (x[i] == x[j]).all()]
    assert want == [[0, 2]]
    assert report.duplicates == want


def test_iterable_dataset_with_shuffle_or_sampler_says_why() -> None:
    """shuffle or a sampler with an IterableDataset raises ValueError saying that the
    dataset sets its own order and that both are for map-style datasets."""
    message = (r"^DataLoader: an IterableDataset sets its own order; shuffle and sampler "
               r"are for map-style datasets$")
    with pytest.raises(ValueError, match=message):
        DataLoader(_Stream(), batch_size=2, shuffle=True)
    with pytest.raises(ValueError, match=message):
        DataLoader(_Stream(), batch_size=2, sampler=[0, 1])


def test_write_shards_creates_missing_parent_directories(tmp_path: Path) -> None:
    """write_shards into a directory whose parents do not exist yet creates them (like
    ``mkdir -p``), and the shards read back whole."""
    target = tmp_path / "not" / "yet" / "there"
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    assert write_shards(target, {"x": x}, shard_size=2) == 3
    rows = sorted(tuple(np.asarray(s[0] if isinstance(s, tuple | list) else s).tolist())
                  for s in ShardDataset(target, shuffle=False))
    assert rows == [tuple(r) for r in x.tolist()]


# ---- io: save, and PyTorch checkpoints -----------------------------------------------------

def test_save_names_where_an_unsupported_ndarray_sits(tmp_path: Path) -> None:
    """An ndarray of a dtype checkpoints cannot hold (complex) raises TypeError naming its
    place in the saved structure, so the user can find it."""
    obj = {"model": {"w": np.zeros(2)}, "extra": [1, np.array([1j])]}
    with pytest.raises(TypeError, match=re.escape("dtype complex128 at obj['extra'][1]")):
        dlcore.save(obj, tmp_path / "c.dlc")


def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + len(data).to_bytes(4, "little") + data  # BINUNICODE


def _int_tuple(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(b"I%d\n" % v for v in values) + b"t"  # MARK, INTs, TUPLE


def _torch_checkpoint(path: Path, offset: int, size: tuple[int, ...],
                      stride: tuple[int, ...]) -> None:
    """A torch.save zip holding ``{"w": _rebuild_tensor_v2(<4 floats>, offset, size,
    stride, False, {})}``, written opcode by opcode (no torch needed)."""
    persistent_id = (b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text("0") +
                     _text("cpu") + b"I4\ntQ")
    rebuild = (b"ctorch._utils\n_rebuild_tensor_v2\n(" + persistent_id + b"I%d\n" % offset +
               _int_tuple(size) + _int_tuple(stride) + b"\x89}tR")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}" + _text("w") + rebuild + b"s.")
        archive.writestr("archive/byteorder", b"little")
        archive.writestr("archive/version", b"3\n")
        archive.writestr("archive/data/0", np.arange(4, dtype=np.float32).tobytes())


@pytest.mark.parametrize(("offset", "size", "stride"), [(0, (2,), (1, 1)), (0, (2, 2), (1,)),
                                                        (3, (2,), (-1,)), (-1, (2,), (1,))])
def test_torch_checkpoint_with_a_malformed_tensor_is_refused(
        tmp_path: Path, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
    """A tensor record whose size and stride differ in length, or whose stride or offset is
    negative, is refused as malformed (UnpicklingError) before any memory is read."""
    _torch_checkpoint(tmp_path / "c.pt", 0, (4,), (1,))  # the well-formed record loads
    assert dlcore.load(tmp_path / "c.pt")["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    _torch_checkpoint(tmp_path / "c.pt", offset, size, stride)
    with pytest.raises(pickle.UnpicklingError, match="malformed tensor"):
        dlcore.load(tmp_path / "c.pt")


# ---- optim ---------------------------------------------------------------------------------

def test_adagrad_rejects_a_negative_initial_accumulator_value_naming_it() -> None:
    """Adagrad(initial_accumulator_value < 0) raises ValueError with PyTorch's message."""
    with pytest.raises(ValueError, match=r"^Invalid initial_accumulator_value value: -0\.5$"):
        optim.Adagrad([Parameter(dlcore.zeros(2))], initial_accumulator_value=-0.5)


def _adam(p: np.ndarray, grads: list[np.ndarray], lr: float) -> np.ndarray:
    """PyTorch's Adam (defaults betas, eps), one parameter, in float64."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    for k, g in enumerate(grads, 1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - lr * (m / (1 - 0.9 ** k)) / (np.sqrt(v / (1 - 0.999 ** k)) + 1e-8)
    return p


def test_capturable_adam_after_loading_keeps_per_parameter_step_counts() -> None:
    """Capturable Adam (emu) loaded from a state dict where only one parameter has state:
    after a step without the other's gradient and one with both, each parameter has had the
    bias corrections of its own step count (1 and 3), as plain Adam per parameter."""
    x0, y0 = np.array([1.0, -2.0], np.float32), np.array([0.5, 3.0, -1.0], np.float32)
    gx = np.array([0.3, -0.7], np.float32)
    gy = [np.array([1.0, -2.0, 0.5], np.float32) * s for s in (1.0, 0.5, 2.0)]
    x = Parameter(dlcore.tensor(x0, device="emu"))
    y = Parameter(dlcore.tensor(y0, device="emu"))
    first = optim.Adam([x, y], lr=0.1, capturable=True)
    y.grad = dlcore.tensor(gy[0], device="emu")
    first.step()
    opt = optim.Adam([x, y], lr=0.1, capturable=True)
    opt.load_state_dict(first.state_dict())
    x.grad, y.grad = None, dlcore.tensor(gy[1], device="emu")
    opt.step()
    x.grad, y.grad = dlcore.tensor(gx, device="emu"), dlcore.tensor(gy[2], device="emu")
    opt.step()
    np.testing.assert_allclose(x.numpy(), _adam(x0.astype(np.float64), [gx], 0.1), rtol=1e-6)
    np.testing.assert_allclose(y.numpy(), _adam(y0.astype(np.float64), gy, 0.1), rtol=1e-6)


def _lbfgs_step(loss: Any, x0: float, lr: float) -> tuple[float, int, list[float]]:
    """One LBFGS step (strong Wolfe, one iteration, up to 20 evaluations) of ``loss`` from
    ``x0``: where x lands, the evaluations counted, and the gradient at each evaluation."""
    x = Parameter(dlcore.tensor(np.array([x0])))
    opt = optim.LBFGS([x], lr=lr, max_iter=1, max_eval=20, line_search_fn="strong_wolfe")
    grads = []

    def closure() -> dlcore.Tensor:
        opt.zero_grad()
        value = loss(x).sum()
        value.backward()
        grads.append(float(x.grad.numpy()[0]))
        return value

    opt.step(closure)
    return float(x.detach().numpy()[0]), opt.state[x]["func_evals"], grads


def test_lbfgs_stops_where_the_curvature_condition_holds_with_equality() -> None:
    """The strong Wolfe curvature condition is |phi'(t)| <= c2 |phi'(0)| (Nocedal & Wright,
    PyTorch): on -x + 0.1 relu(x - 0.1) + 10 relu(x - 2)^2 from 0 (phi'(0) = -1) the zoom's
    first trial lands where the slope is -0.9 = -c2 exactly, so the search stops there,
    after three evaluations (the start, t = lr = 4, that trial)."""
    x, evals, grads = _lbfgs_step(
        lambda v: -v + 0.1 * (v - 0.1).relu() + 10.0 * (v - 2.0).relu() ** 2, 0.0, 4.0)
    assert evals == 3 and len(grads) == 3
    assert grads[-1] == -0.9 and 0.1 < x < 2.0


def test_lbfgs_zoom_after_a_rejected_trial_keeps_searching() -> None:
    """On 20 sin x + x^2 / 2 from 1 with lr 10 the zoom first rejects a trial (the bracket's
    high end is replaced) and then finds a point meeting the strong Wolfe conditions (checked
    in closed form here) after five evaluations, as torch.optim.LBFGS does."""
    x, evals, _ = _lbfgs_step(lambda v: 20.0 * v.sin() + 0.5 * v ** 2, 1.0, 10.0)
    g0 = 20.0 * math.cos(1.0) + 1.0
    t = (x - 1.0) / -g0  # the step along d = -g0
    assert evals == 5
    assert 20.0 * math.sin(x) + 0.5 * x * x <= 20.0 * math.sin(1.0) + 0.5 - 1e-4 * t * g0 * g0
    assert abs((20.0 * math.cos(x) + x) * g0) <= 0.9 * g0 * g0
    np.testing.assert_allclose(x, -1.3577791843978646, rtol=1e-12)  # PyTorch 2.13


def test_strong_wolfe_moves_a_trial_at_the_bracket_bottom_inside() -> None:
    """The zoom's interpolated step clipped to the bracket's lower end (t <= min, not only
    t < min) is moved 10% inside it, so no trial repeats an evaluated point: on
    -x + sin(x) / 2 + x^2 / 2 with c1 = 0.5 the search makes nine distinct evaluations and
    ends where torch.optim.lbfgs._strong_wolfe does (PyTorch 2.13)."""
    def objective(t: float) -> tuple[float, np.ndarray]:
        trials.append(t)
        return -t + 0.5 * math.sin(t) + 0.5 * t * t, np.array([-1.0 + 0.5 * math.cos(t) + t])

    trials: list[float] = []
    f0, g0 = objective(0.0)
    trials.clear()
    _, _, t, evals = lbfgs._strong_wolfe(objective, 1.0, np.array([1.0]), f0, g0,
                                         float(g0[0]), c1=0.5)
    assert evals == len(trials) == 9
    assert len(set(trials)) == len(trials)
    assert math.isclose(t, 0.5824379427699007, rel_tol=1e-12)


class _Warmup:
    """A callable lr lambda with state (PyTorch saves such objects' ``__dict__``)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, epoch: int) -> float:
        return self.scale * (epoch + 1)


def test_lambdalr_state_dict_restores_callable_attributes_and_epoch() -> None:
    """LambdaLR.load_state_dict restores the epoch and the saved attributes of callable
    lr lambdas, so a resumed scheduler continues with the saved schedule."""
    opt = optim.SGD([Parameter(dlcore.zeros(1))], lr=1.0)
    sched = optim.lr_scheduler.LambdaLR(opt, _Warmup(0.5))
    for _ in range(3):
        opt.step()
        sched.step()
    saved = sched.state_dict()
    opt2 = optim.SGD([Parameter(dlcore.zeros(1))], lr=1.0)
    resumed = optim.lr_scheduler.LambdaLR(opt2, _Warmup(9.0))
    resumed.load_state_dict(saved)
    assert resumed.last_epoch == 3 and resumed.lr_lambdas[0].scale == 0.5
    opt2.step()
    resumed.step()
    assert opt2.param_groups[0]["lr"] == 0.5 * 5  # epoch 4: base lr * 0.5 * (4 + 1)


def test_reduce_lr_on_plateau_counts_a_first_nan_metric_as_one_bad_epoch() -> None:
    """A fresh ReduceLROnPlateau has no bad epochs: with patience 1 a NaN first metric (a
    diverged loss is no improvement) is one bad epoch and the lr stays; the second reduces
    it by the factor, as PyTorch's does."""
    opt = optim.SGD([Parameter(dlcore.zeros(1))], lr=1.0)
    sched = optim.lr_scheduler.ReduceLROnPlateau(opt, patience=1, factor=0.5)
    assert sched.num_bad_epochs == 0
    sched.step(float("nan"))
    assert sched.num_bad_epochs == 1 and opt.param_groups[0]["lr"] == 1.0
    sched.step(float("nan"))
    assert opt.param_groups[0]["lr"] == 0.5


def test_optimizer_repr_lists_each_group_like_pytorch() -> None:
    """repr(optimizer) is PyTorch's layout: the class name and '(', a 'Parameter Group i'
    line per group followed by its options (indented, sorted, no params), then ')'."""
    a, b = Parameter(dlcore.zeros(1)), Parameter(dlcore.zeros(1))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, momentum=0.9)
    lines = repr(opt).split("\n")
    assert lines[0] == "SGD (" and lines[1] == "Parameter Group 0" and lines[-1] == ")"
    second = lines.index("Parameter Group 1")
    assert "    lr: 0.1" in lines[2:second] and "    lr: 0.5" in lines[second:]
    assert "    momentum: 0.9" in lines[2:second]
    options = [line.split(":")[0].strip() for line in lines[2:second]]
    assert options == sorted(options) and "params" not in options


def test_load_state_dict_copies_options_deeply() -> None:
    """load_state_dict deep-copies the group options (as PyTorch does): changing a nested
    mutable option (a list inside a dict) in the state dict afterwards leaves the
    optimizer's group alone."""
    p = Parameter(dlcore.zeros(2))
    opt = optim.SGD([{"params": [p], "schedule": {"milestones": [10, 20]}}], lr=0.1)
    saved = opt.state_dict()
    other = optim.SGD([{"params": [p], "schedule": {}}], lr=0.3)
    other.load_state_dict(saved)
    saved["param_groups"][0]["schedule"]["milestones"].append(30)
    assert other.param_groups[0]["schedule"] == {"milestones": [10, 20]}
    assert other.param_groups[0]["lr"] == 0.1
