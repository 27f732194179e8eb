"""Tests for datarax.sources.numpy_file_source.NumpyFileSource."""

import contextlib
import copy
import gc
import os
import pickle
import threading

import jax
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from datarax.core.constructor_args import from_recipe
from datarax.core.host_source import check_columns
from datarax.sources.numpy_file_source import NumpyFileSource, NumpyFileSourceConfig

SDS = jax.ShapeDtypeStruct
N = 50


def _arrays(n=N):
    rng = np.random.default_rng(0)
    return {
        "image": rng.integers(0, 256, (n, 4, 5, 3)).astype(np.uint8),
        "label": np.arange(n, dtype=np.int64) * 3 - 7,
        "score": rng.standard_normal(n).astype(np.float32),
        "flag": np.arange(n) % 3 == 0,
        "half": rng.standard_normal((n, 2)).astype(np.float16),
        "z": (rng.standard_normal((n, 2)) + 1j * rng.standard_normal((n, 2))).astype(np.complex64),
    }


def _save(folder, arrays):
    paths = {}
    for column, array in arrays.items():
        paths[column] = str(folder / f"{column}.npy")
        np.save(paths[column], array)
    return paths


def _source(paths, **kwargs):
    return NumpyFileSource(NumpyFileSourceConfig(), paths=paths, **kwargs)


@pytest.fixture
def arrays():
    return _arrays()


@pytest.fixture
def source(tmp_path, arrays):
    src = _source(_save(tmp_path, arrays))
    yield src
    src.close()


def _assert_batch(batch, arrays, indices):
    assert set(batch) == set(arrays)
    for column, array in arrays.items():
        np.testing.assert_array_equal(batch[column], array[indices])
        assert batch[column].dtype == array.dtype


# --- spec, length, random access -----------------------------------------------------------------


def test_len_spec_and_paths(source, arrays, tmp_path):
    assert len(source) == N
    assert source.element_spec() == {
        "image": SDS((4, 5, 3), np.uint8),
        "label": SDS((), np.int64),
        "score": SDS((), np.float32),
        "flag": SDS((), np.bool_),
        "half": SDS((2,), np.float16),
        "z": SDS((2,), np.complex64),
    }
    assert source.paths == {column: str(tmp_path / f"{column}.npy") for column in arrays}


def test_every_record_equals_the_array(source, arrays):
    for i in range(N):
        _assert_batch(source.get_records([i]), arrays, [i])
    _assert_batch(source.read_records(np.arange(N)), arrays, np.arange(N))


def test_repeated_and_unsorted_indices(source, arrays):
    indices = np.array([7, 3, 3, 49, 0, 7, 1, 2, 3, 48, 49, 0])
    batch = source.read_records(indices)
    _assert_batch(batch, arrays, indices)
    check_columns("NumpyFileSource", batch, source.element_spec(), len(indices))


def test_random_batches_and_contiguous_runs(source, arrays):
    rng = np.random.default_rng(1)
    for _ in range(30):
        indices = rng.integers(0, N, int(rng.integers(1, 40)))
        _assert_batch(source.read_records(indices), arrays, indices)
    for start in (0, 13, N - 5):
        indices = np.arange(start, start + 5)
        _assert_batch(source.read_records(indices), arrays, indices)


