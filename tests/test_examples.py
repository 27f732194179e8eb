"""The examples in ``examples/`` run, and do what they say.

Each example is loaded by path (``examples/`` is not a package) and run through its ``main``.
"""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def learned_augmentation():
    return load_example("learned_augmentation")


def test_learned_augmentation_trains_the_magnitudes_through_the_pipeline(learned_augmentation, capsys):
    results = learned_augmentation.main(["--steps", "60", "--batch-size", "64", "--seed", "0", "--log-every", "20"])
    out = capsys.readouterr().out
    assert "step    60" in out and "held-out accuracy" in out

    losses = results["losses"]
    assert len(losses) == 60 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5  # from ~2.5 (chance) to well below it

    initial, final = results["initial_magnitudes"], results["final_magnitudes"]
    assert set(initial) == set(final) == {"brightness", "contrast"}
    for name in final:
        assert initial[name] == pytest.approx(learned_augmentation.INITIAL_MAGNITUDE)
        assert math.isfinite(final[name]) and final[name] >= 0
        assert abs(final[name] - initial[name]) > 0.01
        # The part of the gradient that flowed through the pipeline's operator (not the entropy
        # reward) was nonzero: compute_batch inside the step is differentiated.
        assert np.max(np.abs(results["ce_grads"][name])) > 1e-3

    assert results["accuracy"] > 0.5  # chance is 0.1
    assert results["accuracy"] > results["initial_accuracy"] + 0.3


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--steps", "0"), ("--batch-size", "-1"), ("--batch-size", "100000"), ("--seed", "-3"), ("--lr", "0")],
)
def test_learned_augmentation_rejects_a_bad_argument_by_name(learned_augmentation, capsys, flag, value):
    with pytest.raises(SystemExit) as excinfo:
        learned_augmentation.main([flag, value])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and value in err


def test_learned_augmentation_train_names_a_bad_keyword(learned_augmentation):
    with pytest.raises(ValueError, match=r"train: steps must be a positive int, got 0"):
        learned_augmentation.train(steps=0)
    with pytest.raises(ValueError, match=r"train: strength must be a positive finite number, got nan"):
        learned_augmentation.train(strength=float("nan"))
