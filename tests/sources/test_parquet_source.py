"""Tests for datarax.sources.parquet_source.ParquetSource, on Parquet files written by pyarrow."""

import copy
import os
import pickle
import re
import threading

import jax
import numpy as np
import pytest
from flax import nnx

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from datarax.core.constructor_args import from_recipe  # noqa: E402
from datarax.core.host_source import check_columns  # noqa: E402
from datarax.core.spec import BytesSpec, RaggedSpec  # noqa: E402
from datarax.sources.parquet_source import ParquetSource, ParquetSourceConfig  # noqa: E402

SDS = jax.ShapeDtypeStruct


def _table(n, start=0):
    """A table exercising every supported column type; row i's values all derive from start + i."""
    ids = np.arange(start, start + n)
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "score": pa.array(ids * 0.5, pa.float32()),
            "flag": pa.array(ids % 3 == 0),
            "half": pa.array((ids % 100).astype(np.float16)),
            "image": pa.FixedSizeListArray.from_arrays(
                pa.array((np.arange(n * 12) + start * 12) % 256, pa.uint8()), 12
            ),
            "grid": pa.FixedSizeListArray.from_arrays(
                pa.FixedSizeListArray.from_arrays(pa.array(np.arange(n * 6, dtype=np.float32) + start * 6), 3), 2
            ),
            "tokens": pa.array([list(range(i, i + i % 5)) for i in ids], pa.list_(pa.int32())),
            "points": pa.array([[[i, -i]] * (i % 3) for i in ids], pa.large_list(pa.list_(pa.int16(), 2))),
            "jpeg": pa.array([bytes([i % 256]) * (i % 7) for i in ids], pa.binary()),
            "blob": pa.array([b"%d" % i for i in ids], pa.large_binary()),
            "pair": pa.array([bytes([i % 256, (i + 1) % 256]) for i in ids], pa.binary(2)),
            "text": pa.array([f"r\u00e9{i}" for i in ids], pa.string()),
        }
    )


def _write(path, table, row_group_size, **kwargs):
    pq.write_table(table, path, row_group_size=row_group_size, **kwargs)
    return str(path)


def _source(paths, **config):
    return ParquetSource(ParquetSourceConfig(**config), paths=paths)


def _expected(rows, column, value):
    """What the source returns for a table value (as to_pylist gives it)."""
    del rows
    if column == "text":
        return value.encode()
    return value


def _assert_rows(batch, table, indices, columns=None):
    rows = table.to_pylist()
    columns = columns or table.column_names
    assert list(batch) == list(columns)
    for column in columns:
        values = batch[column]
        assert len(values) == len(indices)
        for value, index in zip(values, indices, strict=True):
            want = _expected(rows, column, rows[index][column])
            if isinstance(value, bytes):
                assert value == want
            else:
                assert np.asarray(value).tolist() == want, (column, index)


SPEC = {
    "id": SDS((), np.int64),
    "score": SDS((), np.float32),
    "flag": SDS((), np.bool_),
    "half": SDS((), np.float16),
    "image": SDS((12,), np.uint8),
    "grid": SDS((2, 3), np.float32),
    "tokens": RaggedSpec(np.int32, 1),
    "points": RaggedSpec(np.int16, 2),
    "jpeg": BytesSpec(),
    "blob": BytesSpec(),
    "pair": BytesSpec(),
    "text": BytesSpec(),
}


@pytest.fixture
def table():
    return _table(45)


@pytest.fixture
def single(tmp_path, table):
    return _write(tmp_path / "data.parquet", table, row_group_size=10)


# --- one file: spec, length, every record ----------------------------------------------------------


def test_single_file_spec_len_and_every_row(single, table):
    source = _source(single)
    assert len(source) == 45
    assert source.num_row_groups == 5
    assert source.files == (single,)
    assert source.columns == tuple(table.column_names)
    assert source.element_spec() == SPEC
    indices = np.arange(45)
    batch = source.read_records(indices)
    _assert_rows(batch, table, indices)
    check_columns("ParquetSource", batch, source.element_spec(), len(indices))


