"""Tests for datarax.sources.array_record_source.ArrayRecordSource, on real ArrayRecord files."""

import pickle
import threading
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
from array_record.python import array_record_module

from datarax.core.constructor_args import from_recipe
from datarax.core.host_source import HostSourceModule, check_columns
from datarax.core.spec import BytesSpec, RaggedSpec
from datarax.sources.array_record_source import ArrayRecordSource, ArrayRecordSourceConfig
from datarax.sources.record_format import encode_record, write_array_record

SDS = jax.ShapeDtypeStruct


def _record(i, rng=None):
    """Record ``i`` of the test files: several dtypes, a 0-d label, and random bytes of varying length."""
    rng = rng or np.random.default_rng(i)
    return {
        "image": rng.integers(0, 256, (4, 3, 2), dtype=np.uint8),
        "embedding": rng.standard_normal(5).astype(np.float32),
        "half": np.arange(3, dtype=np.float16) + i,
        "brain": (np.arange(2) + i).astype(ml_dtypes.bfloat16),
        "pair": np.array([i, -i], np.int64),
        "label": np.int32(i),
        "flags": np.array([i % 2 == 0, i % 3 == 0]),
        "cplx": np.array([i + 1j], np.complex64),
        "blob": rng.bytes(int(rng.integers(0, 40))),
    }


def _write_raw(path, records):
    writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
    for data in records:
        writer.write(data)
    writer.close()


@pytest.fixture
def shards(tmp_path):
    """Three files of 5, 0 and 7 records; returns their paths and the 12 records in global order."""
    records = [_record(i) for i in range(12)]
    paths = [tmp_path / "part-0.array_record", tmp_path / "part-1.array_record", tmp_path / "part-2.array_record"]
    write_array_record(paths[0], records[:5])
    write_array_record(paths[1], [])
    write_array_record(paths[2], records[5:])
    return paths, records


def _assert_rows(batch, records, indices):
    for row, index in enumerate(indices):
        for name, value in records[index].items():
            if isinstance(value, bytes):
                assert batch[name][row] == value
            else:
                assert batch[name][row].tobytes() == np.asarray(value).tobytes(), (name, index)


def test_one_file_reads_every_record_in_any_order(tmp_path):
    records = [_record(i) for i in range(9)]
    path = tmp_path / "one.array_record"
    write_array_record(path, records)
    source = ArrayRecordSource(ArrayRecordSourceConfig(), str(path))
    assert isinstance(source, HostSourceModule)
    assert len(source) == 9 and source.paths == (str(path),)
    spec = source.element_spec()
    assert spec["image"] == SDS((4, 3, 2), np.uint8) and spec["label"] == SDS((), np.int32)
    assert spec["brain"] == SDS((2,), ml_dtypes.bfloat16) and spec["blob"] == BytesSpec()
    order = np.random.default_rng(0).permutation(9)
    batch = source.get_records(order)
    check_columns("test", batch, spec, 9)
    _assert_rows(batch, records, order.tolist())
    assert isinstance(batch["blob"], list) and batch["image"].shape == (9, 4, 3, 2)


def test_several_files_read_by_global_index_across_boundaries(shards):
    paths, records = shards
    source = ArrayRecordSource(ArrayRecordSourceConfig(), [str(p) for p in paths])
    assert len(source) == 12
    indices = np.array([4, 5, 0, 11, 4, 6, 3, 5, 10])  # both sides of the boundary, repeats, both ends
    batch = source.read_records(indices)
    check_columns("test", batch, source.element_spec(), len(indices))
    _assert_rows(batch, records, indices.tolist())
    everything = source.get_records(np.random.default_rng(1).permutation(12))
    _assert_rows(everything, records, np.random.default_rng(1).permutation(12).tolist())


def test_a_glob_pattern_and_path_objects_are_expanded_in_sorted_order(shards):
    paths, records = shards
    by_pattern = ArrayRecordSource(ArrayRecordSourceConfig(), str(paths[0].parent / "part-*.array_record"))
    assert by_pattern.paths == tuple(str(p) for p in paths)
    by_objects = ArrayRecordSource(ArrayRecordSourceConfig(), [paths[2], paths[0]])
    assert len(by_objects) == 12
    _assert_rows(by_objects.get_records([0, 7, 8]), records[5:] + records[:5], [0, 7, 8])


def test_no_indices_give_empty_columns(shards):
    paths, _ = shards
    source = ArrayRecordSource(ArrayRecordSourceConfig(), paths)
    batch = source.read_records(np.zeros(0, np.int64))
    check_columns("test", batch, source.element_spec(), 0)
    assert batch["image"].shape == (0, 4, 3, 2) and batch["blob"] == []


