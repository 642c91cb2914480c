"""Module: registration, iteration, modes, device/dtype moves, state dicts, hooks, repr."""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pytest

import dlcore
import dlcore.nn as nn


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.scale = nn.Parameter(dlcore.ones(4))
        self.register_buffer("steps", dlcore.zeros(1))
        self.register_buffer("cache", dlcore.zeros(2), persistent=False)

    def forward(self, x: dlcore.Tensor) -> dlcore.Tensor:
        return self.bn(self.fc(x)) * self.scale


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(4, 2))

    def forward(self, x: dlcore.Tensor) -> dlcore.Tensor:
        return self.head(self.block(x))


def test_registration_names_and_order() -> None:
    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "block.scale", "block.fc.weight", "block.fc.bias", "block.bn.weight", "block.bn.bias",
        "head.1.weight", "head.1.bias"]
    assert [n for n, _ in net.named_buffers()] == [
        "block.steps", "block.cache", "block.bn.running_mean", "block.bn.running_var",
        "block.bn.num_batches_tracked"]
    assert [n for n, _ in net.named_children()] == ["block", "head"]
    assert [n for n, _ in net.named_modules()] == [
        "", "block", "block.fc", "block.bn", "head", "head.0", "head.1"]
    assert len(list(net.parameters(recurse=False))) == 0
    assert len(list(net.modules())) == 7 and list(net.children())[0] is net.block


def test_shared_parameter_listed_once_state_dict_has_both_names() -> None:
    lin = nn.Linear(2, 2)
    seq = nn.Sequential(lin, lin)
    assert len(list(seq.parameters())) == 2
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_setattr_rules() -> None:
    m = nn.Linear(2, 3)
    with pytest.raises(TypeError, match="cannot assign 'Tensor' as parameter 'weight'"):
        m.weight = dlcore.zeros(3, 2)
    m.bias = None
    assert "bias" in m._parameters and m.bias is None
    m.extra = nn.Parameter(dlcore.zeros(1))
    assert "extra" in dict(m.named_parameters())
    del m.extra
    assert "extra" not in dict(m.named_parameters())

    class Early(nn.Module):
        def __init__(self) -> None:
            self.w = nn.Parameter(dlcore.zeros(1))

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Early()
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = m.nope
    with pytest.raises(KeyError, match="buffer name"):
        m.register_buffer("a.b", dlcore.zeros(1))


def test_forward_missing_is_named() -> None:
    with pytest.raises(NotImplementedError, match=r'Module \[Module\] is missing the required'):
        nn.Module()(1)


