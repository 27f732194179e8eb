"""Tests for datarax.sources.record_format: round trips, strict validation, no code execution."""

import json
import math
import pickle
import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datarax.sources.record_format import DTYPES, MAGIC, VERSION, decode_record, encode_record, write_array_record

_UNPICKLED = []


def _mark_unpickled():
    """Called only if a pickle payload below is ever unpickled."""
    _UNPICKLED.append(True)
    return "unpickled"


class _Payload:
    def __reduce__(self):
        return (_mark_unpickled, ())


def _assert_same(decoded, record):
    assert list(decoded) == list(record)
    for key, value in record.items():
        got = decoded[key]
        if isinstance(value, bytes):
            assert type(got) is bytes and got == value
        else:
            value = np.asarray(value)
            assert got.dtype == value.dtype.newbyteorder("=") and got.shape == value.shape
            # Bitwise, so NaN payloads and -0.0 count too.
            assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(value, got.dtype).tobytes()


def _raw_record(header, payload=b"", *, magic=MAGIC, version=VERSION, reserved=0, header_length=None):
    """A record built by hand: prefix, header (a JSON-able object or raw bytes), then ``payload``."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(text) if header_length is None else header_length
    return struct.pack("<4sHHI", magic, version, reserved, length) + text + payload


def _one_field_record(field, data):
    """A record of one field at byte 1024 (past any header used here), holding ``data``."""
    header = {"fields": [dict(field, offset=1024)]}
    padding = 1024 - 12 - len(json.dumps(header).encode())
    return _raw_record(header, b"\x00" * padding + data)


# -- round trips -----------------------------------------------------------------------------------


@st.composite
def _arrays(draw):
    name = draw(st.sampled_from(sorted(DTYPES)))
    dtype = DTYPES[name]
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
    count = math.prod(shape)
    if dtype == np.bool_:
        return np.array(draw(st.lists(st.booleans(), min_size=count, max_size=count)), bool).reshape(shape)
    data = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
    return np.frombuffer(data, dtype).reshape(shape)


_values = st.one_of(_arrays(), st.binary(max_size=64))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=12), _values, max_size=6))
def test_round_trip_of_any_allowed_dtype_shape_and_bytes(record):
    data = encode_record(record)
    assert type(data) is bytes
    _assert_same(decode_record(data), record)


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_every_allowed_dtype_round_trips_with_values(name):
    values = np.arange(-3, 9).reshape(3, 4) if name != "bool" else np.arange(12).reshape(3, 4) % 3 == 0
    array = values.astype(DTYPES[name])
    decoded = decode_record(encode_record({"a": array, "zero_d": array[1, 2], "empty": array[:0]}))
    assert decoded["a"].dtype == DTYPES[name]
    assert decoded["a"].tobytes() == array.tobytes() and decoded["a"].shape == (3, 4)
    assert decoded["zero_d"].shape == () and decoded["zero_d"] == array[1, 2]
    assert decoded["empty"].shape == (0, 4) and decoded["empty"].dtype == DTYPES[name]


def test_empty_arrays_0d_arrays_empty_bytes_and_an_empty_record():
    record = {
        "zero_d": np.float32(2.5),
        "empty_1d": np.zeros(0, np.int16),
        "empty_3d": np.zeros((2, 0, 5), np.complex64),
        "nothing": b"",
        "python_int": 7,
        "python_float": -1.5,
        "python_bool": True,
    }
    decoded = decode_record(encode_record(record))
    assert decoded["zero_d"].shape == () and decoded["zero_d"].item() == 2.5
    assert decoded["empty_1d"].shape == (0,) and decoded["empty_1d"].dtype == np.int16
    assert decoded["empty_3d"].shape == (2, 0, 5) and decoded["empty_3d"].dtype == np.complex64
    assert decoded["nothing"] == b""
    assert decoded["python_int"].item() == 7 and decoded["python_int"].dtype == np.asarray(7).dtype
    assert decoded["python_float"].item() == -1.5 and decoded["python_bool"].dtype == np.bool_
    assert decode_record(encode_record({})) == {}


def test_big_endian_and_non_contiguous_arrays_come_back_native_with_their_values():
    big = np.arange(12, dtype=">i4").reshape(3, 4)
    strided = np.arange(20.0).reshape(4, 5)[::2, 1::2]
    decoded = decode_record(encode_record({"big": big, "strided": strided}))
    assert decoded["big"].dtype == np.dtype("int32") and decoded["big"].dtype.isnative
    np.testing.assert_array_equal(decoded["big"], big)
    np.testing.assert_array_equal(decoded["strided"], strided)


def test_ml_dtypes_keep_their_values():
    values = np.array([1.5, -2.0, 0.25], ml_dtypes.bfloat16)
    decoded = decode_record(encode_record({"b": values, "f8": values.astype(ml_dtypes.float8_e4m3fn)}))
    assert decoded["b"].dtype == ml_dtypes.bfloat16
    assert decoded["b"].astype(np.float32).tolist() == [1.5, -2.0, 0.25]
    assert decoded["f8"].astype(np.float32).tolist() == [1.5, -2.0, 0.25]


def test_decoded_arrays_are_zero_copy_views_of_the_record():
    data = encode_record({"x": np.arange(4, dtype=np.float32), "y": np.ones((2, 2), np.int64)})
    decoded = decode_record(data)
    assert not decoded["x"].flags.writeable  # a view of immutable bytes
    assert decoded["x"].flags.aligned and decoded["y"].flags.aligned
    buffer = bytearray(data)
    view = decode_record(buffer)
    offset = buffer.find(np.float32(2).tobytes())
    buffer[offset : offset + 4] = np.float32(40).tobytes()  # the decoded array sees the change
    assert view["x"].tolist() == [0.0, 1.0, 40.0, 3.0]
    assert decode_record(memoryview(data))["y"].tolist() == [[1, 1], [1, 1]]


def test_buffers_start_on_16_byte_boundaries():
    data = encode_record({"a": np.zeros(3, np.uint8), "b": np.zeros(5, np.float64), "c": b"xyz"})
    header_length = struct.unpack_from("<I", data, 8)[0]
    fields = json.loads(data[12 : 12 + header_length])["fields"]
    assert [f["offset"] % 16 for f in fields] == [0, 0, 0]
    assert data[4:6] == struct.pack("<H", VERSION)


def test_many_fields_get_a_header_that_fits():
    record = {f"field_{i}": np.full(i % 7, i, np.int32) for i in range(500)}
    _assert_same(decode_record(encode_record(record)), record)


# -- what encoding refuses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        np.array([object(), 1], dtype=object),
        np.array(["a", "b"]),
        np.array([b"a"], dtype="S1"),
        np.array(["2020-01-01"], dtype="datetime64[D]"),
        np.zeros(2, dtype=[("a", np.int32), ("b", np.float32)]),
        "text",
        None,
    ],
    ids=["object", "str", "bytes_dtype", "datetime", "structured", "python_str", "none"],
)
def test_encode_refuses_values_outside_the_allowlist(value):
    with pytest.raises(TypeError, match="field 'v'.*does not store"):
        encode_record({"v": value})


def test_encode_refuses_non_str_names_and_non_mappings():
    with pytest.raises(TypeError, match="field names must be str"):
        encode_record({1: np.zeros(2)})
    with pytest.raises(TypeError, match="must be a dict"):
        encode_record([("x", np.zeros(2))])


# -- what decoding refuses -------------------------------------------------------------------------


def _valid():
    return encode_record({"x": np.arange(6, dtype=np.float32).reshape(2, 3), "b": b"hello"})


def test_decode_refuses_a_bad_magic_an_unknown_version_and_reserved_bits():
    data = _valid()
    with pytest.raises(ValueError, match="bad magic b'XXXX'"):
        decode_record(b"XXXX" + data[4:])
    with pytest.raises(ValueError, match="unsupported format version 2"):
        decode_record(data[:4] + struct.pack("<H", 2) + data[6:])
    with pytest.raises(ValueError, match="reserved bytes"):
        decode_record(data[:6] + b"\x01\x00" + data[8:])


def test_decode_refuses_every_truncation_and_trailing_bytes():
    data = _valid()
    for size in range(len(data)):
        with pytest.raises(ValueError, match="decode_record"):
            decode_record(data[:size])
    with pytest.raises(ValueError, match="shorter than the 12-byte prefix"):
        decode_record(data[:5])
    with pytest.raises(ValueError, match="header length .* runs past the end"):
        decode_record(data[:40])
    with pytest.raises(ValueError, match="field 'b' spans bytes .* past the end"):
        decode_record(data[:-1])
    with pytest.raises(ValueError, match="1 unexpected bytes after the last field"):
        decode_record(data + b"\x00")


def test_decode_refuses_non_bytes():
    with pytest.raises(TypeError, match="must be bytes"):
        decode_record("DRXR")
    with pytest.raises(TypeError, match="C-contiguous"):
        decode_record(memoryview(np.zeros((4, 4), np.uint8)[:, ::2]))


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"fields": [], "fields": []}', "duplicate key 'fields'"),
        ([], "must be a JSON object"),
        ({"fields": [], "extra": 1}, "must be a JSON object"),
        ({"fields": {}}, "must be a JSON object"),
        ({"fields": [3]}, "header field 0 is int"),
        ({"fields": [{"kind": "bytes", "offset": 0, "length": 0}]}, "has no str 'name'"),
        ({"fields": [{"name": "a", "kind": "pickle", "offset": 0, "length": 0}]}, "kind 'pickle'"),
        ({"fields": [{"name": "a", "kind": "bytes", "offset": 0}]}, "has keys"),
        ({"fields": [{"name": "a", "kind": "bytes", "offset": 0, "length": 0, "code": "x"}]}, "has keys"),
        ({"fields": [{"name": "a", "kind": "bytes", "offset": -1, "length": 0}]}, "expected ints >= 0"),
        ({"fields": [{"name": "a", "kind": "bytes", "offset": 1.5, "length": 0}]}, "expected ints >= 0"),
        ({"fields": [{"name": "a", "kind": "bytes", "offset": True, "length": 0}]}, "expected ints >= 0"),
    ],
)
def test_decode_refuses_malformed_headers(header, message):
    with pytest.raises(ValueError, match=message):
        decode_record(_raw_record(header))


def test_decode_refuses_nan_in_the_header():
    with pytest.raises(ValueError, match="not valid JSON: NaN is not a valid number"):
        decode_record(_raw_record(b'{"fields": [{"name": "a", "kind": "bytes", "offset": NaN, "length": 0}]}'))


def _array_field(dtype, shape, offset, length):
    return {"name": "a", "kind": "array", "dtype": dtype, "shape": shape, "offset": offset, "length": length}


@pytest.mark.parametrize(
    "dtype",
    ["object", "O", "|O", "<f4", "f4", "float", "S4", "U1", "V8", "datetime64[s]", "float32; import os", "", None, 4],
)
def test_decode_refuses_dtypes_outside_the_allowlist(dtype):
    header = {"fields": [_array_field(dtype, [1], 0, 8)]}
    with pytest.raises(ValueError, match="which is not allowed"):
        decode_record(_raw_record(header, b"\x00" * 8))


@pytest.mark.parametrize(
    ("shape", "length", "message"),
    [
        ([2, 3], 20, r"float32\[2, 3\], which is 24 bytes, but its length says 20"),
        ([2, 3], 28, "which is 24 bytes, but its length says 28"),
        ([10**20, 10**20], 24, "but its length says 24"),
        ([-1, 3], 24, "expected a list of at most 32 ints >= 0"),
        ([True, 3], 24, "expected a list of at most 32 ints >= 0"),
        ([2.0, 3], 24, "expected a list of at most 32 ints >= 0"),
        ("6", 24, "expected a list of at most 32 ints >= 0"),
        ([1] * 33, 4, "expected a list of at most 32 ints >= 0"),
    ],
)
def test_decode_refuses_shapes_that_do_not_match_their_length(shape, length, message):
    with pytest.raises(ValueError, match=message):
        decode_record(_one_field_record(_array_field("float32", shape, 0, length), b"\x00" * length))


def test_decode_refuses_buffers_inside_the_header_overlapping_or_past_the_end():
    inside = {"fields": [{"name": "a", "kind": "bytes", "offset": 0, "length": 4}]}
    with pytest.raises(ValueError, match="inside the header or the previous field"):
        decode_record(_raw_record(inside, b"abcd"))
    overlap = {
        "fields": [
            {"name": "a", "kind": "bytes", "offset": 200, "length": 8},
            {"name": "b", "kind": "bytes", "offset": 204, "length": 8},
        ]
    }
    with pytest.raises(ValueError, match="field 'b' starts at byte 204, inside the header or the previous"):
        decode_record(_raw_record(overlap, b"\x00" * 300))
    past = {"fields": [{"name": "a", "kind": "bytes", "offset": 100, "length": 10**12}]}
    with pytest.raises(ValueError, match=r"field 'a' spans bytes \[100, 1000000000100\), past the end"):
        decode_record(_raw_record(past, b"\x00" * 200))


def test_decode_refuses_duplicate_field_names_and_invalid_bools():
    twice = {
        "fields": [
            {"name": "a", "kind": "bytes", "offset": 200, "length": 1},
            {"name": "a", "kind": "bytes", "offset": 201, "length": 1},
        ]
    }
    with pytest.raises(ValueError, match="field name 'a' appears twice"):
        decode_record(_raw_record(twice, b"\x00" * 202))
    field = _array_field("bool", [3], 0, 3)
    assert decode_record(_one_field_record(field, b"\x00\x01\x00"))["a"].tolist() == [False, True, False]
    with pytest.raises(ValueError, match="bool field 'a' holds a byte other than 0 or 1"):
        decode_record(_one_field_record(field, b"\x00\x02\x00"))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_corruption_decodes_or_raises_value_error(data):
    record = data.draw(st.dictionaries(st.text(max_size=5), _values, max_size=4))
    encoded = bytearray(encode_record(record))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_record(bytes(encoded))
    except ValueError:
        return
    assert isinstance(decoded, dict)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_value_error(data):
    with pytest.raises(ValueError):
        decode_record(data)


# -- pickle payloads are data, never code -----------------------------------------------------------


def test_a_pickle_payload_is_rejected_or_returned_as_bytes_and_never_unpickled():
    payload = pickle.dumps(_Payload())
    _UNPICKLED.clear()
    # The whole record a pickle: not a record.
    with pytest.raises(ValueError, match="bad magic"):
        decode_record(payload)
    # A pickle declared as an object array: the dtype is refused before the buffer is looked at.
    with pytest.raises(ValueError, match="dtype 'object', which is not allowed"):
        decode_record(_one_field_record(_array_field("object", [1], 0, len(payload)), payload))
    # A pickle stored as a bytes field: returned as the very bytes, still not loaded.
    assert decode_record(encode_record({"blob": payload}))["blob"] == payload
    assert _UNPICKLED == []
    # The payload is live: unpickling it would have run code.
    assert pickle.loads(payload) == "unpickled" and _UNPICKLED == [True]


# -- files ----------------------------------------------------------------------------------------


def test_write_array_record_writes_readable_records_with_group_size_1(tmp_path):
    from array_record.python import array_record_module

    records = [{"x": np.full((2, 2), i, np.int16), "tag": bytes([i])} for i in range(5)]
    path = tmp_path / "data.array_record"
    assert write_array_record(path, iter(records)) == 5
    reader = array_record_module.ArrayRecordReader(str(path))
    assert reader.num_records() == 5
    assert "group_size:1," in reader.writer_options_string()
    for record, data in zip(records, reader.read([0, 1, 2, 3, 4])):
        _assert_same(decode_record(data), record)
    reader.close()


def test_write_array_record_reports_bad_records_and_bad_options(tmp_path):
    with pytest.raises(TypeError, match="field 'x'"):
        write_array_record(tmp_path / "bad.array_record", [{"x": np.zeros(2)}, {"x": np.array(["s"])}])
    with pytest.raises(ValueError):
        write_array_record(tmp_path / "opts.array_record", [{"x": np.zeros(2)}], options="group_size:zero")


# --- decode_batch: records of one layout decoded as whole columns ---------------------------------


def test_decode_batch_equals_decoding_each_record():
    from datarax.sources.record_format import decode_batch

    rng = np.random.default_rng(0)
    rows = [
        encode_record(
            {
                "image": rng.integers(0, 256, (4, 5, 3), dtype=np.uint8),
                "score": rng.random(2).astype(np.float32),
                "flag": np.array(bool(i % 2)),
                "empty": np.zeros((0, 3), np.int16),
            }
        )
        for i in range(9)
    ]
    batch = decode_batch(rows)
    for name in ("image", "score", "flag", "empty"):
        want = np.stack([decode_record(row)[name] for row in rows])
        assert batch[name].dtype == want.dtype and batch[name].shape == want.shape
        np.testing.assert_array_equal(batch[name], want)


def test_decode_batch_declines_records_of_different_layouts_or_with_bytes():
    from datarax.sources.record_format import decode_batch

    same = [encode_record({"x": np.arange(3, dtype=np.int32)}) for _ in range(2)]
    other = encode_record({"x": np.arange(4, dtype=np.int32)})
    assert decode_batch([*same, other]) is None
    assert decode_batch([encode_record({"b": b"abc"})] * 2) is None
    assert decode_batch([]) is None


def test_decode_batch_refuses_a_bool_byte_other_than_0_or_1():
    from datarax.sources.record_format import decode_batch

    good = encode_record({"flag": np.array([True, False])})
    bad = bytearray(good)
    bad[-1] = 7
    with pytest.raises(ValueError, match="bool field 'flag'"):
        decode_batch([good, bytes(bad)])