def test_get_batch_at_wraps_and_out_of_range_indices_are_refused(shards):
    paths, records = shards
    source = ArrayRecordSource(ArrayRecordSourceConfig(), paths)
    _assert_rows(source.get_batch_at(10, 4), records, [10, 11, 0, 1])
    with pytest.raises(IndexError, match="record index 12 is outside"):
        source.get_records([0, 12])


def test_ragged_arrays_with_an_explicit_ragged_spec(tmp_path):
    rng = np.random.default_rng(3)
    tokens = [rng.integers(0, 1000, int(rng.integers(0, 9))).astype(np.int32) for _ in range(10)]
    images = [np.zeros((int(rng.integers(1, 4)), 2, 3), np.uint8) + i for i in range(10)]
    path = tmp_path / "ragged.array_record"
    write_array_record(
        path, ({"tokens": t, "image": m, "id": np.int64(i)} for i, (t, m) in enumerate(zip(tokens, images)))
    )
    spec = {"tokens": RaggedSpec(np.int32, 1), "image": RaggedSpec(np.uint8, 3), "id": SDS((), np.int64)}
    source = ArrayRecordSource(ArrayRecordSourceConfig(), path, element_spec=spec)
    assert source.element_spec() == spec
    batch = source.get_records([9, 2, 5])
    check_columns("test", batch, spec, 3)
    assert batch["id"].tolist() == [9, 2, 5]
    for row, i in enumerate([9, 2, 5]):
        np.testing.assert_array_equal(batch["tokens"][row], tokens[i])
        np.testing.assert_array_equal(batch["image"][row], images[i])


def test_a_record_whose_shape_differs_from_the_spec_names_file_index_and_column(shards, tmp_path):
    paths, _ = shards
    odd = tmp_path / "odd.array_record"
    bad = _record(20)
    bad["embedding"] = np.zeros(6, np.float32)
    write_array_record(odd, [_record(12), bad])
    source = ArrayRecordSource(ArrayRecordSourceConfig(), [*paths, odd])
    source.get_records([12])
    with pytest.raises(
        ValueError, match=rf"column 'embedding' of record 13 \({odd}, record 1 of that file\) is float32\[6\]"
    ):
        source.get_records([0, 13])
    wrong_dtype = tmp_path / "dtype.array_record"
    bad = _record(21)
    bad["label"] = np.int64(21)
    write_array_record(wrong_dtype, [_record(0), bad])
    source = ArrayRecordSource(ArrayRecordSourceConfig(), wrong_dtype)
    with pytest.raises(
        ValueError, match=r"column 'label' of record 1 .* is int64\[\]; element_spec\(\) says int32\[\]"
    ):
        source.get_records([1])
    missing = tmp_path / "missing_column.array_record"
    write_array_record(missing, [{"a": np.zeros(2), "b": b""}, {"a": np.zeros(2)}])
    source = ArrayRecordSource(ArrayRecordSourceConfig(), missing)
    with pytest.raises(ValueError, match=r"record 1 .* has columns \['a'\]; element_spec\(\) has \['a', 'b'\]"):
        source.get_records([1])


def test_an_explicit_spec_is_checked_against_record_0(shards):
    paths, _ = shards
    with pytest.raises(
        ValueError, match=r"column 'label' of record 0 .* is int32\[\]; element_spec\(\) says int32\[1\]"
    ):
        ArrayRecordSource(
            ArrayRecordSourceConfig(), paths, element_spec={**_spec_of_shards(), "label": SDS((1,), np.int32)}
        )
    with pytest.raises(ValueError, match=r"column 'blob' of record 0 .* is bytes; element_spec\(\) says uint8\[3\]"):
        ArrayRecordSource(
            ArrayRecordSourceConfig(), paths, element_spec={**_spec_of_shards(), "blob": SDS((3,), np.uint8)}
        )
    with pytest.raises(TypeError, match="column 'image' is 3"):
        ArrayRecordSource(ArrayRecordSourceConfig(), paths, element_spec={**_spec_of_shards(), "image": 3})
    with pytest.raises(TypeError, match="non-empty dict"):
        ArrayRecordSource(ArrayRecordSourceConfig(), paths, element_spec={})


def _spec_of_shards():
    return {
        name: (BytesSpec() if isinstance(v, bytes) else SDS(np.shape(v), np.asarray(v).dtype))
        for name, v in _record(0).items()
    }


def _decode_csv(data):
    """A user decoder (module-level, so process workers can pickle it): ``b"id,score,name"``."""
    ident, score, name = data.split(b",")
    return {"id": np.int64(ident), "score": np.float32(score), "name": name}


