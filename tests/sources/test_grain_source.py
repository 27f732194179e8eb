"""GrainSource: Grain's random-access sources and MapDatasets read by index, alone and inside a Pipeline."""

import jax
import numpy as np
import pytest
from flax import nnx

grain = pytest.importorskip("grain")

from datarax import Pipeline  # noqa: E402
from datarax.core.spec import BytesSpec, RaggedSpec  # noqa: E402
from datarax.sources import decode_record, write_array_record  # noqa: E402
from datarax.sources.grain_source import GrainSource, GrainSourceConfig  # noqa: E402

N = 37


class Squares(grain.sources.RandomAccessDataSource):
    """A custom Grain source (module level, so process workers can rebuild it); logs its reads."""

    def __init__(self, count):
        self.count, self.calls = count, []

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        self.calls.append(("item", index))
        return {"x": np.int32(index), "square": np.full(2, index * index, np.float32)}


class BatchedSquares(Squares):
    """``Squares`` with a batched read."""

    def __getitems__(self, indices):
        self.calls.append(("items", list(indices)))
        return [{"x": np.int32(i), "square": np.full(2, i * i, np.float32)} for i in indices]


def _images():
    images = np.broadcast_to(np.arange(N, dtype=np.uint8)[:, None, None, None], (N, 4, 4, 3)).copy()
    images[:, :, 0, 0] += 100
    return images


def _array_record_dataset(folder, with_tag=False):
    """A MapDataset over an ArrayRecord file written by datarax, decoded by ``decode_record`` (module level)."""
    images = _images()
    path = str(folder / "data.array_record")
    records = (
        {"image": images[i], "label": np.int32(i), **({"tag": b"r%d" % i} if with_tag else {})} for i in range(N)
    )
    write_array_record(path, records)
    return grain.MapDataset.source(grain.sources.ArrayRecordDataSource([path])).map(decode_record)


def _collect(iterator, count=None):
    out = []
    for batch in iterator:
        out.append({k: np.asarray(v).tolist() for k, v in batch.items()})
        if count is not None and len(out) == count:
            break
    return out


def _pipeline(data_source, **kwargs):
    source = GrainSource(GrainSourceConfig(), data_source=data_source)
    options = {"batch_size": 8, "rngs": nnx.Rngs(3), "shuffle": True, "num_epochs": 2, **kwargs}
    return Pipeline(source=source, **options)


def test_a_range_source_is_one_value_column():
    data = grain.sources.RangeDataSource(3, 40, 3)
    source = GrainSource(GrainSourceConfig(), data_source=data)
    assert len(source) == len(data) == 13
    assert source.element_spec() == {"value": jax.ShapeDtypeStruct((), np.int64)}
    order = np.random.default_rng(0).permutation(13)
    assert source.get_records(order)["value"].tolist() == [data[i] for i in order.tolist()]
    named = GrainSource(GrainSourceConfig(value_column="n"), data_source=data)
    assert named.get_records([1])["n"].tolist() == [6]


def test_an_array_record_map_dataset_reads_like_grain(tmp_path):
    dataset = _array_record_dataset(tmp_path, with_tag=True)
    source = GrainSource(GrainSourceConfig(), data_source=dataset)
    spec = source.element_spec()
    assert spec["image"] == jax.ShapeDtypeStruct((4, 4, 3), np.uint8)
    assert spec["label"] == jax.ShapeDtypeStruct((), np.int32) and spec["tag"] == BytesSpec()
    order = [36, 0, 5, 5, 17]
    batch = source.get_records(order)
    assert batch["image"].shape == (5, 4, 4, 3) and batch["image"].dtype == np.uint8
    for row, index in enumerate(order):
        assert np.array_equal(batch["image"][row], dataset[index]["image"])
        assert batch["label"][row] == dataset[index]["label"] and batch["tag"][row] == dataset[index]["tag"]
    assert isinstance(batch["tag"], list)
    raw = grain.sources.ArrayRecordDataSource([str(tmp_path / "data.array_record")])
    encoded = GrainSource(GrainSourceConfig(), data_source=raw)  # bytes records: one BytesSpec column
    assert encoded.element_spec() == {"value": BytesSpec()}
    assert [decode_record(r)["label"] for r in encoded.get_records([9, 2])["value"]] == [9, 2]


def test_a_custom_source_is_read_with_one_batched_read_when_it_has_one():
    batched = BatchedSquares(10)
    source = GrainSource(GrainSourceConfig(), data_source=batched)
    batched.calls.clear()
    batch = source.get_records([7, 2, 7])
    assert batched.calls == [("items", [7, 2, 7])]
    assert batch["x"].tolist() == [7, 2, 7] and batch["square"][:, 0].tolist() == [49.0, 4.0, 49.0]
    single = Squares(10)
    source = GrainSource(GrainSourceConfig(), data_source=single)
    single.calls.clear()
    assert source.get_records([3, 1])["x"].tolist() == [3, 1]
    assert single.calls == [("item", 3), ("item", 1)]


