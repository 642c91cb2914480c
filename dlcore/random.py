"""Random number generation: one generator per device, all seeded by ``manual_seed``.

``cpu`` and ``emu`` each own a NumPy ``Generator`` (PCG64) seeded identically, so the two
devices draw the same numbers for the same seed (tests compare them); each CUDA device
owns a CuPy ``RandomState`` created on first use with the last seed given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .device import Device
from .device import capturing as _capturing

_seed: int | None = None
_generators: dict[Device, Any] = {}


def manual_seed(seed: int) -> None:
    """Seed every device's generator (existing and future ones). Any int64 is accepted, as
    in PyTorch: a negative seed is taken modulo 2^64 (its two's-complement bits)."""
    global _seed
    value = int(seed)
    if not -2**63 <= value < 2**64:
        raise ValueError(f"manual_seed: seed must fit in 64 bits, got {seed}")
    _seed = value % 2**64
    _generators.clear()


def initial_seed() -> int | None:
    return _seed


def generator_for(device: Device) -> Any:
    if _capturing and device in _capturing:
        # NOTE: uniform and normal draws inside a capture go to the graph's Philox stream
        # (uniform_array, normal_array); anything else would replay with its seed frozen,
        # repeating the same numbers, so it is refused rather than repeated silently.
        raise RuntimeError(f"random numbers on {device} inside CUDA graph capture: only "
                           "uniform and normal draws (rand, randn, dropout, uniform_, "
                           "normal_) are graph-safe; keep integer draws and permutations "
                           "out of the captured region")
    gen = _generators.get(device)
    if gen is None:
        gen = _generators[device] = device.new_generator(_seed)
    return gen


def _shape(shape: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in shape)


def uniform_array(shape: Any, low: float, high: float, dtype: np.dtype, device: Device) -> Any:
    if _streams:
        stream = _streams.get(device)
        if stream is not None:
            return stream.draw("uniform", _shape(shape), low, high - low, dtype)
    with device:
        return generator_for(device).uniform(low, high, _shape(shape)).astype(dtype, copy=False)


def normal_array(shape: Any, mean: float, std: float, dtype: np.dtype, device: Device) -> Any:
    if _streams:
        stream = _streams.get(device)
        if stream is not None:
            return stream.draw("normal", _shape(shape), mean, std, dtype)
    with device:
        return generator_for(device).normal(mean, std, _shape(shape)).astype(dtype, copy=False)


# ---- graph-safe random numbers (Philox4x64-10, kernels/philox.cu) ---------------------------
# The stream drawing for each device while a CUDA graph is captured or replayed on it
# (dlcore.graphs sets and clears it: a dlcore.ops.philox_cuda.PhiloxStream). Elsewhere the
# devices' generators above draw.
_streams: dict[Device, Any] = {}


def integers_array(low: int, high: int, shape: Any, dtype: np.dtype, device: Device) -> Any:
    with device:
        return generator_for(device).integers(low, high, _shape(shape)).astype(dtype,
                                                                                copy=False)


def permutation_array(n: int, device: Device) -> Any:
    with device:
        return generator_for(device).permutation(n)


def get_rng_state() -> dict[str, Any]:
    """The seed and the state of every cpu/emu generator drawn from so far: JSON-friendly
    nested dicts of ints and strings, saved in checkpoints (``dlcore.save``) so a resumed
    run draws the same numbers as an uninterrupted one.

    NOTE: CuPy's ``RandomState`` exposes no state, so CUDA generators are not captured;
    after :func:`set_rng_state` they restart from the seed.
    """
    return {"seed": _seed,
            "generators": {str(dev): gen.bit_generator.state
                           for dev, gen in _generators.items() if hasattr(gen, "bit_generator")}}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned; generators absent from ``state`` (not
    yet used when it was taken) restart from its seed, as they would have."""
    global _seed
    generators = {}
    for name, bit_state in state["generators"].items():
        if bit_state.get("bit_generator") != "PCG64":
            raise ValueError(f"set_rng_state: generator {name!r} has bit generator "
                             f"{bit_state.get('bit_generator')!r}, expected 'PCG64'")
        bits = np.random.PCG64()
        bits.state = bit_state
        generators[Device(name)] = np.random.Generator(bits)
    _seed = None if state["seed"] is None else int(state["seed"])
    _generators.clear()
    _generators.update(generators)
