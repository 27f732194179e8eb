"""Checkpoints, states and data files are data: loading them never runs code.

Every attack here is a real payload: a pickle whose unpickling creates a marker file (the first
test shows it does, so its absence elsewhere means something). It is planted where datarax reads
checkpoints, iterator states and records (in place of a file, next to it, inside a record), and
every test checks that the marker never appears: the load is refused, or the payload is ignored.

The source of datarax holds no ``pickle.load``, ``eval``, ``exec`` or import of a name read from
data; ``docs/guarantees.md`` lists each use of ``pickle`` / ``import_module`` and why it is safe.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flax import nnx

from datarax import OrbaxCheckpointHandler, Pipeline
from datarax.operators import RandomFlip, RandomFlipConfig
from datarax.sources import (
    ArrayRecordSource,
    ArrayRecordSourceConfig,
    MemorySource,
    MemorySourceConfig,
    NumpyFileSource,
    NumpyFileSourceConfig,
    ParquetSource,
    ParquetSourceConfig,
    decode_record,
    write_array_record,
)

SOURCE = Path(__file__).resolve().parents[2] / "src" / "datarax"


class _CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``: the file appears iff something unpickled it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "UNPICKLED"
    yield path
    assert not path.exists(), "a planted pickle was unpickled"


@pytest.fixture
def payload(marker):
    return pickle.dumps(_CreatesMarker(marker))


def test_the_payload_is_live(tmp_path):
    """The control: unpickling the payload does create the marker."""
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(_CreatesMarker(marker))).close()
    assert marker.exists()


# -- checkpoints ------------------------------------------------------------------------------------


def _pipeline() -> Pipeline:
    data = {"image": np.zeros((10, 4, 4, 1), np.float32), "label": np.arange(10, dtype=np.int32)}
    source = MemorySource(MemorySourceConfig(), data=data)
    return Pipeline(
        source=source, stages=[RandomFlip(RandomFlipConfig())], batch_size=4, rngs=nnx.Rngs(0), shuffle=True
    )


def _checkpoint(directory: Path) -> dict:
    """A real step 1 of a pipeline iterator after one batch and a model; the items to restore into."""
    iterator = iter(_pipeline())
    next(iterator)
    with OrbaxCheckpointHandler(directory) as handler:
        handler.save(1, {"data": iterator, "model": nnx.Linear(2, 1, rngs=nnx.Rngs(0))})
    return {"data": iter(_pipeline()), "model": nnx.Linear(2, 1, rngs=nnx.Rngs(1))}


def _replace_every_file(folder: Path, payload: bytes) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            path.write_bytes(payload)


PLANTS = {
    # where the pickle goes -> whether the restore must fail (True) or may ignore it (False)
    "in-place-of-the-iterator-state": (lambda step, p: (step / "data.json" / "metadata").write_bytes(p), True),
    "next-to-the-iterator-state": (
        lambda step, p: [(step / "data.json" / name).write_bytes(p) for name in ("metadata.pkl", "state.pickle")],
        False,
    ),
    "as-a-sibling-item-file": (lambda step, p: (step / "data.pkl").write_bytes(p), False),
    # Orbax logs that it cannot read this file and restores without it.
    "in-place-of-the-step-metadata": (lambda step, p: (step / "_CHECKPOINT_METADATA").write_bytes(p), False),
    "in-place-of-every-array-file": (lambda step, p: _replace_every_file(step / "model.arrays", p), True),
}


@pytest.mark.parametrize("plant", list(PLANTS))
def test_a_pickle_planted_in_a_checkpoint_is_never_unpickled(tmp_path, marker, payload, plant):
    items = _checkpoint(tmp_path)
    place, must_fail = PLANTS[plant]
    place(tmp_path / "1", payload)
    before = items["data"].get_state()
    with OrbaxCheckpointHandler(tmp_path) as handler:
        try:
            handler.restore(items, step=1)
        except (ValueError, OSError) as error:  # refused, naming what it could not read
            assert must_fail is not False, f"{plant}: {error}"
            assert "step 1" in str(error) or str(tmp_path) in str(error), str(error)
            assert items["data"].get_state() == before
        else:
            assert must_fail is not True, f"{plant}: the damaged checkpoint was restored"
            assert items["data"].get_state()["position"] == 4
    assert not marker.exists()


def test_an_item_that_is_only_a_pickle_is_refused(tmp_path, marker, payload):
    items = _checkpoint(tmp_path)
    (tmp_path / "1" / "evil.json").mkdir()
    (tmp_path / "1" / "evil.json" / "metadata").write_bytes(payload)
    with OrbaxCheckpointHandler(tmp_path) as handler, pytest.raises(ValueError, match="truncated or not JSON"):
        handler.restore({"evil": items["data"]}, step=1)


def test_the_type_a_checkpoint_names_is_never_imported(tmp_path, monkeypatch):
    """The JSON document records the saved object's class; restoring never imports it."""
    module = tmp_path / "planted_checkpoint_module.py"
    module.write_text("import sys\nsys.planted_checkpoint_module_imported = True\nclass Thing: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    items = _checkpoint(tmp_path / "checkpoint")
    document = tmp_path / "checkpoint" / "1" / "data.json" / "metadata"
    doc = json.loads(document.read_text())
    doc["type"] = "planted_checkpoint_module.Thing"
    document.write_text(json.dumps(doc))
    with OrbaxCheckpointHandler(tmp_path / "checkpoint") as handler:
        handler.restore({"data": items["data"]}, step=1)
    assert items["data"].get_state()["position"] == 4
    assert "planted_checkpoint_module" not in sys.modules
    assert not hasattr(sys, "planted_checkpoint_module_imported")


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda s: {**s, "__reduce__": ["os", "system"]}, "unexpected=['__reduce__']"),
        (lambda s: {**s, "epoch": {"__class__": "os.system"}}, "epoch must be an int"),
        (lambda s: {**s, "fingerprint": str(s["fingerprint"])}, "fingerprint is"),
        (lambda s: {**s, "stop_epoch": "None"}, "stop_epoch"),
    ],
    ids=["extra-key", "object-as-epoch", "string-fingerprint", "string-stop"],
)
def test_a_json_state_with_extra_keys_or_wrong_types_is_rejected(change, says):
    iterator = iter(_pipeline())
    next(iterator)
    state = iterator.get_state()
    with pytest.raises(ValueError, match="set_state") as info:
        iterator.set_state(change(json.loads(json.dumps(state))))
    assert says in str(info.value)
    assert iterator.get_state() == state


