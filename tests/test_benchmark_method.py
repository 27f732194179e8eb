"""How ``benchmarks/run.py`` turns timed rounds into ratios: the reference choice and the held-out ratio."""

from __future__ import annotations

import doctest
import random

import pytest

from benchmarks import run
from benchmarks.run import held_out_ratios, paired_ratios, reference_for

ANCHOR = "datarax"


def test_the_module_examples_pass():
    result = doctest.testmod(run, raise_on_error=False)
    assert result.attempted >= 2 and result.failed == 0


def test_the_reference_is_the_loop_that_beat_the_anchor_by_the_most_paired():
    # "slow" has the lower median epoch of the two loops, because it had the machine's fast rounds; within
    # each round "steady" beats the anchor by more.
    times = {
        "steady": [1.8, 1.8, 1.8, 0.9, 0.9],
        "slow": [1.7, 1.7, 2.0, 1.0, 1.0],
        ANCHOR: [2.0, 2.0, 2.0, 1.0, 1.0],
    }
    rounds = range(5)
    assert reference_for(times, ["steady", "slow"], ANCHOR, rounds) == "steady"
    paired = paired_ratios(times, "steady", rounds)
    assert paired["steady"] == 1.0
    assert paired[ANCHOR] == pytest.approx(0.9)
    assert sorted(times, key=lambda name: sorted(times[name])[2])[0] == "slow"  # the lowest median epoch


def test_held_out_ratios_choose_on_one_half_and_measure_on_the_other():
    # "lucky" is fast on the even rounds only; chosen there, it is measured on the odd rounds.
    times = {
        "honest": [1.0] * 6,
        "lucky": [0.5, 1.5, 0.5, 1.5, 0.5, 1.5],
        ANCHOR: [1.0] * 6,
    }
    references, ratios = held_out_ratios(times, ["honest", "lucky"], ANCHOR)
    assert references == ["lucky", "honest"]
    # Fold 1: reference "lucky" on the odd rounds (1.5 s); fold 2: "honest" on the even rounds (1.0 s).
    assert ratios[ANCHOR] == pytest.approx((1.5 + 1.0) / 2)
    # Chosen on the same rounds it is measured on, the reference would have been "lucky" with 0.5 s on
    # half the rounds and the anchor's in-sample figure the lowest of any choice.
    in_sample = paired_ratios(times, reference_for(times, ["honest", "lucky"], ANCHOR, range(6)), range(6))
    assert in_sample[ANCHOR] <= ratios[ANCHOR]


def test_held_out_ratios_of_identical_systems_have_no_winners_curse():
    # Five copies of the anchor's own loop, timed with independent noise: choosing the best of them on the
    # same rounds makes the anchor look slower than it is; the held-out ratio stays near 1.
    rng = random.Random(7)
    in_sample, held_out = [], []
    for _ in range(40):
        times = {name: [1.0 + rng.gauss(0, 0.15) for _ in range(16)] for name in ["a", "b", "c", "d", "e", ANCHOR]}
        tuned = ["a", "b", "c", "d", "e"]
        in_sample.append(paired_ratios(times, reference_for(times, tuned, ANCHOR, range(16)), range(16))[ANCHOR])
        held_out.append(held_out_ratios(times, tuned, ANCHOR)[1][ANCHOR])
    mean_in, mean_out = sum(in_sample) / 40, sum(held_out) / 40
    assert mean_in < 0.97  # biased: the best of five noisy copies
    assert abs(mean_out - 1.0) < 0.03
    assert mean_out > mean_in + 0.04


def test_held_out_ratios_need_two_rounds():
    with pytest.raises(ValueError, match=r"held_out_ratios: times must hold at least 2 rounds, got 1"):
        held_out_ratios({"a": [1.0], ANCHOR: [1.0]}, ["a"], ANCHOR)


def test_measure_refuses_too_few_rounds_and_a_missing_anchor():
    with pytest.raises(ValueError, match=r"measure: repeats must be at least 2 .*got 1"):
        run.measure([], repeats=1)
    workload = run.workload_groups(["W2"], 0.01)[0]
    with pytest.raises(ValueError, match=r"measure: the systems of W2 must include the anchor 'nobody'"):
        run.measure(workload, repeats=2, anchor="nobody")