def test_column_types_come_back_as_documented(single):
    batch = _source(single).get_records([7, 2])
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (2, 12)
    assert batch["grid"].shape == (2, 2, 3)
    assert batch["flag"].tolist() == [False, False] and batch["half"].dtype == np.float16
    assert [t.dtype for t in batch["tokens"]] == [np.int32, np.int32]
    assert [t.tolist() for t in batch["tokens"]] == [[7, 8], [2, 3]]
    assert [p.shape for p in batch["points"]] == [(1, 2), (2, 2)]
    assert batch["points"][1].tolist() == [[2, -2], [2, -2]]
    assert batch["jpeg"] == [b"", b"\x02\x02"]
    assert batch["pair"] == [b"\x07\x08", b"\x02\x03"]
    assert batch["text"] == ["r\u00e97".encode(), "r\u00e92".encode()]


def test_repeated_unsorted_and_empty_indices(single, table):
    source = _source(single)
    indices = np.array([44, 0, 44, 13, 13, 9, 10, 0])
    _assert_rows(source.read_records(indices), table, indices)
    empty = source.get_records([])
    assert empty["image"].shape == (0, 12) and empty["tokens"] == [] and empty["jpeg"] == []


def test_get_batch_at_wraps_around(single, table):
    _assert_rows(_source(single).get_batch_at(43, 4), table, [43, 44, 0, 1])


@pytest.mark.parametrize("bad", [45, -1])
def test_index_out_of_range(single, bad):
    with pytest.raises(IndexError, match=rf"ParquetSource: record index {bad} is outside \[0, 45\)"):
        _source(single).read_records(np.array([0, bad]))


def test_indices_must_be_a_vector_of_ints(single):
    with pytest.raises(TypeError, match="indices must be a 1-D integer array"):
        _source(single).read_records(np.array([1.0]))


# --- several files -------------------------------------------------------------------------------


@pytest.fixture
def parts(tmp_path):
    """Three files of 23, 0 and 31 rows with different row-group sizes, in a directory."""
    folder = tmp_path / "parts"
    folder.mkdir()
    tables = [_table(23, 0), _table(0, 23), _table(31, 23)]
    paths = [
        _write(folder / "part-00.parquet", tables[0], row_group_size=5),
        _write(folder / "part-01.parquet", tables[1], row_group_size=5),
        _write(folder / "part-02.parquet", tables[2], row_group_size=8),
    ]
    (folder / "README.txt").write_text("not parquet")
    (folder / "nested.parquet").mkdir()  # a directory, not a file: skipped
    return folder, paths, pa.concat_tables(tables)


def test_directory_reads_its_parquet_files_sorted_by_name(parts):
    folder, paths, whole = parts
    source = _source(folder)
    assert source.files == tuple(paths)
    assert len(source) == 54
    assert source.num_row_groups == 5 + 4  # the empty file adds none
    _assert_rows(source.read_records(np.arange(54)), whole, np.arange(54))


def test_list_of_files_in_the_order_given(parts):
    _, paths, whole = parts
    reverse = _source([paths[2], paths[0]])
    tail, head = whole.slice(23), whole.slice(0, 23)
    _assert_rows(reverse.read_records(np.arange(54)), pa.concat_tables([tail, head]), np.arange(54))


def test_random_access_across_file_and_row_group_boundaries(parts):
    folder, _, whole = parts
    source = _source(folder, cache_row_groups=3)
    boundaries = np.array([4, 5, 9, 10, 20, 22, 23, 24, 30, 31, 38, 39, 46, 47, 53, 0])
    _assert_rows(source.read_records(boundaries), whole, boundaries)
    rng = np.random.default_rng(0)
    for _ in range(20):
        indices = rng.integers(0, 54, int(rng.integers(1, 30)))
        _assert_rows(source.read_records(indices), whole, indices)