def test_empty_index_vector(source):
    batch = source.get_records([])
    assert batch["image"].shape == (0, 4, 5, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (0,)


def test_get_batch_at_wraps_around(source, arrays):
    _assert_batch(source.get_batch_at(N - 2, 4), arrays, [N - 2, N - 1, 0, 1])


@pytest.mark.parametrize("record_shape", [(), (3,), (64, 256)])
def test_reads_merging_nearby_records_and_far_ones(tmp_path, record_shape):
    """Small records lie close together (one read spans many), 64 KiB records never do: both read exactly."""
    n = 20_000 if not record_shape else 300
    array = np.arange(n * int(np.prod(record_shape)), dtype=np.int32).reshape(n, *record_shape)
    src = _source(_save(tmp_path, {"x": array}))
    rng = np.random.default_rng(2)
    for size in (1, 2, 17, 256, 1000):
        indices = rng.integers(0, n, size)
        np.testing.assert_array_equal(src.read_records(indices)["x"], array[indices])
    dense = rng.permutation(n)[: n // 2]
    np.testing.assert_array_equal(src.read_records(dense)["x"], array[dense])
    src.close()


@pytest.fixture(scope="module")
def merging_source(tmp_path_factory):
    """200 records per column: 4-byte records (many per read) and 2000-byte ones (a read merges up to 3)."""
    folder = tmp_path_factory.mktemp("merging")
    arrays = {
        "small": np.arange(200, dtype=np.int32) * 7,
        "large": np.arange(200 * 500, dtype=np.int32).reshape(200, 500),
    }
    src = _source(_save(folder, arrays))
    yield src, arrays
    src.close()


@settings(max_examples=200, deadline=None)
@given(
    indices=st.lists(st.integers(0, 199), min_size=1, max_size=60)
    | st.builds(
        lambda start, length: list(range(start, min(200, start + length))), st.integers(0, 199), st.integers(1, 40)
    )
)
def test_any_index_vector_reads_exactly_the_records(merging_source, indices):
    src, arrays = merging_source
    batch = src.read_records(np.array(indices))
    for column, array in arrays.items():
        np.testing.assert_array_equal(batch[column], array[indices])


def test_big_endian_file_is_read_in_native_byte_order(tmp_path):
    values = np.arange(10, dtype=">i4") * 1000 - 3
    src = _source(_save(tmp_path, {"x": values, "y": values.astype(">f8")}))
    assert src.element_spec() == {"x": SDS((), np.int32), "y": SDS((), np.float64)}
    batch = src.read_records(np.array([9, 0, 4]))
    assert batch["x"].dtype == np.dtype(np.int32) and batch["x"].dtype.isnative
    assert batch["x"].tolist() == [8997, -3, 3997]
    assert batch["y"].tolist() == [8997.0, -3.0, 3997.0]
    src.close()


def test_threads_read_at_once(source, arrays):
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(50):
                indices = rng.integers(0, N, 16)
                _assert_batch(source.read_records(indices), arrays, indices)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# --- bad indices ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [N, -1, 10**12])
def test_index_out_of_range(source, bad):
    with pytest.raises(IndexError, match=rf"NumpyFileSource: record index {bad} is outside \[0, {N}\)"):
        source.get_records([0, bad])
    with pytest.raises(IndexError, match=str(bad)):
        source.read_records(np.array([bad]))


@pytest.mark.parametrize("bad", [np.zeros((2, 2), np.int64), np.array([0.5]), np.array(["a"])])
def test_indices_must_be_a_vector_of_ints(source, bad):
    with pytest.raises(TypeError, match="indices must be a 1-D integer array"):
        source.read_records(bad)


def test_traced_indices_are_refused(source):
    with pytest.raises(TypeError, match="host source"):
        jax.jit(source.get_records)(np.arange(3))


# --- construction errors -------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path, arrays):
    paths = _save(tmp_path, arrays)
    missing = str(tmp_path / "nowhere" / "labels.npy")
    with pytest.raises(FileNotFoundError, match=f"column 'label': {missing} does not exist"):
        _source({**paths, "label": missing})


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path} is not a file"):
        _source({"x": tmp_path})


def test_mismatched_lengths_name_both_columns(tmp_path):
    paths = _save(tmp_path, {"image": np.zeros((5, 2), np.uint8), "label": np.zeros(4, np.int32)})
    with pytest.raises(ValueError, match=r"column 'image' \(.*image\.npy\) has 5 records but column 'label' \(.*label"):
        _source(paths)


def test_object_dtype_is_refused(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, [2]], dtype=object), allow_pickle=True)
    with pytest.raises(TypeError, match=rf"column 'x': {path} holds Python objects \(dtype object\); .* pickle"):
        _source({"x": path})


@pytest.mark.parametrize(
    "array",
    [np.array(["ab", "c"]), np.zeros(3, [("a", np.int32), ("b", np.float32)]), np.arange(3).astype("M8[D]")],
    ids=["str", "structured", "datetime"],
)
def test_non_numeric_dtypes_are_refused(tmp_path, array):
    path = tmp_path / "x.npy"
    np.save(path, array)
    with pytest.raises(TypeError, match=r"has dtype .*; expected a bool or numeric dtype"):
        _source({"x": path})


def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "images.npy"
    np.save(path, np.zeros((100, 8, 8), np.uint8))
    size = os.path.getsize(path)
    os.truncate(path, size - 100)
    with pytest.raises(ValueError, match=rf"{path} is truncated or corrupt: .*uint8\[100,8,8\].*{size - 100} bytes"):
        _source({"image": path})


@pytest.mark.parametrize(
    "content",
    [b"", b"not a numpy file at all", b"\x93NUMPY\x01\x00\x10\x00{'descr': <garbage"],
    ids=["empty", "garbage", "bad-header"],
)
def test_corrupt_header_is_named(tmp_path, content):
    path = tmp_path / "broken.npy"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"column 'x': {path} is not a valid \.npy file"):
        _source({"x": path})


def test_fortran_order_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "transposed.npy"
    np.save(path, np.zeros((3, 4), np.float32).T)
    with pytest.raises(ValueError, match=r"Fortran order.*np\.ascontiguousarray"):
        _source({"x": path})


def test_scalar_and_empty_files_are_refused(tmp_path):
    np.save(tmp_path / "scalar.npy", np.float32(3))
    with pytest.raises(ValueError, match="holds a scalar"):
        _source({"x": tmp_path / "scalar.npy"})
    np.save(tmp_path / "empty.npy", np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="has zero records"):
        _source({"x": tmp_path / "empty.npy"})