def _decode_not_a_dict(data):
    return [data]


def test_a_user_decode_function(tmp_path):
    path = tmp_path / "csv.array_record"
    _write_raw(path, [b"%d,%d.5,user%d" % (i, i, i) for i in range(6)])
    source = ArrayRecordSource(ArrayRecordSourceConfig(), path, decode=_decode_csv)
    assert source.element_spec() == {"id": SDS((), np.int64), "score": SDS((), np.float32), "name": BytesSpec()}
    batch = source.get_records([5, 1])
    assert batch["id"].tolist() == [5, 1] and batch["score"].tolist() == [5.5, 1.5]
    assert batch["name"] == [b"user5", b"user1"]
    with pytest.raises(ValueError, match="decode returned list for record 0"):
        ArrayRecordSource(ArrayRecordSourceConfig(), path, decode=_decode_not_a_dict)
    with pytest.raises(TypeError, match="decode must be a callable"):
        ArrayRecordSource(ArrayRecordSourceConfig(), path, decode="csv")


def test_a_record_that_fails_to_decode_names_file_and_global_index(shards, tmp_path):
    paths, _ = shards
    broken = tmp_path / "broken.array_record"
    _write_raw(broken, [encode_record(_record(12)), encode_record(_record(13)), b"not a datarax record"])
    source = ArrayRecordSource(ArrayRecordSourceConfig(), [*paths, broken])
    _assert_rows(source.get_records([13]), [_record(i) for i in range(14)], [13])
    with pytest.raises(
        ValueError, match=rf"record 14 \({broken}, record 2 of that file\) failed to decode: ValueError: .*bad magic"
    ):
        source.get_records([3, 14])
    user = tmp_path / "user.array_record"
    _write_raw(user, [b"1,2.5,a", b"broken"])
    source = ArrayRecordSource(ArrayRecordSourceConfig(), user, decode=_decode_csv)
    with pytest.raises(ValueError, match=r"record 1 .* failed to decode: ValueError: not enough values to unpack"):
        source.get_records([1])


def test_the_first_record_failing_to_decode_fails_construction(tmp_path):
    path = tmp_path / "bad_first.array_record"
    _write_raw(path, [b"\x80\x04 a pickle, say"])
    with pytest.raises(ValueError, match=rf"record 0 \({path}, record 0 of that file\) failed to decode"):
        ArrayRecordSource(ArrayRecordSourceConfig(), path)


def test_a_missing_file_is_an_error_with_either_local_files_only(shards, tmp_path):
    paths, _ = shards
    missing = tmp_path / "nowhere.array_record"
    with pytest.raises(FileNotFoundError, match=rf"local_files_only=True.*{missing}"):
        ArrayRecordSource(ArrayRecordSourceConfig(local_files_only=True), [*paths, missing])
    with pytest.raises(FileNotFoundError, match=rf"no such file: {missing}"):
        ArrayRecordSource(ArrayRecordSourceConfig(local_files_only=False), [*paths, missing])
    pattern = str(tmp_path / "nothing-*.array_record")
    with pytest.raises(FileNotFoundError, match=r"no such file: .*nothing-\*\.array_record"):
        ArrayRecordSource(ArrayRecordSourceConfig(), pattern)
    with pytest.raises(FileNotFoundError, match=r"local_files_only=True.*nothing-\*"):
        ArrayRecordSource(ArrayRecordSourceConfig(local_files_only=True), pattern)
    # Every file present: local_files_only=True reads them like False.
    assert len(ArrayRecordSource(ArrayRecordSourceConfig(local_files_only=True), paths)) == 12


def test_bad_paths_and_config(shards, tmp_path):
    paths, _ = shards
    with pytest.raises(IsADirectoryError, match="is a directory"):
        ArrayRecordSource(ArrayRecordSourceConfig(), tmp_path)
    with pytest.raises(TypeError, match="paths must be"):
        ArrayRecordSource(ArrayRecordSourceConfig(), [])
    with pytest.raises(TypeError, match="paths must hold"):
        ArrayRecordSource(ArrayRecordSourceConfig(), [str(paths[0]), 3])
    with pytest.raises(ValueError, match="local_files_only must be a bool"):
        ArrayRecordSourceConfig(local_files_only="yes")
    with pytest.raises(ValueError, match="invalid reader_options 'readahead_buffer_size:lots'"):
        ArrayRecordSource(ArrayRecordSourceConfig(reader_options="readahead_buffer_size:lots"), paths)


