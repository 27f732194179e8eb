"""Tests for datarax.sources.tfds_source.TFDSSource, on tiny TFDS datasets prepared here (nothing downloaded).

The builders below are defined in this file and prepared as ArrayRecord into a temporary data_dir, with
images given as PNG bytes, so preparing needs no TensorFlow. TFDS stores a split's examples in an order
of its own (shuffled by key), so every record carries its ``id`` and checks look the expected values up
by it.
"""

import io
import json
import os
import pickle
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from datarax.core.constructor_args import from_recipe  # noqa: E402
from datarax.core.spec import BytesSpec, RaggedSpec  # noqa: E402
from datarax.sources import TFDSSource, TFDSSourceConfig  # noqa: E402

SDS = jax.ShapeDtypeStruct
N = 37
NAME = "datarax_tiny"
NAMES = ("cat", "dog", "emu")
# Columns whose features TFDSSource reads (the builder adds two it refuses: "words" and "meta").
READABLE = ("id", "score", "flag", "grid", "fix", "tokens", "pairs", "rows", "text", "label", "image")


def _png(value):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 5, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _example(i):
    """Record ``i`` as the builder yields it; TFDSSource must give these values back."""
    return {
        "id": i,
        "score": np.float32(i * 0.5),
        "flag": i % 3 == 0,
        "grid": np.arange(6, dtype=np.float32).reshape(2, 3) + i,
        "fix": np.array([i, -i, 2 * i], np.int16),
        "tokens": list(range(i, i + i % 5)),
        "pairs": [[i % 256, 7]] * (i % 3),
        "rows": np.full((i % 4, 3), i, np.float32),
        "text": f"r\u00e9{i}",
        "label": i % 3,
        "image": _png(i),
        "words": [f"w{j}" for j in range(i % 3)],
        "meta": {"a": np.int32(i)},
    }


class DataraxTiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Every feature kind TFDSSource reads, plus two it does not (a sequence of text and a nested dict)."""

    name = NAME
    VERSION = tfds.core.Version("2.0.0")

    def _info(self):
        features = tfds.features
        return tfds.core.DatasetInfo(
            builder=self,
            features=features.FeaturesDict(
                {
                    "id": features.Scalar(np.int64),
                    "score": features.Scalar(np.float32),
                    "flag": features.Scalar(np.bool_),
                    "grid": features.Tensor(shape=(2, 3), dtype=np.float32),
                    "fix": features.Sequence(features.Scalar(np.int16), length=3),
                    "tokens": features.Sequence(features.Scalar(np.int32)),
                    "pairs": features.Sequence(features.Tensor(shape=(2,), dtype=np.uint8)),
                    "rows": features.Tensor(shape=(None, 3), dtype=np.float32),
                    "text": features.Text(),
                    "label": features.ClassLabel(names=list(NAMES)),
                    "image": features.Image(shape=(4, 5, 3)),
                    "words": features.Sequence(features.Text()),
                    "meta": features.FeaturesDict({"a": features.Scalar(np.int32)}),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(range(N)), "test": self._generate_examples(range(100, 105))}

    def _generate_examples(self, ids):
        for i in ids:
            yield i, _example(i)


class DataraxTinyOld(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """An older version of the same dataset, with one feature and three records."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"id": np.int64}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(3):
            yield i, {"id": 1000 + i}


class DataraxParquet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A dataset TFDS can prepare as Parquet, which TFDSSource refuses (it reads ArrayRecord)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"id": np.int64}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(3):
            yield i, {"id": i}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tfds"))
    DataraxTinyOld(data_dir=folder, file_format="array_record").download_and_prepare()
    DataraxTiny(data_dir=folder, file_format="array_record").download_and_prepare()
    return folder


def _source(data_dir, columns=READABLE, **kwargs):
    return TFDSSource(TFDSSourceConfig(columns=columns), dataset_name=NAME, data_dir=data_dir, **kwargs)