def test_threads_read_at_once_and_decode_each_row_group_once(parts):
    folder, _, whole = parts
    source = _source(folder, cache_row_groups=64)  # everything fits: every decode is a first one
    rows = whole.to_pylist()
    barrier = threading.Barrier(8)
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        barrier.wait()
        try:
            for _ in range(20):
                indices = rng.integers(0, 54, 12)
                batch = source.read_records(indices)
                assert batch["id"].tolist() == [rows[i]["id"] for i in indices]
                assert batch["jpeg"] == [rows[i]["jpeg"] for i in indices]
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert source.cache_info()["misses"] == source.num_row_groups


# --- column selection ----------------------------------------------------------------------------


def _poison_column(path, row_group, column):
    """Overwrites the page header of one column chunk, so reading that chunk fails."""
    chunk = pq.ParquetFile(path).metadata.row_group(row_group).column(column)
    with open(path, "r+b") as file:
        file.seek(chunk.data_page_offset)
        file.write(b"\xff" * 16)


@pytest.fixture
def poisoned(tmp_path):
    """Two row groups of 50 rows; the 'poison' column of row group 1 cannot be read."""
    table = pa.table({"keep": np.arange(100), "poison": [b"x" * 50] * 100, "label": np.arange(100) % 7})
    path = _write(tmp_path / "poisoned.parquet", table, row_group_size=50, compression="none", use_dictionary=False)
    _poison_column(path, row_group=1, column=1)
    return path


def test_only_selected_columns_are_read(poisoned):
    source = _source(poisoned, columns=("label", "keep"))
    assert source.columns == ("label", "keep")
    assert list(source.element_spec()) == ["label", "keep"]
    batch = source.read_records(np.arange(100))  # row group 1's 'poison' chunk is never read
    assert list(batch) == ["label", "keep"]
    assert batch["keep"].tolist() == list(range(100))
    assert batch["label"].tolist() == [i % 7 for i in range(100)]


def test_corrupt_row_group_names_the_file_and_row_group(poisoned):
    source = _source(poisoned)
    assert source.read_records(np.array([3]))["poison"] == [b"x" * 50]  # row group 0 is intact
    with pytest.raises(
        OSError, match=rf"cannot read row group 1 of {poisoned} \(columns \['keep', 'poison', 'label'\]\)"
    ):
        source.read_records(np.array([3, 60]))
    assert source.cache_info()["cached"] == 1  # the failure is not cached


def test_missing_column_lists_the_available_ones(single):
    with pytest.raises(ValueError, match=r"columns \['nope'\] are not in .*data\.parquet; its columns are \['id', "):
        _source(single, columns=("id", "nope"))


# --- LRU cache -----------------------------------------------------------------------------------


def test_cache_is_lru_and_bounded(tmp_path):
    path = _write(tmp_path / "groups.parquet", pa.table({"x": np.arange(100)}), row_group_size=10)
    source = _source(path, cache_row_groups=3)

    def read(*groups):
        return source.read_records(np.array([10 * g + 1 for g in groups]))["x"].tolist()

    assert read(0, 1, 2) == [1, 11, 21]
    assert source.cache_info() == {"hits": 0, "misses": 3, "cached": 3, "capacity": 3}
    read(0)  # hit; 0 becomes the most recently used
    read(3)  # miss; evicts 1, the least recently used
    assert source.cache_info() == {"hits": 1, "misses": 4, "cached": 3, "capacity": 3}
    read(0, 2, 3)  # all cached
    assert source.cache_info()["misses"] == 4
    read(1)  # evicted before
    assert source.cache_info()["misses"] == 5
    assert read(*range(10)) == [10 * g + 1 for g in range(10)]
    assert source.cache_info()["cached"] == 3
    source.close()
    assert source.cache_info()["cached"] == 0
    assert read(4) == [41]