def test_train_eval_propagate() -> None:
    net = Net()
    assert net.training and net.block.bn.training
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_requires_grad_and_zero_grad() -> None:
    net = Net()
    net(dlcore.randn(5, 3)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.numpy().any() for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net.requires_grad_(False)
    assert not any(p.requires_grad for p in net.parameters())


def test_apply_visits_children_first() -> None:
    seen = []
    Net().apply(lambda m: seen.append(type(m).__name__))
    assert seen == ["Linear", "BatchNorm1d", "Block", "ReLU", "Linear", "Sequential", "Net"]


def test_to_device_keeps_parameter_identity_and_moves_grads() -> None:
    net = Net()
    net(dlcore.randn(5, 3)).sum().backward()
    params = list(net.parameters())
    assert net.to("emu") is net
    assert [id(p) for p in net.parameters()] == [id(p) for p in params]
    assert all(p.device.type == "emu" and p.grad.device.type == "emu" for p in params)
    assert all(b.device.type == "emu" for b in net.buffers())
    out = net(dlcore.randn(5, 3, device="emu"))
    out.sum().backward()
    assert out.device.type == "emu" and params[0].grad.device.type == "emu"
    net.cpu()
    assert all(p.device.type == "cpu" for p in net.parameters())


def test_dtype_moves_cast_floats_only() -> None:
    net = Net()
    w = net.block.fc.weight
    net.double()
    assert net.block.fc.weight is w and w.dtype == np.float64
    assert net.block.bn.running_mean.dtype == np.float64
    assert net.block.bn.num_batches_tracked.dtype == np.int64
    assert net(dlcore.randn(4, 3, dtype=dlcore.float64)).dtype == np.float64
    net.float()
    assert w.dtype == np.float32
    net.to(dlcore.zeros(1, dtype=dlcore.float64, device="emu"))
    assert w.dtype == np.float64 and w.device.type == "emu"
    with pytest.raises(TypeError, match="floating point"):
        net.to(dlcore.int64)


def _trained_copy(device: str) -> tuple[Net, dlcore.Tensor]:
    dlcore.manual_seed(1)
    net = Net().to(device)
    x = dlcore.randn(6, 3, device=device)
    net(x)  # moves batch-norm running stats away from their initial values
    net.block.steps.fill_(7)
    return net.eval(), x


def test_state_dict_round_trip(device: str) -> None:
    net, x = _trained_copy(device)
    sd = net.state_dict()
    assert "block.cache" not in sd and "block.steps" in sd
    assert sd["block.bn.num_batches_tracked"].item() == 1
    # detached, sharing memory with the module
    assert not sd["block.fc.weight"].requires_grad
    assert sd["block.fc.weight"].array is net.block.fc.weight.array
    fresh = Net().to(device).eval()
    result = fresh.load_state_dict(sd)
    assert result.missing_keys == [] and result.unexpected_keys == []
    np.testing.assert_allclose(fresh(x).numpy(), net(x).numpy(), rtol=1e-6)
    assert fresh.block.steps.item() == 7


def test_load_numpy_arrays_like_a_pytorch_checkpoint(device: str) -> None:
    net, x = _trained_copy(device)
    arrays = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    arrays["block.bn.num_batches_tracked"] = np.array(3)
    fresh = Net().to(device).eval()
    fresh.load_state_dict(arrays)
    np.testing.assert_allclose(fresh(x).numpy(), net(x).numpy(), rtol=1e-6)
    assert fresh.block.bn.num_batches_tracked.item() == 3
    assert fresh.block.fc.weight.device.type == device


def test_load_state_dict_strict_errors_name_keys() -> None:
    net = Net()
    sd = dict(net.state_dict())
    del sd["head.1.bias"]
    sd["head.2.weight"] = np.zeros(2)
    sd["block.fc.weight"] = np.zeros((3, 4), np.float32)
    with pytest.raises(RuntimeError) as err:
        Net().load_state_dict(sd)
    msg = str(err.value)
    assert "Error(s) in loading state_dict for Net" in msg
    assert 'Missing key(s) in state_dict: "head.1.bias"' in msg
    assert 'Unexpected key(s) in state_dict: "head.2.weight"' in msg
    assert ("size mismatch for block.fc.weight: copying a param with shape (3, 4) from "
            "checkpoint, the shape in current model is (4, 3)") in msg


def test_load_state_dict_non_strict_reports_keys() -> None:
    net = Net()
    sd = dict(net.state_dict())
    del sd["head.1.bias"]
    sd["extra"] = np.zeros(1)
    target = Net()
    result = target.load_state_dict(sd, strict=False)
    assert result == (["head.1.bias"], ["extra"])
    assert result.missing_keys == ["head.1.bias"] and result.unexpected_keys == ["extra"]
    np.testing.assert_array_equal(target.head[1].weight.numpy(), net.head[1].weight.numpy())
    sd["block.fc.weight"] = np.zeros((1, 1))
    with pytest.raises(RuntimeError, match="size mismatch for block.fc.weight"):
        target.load_state_dict(sd, strict=False)


def test_forward_hooks_and_handles() -> None:
    lin = nn.Linear(2, 2)
    calls = []
    pre = lin.register_forward_pre_hook(lambda m, args: (args[0] * 0,))
    post = lin.register_forward_hook(lambda m, args, out: calls.append(out.shape) or out + 1)
    out = lin(dlcore.ones(3, 2))
    np.testing.assert_allclose(out.numpy(), np.broadcast_to(lin.bias.numpy() + 1, (3, 2)),
                               rtol=1e-6)
    assert calls == [(3, 2)]
    pre.remove()
    post.remove()
    np.testing.assert_allclose(lin(dlcore.zeros(1, 2)).numpy()[0], lin.bias.numpy(), rtol=1e-6)
    assert calls == [(3, 2)]
    with lin.register_forward_hook(lambda m, a, o: o * 0):
        assert not lin(dlcore.ones(1, 2)).numpy().any()
    assert lin(dlcore.ones(1, 2)).numpy().any()


def test_repr_tree() -> None:
    net = nn.Sequential(OrderedDict(
        conv=nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU()),
        norm=nn.LayerNorm(4),
        drop=nn.Dropout(0.25),
    ))
    assert repr(net) == (
        "Sequential(\n"
        "  (conv): Sequential(\n"
        "    (0): Linear(in_features=3, out_features=4, bias=False)\n"
        "    (1): ReLU()\n"
        "  )\n"
        "  (norm): LayerNorm((4,), eps=1e-05, elementwise_affine=True)\n"
        "  (drop): Dropout(p=0.25, inplace=False)\n"
        ")")
    assert repr(nn.Sequential()) == "Sequential()"