# -- data files ---------------------------------------------------------------------------------------


def test_a_npy_file_of_pickled_objects_is_refused_unread(tmp_path, marker):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([_CreatesMarker(marker), None], dtype=object), allow_pickle=True)
    with pytest.raises(TypeError, match="holds Python objects"):
        NumpyFileSource(NumpyFileSourceConfig(), paths={"x": str(path)})


def test_a_npy_header_holding_code_is_refused(tmp_path, marker):
    """numpy parses the header as a Python literal, never as code (``ast.literal_eval``)."""
    header = f"{{'descr': __import__('builtins').open({str(marker)!r}, 'w'), 'fortran_order': False, 'shape': (3,)}}"
    header = header.ljust(118) + "\n"
    path = tmp_path / "evil.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(24))
    with pytest.raises(ValueError, match="evil.npy is not a valid .npy file"):
        NumpyFileSource(NumpyFileSourceConfig(), paths={"x": str(path)})


def test_a_pickle_in_an_array_record_is_refused_as_a_record(tmp_path, payload):
    with pytest.raises(ValueError, match="bad magic"):
        decode_record(payload + bytes(16))
    from array_record.python.array_record_module import ArrayRecordWriter

    path = str(tmp_path / "evil.array_record")
    writer = ArrayRecordWriter(path, "group_size:1")
    writer.write(payload)
    writer.close()
    with pytest.raises(ValueError, match="failed to decode"):
        ArrayRecordSource(ArrayRecordSourceConfig(), paths=path)


def _record(fields: list[dict], buffers: bytes = b"") -> bytes:
    header = json.dumps({"fields": fields}).encode()
    return b"DRXR" + struct.pack("<HHI", 1, 0, len(header)) + header + buffers


@pytest.mark.parametrize(
    "dtype", ["object", "O", "builtins.eval", "numpy.dtype", "os.system", "|O", "V8", "<U4", "datetime64"]
)
def test_a_record_naming_an_unsafe_dtype_is_refused(dtype):
    record = _record([{"name": "x", "kind": "array", "dtype": dtype, "shape": [1], "offset": 0, "length": 8}])
    with pytest.raises(ValueError, match="dtype"):
        decode_record(record)


def test_path_traversal_in_record_field_names_is_inert(tmp_path, monkeypatch):
    """Field names are dict keys: a name that looks like a path is read as a column, never as a file."""
    data = tmp_path / "data"
    work = tmp_path / "a" / "b" / "c"
    data.mkdir()
    work.mkdir(parents=True)
    names = ["../../../escaped.txt", "/tmp/absolute_escape.txt", "..", "label"]
    path = str(data / "traversal.array_record")
    write_array_record(
        path, ({**{n: np.full(2, i, np.int32) for n in names[:3]}, "label": np.int32(i)} for i in range(6))
    )
    monkeypatch.chdir(work)
    before = sorted(p for p in tmp_path.rglob("*"))
    source = ArrayRecordSource(ArrayRecordSourceConfig(), paths=path)
    assert sorted(source.element_spec()) == sorted(names)
    with iter(Pipeline(source=source, batch_size=3, rngs=nnx.Rngs(0), shuffle=True, workers=2)) as batches:
        seen = [np.asarray(b["../../../escaped.txt"])[:, 0].tolist() for b in batches]
    assert sorted(sum(seen, [])) == list(range(6))
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    assert not Path("/tmp/absolute_escape.txt").exists()