def _check_equal(batch, ids):
    """Every column of ``batch`` holds the builder's values for the records with these ids."""
    for position, i in enumerate(ids):
        want = _example(int(i))
        for column, value in batch.items():
            got = value[position]
            if column == "text":
                assert got == want["text"].encode(), (column, i)
            elif column == "image":
                assert got == want["image"], (column, i)
            else:
                expected = np.asarray(want[column])
                assert np.array_equal(np.asarray(got), expected.reshape(np.shape(got))), (column, i)


def test_element_spec_keeps_every_dtype_and_exposes_class_names(data_dir):
    source = _source(data_dir)
    assert source.element_spec() == {
        "id": SDS((), np.int64),
        "score": SDS((), np.float32),
        "flag": SDS((), np.bool_),
        "grid": SDS((2, 3), np.float32),
        "fix": SDS((3,), np.int16),
        "tokens": RaggedSpec(np.int32, 1),
        "pairs": RaggedSpec(np.uint8, 2),
        "rows": RaggedSpec(np.float32, 2),
        "text": BytesSpec(),
        "label": SDS((), np.int64),
        "image": BytesSpec(),
    }
    assert source.class_names == {"label": NAMES}
    assert len(source) == N and source.columns == READABLE
    assert source.dataset_dir == os.path.join(data_dir, NAME, "2.0.0")  # the highest version prepared


def test_random_access_returns_the_builders_records(data_dir):
    source = _source(data_dir)
    everything = source.get_records(np.arange(N))
    assert sorted(everything["id"].tolist()) == list(range(N))
    indices = np.random.default_rng(0).integers(0, N, 50)  # repeats included
    batch = source.get_records(indices)
    ids = batch["id"]
    assert ids.tolist() == everything["id"][indices].tolist()  # record i is always the same record
    assert batch["grid"].dtype == np.float32 and batch["grid"].shape == (50, 2, 3)
    assert batch["fix"].dtype == np.int16 and [t.dtype for t in batch["tokens"]] == [np.int32] * 50
    assert all(p.shape == (int(i) % 3, 2) and p.dtype == np.uint8 for p, i in zip(batch["pairs"], ids))
    assert all(r.shape == (int(i) % 4, 3) and r.dtype == np.float32 for r, i in zip(batch["rows"], ids))
    assert all(isinstance(image, bytes) and image.startswith(b"\x89PNG") for image in batch["image"])
    _check_equal(batch, ids)
    empty = source.get_records(np.zeros(0, np.int64))
    assert empty["grid"].shape == (0, 2, 3) and empty["text"] == [] and empty["tokens"] == []


def test_only_the_requested_columns_are_read_in_their_order(data_dir):
    source = _source(data_dir, ("label", "tokens", "id"))
    assert list(source.element_spec()) == ["label", "tokens", "id"]
    batch = source.get_records([4, 1])
    assert list(batch) == ["label", "tokens", "id"]
    _check_equal(batch, batch["id"])
    # The two features TFDSSource cannot read are refused, naming them; every column includes them.
    with pytest.raises(TypeError, match=r"column 'meta' has feature FeaturesDict, which TFDSSource cannot read"):
        _source(data_dir, None)  # every feature, in sorted order: 'meta' is the first it cannot read
    with pytest.raises(TypeError, match=r"column 'words' has feature Sequence of Text, which TFDSSource cannot read"):
        _source(data_dir, ("id", "words"))


def test_splits_versions_and_the_worker_recipe(data_dir):
    test = _source(data_dir, ("id",), split="test")
    assert len(test) == 5 and sorted(test.get_records(np.arange(5))["id"].tolist()) == list(range(100, 105))
    both = _source(data_dir, ("id",), split="train[:10]+test")
    assert len(both) == 15
    old = TFDSSource(TFDSSourceConfig(), dataset_name=f"{NAME}:1.0.0", data_dir=data_dir)
    assert old.columns == ("id",) and sorted(old.get_records([0, 1, 2])["id"].tolist()) == [1000, 1001, 1002]
    source = _source(data_dir, ("id", "tokens", "image"))
    recipe = pickle.dumps(source.worker_recipe())
    assert len(recipe) < 5_000  # a name and a folder, not records
    rebuilt = from_recipe(pickle.loads(recipe))
    assert rebuilt.element_spec() == source.element_spec()
    want, got = source.get_records([3, 30]), rebuilt.get_records([3, 30])
    assert got["id"].tolist() == want["id"].tolist() and got["image"] == want["image"]


