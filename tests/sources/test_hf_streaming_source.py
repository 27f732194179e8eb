"""Tests for datarax.sources.hf_streaming_source.HFStreamingSource, on Hugging Face datasets made here (no hub)."""

import io
import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

datasets = pytest.importorskip("datasets")

from datasets import ClassLabel, Features, Image, List, Value  # noqa: E402

from datarax import Pipeline  # noqa: E402
from datarax.core.spec import BytesSpec, RaggedSpec  # noqa: E402
from datarax.operators import DecodeImage, DecodeImageConfig  # noqa: E402
from datarax.pipeline import HostStageError  # noqa: E402
from datarax.sources import HFStreamingSource, HFStreamingSourceConfig  # noqa: E402

SDS = jax.ShapeDtypeStruct
N = 29
FEATURES = Features(
    {
        "id": Value("int64"),
        "pair": List(Value("int16"), length=2),
        "tokens": List(Value("int32")),
        "text": Value("string"),
        "label": ClassLabel(names=["a", "b", "c"]),
    }
)


def _rows(n=N):
    ids = list(range(n))
    return {
        "id": ids,
        "pair": [[i, -i] for i in ids],
        "tokens": [list(range(i % 4)) for i in ids],
        "text": [f"t{i}" for i in ids],
        "label": [i % 3 for i in ids],
    }


@pytest.fixture(scope="module")
def memory():
    return datasets.Dataset.from_dict(_rows(), features=FEATURES)


@pytest.fixture(scope="module")
def parquet_files(memory, tmp_path_factory):
    """The rows in three Parquet files (three shards when streamed)."""
    folder = tmp_path_factory.mktemp("parquet")
    paths = []
    for part, (start, stop) in enumerate(((0, 10), (10, 20), (20, N))):
        path = str(folder / f"part-{part}.parquet")
        memory.select(range(start, stop)).to_parquet(path)
        paths.append(path)
    return paths


def _source(columns=("id", "pair"), **kwargs):
    config_args = {k: kwargs.pop(k) for k in ("process_index", "process_count", "read_batch_size") if k in kwargs}
    return HFStreamingSource(HFStreamingSourceConfig(columns=columns, **config_args), **kwargs)


def _pipeline(source, **kwargs):
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("shuffle", True)
    kwargs.setdefault("shuffle_buffer_size", 8)
    kwargs.setdefault("rngs", nnx.Rngs(3))
    return Pipeline(source=source, **kwargs)


def _ids(batches):
    return [np.asarray(b["id"])[np.asarray(b["valid_mask"])].tolist() for b in batches]


# -- the source --------------------------------------------------------------------------------------------


def test_element_spec_follows_the_features_and_class_names_are_exposed(memory):
    source = _source(columns=None, dataset=memory.to_iterable_dataset())
    assert source.element_spec() == {
        "id": SDS((), np.int64),
        "pair": SDS((2,), np.int16),
        "tokens": RaggedSpec(np.int32, 1),
        "text": BytesSpec(),
        "label": SDS((), np.int64),
    }
    assert source.class_names == {"label": ("a", "b", "c")}
    assert source.columns == ("id", "pair", "tokens", "text", "label")


@pytest.mark.parametrize("read_batch_size", [1, 7, 256])
def test_iter_records_from_any_start_is_the_rows_from_there(memory, read_batch_size):
    source = _source(columns=None, dataset=memory.to_iterable_dataset(num_shards=3), read_batch_size=read_batch_size)
    for start in (0, 1, 9, 10, N - 1, N):
        records = list(source.iter_records(start))
        assert [int(r["id"]) for r in records] == list(range(start, N))
        for record in records:
            i = int(record["id"])
            assert np.asarray(record["pair"]).tolist() == [i, -i]
            assert record["tokens"].tolist() == list(range(i % 4)) and record["tokens"].dtype == np.int32
            assert record["text"] == f"t{i}".encode()


def test_local_parquet_files_are_streamed_by_the_builder(parquet_files):
    source = _source(builder="parquet", data_files=parquet_files)
    assert [int(r["id"]) for r in source.iter_records(0)] == list(range(N))
    assert [int(r["id"]) for r in source.iter_records(12)] == list(range(12, N))


def test_features_missing_from_the_dataset_are_read_from_the_first_batch():
    def rows():
        for i in range(5):
            yield {"x": i, "v": [float(i)] * 3}

    source = _source(columns=None, dataset=datasets.IterableDataset.from_generator(rows))
    spec = source.element_spec()
    assert spec["x"] == SDS((), np.int64)
    assert isinstance(spec["v"], RaggedSpec)  # a list column's length is not fixed by the schema
    assert [int(r["x"]) for r in source.iter_records(2)] == [2, 3, 4]


@pytest.mark.parametrize("count", [2, 3])
def test_process_shares_are_disjoint_and_cover_the_stream(memory, count):
    for shards in (1, count):  # by records (shards do not divide) and by shards
        dataset = memory.to_iterable_dataset(num_shards=shards)
        parts = [
            [int(r["id"]) for r in _source(dataset=dataset, process_index=i, process_count=count).iter_records(0)]
            for i in range(count)
        ]
        seen = sum(parts, [])
        assert sorted(seen) == list(range(N)) and len(seen) == N, (shards, parts)


# -- through a Pipeline ------------------------------------------------------------------------------------


def test_every_epoch_serves_every_row_once_in_a_new_order(parquet_files):
    epochs = {}
    pipeline = _pipeline(_source(builder="parquet", data_files=parquet_files), num_epochs=3)
    iterator = iter(pipeline)
    while True:
        epoch = iterator.epoch
        try:
            batch = next(iterator)
        except StopIteration:
            break
        epochs.setdefault(epoch, []).extend(_ids([batch])[0])
    assert sorted(epochs) == [0, 1, 2]
    for ids in epochs.values():
        assert sorted(ids) == list(range(N))
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    assert epochs[0] != list(range(N))  # shuffled