def test_a_parquet_extension_type_carrying_a_pickle_is_not_unpickled(tmp_path, marker, payload):
    """pyarrow once unpickled ``arrow.py_extension_type`` metadata (CVE-2023-47248); never again here."""
    field = pa.field(
        "x",
        pa.int32(),
        metadata={b"ARROW:extension:name": b"arrow.py_extension_type", b"ARROW:extension:metadata": payload},
    )
    table = pa.Table.from_arrays([pa.array(np.arange(8, dtype=np.int32))], schema=pa.schema([field]))
    path = str(tmp_path / "extension.parquet")
    pq.write_table(table, path, store_schema=True)
    try:
        source = ParquetSource(ParquetSourceConfig(), paths=path)
        labels = [b["x"].tolist() for b in Pipeline(source=source, batch_size=4, workers=0)]
    except (ValueError, TypeError, OSError):
        return  # refused, also fine
    assert sum(labels, []) == list(range(8))  # read as plain int32 data


def test_a_toml_pipeline_naming_a_pickled_npy_file_is_refused(tmp_path, marker):
    """``datarax.config`` loads the arrays a pipeline file names with ``allow_pickle=False``."""
    config = pytest.importorskip("datarax.config")
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "labels.npy", np.array([_CreatesMarker(marker)] * 4, dtype=object), allow_pickle=True)
    (tmp_path / "pipeline.toml").write_text(
        '[pipeline]\nbatch_size = 2\n\n[source]\ntype = "MemorySource"\ndata = { label = "data/labels.npy" }\n'
    )
    with pytest.raises(config.ConfigError) as info:
        config.load_pipeline(tmp_path / "pipeline.toml")
    assert "labels.npy" in str(info.value)


# -- the source -------------------------------------------------------------------------------------

# Every use in src/datarax of what could run code, and why it is safe (docs/guarantees.md says more).
ALLOWED = {
    ("pipeline/host_stage.py", "import pickle"): "checks a worker recipe pickles (dumps, never loads)",
    ("pipeline/host_stage.py", "pickle.dumps(recipe)"): "same",
    ("__init__.py", "importlib.import_module(_EXPORTS[name])"): "a fixed table of datarax modules",
    ("typing.py", "importlib.import_module(module_name)"): "a fixed table of datarax modules",
    ("core/extras.py", "importlib.import_module(module)"): "backend names written in datarax's source",
    ("config/__init__.py", "importlib.import_module(_EXPORTS[name])"): "a fixed table of datarax modules",
    ("config/commands.py", "importlib.import_module(module_name)"): "the CLI's own --register option (user code)",
    ("testing.py", "importlib.import_module(module_name)"): "check_resume's build_pipeline, named by the user",
    # `datarax bench` (the CLI package): the checkout's own benchmark modules, and the peer libraries
    # it measures against ("grain", "torch"), names written in its source.
    ("cli/bench.py", 'importlib.import_module("benchmarks.run")'): "the checkout's benchmark modules",
    ("cli/bench.py", "importlib.import_module(module)"): "peer libraries named in its source",
}


_RISKY = re.compile(
    r"\bimport pickle\b|\bpickle\.\w+\(|Unpickler|allow_pickle=True|\bmarshal\.|\bshelve\."
    r"|(?<![\w.])eval\(|(?<![\w.])exec\(|import_module\(|__import__\("
)


def _risky_lines():
    for path in sorted(SOURCE.rglob("*.py")):
        for line in path.read_text().splitlines():
            code = line.split("#", 1)[0].strip()
            if code.startswith((">>>", "...")) or not _RISKY.search(code):
                continue
            yield str(path.relative_to(SOURCE)), code


def test_every_use_of_pickle_eval_exec_or_import_module_in_the_source_is_known():
    found = list(_risky_lines())
    unknown = [(path, code) for path, code in found if not any(p == path and c in code for p, c in ALLOWED)]
    assert not unknown, f"new uses of pickle/eval/exec/imports by name: review them and list them in ALLOWED: {unknown}"
    assert not any("pickle.load" in code or "allow_pickle=True" in code for _, code in found)


def test_process_workers_receive_recipes_from_their_parent_only():
    """Worker processes are ``spawn``ed: they receive the recipe (class + constructor arguments) from
    the parent through multiprocessing's own pipe; no checkpoint, state or record is ever unpickled."""
    from datarax.pipeline import host_pool

    assert 'get_context("spawn")' in Path(host_pool.__file__).read_text()
    assert os.path.exists(host_pool.__file__)