def test_cache_of_zero_decodes_every_time(tmp_path):
    path = _write(tmp_path / "groups.parquet", pa.table({"x": np.arange(20)}), row_group_size=10)
    source = _source(path, cache_row_groups=0)
    for _ in range(3):
        assert source.read_records(np.array([1, 2]))["x"].tolist() == [1, 2]
    assert source.cache_info() == {"hits": 0, "misses": 3, "cached": 0, "capacity": 0}


FIXED = ("id", "score", "flag", "half", "image", "grid")


def test_everything_cached_gathers_from_whole_table_arrays(parts):
    folder, _, whole = parts
    source = _source(folder, columns=FIXED, cache_row_groups=64)  # every row group, all fixed columns
    assert source._dense is not None
    rng = np.random.default_rng(1)
    for _ in range(10):
        indices = rng.integers(0, 54, int(rng.integers(1, 40)))  # repeats, any order, across files
        _assert_rows(source.read_records(indices), whole, indices, columns=FIXED)
    _assert_rows(source.read_records(np.arange(54)), whole, np.arange(54), columns=FIXED)
    info = source.cache_info()
    assert info["misses"] == source.num_row_groups == info["cached"]  # each row group decoded once
    assert source._dense.complete  # from now on a batch is one gather per column, no cache lookups
    _assert_rows(source.read_records(np.array([0, 1, 53])), whole, [0, 1, 53], columns=FIXED)
    assert source.cache_info()["hits"] == info["hits"] + 2  # still counted: two row groups touched
    batch = source.read_records(np.array([7, 7]))
    batch["image"][:] = 0  # a batch is a copy: the arrays it came from are unchanged
    assert source.read_records(np.array([7]))["image"][0].tolist() == [(84 + k) % 256 for k in range(12)]


def test_everything_cached_needs_room_for_every_row_group_and_fixed_columns(parts):
    folder, _, _ = parts
    groups = _source(folder).num_row_groups  # 9
    assert _source(folder, columns=FIXED, cache_row_groups=groups)._dense is not None
    assert _source(folder, columns=FIXED, cache_row_groups=groups - 1)._dense is None
    assert _source(folder, columns=("id", "tokens"), cache_row_groups=64)._dense is None  # a ragged column
    assert _source(folder, columns=("id", "jpeg"), cache_row_groups=64)._dense is None  # a bytes column


def test_everything_cached_survives_close_and_copies(parts):
    folder, _, whole = parts
    source = _source(folder, columns=FIXED, cache_row_groups=64)
    indices = np.array([53, 0, 22, 30, 30, 5])
    source.read_records(indices)
    source.read_records(np.arange(54))
    assert source._dense.complete
    source.close()
    assert source.cache_info()["cached"] == 0 and not source._dense.complete
    _assert_rows(source.read_records(indices), whole, indices, columns=FIXED)
    for other in (pickle.loads(pickle.dumps(source)), copy.deepcopy(source)):
        assert other.cache_info()["cached"] == 0 and other._dense._arrays is None
        _assert_rows(other.read_records(indices), whole, indices, columns=FIXED)


def test_everything_cached_reads_right_when_the_arrays_were_dropped_under_it(parts):
    # What a close() racing a read leaves: cached row groups whose arrays are no longer the current ones.
    folder, _, whole = parts
    source = _source(folder, columns=FIXED, cache_row_groups=64)
    indices = np.arange(54)
    source.read_records(indices)
    source._dense.clear()  # the cache still holds views of the dropped arrays
    _assert_rows(source.read_records(indices[::-1]), whole, indices[::-1], columns=FIXED)
    assert source.cache_info()["misses"] == source.num_row_groups  # served from the cached views


def test_batches_do_not_pin_cached_row_groups(single):
    source = _source(single, columns=("tokens", "image"))
    batch = source.read_records(np.array([3]))
    batch["tokens"][0][:] = -1
    batch["image"][0][:] = 0
    again = source.read_records(np.array([3]))
    assert again["tokens"][0].tolist() == [3, 4, 5]
    assert again["image"][0].tolist() == list(range(36, 48))


# --- schemas and types ---------------------------------------------------------------------------