def test_a_shuffled_pipeline_epoch_is_an_exact_permutation(tmp_path):
    images = _images()
    batches = _collect(_pipeline(_array_record_dataset(tmp_path), workers=0))
    assert len(batches) == 2 * 5
    epochs = []
    for epoch in range(2):
        labels = []
        for batch in batches[epoch * 5 : (epoch + 1) * 5]:
            for image, label, valid in zip(batch["image"], batch["label"], batch["valid_mask"], strict=True):
                assert np.array_equal(np.asarray(image), images[label])
                if valid:
                    labels.append(label)
        assert sorted(labels) == list(range(N))
        epochs.append(labels)
    assert epochs[0] != epochs[1]


def test_the_stream_is_the_same_inline_in_threads_and_after_resume(tmp_path):
    dataset = _array_record_dataset(tmp_path)
    inline = _collect(_pipeline(dataset, workers=0))
    assert _collect(_pipeline(dataset, workers=2, read_ahead=3)) == inline
    iterator = iter(_pipeline(dataset, workers=2))
    _collect(iterator, count=3)
    state = iterator.get_state()
    iterator.close()
    resumed = iter(_pipeline(dataset, workers=0))
    resumed.set_state(state)
    assert _collect(resumed) == inline[3:]


def test_process_workers_rebuild_picklable_grain_sources(tmp_path):
    dataset = _array_record_dataset(tmp_path)
    options = {"num_epochs": 1, "batch_size": 16}
    assert _collect(_pipeline(dataset, workers=2, worker_kind="process", **options)) == _collect(
        _pipeline(dataset, workers=0, **options)
    )
    custom = Squares(20)
    assert _collect(_pipeline(custom, workers=2, worker_kind="process", **options)) == _collect(
        _pipeline(custom, workers=0, **options)
    )


def test_process_workers_refuse_a_lambda_at_construction():
    dataset = grain.MapDataset.range(5).map(lambda i: {"x": np.int32(i)})
    with pytest.raises(TypeError, match="the source GrainSource cannot be sent: .*lambda"):
        _pipeline(dataset, workers=2, worker_kind="process")


def test_an_explicit_spec_converts_within_a_kind_and_names_misfits():
    data = grain.MapDataset.range(6).map(_pair)
    spec = {"i": jax.ShapeDtypeStruct((), np.int32), "tokens": RaggedSpec(np.int16, 1)}
    source = GrainSource(GrainSourceConfig(), data_source=data, element_spec=spec)
    batch = source.get_records([5, 1])
    assert batch["i"].dtype == np.int32 and batch["i"].tolist() == [5, 1]
    assert [t.dtype for t in batch["tokens"]] == [np.int16, np.int16]
    assert [t.tolist() for t in batch["tokens"]] == [[0, 1, 2, 3, 4], [0]]
    wrong = {"i": jax.ShapeDtypeStruct((), np.int32), "tokens": RaggedSpec(np.int16, 2)}
    with pytest.raises(ValueError, match=r"column 'tokens' of record 0 is int64\[0\]; element_spec\(\) says int16"):
        GrainSource(GrainSourceConfig(), data_source=data, element_spec=wrong)
    floats = grain.MapDataset.range(3).map(_float_value)
    with pytest.raises(ValueError, match=r"column 'value' of record 0 is float64\[\]; element_spec\(\) says int32\[\]"):
        GrainSource(GrainSourceConfig(), data_source=floats, element_spec={"value": jax.ShapeDtypeStruct((), np.int32)})


def _pair(i):
    return {"i": i, "tokens": np.arange(i)}


def _float_value(i):
    return float(i) + 0.5


def _text(i):
    return {"text": "abc"}


def _keys(i):
    return {"x": np.int32(i)} if i < 2 else {"y": np.int32(i)}


def test_bad_sources_and_records_are_named():
    with pytest.raises(TypeError, match="must be a Grain random-access source"):
        GrainSource(GrainSourceConfig(), data_source=iter([1, 2]))
    with pytest.raises(ValueError, match="has 0 records"):
        GrainSource(GrainSourceConfig(), data_source=grain.sources.RangeDataSource(0, 0, 1))
    with pytest.raises(ValueError, match="repeated"):
        GrainSource(GrainSourceConfig(), data_source=grain.MapDataset.range(3).repeat())
    with pytest.raises(ValueError, match="column 'text' of record 0 is str"):
        GrainSource(GrainSourceConfig(), data_source=grain.MapDataset.range(3).map(_text))
    keys = GrainSource(GrainSourceConfig(), data_source=grain.MapDataset.range(4).map(_keys))
    with pytest.raises(ValueError, match=r"record 3 has columns \['y'\]; element_spec\(\) has \['x'\]"):
        keys.get_records([0, 3])
    filtered = grain.MapDataset.range(6).filter(lambda i: i % 2 == 0)
    with pytest.raises(ValueError, match="record 1 of .* is None"):
        GrainSource(GrainSourceConfig(), data_source=filtered).get_records([0, 1])
    with pytest.raises(ValueError, match="value_column"):
        GrainSourceConfig(value_column="valid_mask")
    with pytest.raises(TypeError, match="must be a GrainSourceConfig"):
        GrainSource(object(), data_source=Squares(3))
    with pytest.raises(IndexError, match="outside"):
        GrainSource(GrainSourceConfig(), data_source=Squares(3)).get_records([3])
