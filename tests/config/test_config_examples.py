"""Every example pipeline file shipped with datarax loads and runs, on real files written here."""

import io
import shutil

import numpy as np
import pytest

from datarax.config import Registry, example_names, example_path, load_pipeline

N = 40
RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (N, 16, 16, 3), dtype=np.uint8)
LABELS = np.arange(N, dtype=np.int32) % 10


def _memory(data):
    np.save(data / "images.npy", IMAGES)
    np.save(data / "labels.npy", LABELS)


def _numpy_file(data):
    np.save(data / "image.npy", IMAGES)
    np.save(data / "label.npy", LABELS)


def _parquet(data):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"label": LABELS, "score": LABELS * np.float32(0.5), "unused": LABELS})
    pq.write_table(table, data / "table.parquet", row_group_size=16)


def _array_record(data):
    from PIL import Image

    from datarax.sources import write_array_record

    def jpeg(image):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG")
        return buffer.getvalue()

    records = ({"image": jpeg(IMAGES[i]), "label": LABELS[i]} for i in range(N))
    write_array_record(str(data / "images.array_record"), records)


def _hf(data):
    import datasets

    datasets.Dataset.from_dict({"label": LABELS, "pixels": IMAGES.reshape(N, -1), "other": LABELS}).save_to_disk(
        str(data / "hf")
    )


def _tfds(data):
    tfds = pytest.importorskip("tensorflow_datasets")

    class Digits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict({"label": tfds.features.ClassLabel(num_classes=10)})
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            yield from ((i, {"label": int(LABELS[i])}) for i in range(N))

    Digits(data_dir=str(data / "tfds"), file_format="array_record").download_and_prepare()


def _mix(data):
    _parquet(data)
    np.save(data / "label.npy", LABELS + 100)


def _grain_range(count):
    import grain

    from datarax.sources import GrainSource, GrainSourceConfig

    dataset = grain.MapDataset.range(count).map(lambda i: {"label": np.int32(i % 10)})
    return GrainSource(GrainSourceConfig(), data_source=dataset)


# example -> (writes its data/ folder, the batch's spec as (name, shape, dtype))
EXAMPLES = {
    "demo": (None, {"image": ((64, 8, 8, 1), np.float32), "label": ((64,), np.int32)}),
    "memory": (_memory, {"image": ((32, 16, 16, 3), np.float32), "label": ((32,), np.int32)}),
    "numpy_file": (_numpy_file, {"image": ((32, 16, 16, 3), np.uint8), "label": ((32,), np.int32)}),
    "parquet": (_parquet, {"label": ((32,), np.int32), "score": ((32,), np.float32)}),
    "array_record": (_array_record, {"image": ((16, 24, 24, 3), np.uint8), "label": ((16,), np.int32)}),
    "hf": (_hf, {"label": ((32,), np.int32), "pixels": ((32, 768), np.uint8)}),
    "tfds": (_tfds, {"label": ((32,), np.int32)}),
    "mix": (_mix, {"label": ((32,), np.int32)}),
    "grain": (None, {"label": ((32,), np.int32)}),
}


def test_every_example_file_is_tested_here():
    assert sorted(EXAMPLES) == example_names()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_the_example_loads_and_runs(name, tmp_path):
    write, spec = EXAMPLES[name]
    if write is not None:
        (tmp_path / "data").mkdir()
        write(tmp_path / "data")
    pipeline_file = tmp_path / f"{name}.toml"
    shutil.copy(example_path(name), pipeline_file)
    registry = Registry()
    registry.register("grain_range", _grain_range)
    pipeline = load_pipeline(pipeline_file, registry=registry)
    with iter(pipeline) as batches:
        batch = next(batches)
        state = batches.get_state()
    assert {key: (value.shape, value.dtype) for key, value in batch.items() if key != "valid_mask"} == spec
    assert (state["epoch"], state["position"]) in ((0, pipeline.batch_size), (1, 0))  # one batch served
    if name == "mix":
        labels = np.concatenate([b["label"][b["valid_mask"]] for b in pipeline])
        assert 0 < (labels >= 100).sum() < len(labels)  # both sources are read
    elif name in ("parquet", "hf", "tfds", "memory", "numpy_file", "grain"):
        labels = np.concatenate([b["label"][b["valid_mask"]] for b in pipeline])
        expected = np.arange(len(labels)) % 10 if name == "grain" else LABELS
        if name == "parquet":  # drop_remainder: one full batch of the 40 records
            assert len(labels) == 32 and set(labels) <= set(LABELS)
        else:
            assert sorted(labels.tolist()) == sorted(expected.tolist())