@pytest.mark.parametrize(
    ("paths", "error", "message"),
    [
        (["a.npy"], TypeError, "paths must be a dict of column name to .npy path, got list"),
        ({}, ValueError, "paths is empty"),
        ({1: "a.npy"}, TypeError, "column names must be non-empty str, got 1"),
        ({"": "a.npy"}, TypeError, "column names must be non-empty str"),
        ({"valid_mask": "a.npy"}, ValueError, "'valid_mask' is reserved"),
        ({"x": 3}, TypeError, "the path of column 'x' must be a str or os.PathLike, got int"),
    ],
)
def test_bad_paths_argument(paths, error, message):
    with pytest.raises(error, match=message):
        _source(paths)


# --- files, copies and worker processes ----------------------------------------------------------


def test_worker_recipe_rebuilds_a_source_reading_the_same(source, arrays):
    recipe = pickle.loads(pickle.dumps(source.worker_recipe()))
    rebuilt = from_recipe(recipe)
    assert isinstance(rebuilt, NumpyFileSource) and rebuilt is not source
    indices = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    _assert_batch(rebuilt.read_records(indices), arrays, indices)
    rebuilt.close()


def test_recipe_holds_paths_not_contents(tmp_path):
    big = np.zeros((2_000, 1_000), np.uint8)  # 2 MB of records
    src = _source(_save(tmp_path, {"x": big}))
    assert len(pickle.dumps(src.worker_recipe())) < 10_000
    src.close()


def test_pickled_and_copied_sources_reopen_their_files(source, arrays):
    indices = np.array([2, 40, 2])
    payload = pickle.dumps(source)
    assert len(payload) < 100_000  # the records are not in it
    for other in (pickle.loads(payload), copy.deepcopy(source), nnx.clone(source), source.clone(), source.copy()):
        _assert_batch(other.read_records(indices), arrays, indices)
        other.close()
    _assert_batch(source.read_records(indices), arrays, indices)


def _open_descriptors(paths):
    """How many of this process's descriptors are open on ``paths``."""
    targets = {os.path.realpath(path) for path in paths}
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/self/fd/{fd}") in targets
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists descriptors in /proc")
def test_close_releases_descriptors_and_reads_reopen(source, arrays):
    paths = source.paths.values()
    assert _open_descriptors(paths) == len(arrays)
    source.close()
    source.close()  # idempotent
    assert _open_descriptors(paths) == 0
    _assert_batch(source.read_records(np.array([5])), arrays, [5])
    # Each file's descriptor, and the one its memory map keeps.
    assert _open_descriptors(paths) == 2 * len(arrays)
    source.close()
    gc.collect()
    assert _open_descriptors(paths) == 0


def test_file_truncated_after_construction_fails_reading_naming_it(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(1000, dtype=np.int64))
    src = _source({"x": path})
    os.truncate(path, os.path.getsize(path) - 800)
    assert src.read_records(np.array([0, 5]))["x"].tolist() == [0, 5]
    with pytest.raises(OSError, match=rf"{path} ended at byte .*truncated after the source was built"):
        src.read_records(np.array([999]))
    src.close()
    with pytest.raises(ValueError, match=f"{path} is truncated or corrupt"):
        src.read_records(np.array([0]))  # reopening checks the size again


# --- memory: records are read, never the file ----------------------------------------------------


def _rss_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from /proc")
def test_rss_stays_flat_while_reading_a_large_file_several_times(tmp_path):
    n, record = 65_000, (32, 32, 3)  # 200 MB of uint8 records
    path = tmp_path / "images.npy"
    with open(path, "wb") as file:  # written in chunks, so the test itself never holds the array
        np.lib.format.write_array_header_1_0(file, {"descr": "|u1", "fortran_order": False, "shape": (n, *record)})
        for start in range(0, n, 5_000):
            chunk = np.empty((min(5_000, n - start), 3072), np.uint8)
            chunk[:] = (np.arange(3072) % 251).astype(np.uint8)
            chunk[:, :4] = np.arange(start, start + len(chunk), dtype="<u4").view(np.uint8).reshape(-1, 4)
            file.write(chunk.tobytes())
    file_size = os.path.getsize(path)
    assert file_size > 199_000_000
    cap = 32 * 2**20  # well below the file: the map's pages are released as it is read
    src = NumpyFileSource(NumpyFileSourceConfig(max_resident_bytes=cap), paths={"image": path})
    src.read_records(np.arange(256))  # warm up the allocator
    baseline = peak = _rss_bytes()
    rng = np.random.default_rng(0)
    for _ in range(3):
        order = rng.permutation(n)
        for start in range(0, n, 256):
            indices = order[start : start + 256]
            batch = src.read_records(indices)["image"]
            stamps = np.ascontiguousarray(batch.reshape(len(indices), -1)[:, :4]).view("<u4").ravel()
            np.testing.assert_array_equal(stamps, indices)
            if start % (256 * 16) == 0:
                peak = max(peak, _rss_bytes())
    np.testing.assert_array_equal(
        batch.reshape(len(indices), -1)[:, 4:], np.broadcast_to(np.arange(4, 3072) % 251, (len(indices), 3068))
    )
    peak = max(peak, _rss_bytes())
    assert peak - baseline < 0.25 * file_size, f"RSS grew by {(peak - baseline) / 1e6:.0f} MB"
    src.close()