def test_resume_at_every_batch_continues_exactly_buffer_included(memory):
    def build():
        return _pipeline(_source(dataset=memory.to_iterable_dataset(num_shards=3)), num_epochs=2, workers=1)

    whole = _ids(iter(build()))
    iterator = iter(build())
    for k in range(len(whole)):
        state = json.loads(json.dumps(iterator.get_state()))
        resumed = iter(build())
        resumed.set_state(state)
        assert _ids(resumed) == whole[k:], k
        next(iterator)


def test_resume_in_a_fresh_process(parquet_files, tmp_path):
    def build():
        return _pipeline(_source(builder="parquet", data_files=parquet_files), num_epochs=2, workers=0)

    iterator = iter(build())
    for _ in range(5):
        next(iterator)
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(iterator.get_state()))
    expected = _ids(iterator)
    code = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from flax import nnx
        from datarax import Pipeline
        from datarax.sources import HFStreamingSource, HFStreamingSourceConfig
        source = HFStreamingSource(HFStreamingSourceConfig(columns=("id", "pair")), builder="parquet",
                                   data_files={parquet_files!r})
        pipeline = Pipeline(source=source, batch_size=4, shuffle=True, shuffle_buffer_size=8, rngs=nnx.Rngs(3),
                            num_epochs=2, workers=0)
        iterator = iter(pipeline)
        iterator.set_state(json.loads(open(sys.argv[1]).read()))
        print(json.dumps([np.asarray(b["id"])[np.asarray(b["valid_mask"])].tolist() for b in iterator]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(state_file)], capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


def test_images_are_decoded_on_the_host_stage(tmp_path):
    from PIL import Image as PILImage

    pictures = []
    for i in range(6):
        array = np.full((8, 8, 3), i * 20, np.uint8)
        out = io.BytesIO()
        PILImage.fromarray(array).save(out, format="PNG")
        pictures.append({"bytes": out.getvalue(), "path": None})
    rows = datasets.Dataset.from_dict(
        {"image": pictures, "id": list(range(6))}, features=Features({"image": Image(), "id": Value("int64")})
    )
    source = _source(columns=("image", "id"), dataset=rows.to_iterable_dataset())
    assert source.element_spec()["image"] == BytesSpec()
    pipeline = _pipeline(source, batch_size=3, host_stages=[DecodeImage(DecodeImageConfig(field="image"))])
    for batch in pipeline:
        for image, i in zip(np.asarray(batch["image"]), np.asarray(batch["id"]), strict=True):
            assert image.shape == (8, 8, 3) and (image == i * 20).all()


def test_a_null_mid_stream_stops_with_an_error_naming_the_position():
    rows = datasets.Dataset.from_dict({"x": [1, 2, None, 4]}, features=Features({"x": Value("int64")}))
    source = _source(columns=("x",), dataset=rows.to_iterable_dataset(), read_batch_size=1)
    pipeline = _pipeline(source, batch_size=2, shuffle=False)
    with pytest.raises(HostStageError, match=r"HFStreamingSource failed reading from stream position 2.*null"):
        list(pipeline)


# -- bad input ---------------------------------------------------------------------------------------------


def test_a_map_style_dataset_is_refused_pointing_to_hfsource(memory):
    with pytest.raises(TypeError, match=r"IterableDataset, got Dataset \(it has random access: use HFSource\)"):
        _source(dataset=memory)


def test_exactly_one_origin(memory, parquet_files):
    with pytest.raises(ValueError, match="exactly one of dataset= .* got neither"):
        _source()
    with pytest.raises(ValueError, match="got both"):
        _source(dataset=memory.to_iterable_dataset(), builder="parquet", data_files=parquet_files)
    with pytest.raises(ValueError, match="builder must be one of"):
        _source(builder="webdataset", data_files=parquet_files)
    with pytest.raises(ValueError, match="data_files is only read with builder="):
        _source(dataset=memory.to_iterable_dataset(), data_files=parquet_files)


def test_missing_and_remote_files(tmp_path):
    missing = str(tmp_path / "absent.parquet")
    with pytest.raises(FileNotFoundError, match="absent.parquet"):
        _source(builder="parquet", data_files=missing)
    with pytest.raises(FileNotFoundError, match=r"absent\.parquet"):
        HFStreamingSource(HFStreamingSourceConfig(local_files_only=True), builder="parquet", data_files=[missing])
    with pytest.raises(ValueError, match=r"HFStreamingSource: data_files must be local files.*https://"):
        _source(builder="parquet", data_files="https://example.com/x.parquet")


def test_missing_or_reserved_columns_and_bad_config(memory):
    with pytest.raises(ValueError, match=r"columns \['nope'\] are not in the dataset"):
        _source(columns=("id", "nope"), dataset=memory.to_iterable_dataset())
    with pytest.raises(ValueError, match="read_batch_size"):
        HFStreamingSourceConfig(read_batch_size=0)
    with pytest.raises(ValueError, match="process_index"):
        HFStreamingSourceConfig(process_index=2, process_count=2)
    with pytest.raises(TypeError, match="HFStreamingSourceConfig"):
        HFStreamingSource(object(), dataset=memory.to_iterable_dataset())


def test_no_len_and_no_random_access(memory):
    source = _source(dataset=memory.to_iterable_dataset())
    with pytest.raises(TypeError, match="stream source: it has no len"):
        len(source)
    with pytest.raises(TypeError, match="no random access"):
        source.get_records([0])
    with pytest.raises(TypeError, match="has no len"):
        len(_pipeline(source))
