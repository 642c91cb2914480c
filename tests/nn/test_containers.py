"""Sequential, ModuleList, ModuleDict: indexing, mutation, registration of children."""

from __future__ import annotations

from collections import OrderedDict

import pytest

import dlcore
import dlcore.nn as nn


def test_sequential_indexing_slicing_and_mutation() -> None:
    a, b, c = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
    seq = nn.Sequential(a, b, c)
    assert len(seq) == 3 and seq[0] is a and seq[-1] is c and list(seq) == [a, b, c]
    head = seq[:2]
    assert isinstance(head, nn.Sequential) and list(head) == [a, b]
    assert head(dlcore.ones(4, 2)).shape == (4, 3)
    assert seq(dlcore.ones(4, 2)).shape == (4, 1)
    with pytest.raises(IndexError, match="index 3 is out of range for 3 modules"):
        seq[3]
    d = nn.Tanh()
    seq.append(d)
    assert seq[3] is d and "3" in dict(seq.named_children())
    del seq[1]
    assert [n for n, _ in seq.named_children()] == ["0", "1", "2"] and seq[1] is c
    seq[0] = nn.Identity()
    assert isinstance(seq[0], nn.Identity)
    seq.insert(0, b)
    assert seq[0] is b and len(seq) == 4


def test_sequential_from_ordered_dict_keeps_names() -> None:
    seq = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 2)), ("act", nn.ReLU())]))
    assert [n for n, _ in seq.named_parameters()] == ["fc.weight", "fc.bias"]
    assert seq.fc is seq[0]


def test_module_list_registers_children() -> None:
    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    assert len(layers) == 3 and len(list(layers.parameters())) == 6
    layers.append(nn.Linear(2, 1))
    layers += [nn.ReLU()]
    assert len(layers) == 5 and isinstance(layers[-1], nn.ReLU)
    assert isinstance(layers[1:3], nn.ModuleList) and len(layers[1:3]) == 2
    del layers[0]
    assert [n for n, _ in layers.named_children()] == ["0", "1", "2", "3"]
    layers.insert(1, nn.Tanh())
    assert isinstance(layers[1], nn.Tanh)
    x = dlcore.ones(1, 2)
    for layer in layers:
        if isinstance(layer, nn.Linear) and layer.out_features == 2:
            x = layer(x)
    assert x.shape == (1, 2)


def test_module_dict() -> None:
    heads = nn.ModuleDict({"cls": nn.Linear(4, 3), "box": nn.Linear(4, 2)})
    heads["aux"] = nn.Linear(4, 1)
    assert list(heads) == ["cls", "box", "aux"] and "box" in heads and len(heads) == 3
    assert [n for n, _ in heads.named_parameters()][:2] == ["cls.weight", "cls.bias"]
    assert heads.pop("aux").out_features == 1
    assert list(heads.keys()) == ["cls", "box"]
    assert [k for k, _ in heads.items()] == ["cls", "box"]
    del heads["cls"]
    assert list(heads.values())[0].out_features == 2
    heads.clear()
    assert len(heads) == 0