def test_schema_mismatch_names_both_files_and_the_columns(tmp_path):
    first = _write(tmp_path / "a.parquet", pa.table({"x": np.arange(3), "y": np.arange(3)}), 2)
    second = _write(tmp_path / "b.parquet", pa.table({"x": np.arange(3.0), "z": np.arange(3)}), 2)
    with pytest.raises(
        ValueError,
        match=rf"{first} and {second} have different schemas: column 'x' is int64 in the first and double "
        r"in the second; column 'y' is missing from the second; columns \['z'\] are only in the second",
    ):
        _source(tmp_path)
    with pytest.raises(ValueError, match=r"column 'x' is int64 in the first and double in the second$"):
        _source([first, second], columns=("x",))


def test_extra_columns_are_fine_when_columns_are_chosen(tmp_path):
    first = _write(tmp_path / "a.parquet", pa.table({"x": np.arange(3)}), 2)
    second = _write(tmp_path / "b.parquet", pa.table({"x": np.arange(3, 5), "extra": [b"a", b"b"]}), 2)
    source = _source([first, second], columns=("x",))
    assert source.read_records(np.arange(5))["x"].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"columns \['extra'\] are only in the second"):
        _source([first, second])


@pytest.mark.parametrize(
    ("column", "type_text"),
    [
        (pa.array([1, 2], pa.timestamp("ms")), "timestamp[ms]"),
        (pa.array([{"a": 1}, {"a": 2}]), "struct<a: int64>"),
        (pa.array(["a", "b"]).dictionary_encode(), "dictionary<values=string"),
        (pa.array([[[1], [2, 3]], [[4]]]), "list<element: list<element: int64>>"),
        (pa.array([[b"a"], [b"b"]], pa.list_(pa.binary())), "list<element: binary>"),
    ],
    ids=["timestamp", "struct", "dictionary", "list-of-lists", "list-of-binary"],
)
def test_unsupported_types_are_refused_naming_the_column(tmp_path, column, type_text):
    path = _write(tmp_path / "odd.parquet", pa.table({"ok": [1, 2], "odd": column}), 2)
    with pytest.raises(TypeError, match=re.escape(f"column 'odd' of {path} has Arrow type {type_text}")):
        _source(path)
    assert _source(path, columns=("ok",)).read_records(np.array([1]))["ok"].tolist() == [2]


def test_nulls_are_refused_when_read_naming_the_column(tmp_path):
    table = pa.table({"x": pa.array([1, 2, None, 4], pa.int64()), "t": pa.array([[1], [2, None], [3], [4]])})
    path = _write(tmp_path / "nulls.parquet", table, 2)
    source = _source(path, columns=("x",))
    assert source.read_records(np.array([0, 1]))["x"].tolist() == [1, 2]
    with pytest.raises(ValueError, match=rf"row group 1 of {path}, column 'x' holds 1 null values"):
        source.read_records(np.array([3]))
    with pytest.raises(ValueError, match=rf"row group 0 of {path}, column 't' \(list items\) holds 1 null"):
        _source(path, columns=("t",)).read_records(np.array([0]))


def test_file_written_without_the_arrow_schema_reads_fixed_lists_as_ragged(tmp_path):
    table = pa.table({"image": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.uint8)), 3)})
    path = _write(tmp_path / "plain.parquet", table, 2, store_schema=False)
    source = _source(path)
    assert source.element_spec() == {"image": RaggedSpec(np.uint8, 1)}
    assert [v.tolist() for v in source.read_records(np.array([1, 0]))["image"]] == [[3, 4, 5], [0, 1, 2]]


def test_valid_mask_column_is_refused(tmp_path):
    path = _write(tmp_path / "v.parquet", pa.table({"valid_mask": [True], "x": [1]}), 2)
    with pytest.raises(ValueError, match="'valid_mask' is reserved"):
        _source(path)
    assert _source(path, columns=("x",)).read_records(np.array([0]))["x"].tolist() == [1]


