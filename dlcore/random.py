"""Random number generation: one generator per device, all seeded by ``manual_seed``.

``cpu`` and ``emu`` each own a NumPy ``Generator`` (PCG64) seeded identically, so the two
devices draw the same numbers for the same seed (tests compare them); each CUDA device owns a
:class:`CudaGenerator`, created on first use with the last seed given: uniform and normal draws
from Philox4x64-10 blocks on the device (kernels/philox.cu, the graph-safe streams' kernels),
integers and permutations from a PCG64 on the host. Its whole state is a counter and a PCG64
state, so :func:`get_rng_state` captures CUDA generators too and a run resumed on a GPU draws
the numbers the uninterrupted run would have. (CuPy's ``RandomState`` exposes no state: with
it, a resumed run drew other numbers; seen on an H200.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import kernels
from .device import Device
from .device import capturing as _capturing

PHILOX = "Philox4x64-10"
PHILOX_SOURCE = "philox.cu"
PHILOX_THREADS = 256
PHILOX_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
                np.dtype(np.float16): "__half"}
# the second key word of each device's eager generator: far from the graph streams' serial
# numbers (dlcore.graphs keys those (seed, 0), (seed, 1), ...), so the two never overlap
_EAGER_STREAM = 2**63


class PhiloxGenerator:
    """Philox4x64-10 uniform and normal draws on a kernel-running device (``cuda``, ``emu``):
    draw ``i`` of a stream fills its output from blocks ``base[0] + consumed`` onwards, where
    ``base`` is a one-word counter in device memory (zero unless a graph advances it:
    :class:`dlcore.ops.philox_cuda.PhiloxStream`) and ``consumed`` counts the blocks drawn so
    far on the host. The NumPy twin is :mod:`dlcore.ops.philox_cpu`."""

    def __init__(self, device: Device, key: tuple[int, int]) -> None:
        self.device = device
        self.key = (np.uint64(key[0] % 2**64), np.uint64(key[1] % 2**64))
        with device:
            self.base = device.xp.zeros(1, np.uint64)
        self.consumed = 0

    def draw(self, kind: str, shape: tuple[int, ...], a: float, b: float,
             dtype: np.dtype) -> Any:
        """``a + b * U[0, 1)`` (``kind="uniform"``) or ``a + b * N(0, 1)`` (``"normal"``)."""
        dtype = np.dtype(dtype)
        ctype = PHILOX_TYPES.get(dtype)
        if ctype is None:
            raise TypeError(f"{kind} random numbers of dtype {dtype} on {self.device} are not "
                            "supported by the Philox kernels (float16, float32 or float64)")
        n = int(math.prod(shape))
        blocks = (n + 3) // 4
        xp = self.device.xp
        with self.device:
            out = xp.empty(n, dtype)
            if blocks:
                kernels.launch(self.device, PHILOX_SOURCE, f"philox_{kind}<{ctype}>",
                               kernels.grid_1d(blocks, PHILOX_THREADS, max_blocks=4096),
                               (PHILOX_THREADS,),
                               (out, np.int64(n), *self.key, self.base,
                                np.uint64(self.consumed), np.float64(a), np.float64(b)))
        self.consumed += blocks
        return out.reshape(shape)


class CudaGenerator:
    """A CUDA device's generator, with the NumPy ``Generator`` method names the ops call:
    uniform and normal on the device (:class:`PhiloxGenerator`, key ``(seed, 2**63)``),
    integers and permutations drawn on the host by a PCG64 seeded with ``seed`` and copied
    over (index draws are small; a host draw keeps their state in one NumPy object).
    :attr:`state` and its setter are what :func:`get_rng_state` saves and restores."""

    def __init__(self, device: Device, seed: int | None) -> None:
        if seed is None:  # no manual_seed: fresh entropy, as NumPy's default_rng()
            seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
        self.device = device
        self.philox = PhiloxGenerator(device, (seed, _EAGER_STREAM))
        self.host = np.random.Generator(np.random.PCG64(seed))

    def uniform(self, low: float, high: float, shape: tuple[int, ...],
                dtype: Any = np.float64) -> Any:
        return self.philox.draw("uniform", shape, low, high - low, _philox_dtype(dtype))

    def normal(self, mean: float, std: float, shape: tuple[int, ...],
               dtype: Any = np.float64) -> Any:
        return self.philox.draw("normal", shape, mean, std, _philox_dtype(dtype))

    def integers(self, low: int, high: int, shape: tuple[int, ...]) -> Any:
        with self.device:
            return self.device.xp.asarray(self.host.integers(low, high, shape))

    def permutation(self, n: int) -> Any:
        with self.device:
            return self.device.xp.asarray(self.host.permutation(n))

    @property
    def state(self) -> dict[str, Any]:
        return {"bit_generator": PHILOX, "key": [int(k) for k in self.philox.key],
                "counter": self.philox.consumed, "host": self.host.bit_generator.state}

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        k0, k1 = (int(k) for k in value["key"])
        self.philox.key = (np.uint64(k0 % 2**64), np.uint64(k1 % 2**64))
        self.philox.consumed = int(value["counter"])
        self.host.bit_generator.state = value["host"]


def _philox_dtype(dtype: Any) -> np.dtype:
    """The dtype a cuda draw is made in: the requested one where the kernels have it (float16,
    float32, float64), else float64 (then cast by the caller)."""
    dtype = np.dtype(dtype)
    return dtype if dtype in PHILOX_TYPES else np.dtype(np.float64)

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
        gen = _generators[device] = (CudaGenerator(device, _seed) if device.type == "cuda"
                                     else device.new_generator(_seed))
    return gen


def _shape(shape: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in shape)


def uniform_array(shape: Any, low: float, high: float, dtype: np.dtype, device: Device) -> Any:
    if _streams:
        stream = _streams.get(device)
        if stream is not None:
            return stream.draw("uniform", _shape(shape), low, high - low, dtype)
    gen = generator_for(device)
    if isinstance(gen, CudaGenerator):
        return gen.uniform(low, high, _shape(shape), dtype).astype(dtype, copy=False)
    with device:
        return gen.uniform(low, high, _shape(shape)).astype(dtype, copy=False)


def normal_array(shape: Any, mean: float, std: float, dtype: np.dtype, device: Device) -> Any:
    if _streams:
        stream = _streams.get(device)
        if stream is not None:
            return stream.draw("normal", _shape(shape), mean, std, dtype)
    gen = generator_for(device)
    if isinstance(gen, CudaGenerator):
        return gen.normal(mean, std, _shape(shape), dtype).astype(dtype, copy=False)
    with device:
        return gen.normal(mean, std, _shape(shape)).astype(dtype, copy=False)


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
    """The seed and the state of every generator drawn from so far (cpu and emu: PCG64;
    cuda: :attr:`CudaGenerator.state`): JSON-friendly nested dicts of ints and strings,
    saved in checkpoints (``dlcore.save``) so a resumed run draws the same numbers as an
    uninterrupted one."""
    return {"seed": _seed,
            "generators": {str(dev): (gen.state if isinstance(gen, CudaGenerator)
                                      else gen.bit_generator.state)
                           for dev, gen in _generators.items()}}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned; generators absent from ``state`` (not
    yet used when it was taken) restart from its seed, as they would have."""
    global _seed
    generators: dict[Device, Any] = {}
    for name, bit_state in state["generators"].items():
        dev = Device(name)
        expected = PHILOX if dev.type == "cuda" else "PCG64"
        if bit_state.get("bit_generator") != expected:
            raise ValueError(f"set_rng_state: generator {name!r} has bit generator "
                             f"{bit_state.get('bit_generator')!r}, expected {expected!r}")
        if dev.type == "cuda":
            cuda_gen = CudaGenerator(dev, 0)
            cuda_gen.state = bit_state
            generators[dev] = cuda_gen
            continue
        bits = np.random.PCG64()
        bits.state = bit_state
        generators[dev] = np.random.Generator(bits)
    _seed = None if state["seed"] is None else int(state["seed"])
    _generators.clear()
    _generators.update(generators)
