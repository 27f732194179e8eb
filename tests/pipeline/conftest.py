"""Makes ``pipeline_helpers`` importable by the tests here (pytest runs with ``--import-mode=importlib``).

The resume tests also import it from a fresh ``python -c`` process, so it is a plain module
rather than a set of fixtures.
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
