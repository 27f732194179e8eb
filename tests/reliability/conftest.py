"""Reliability tests: bad input, security, faults and soak.

Makes ``reliability_builders`` importable (the fresh processes of ``check_resume`` and the
fault tests import it by name) and adds ``--soak``, which runs the long soak test. Run it with

    pytest tests/reliability/test_soak.py --soak -n 0

(pytest reads this option only when this directory or a file in it is named on the command line).
"""

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


def pytest_addoption(parser):
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the long soak test of tests/reliability/test_soak.py (200 epochs, a few minutes)",
    )


@pytest.fixture
def soak_requested(request):
    """Whether ``--soak`` was given (False when pytest did not load this option)."""
    return bool(request.config.getoption("--soak", default=False))
