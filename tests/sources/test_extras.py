"""Heavy backends are extras: ``import datarax`` imports none, and a missing one names its ``pip install``."""

import subprocess
import sys

import numpy as np
import pytest

BACKENDS = ("pyarrow", "array_record", "PIL", "simplejpeg", "cv2", "torch", "grain", "datasets")


def test_importing_datarax_and_its_packages_imports_no_backend():
    code = (
        "import sys, datarax, datarax.sources, datarax.operators, datarax.pipeline, datarax.checkpoint\n"
        f"print(sorted(m for m in {BACKENDS!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def _blocked(monkeypatch, *modules):
    # Python's documented way to make an import fail: a None entry in sys.modules.
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def test_a_parquet_source_without_pyarrow_names_the_extra(monkeypatch, tmp_path):
    from datarax.sources import ParquetSource, ParquetSourceConfig

    _blocked(monkeypatch, "pyarrow", "pyarrow.parquet")
    expected = r"ParquetSource needs the 'pyarrow' package: pip install 'datarax\[parquet\]'"
    with pytest.raises(ImportError, match=expected):
        ParquetSource(ParquetSourceConfig(), paths=tmp_path / "x.parquet")


def test_an_array_record_source_without_array_record_names_the_extra(monkeypatch, tmp_path):
    from datarax.sources import ArrayRecordSource, ArrayRecordSourceConfig

    _blocked(monkeypatch, "array_record", "array_record.python", "array_record.python.array_record_module")
    with pytest.raises(ImportError, match=r"pip install 'datarax\[arrayrecord\]'"):
        ArrayRecordSource(ArrayRecordSourceConfig(), paths=tmp_path / "x.array_record")


def test_image_operators_without_their_decoders_name_the_extra(monkeypatch):
    from datarax.operators import DecodeImage, DecodeImageConfig

    _blocked(monkeypatch, "PIL", "PIL.Image", "simplejpeg")
    with pytest.raises(ImportError, match=r"pip install 'datarax\[image\]'"):
        DecodeImage(DecodeImageConfig()).apply({"image": np.zeros(4, np.uint8).tobytes()}, None)