def test_a_dataset_missing_from_data_dir_is_named(data_dir, tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"dataset 'nowhere_set' is not in the local cache and "
        r"local_files_only=True.*nowhere_set.*dataset_info.json",
    ):
        TFDSSource(TFDSSourceConfig(local_files_only=True), dataset_name="nowhere_set", data_dir=data_dir)
    with pytest.raises(FileNotFoundError, match=r"'nowhere_set' is not prepared in .*never downloads"):
        TFDSSource(TFDSSourceConfig(), dataset_name="nowhere_set", data_dir=data_dir)
    missing_dir = str(tmp_path / "no_dir")
    with pytest.raises(
        FileNotFoundError, match=r"local_files_only=True.*no_dir/datarax_tiny/<version>/dataset_info.json"
    ):
        TFDSSource(TFDSSourceConfig(local_files_only=True), dataset_name=NAME, data_dir=missing_dir)
    with pytest.raises(FileNotFoundError, match=r"prepared versions there: \['1.0.0', '2.0.0'\]"):
        TFDSSource(TFDSSourceConfig(), dataset_name=f"{NAME}:3.0.0", data_dir=data_dir)
    default_dir = os.path.join(os.path.expanduser(tfds.core.constants.DATA_DIR), "nowhere_set")
    with pytest.raises(FileNotFoundError, match=re.escape(default_dir)):
        TFDSSource(TFDSSourceConfig(), dataset_name="nowhere_set")  # data_dir=None: TFDS's default folder
    # local_files_only=True reads a dataset that is there.
    config = TFDSSourceConfig(columns=("id",), local_files_only=True)
    assert len(TFDSSource(config, dataset_name=NAME, data_dir=data_dir)) == N


def test_a_dataset_prepared_in_another_file_format_is_refused(tmp_path):
    DataraxParquet(data_dir=str(tmp_path), file_format="parquet").download_and_prepare()
    with pytest.raises(
        ValueError, match=r"'datarax_parquet' in .* was prepared as parquet; .*file_format='array_record'"
    ):
        TFDSSource(TFDSSourceConfig(), dataset_name="datarax_parquet", data_dir=str(tmp_path))


def test_bad_arguments_are_named(data_dir):
    with pytest.raises(ValueError, match=r"split 'valid' cannot be read .*its splits are \['test', 'train'\]"):
        _source(data_dir, split="valid")
    with pytest.raises(ValueError, match=r"split must be a non-empty str, got ''"):
        _source(data_dir, split="")
    sorted_features = r"its features are \['fix', 'flag', 'grid', 'id', 'image', 'label', 'meta'"
    with pytest.raises(
        ValueError, match=r"columns \['nope'\] are not features of dataset 'datarax_tiny'; " + sorted_features
    ):
        _source(data_dir, ("id", "nope"))
    with pytest.raises(ValueError, match=r"dataset_name must be a TFDS dataset name .*got 'bad name!'"):
        TFDSSource(TFDSSourceConfig(), dataset_name="bad name!", data_dir=data_dir)
    with pytest.raises(ValueError, match=r"data_dir must be a local folder .*'gs://bucket/tfds'"):
        TFDSSource(TFDSSourceConfig(), dataset_name=NAME, data_dir="gs://bucket/tfds")
    with pytest.raises(TypeError, match=r"data_dir must be a str or os.PathLike folder, got int"):
        TFDSSource(TFDSSourceConfig(), dataset_name=NAME, data_dir=3)
    with pytest.raises(TypeError, match="config must be a TFDSSourceConfig, got object"):
        TFDSSource(object(), dataset_name=NAME, data_dir=data_dir)
    with pytest.raises(ValueError, match="did you mean"):
        TFDSSourceConfig(columns="id")
    with pytest.raises(ValueError, match="local_files_only"):
        TFDSSourceConfig(local_files_only="yes")
    with pytest.raises(IndexError, match=r"record index 37 is outside \[0, 37\)"):
        _source(data_dir, ("id",)).get_records([37])
    with pytest.raises(TypeError, match="indices must be a 1-D integer array"):
        _source(data_dir, ("id",)).get_records([0.5])


