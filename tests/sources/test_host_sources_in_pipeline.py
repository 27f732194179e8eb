"""Every file source inside a Pipeline: exact shuffled epochs, the same stream for any workers, resume anywhere.

The files are real (.npy, Parquet, ArrayRecord written here); each record's image encodes its
index, so a batch can be checked against the records its labels name.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

# Shared by this process and the fresh process of the resume test: builds the same pipeline from
# the same files.
BUILD = """
import numpy as np
from flax import nnx
from datarax import Pipeline
from datarax.operators import RandomFlip, RandomFlipConfig
from datarax.sources import (ArrayRecordSource, ArrayRecordSourceConfig, GrainSource, GrainSourceConfig,
                             HFSource, HFSourceConfig, MixSource, MixSourceConfig, NumpyFileSource,
                             NumpyFileSourceConfig, ParquetSource, ParquetSourceConfig, decode_record)

def build(kind, folder, **kwargs):
    if kind == "npy":
        source = NumpyFileSource(NumpyFileSourceConfig(),
                                 paths={"image": f"{folder}/image.npy", "label": f"{folder}/label.npy"})
    elif kind == "parquet":
        source = ParquetSource(ParquetSourceConfig(), paths=folder)
    elif kind == "hf":
        source = HFSource(HFSourceConfig(), path=f"{folder}/hf")
    elif kind == "grain":
        import grain
        records = grain.MapDataset.source(grain.sources.ArrayRecordDataSource([f"{folder}/all.array_record"]))
        source = GrainSource(GrainSourceConfig(), data_source=records.map(decode_record))
    elif kind == "mix":
        parts = [NumpyFileSource(NumpyFileSourceConfig(),
                                 paths={"image": f"{folder}/image-{p}.npy", "label": f"{folder}/label-{p}.npy"})
                 for p in (0, 1)]
        # Weights in proportion to the sizes: one mixture epoch reads every record exactly once.
        source = MixSource(MixSourceConfig(weights=(20.0, 17.0), seed=5), sources=parts)
    else:
        source = ArrayRecordSource(ArrayRecordSourceConfig(), paths=f"{folder}/*.array_record")
    options = {"batch_size": 8, "rngs": nnx.Rngs(3), "shuffle": True, "num_epochs": 2, **kwargs}
    return Pipeline(source=source, stages=[RandomFlip(RandomFlipConfig())], **options)

def collect(iterator, count=None):
    out = []
    for batch in iterator:
        out.append({k: np.asarray(v).tolist() for k, v in batch.items()})
        if count is not None and len(out) == count:
            break
    return out
"""
NAMESPACE: dict = {}
exec(BUILD, NAMESPACE)  # noqa: S102
build, collect = NAMESPACE["build"], NAMESPACE["collect"]

N = 37
KINDS = ["npy", "parquet", "array_record", "hf", "grain", "mix"]


def _write(kind, folder):
    images = np.broadcast_to(np.arange(N, dtype=np.uint8)[:, None, None, None], (N, 4, 4, 3)).copy()
    images[:, :, 0, 0] += 100  # column 0 differs from the rest: a horizontal flip moves it
    labels = np.arange(N, dtype=np.int32)
    if kind == "npy":
        np.save(folder / "image.npy", images)
        np.save(folder / "label.npy", labels)
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        flat = pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), 4 * 4 * 3)
        nested = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat.flatten(), 3), 4)
        nested = pa.FixedSizeListArray.from_arrays(nested, 4)
        # Two files with several row groups: reads cross file and row-group boundaries.
        for part, rows in enumerate((slice(0, 20), slice(20, N))):
            table = pa.table({"image": nested[rows], "label": labels[rows]})
            pq.write_table(table, folder / f"part-{part}.parquet", row_group_size=6)
    elif kind == "hf":
        import datasets

        features = datasets.Features({"image": datasets.Array3D((4, 4, 3), "uint8"), "label": datasets.Value("int32")})
        table = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        table.save_to_disk(str(folder / "hf"))
    elif kind == "grain":
        from datarax.sources import write_array_record

        write_array_record(folder / "all.array_record", ({"image": images[i], "label": labels[i]} for i in range(N)))
    elif kind == "mix":
        for part, rows in enumerate((slice(0, 20), slice(20, N))):
            np.save(folder / f"image-{part}.npy", images[rows])
            np.save(folder / f"label-{part}.npy", labels[rows])
    else:
        from datarax.sources import write_array_record

        for part, rows in enumerate((range(0, 15), range(15, N))):
            records = ({"image": images[i], "label": labels[i]} for i in rows)
            write_array_record(folder / f"part-{part}.array_record", records)
    return images


@pytest.fixture(params=KINDS)
def files(request, tmp_path):
    images = _write(request.param, tmp_path)
    return request.param, str(tmp_path), images


def _check_rows(batch, images):
    for image, label, valid in zip(batch["image"], batch["label"], batch["valid_mask"], strict=True):
        image = np.asarray(image)
        want = images[label]
        assert np.array_equal(image, want) or np.array_equal(image, want[:, ::-1]), (label, valid)


def test_element_spec_is_the_files_records(files):
    kind, folder, _ = files
    spec = build(kind, folder).element_spec()
    assert spec["image"].shape == (4, 4, 3) and spec["image"].dtype == np.uint8
    assert spec["label"].shape == () and spec["label"].dtype == np.int32


def test_every_epoch_is_an_exact_permutation_of_the_records(files):
    kind, folder, images = files
    batches = collect(build(kind, folder, workers=2))
    assert len(batches) == 2 * 5
    epochs = []
    for epoch in range(2):
        labels = [
            label
            for batch in batches[epoch * 5 : (epoch + 1) * 5]
            for label, valid in zip(batch["label"], batch["valid_mask"], strict=True)
            if valid
        ]
        assert sorted(labels) == list(range(N))
        epochs.append(labels)
        for batch in batches[epoch * 5 : (epoch + 1) * 5]:
            _check_rows(batch, images)
    assert epochs[0] != epochs[1]  # a new permutation every epoch
    assert batches[4]["valid_mask"] == [True] * 5 + [False] * 3


def test_the_stream_is_the_same_for_any_worker_count_and_kind(files):
    kind, folder, _ = files
    inline = collect(build(kind, folder, workers=0))
    assert collect(build(kind, folder, workers=3, read_ahead=5)) == inline
    assert collect(build(kind, folder, workers=2, worker_kind="process")) == inline


def test_resume_in_a_fresh_process_continues_the_stream(files):
    kind, folder, _ = files
    full = collect(build(kind, folder))
    iterator = iter(build(kind, folder, workers=2))
    collect(iterator, count=3)
    state = json.dumps(iterator.get_state())
    iterator.close()
    code = BUILD + (
        "import json, sys\n"
        "iterator = iter(build(sys.argv[1], sys.argv[2], workers=2, worker_kind='process'))\n"
        "iterator.set_state(json.loads(sys.argv[3]))\n"
        "print('REST ' + json.dumps(collect(iterator)))\n"
        "iterator.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, kind, folder, state],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rest = next(line for line in done.stdout.splitlines() if line.startswith("REST "))
    assert json.loads(rest[len("REST ") :]) == full[3:]


def test_a_file_truncated_after_construction_is_named_when_read(tmp_path):
    _write("npy", tmp_path)
    pipeline = build("npy", str(tmp_path), workers=0)
    os.truncate(tmp_path / "image.npy", 200)  # the header survives, the records do not
    from datarax.pipeline import HostStageError

    with pytest.raises(HostStageError, match="image.npy"):
        next(iter(pipeline))