def test_deepcopy_is_independent() -> None:
    net = Net()
    twin = copy.deepcopy(net)
    assert twin.block.fc.weight is not net.block.fc.weight
    assert isinstance(twin.block.fc.weight, nn.Parameter) and twin.block.fc.weight.requires_grad
    twin.block.fc.weight.array[...] = 0
    assert net.block.fc.weight.numpy().any()


def test_public_surface() -> None:
    import dlcore.nn.functional as F
    import dlcore.nn.init as init

    assert nn.functional is F and nn.init is init
    assert callable(nn.utils.clip_grad_norm_)
    for name in ("Module", "Parameter", "Sequential", "ModuleList", "ModuleDict", "Linear",
                 "Bilinear", "Identity", "Flatten", "Unflatten", "Dropout", "BatchNorm1d",
                 "BatchNorm2d", "LayerNorm", "GroupNorm", "Embedding", "ReLU", "LeakyReLU",
                 "ELU", "GELU", "SiLU", "Tanh", "Sigmoid", "Softmax", "LogSoftmax",
                 "CrossEntropyLoss", "MSELoss", "LSTM", "GRU"):
        assert isinstance(getattr(nn, name), type), name
    for name in ("linear", "relu", "leaky_relu", "elu", "gelu", "silu", "sigmoid", "tanh",
                 "softmax", "log_softmax", "softplus", "dropout", "batch_norm", "layer_norm",
                 "group_norm", "embedding", "pad", "one_hot", "normalize", "cross_entropy",
                 "mse_loss"):
        assert callable(getattr(F, name)), name


def test_half_and_float_cast_floating_state_only(tmp_path):
    m = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    weight = m[0].weight
    assert m.half() is m and m[0].weight is weight  # in place, the same Parameter
    assert {p.dtype for p in m.parameters()} == {np.dtype(np.float16)}
    assert m[1].running_mean.dtype == np.float16
    assert m[1].num_batches_tracked.dtype == np.int64
    y = m(dlcore.ones(4, 3).half())
    assert y.dtype == np.float16
    m.float()
    assert {p.dtype for p in m.parameters()} == {np.dtype(np.float32)}
    state = m.half().state_dict()
    assert state["0.weight"].dtype == np.float16
    dlcore.save(state, tmp_path / "half.safetensors")  # checkpoints keep float16
    loaded = dlcore.load(tmp_path / "half.safetensors")
    assert loaded["0.weight"].dtype == np.float16
    np.testing.assert_array_equal(loaded["0.weight"].numpy(), state["0.weight"].numpy())