def test_tfds_is_an_extra_and_reading_needs_no_tensorflow(data_dir, monkeypatch):
    code = (
        "import sys, numpy as np, datarax, datarax.sources\n"
        "assert 'tensorflow_datasets' not in sys.modules, 'import datarax imported tensorflow_datasets'\n"
        "source = datarax.sources.TFDSSource(datarax.sources.TFDSSourceConfig(columns=('id', 'image')),\n"
        "                                    dataset_name='datarax_tiny', data_dir=sys.argv[1])\n"
        "print(len(source.get_records(np.arange(5))['image']), 'tensorflow' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, data_dir], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["5", "False"]
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # how Python makes an import fail
    with pytest.raises(
        ImportError,
        match=r"TFDSSource needs the 'tensorflow_datasets' package: pip install "
        r"'datarax\[tfds\]'",
    ):
        _source(data_dir)


# --- in a Pipeline ---------------------------------------------------------------------------------

# Shared by this process and the fresh process of the resume test: the same pipeline from the same folder.
BUILD = """
import numpy as np
from flax import nnx
from datarax import Pipeline
from datarax.operators import DecodeImage, DecodeImageConfig
from datarax.sources import TFDSSource, TFDSSourceConfig

def build(data_dir, **kwargs):
    source = TFDSSource(TFDSSourceConfig(columns=("id", "image", "grid", "label")), dataset_name="datarax_tiny",
                        data_dir=data_dir)
    options = {"batch_size": 8, "rngs": nnx.Rngs(3), "shuffle": True, "num_epochs": 2, **kwargs}
    return Pipeline(source=source, host_stages=[DecodeImage(DecodeImageConfig())], **options)

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


def test_every_epoch_is_an_exact_permutation_of_the_records(data_dir):
    batches = collect(build(data_dir, workers=2))
    assert len(batches) == 2 * 5
    epochs = []
    for epoch in range(2):
        ids = []
        for batch in batches[epoch * 5 : (epoch + 1) * 5]:
            for i, image, grid, label, valid in zip(
                batch["id"], batch["image"], batch["grid"], batch["label"], batch["valid_mask"], strict=True
            ):
                if valid:
                    ids.append(i)
                    assert np.array_equal(image, np.full((4, 5, 3), i, np.uint8)), i  # decoded on the host stage
                    assert label == i % 3 and np.array_equal(grid, np.arange(6).reshape(2, 3) + i), i
        assert sorted(ids) == list(range(N))
        epochs.append(ids)
    assert epochs[0] != epochs[1]  # a new permutation every epoch
    assert batches[4]["valid_mask"] == [True] * 5 + [False] * 3


def test_the_stream_is_the_same_for_any_worker_count_and_kind(data_dir):
    inline = collect(build(data_dir, workers=0))
    assert len(inline) == 10
    assert collect(build(data_dir, workers=2)) == inline
    assert collect(build(data_dir, workers=2, worker_kind="process")) == inline


def test_resume_in_a_fresh_process_continues_the_stream(data_dir):
    full = collect(build(data_dir))
    iterator = iter(build(data_dir, workers=2))
    assert collect(iterator, count=3) == full[:3]
    state = json.dumps(iterator.get_state())
    iterator.close()
    code = BUILD + (
        "import json, sys\n"
        "iterator = iter(build(sys.argv[1], workers=2, worker_kind='process'))\n"
        "iterator.set_state(json.loads(sys.argv[2]))\n"
        "print('REST ' + json.dumps(collect(iterator)))\n"
        "iterator.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, data_dir, state],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rest = next(line for line in done.stdout.splitlines() if line.startswith("REST "))
    assert json.loads(rest[len("REST ") :]) == full[3:]
