"""dlcore.bench.timing.time_pair: a step and its reference timed in alternating samples (so a
drifting machine slows both alike), their medians; one after the other while energy is
metered. A fake clock that each function advances makes the medians exact."""

from __future__ import annotations

import pytest

from dlcore.bench import timing


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def perf_counter(self) -> float:
        return self.now

    def fn(self, name: str, seconds: list[float]):
        def call() -> None:
            self.calls.append(name)
            self.now += seconds[len([c for c in self.calls if c == name]) % len(seconds)]
        return call


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(timing.time, "perf_counter", c.perf_counter)
    return c


def test_samples_alternate_and_medians_are_each_functions(clock: Clock) -> None:
    # the step takes 1, 3 or 2 s in turn, the reference 5 s; the step's median is 2 s
    step, ref = clock.fn("a", [1.0, 3.0, 2.0]), clock.fn("b", [5.0])
    us, ref_us = timing.time_pair(step, ref, reps=6, warmup=1, inner=2)
    assert ref_us == pytest.approx(5e6)
    assert us == pytest.approx(2e6)
    # one warm-up call of each, then 3 samples of 2 calls each, alternating
    assert clock.calls == ["a", "b"] + ["a", "a", "b", "b"] * 3


def test_while_metered_each_loop_runs_alone(clock: Clock) -> None:
    step, ref = clock.fn("a", [1.0]), clock.fn("b", [4.0])
    with timing.energy_per_case("cpu"):
        us, ref_us = timing.time_pair(step, ref, reps=2, warmup=1, inner=1)
    assert (us, ref_us) == (pytest.approx(1e6), pytest.approx(4e6))
    assert clock.calls == ["a"] * 3 + ["b"] * 3