# --- files: missing, corrupt, empty --------------------------------------------------------------


def test_missing_file_is_named(tmp_path, single):
    missing = tmp_path / "gone.parquet"
    with pytest.raises(FileNotFoundError, match=f"ParquetSource: {missing} does not exist"):
        _source(missing)
    with pytest.raises(FileNotFoundError, match=f"{missing} does not exist"):
        _source([single, missing])


def test_directory_without_parquet_files(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=f"directory {tmp_path} holds no \\*\\.parquet files"):
        _source(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_footer_is_named_at_construction(tmp_path, single, damage):
    if damage == "truncate":
        os.truncate(single, os.path.getsize(single) - 20)
    else:
        with open(single, "wb") as file:
            file.write(b"" if damage == "empty" else b"PAR1 this is not a parquet file at all")
    with pytest.raises(ValueError, match=f"ParquetSource: {single} is not a readable Parquet file"):
        _source(single)


def test_file_deleted_after_construction_fails_reading_naming_it(single):
    source = _source(single)
    os.remove(single)
    with pytest.raises(OSError, match=f"cannot read row group 0 of {single}"):
        source.read_records(np.array([0]))


def test_files_without_rows_are_refused(tmp_path):
    path = _write(tmp_path / "empty.parquet", _table(0), 10)
    with pytest.raises(ValueError, match="the files hold no rows"):
        _source(path)


@pytest.mark.parametrize(
    ("paths", "error", "message"),
    [
        ([], ValueError, "paths is an empty list"),
        (3, TypeError, "paths must be a path .* or a list of them, got int"),
        ([b"x.parquet"], TypeError, "paths must hold str or os.PathLike paths, got b'x.parquet'"),
    ],
)
def test_bad_paths_argument(paths, error, message):
    with pytest.raises(error, match=message):
        _source(paths)


# --- config --------------------------------------------------------------------------------------


def test_config_defaults_and_list_of_columns():
    assert ParquetSourceConfig().columns is None and ParquetSourceConfig().cache_row_groups == 8
    config = ParquetSourceConfig(columns=["a", "b"])
    assert config.columns == ("a", "b")
    hash(config)  # configs are static: hashable


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"columns": "image"}, r"columns must be a tuple of column names or None, got 'image' \(did you mean"),
        ({"columns": ()}, "columns is empty"),
        ({"columns": ("a", "a")}, "columns has repeated names"),
        ({"columns": ("a", 1)}, "column names must be non-empty str, got 1"),
        ({"columns": 5}, "columns must be a tuple of column names or None, got 5"),
        ({"cache_row_groups": -1}, "cache_row_groups must be a non-negative int, got -1"),
        ({"cache_row_groups": True}, "cache_row_groups must be a non-negative int, got True"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ParquetSourceConfig(**kwargs)


# --- worker processes and copies -----------------------------------------------------------------


def test_worker_recipe_round_trip(parts):
    folder, _, whole = parts
    source = _source(folder, columns=("id", "tokens", "jpeg"), cache_row_groups=2)
    recipe = pickle.loads(pickle.dumps(source.worker_recipe()))
    rebuilt = from_recipe(recipe)
    assert isinstance(rebuilt, ParquetSource) and rebuilt is not source
    assert rebuilt.config == source.config and rebuilt.files == source.files
    indices = np.array([53, 0, 22, 23, 30])
    _assert_rows(rebuilt.read_records(indices), whole, indices, columns=("id", "tokens", "jpeg"))


def test_pickled_and_copied_sources_start_with_an_empty_cache(single, table):
    source = _source(single)
    indices = np.array([1, 44, 20])
    source.read_records(indices)
    for other in (
        pickle.loads(pickle.dumps(source)),
        copy.deepcopy(source),
        nnx.clone(source),
        source.clone(),
        source.copy(),
    ):
        _assert_rows(other.read_records(indices), table, indices)
    assert pickle.loads(pickle.dumps(source)).cache_info()["cached"] == 0