def test_files_without_records_and_the_reserved_column_name(tmp_path):
    empty = tmp_path / "empty.array_record"
    write_array_record(empty, [])
    with pytest.raises(ValueError, match="the files hold no records"):
        ArrayRecordSource(ArrayRecordSourceConfig(), [empty, empty])
    masked = tmp_path / "masked.array_record"
    write_array_record(masked, [{"valid_mask": np.ones(2, bool)}])
    with pytest.raises(ValueError, match="'valid_mask' is reserved"):
        ArrayRecordSource(ArrayRecordSourceConfig(), masked)


def test_a_file_that_is_not_array_record_or_is_truncated_is_named_at_construction(shards, tmp_path):
    paths, _ = shards
    garbage = tmp_path / "garbage.array_record"
    garbage.write_bytes(b"this is not an ArrayRecord file" * 100)
    with pytest.raises(ValueError, match=rf"cannot open {garbage} as an ArrayRecord file"):
        ArrayRecordSource(ArrayRecordSourceConfig(), [paths[0], garbage])
    truncated = tmp_path / "truncated.array_record"
    data = paths[2].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"cannot open {truncated} as an ArrayRecord file"):
        ArrayRecordSource(ArrayRecordSourceConfig(), [paths[0], truncated])


def test_a_corrupt_record_is_named_when_it_is_read(tmp_path):
    first = tmp_path / "first.array_record"
    write_array_record(first, [{"marker": np.full(64, i, np.uint8)} for i in range(5)])
    records = [{"marker": np.full(64, 100 + i, np.uint8)} for i in range(6)]
    corrupt = tmp_path / "corrupt.array_record"
    write_array_record(corrupt, records, options="group_size:1,uncompressed")
    data = bytearray(corrupt.read_bytes())
    at = data.find(bytes([103]) * 64)  # record 3's array, stored uncompressed
    assert at > 0
    data[at + 10] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    source = ArrayRecordSource(ArrayRecordSourceConfig(), [first, corrupt])
    assert source.get_records([5, 7, 10])["marker"][:, 0].tolist() == [100, 102, 105]
    with pytest.raises(ValueError, match=rf"cannot read record 8 \({corrupt}, record 3 of that file\)"):
        source.get_records([6, 8, 9])


def test_recipe_rebuilds_the_source_and_pickles(shards, tmp_path):
    paths, records = shards
    source = ArrayRecordSource(ArrayRecordSourceConfig(local_files_only=True), [str(p) for p in paths], name="train")
    for recipe in (source.worker_recipe(), pickle.loads(pickle.dumps(source.worker_recipe()))):
        rebuilt = from_recipe(recipe)
        assert type(rebuilt) is ArrayRecordSource and rebuilt.name == "train" and rebuilt.config == source.config
        assert len(rebuilt) == 12 and rebuilt.element_spec() == source.element_spec()
        _assert_rows(rebuilt.get_records([11, 0, 5]), records, [11, 0, 5])
    csv = tmp_path / "csv.array_record"
    _write_raw(csv, [b"%d,0.5,x" % i for i in range(3)])
    spec = {"id": SDS((), np.int64), "score": SDS((), np.float32), "name": BytesSpec()}
    user = ArrayRecordSource(ArrayRecordSourceConfig(), csv, decode=_decode_csv, element_spec=spec)
    rebuilt = from_recipe(pickle.loads(pickle.dumps(user.worker_recipe())))
    assert rebuilt.element_spec() == spec and rebuilt.get_records([2])["id"].tolist() == [2]


def test_four_threads_read_what_one_thread_reads(shards):
    paths, records = shards
    source = ArrayRecordSource(ArrayRecordSourceConfig(), paths)
    rng = np.random.default_rng(7)
    batches = [rng.integers(0, 12, 16) for _ in range(40)]
    serial = [source.read_records(b) for b in batches]
    results = [None] * len(batches)
    errors = []

    def work(worker):
        try:
            for _ in range(5):
                for k in range(worker, len(batches), 4):
                    results[k] = source.read_records(batches[k])
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for got, want, indices in zip(results, serial, batches):
        for name in want:
            if isinstance(want[name], list):
                assert got[name] == want[name]
            else:
                np.testing.assert_array_equal(got[name], want[name])
        _assert_rows(got, records, indices.tolist())


def test_close_releases_the_files_and_a_later_read_reopens_them(shards):
    paths, records = shards
    source = ArrayRecordSource(ArrayRecordSourceConfig(), paths)
    source.close()
    source.close()  # twice is fine
    _assert_rows(source.get_records([4, 9]), records, [4, 9])
    source.close()


def test_paths_are_stored_as_strings(shards):
    paths, _ = shards
    source = ArrayRecordSource(ArrayRecordSourceConfig(), Path(paths[0]))
    assert source.paths == (str(paths[0]),) and len(source) == 5
