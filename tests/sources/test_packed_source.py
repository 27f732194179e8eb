"""Tests for datarax.sources.packed_source: first-fit packing of token lists into fixed-length rows.

Token ``j`` of record ``r`` is ``1000 * r + j + 1`` (never 0, the pad value), so every token in a
packed row names its record and its place in it. The packing is checked against a straightforward
first-fit written here (each record scans the rows from the first), and the rows' ``tokens``,
``segment_ids`` and ``positions`` against a layout built from that reference.
"""

import pickle
import re

import jax
import numpy as np
import pytest
from flax import nnx

from datarax import Pipeline
from datarax.core.config import StructuralConfig
from datarax.core.constructor_args import from_recipe
from datarax.core.host_source import HostSourceModule
from datarax.core.spec import RaggedSpec
from datarax.operators.text import TokenMasking, TokenMaskingConfig
from datarax.samplers.feistel import feistel_permute_np
from datarax.sources.packed_source import PackedSequenceSource, PackedSequenceSourceConfig, first_fit

LENGTHS = [5, 0, 3, 8, 1, 12, 7, 2, 2, 9, 4, 6, 1, 1, 3, 10, 5, 0, 7, 4, 8, 2, 3, 11, 6, 1, 9, 3]


def tokens_of(record, length):
    return 1000 * record + np.arange(1, length + 1, dtype=np.int64)


class Tokens(HostSourceModule):
    """Record ``r``: ``lengths[r]`` tokens ``1000 r + 1, 1000 r + 2, ...`` (int64, ragged), and its index."""

    def __init__(self, config, *, lengths, rngs=None, name=None):
        super().__init__(config, rngs=rngs, name=name)
        self.record_lengths = tuple(int(n) for n in lengths)

    def __len__(self):
        return len(self.record_lengths)

    def element_spec(self):
        return {"tokens": RaggedSpec(np.int64, 1), "index": jax.ShapeDtypeStruct((), np.int64)}

    def read_records(self, indices):
        return {
            "tokens": [tokens_of(r, self.record_lengths[r]) for r in indices.tolist()],
            "index": np.asarray(indices, np.int64),
        }


class CountingTokens(Tokens):
    """``Tokens`` that counts how many records it was asked for (single-threaded tests only)."""

    def __init__(self, config, *, lengths, rngs=None, name=None):
        super().__init__(config, lengths=lengths, rngs=rngs, name=name)
        self.reads = [0]

    def read_records(self, indices):
        self.reads[0] += len(indices)
        return super().read_records(indices)


def _packed(lengths=LENGTHS, **config):
    options = {"length": 12, **config}
    return PackedSequenceSource(
        PackedSequenceSourceConfig(**options), source=Tokens(StructuralConfig(), lengths=lengths)
    )


def reference_rows(lengths, capacity, order, overlong="truncate"):
    """Plain first fit: each record (in ``order``) goes to the first row with room; returns rows of (record, take)."""
    rows, free = [], []
    for record in order:
        size = lengths[record]
        if size == 0 or (overlong == "drop" and size > capacity):
            continue
        size = min(size, capacity)
        for row, room in enumerate(free):
            if room >= size:
                free[row] -= size
                rows[row].append((record, size))
                break
        else:
            free.append(capacity - size)
            rows.append([(record, size)])
    return rows


def reference_layout(rows, capacity, pad=0):
    tokens = np.full((len(rows), capacity), pad, np.int32)
    segments = np.zeros((len(rows), capacity), np.int32)
    positions = np.zeros((len(rows), capacity), np.int32)
    for i, row in enumerate(rows):
        at = 0
        for k, (record, take) in enumerate(row, start=1):
            tokens[i, at : at + take] = tokens_of(record, take)
            segments[i, at : at + take] = k
            positions[i, at : at + take] = np.arange(take)
            at += take
    return tokens, segments, positions


# ------------------------------------------------------------------ the packing


def test_first_fit_matches_the_plain_reference_on_random_items():
    rng = np.random.default_rng(0)
    for capacity in [1, 7, 64]:
        items = rng.integers(1, capacity + 1, 500).tolist()
        rows = first_fit(items, capacity)
        expected = reference_rows(items, capacity, range(len(items)))
        got = [[] for _ in range(rows.max() + 1)]
        for item, row in enumerate(rows.tolist()):
            got[row].append((item, items[item]))
        assert got == expected
    assert first_fit([], 5).tolist() == []


@pytest.mark.parametrize("seed", [None, 0, 7])
@pytest.mark.parametrize("overlong", ["truncate", "drop"])
def test_rows_match_the_reference_layout(seed, overlong):
    packed = _packed(length=10, seed=seed, overlong=overlong)
    n = len(LENGTHS)
    order = list(range(n)) if seed is None else feistel_permute_np(np.arange(n), n, seed, 0).tolist()
    rows = reference_rows(LENGTHS, 10, order, overlong)
    assert len(packed) == len(rows)
    assert [packed.row_records(i) for i in range(len(rows))] == [[r for r, _ in row] for row in rows]
    tokens, segments, positions = reference_layout(rows, 10)
    got = packed.get_records(np.arange(len(packed)))
    assert set(got) == {"tokens", "segment_ids", "positions"}
    assert all(v.dtype == np.int32 and v.shape == (len(rows), 10) for v in got.values())
    assert np.array_equal(got["tokens"], tokens)
    assert np.array_equal(got["segment_ids"], segments)
    assert np.array_equal(got["positions"], positions)
    too_long = sum(size > 10 for size in LENGTHS)
    assert (packed.truncated_records, packed.dropped_records) == (
        (too_long, 0) if overlong == "truncate" else (0, too_long)
    )
    assert packed.fill == pytest.approx(sum(t for row in rows for _, t in row) / (len(rows) * 10))
    # Any subset of rows, in any order, repeated: the same rows.
    pick = np.array([len(rows) - 1, 0, 2, 0])
    part = packed.get_records(pick)
    assert np.array_equal(part["tokens"], tokens[pick]) and np.array_equal(part["positions"], positions[pick])
    assert np.array_equal(part["segment_ids"], segments[pick])


def test_a_seed_changes_which_records_share_rows():
    in_order, mixed = _packed(length=16), _packed(length=16, seed=3)
    rows = {tuple(in_order.row_records(i)) for i in range(len(in_order))}
    assert rows != {tuple(mixed.row_records(i)) for i in range(len(mixed))}
    again = _packed(length=16, seed=3)
    assert [again.row_records(i) for i in range(len(again))] == [mixed.row_records(i) for i in range(len(mixed))]


def test_every_token_appears_exactly_once_and_overlong_records_are_cut():
    packed = _packed(length=9)
    rows = packed.get_records(np.arange(len(packed)))
    real = rows["segment_ids"] > 0
    assert np.array_equal(real, rows["tokens"] != 0)
    got = sorted(rows["tokens"][real].tolist())
    expected = sorted(t for r, size in enumerate(LENGTHS) for t in tokens_of(r, min(size, 9)).tolist())
    assert got == expected
    assert packed.truncated_records == sum(size > 9 for size in LENGTHS)


def test_overlong_error_names_the_record():
    message = "PackedSequenceSource: record 5 of Tokens has 12 tokens, more than length=10 (2 records do)"
    with pytest.raises(ValueError, match=re.escape(message)):
        _packed(length=10, overlong="error")
    assert len(_packed(length=12, overlong="error")) > 0


def test_pad_value_and_field_name():
    source = Tokens(StructuralConfig(), lengths=[2, 3])
    config = PackedSequenceSourceConfig(length=4, pad_value=-1)
    row = PackedSequenceSource(config, source=source).get_records(np.array([1]))
    assert row["tokens"].tolist() == [[1001, 1002, 1003, -1]] and row["positions"].tolist() == [[0, 1, 2, 0]]

    class Ids(Tokens):
        def element_spec(self):
            return {"input_ids": RaggedSpec(np.int64, 1)}

        def read_records(self, indices):
            return {"input_ids": super().read_records(indices)["tokens"]}

    ids = PackedSequenceSource(
        PackedSequenceSourceConfig(length=5, field="input_ids"), source=Ids(StructuralConfig(), lengths=[2, 3])
    )
    spec = ids.element_spec()
    assert spec == {name: jax.ShapeDtypeStruct((5,), np.int32) for name in ("input_ids", "segment_ids", "positions")}
    assert ids.get_records(np.array([0]))["input_ids"].tolist() == [[1, 2, 1001, 1002, 1003]]


def test_lengths_are_read_once_or_given():
    source = CountingTokens(StructuralConfig(), lengths=LENGTHS)
    packed = PackedSequenceSource(PackedSequenceSourceConfig(length=12), source=source)
    assert source.reads[0] == len(LENGTHS) and packed.lengths.tolist() == LENGTHS
    given = CountingTokens(StructuralConfig(), lengths=LENGTHS)
    same = PackedSequenceSource(PackedSequenceSourceConfig(length=12), source=given, lengths=packed.lengths)
    assert given.reads[0] == 0 and len(same) == len(packed)
    assert np.array_equal(
        same.get_records(np.arange(len(same)))["tokens"], packed.get_records(np.arange(len(packed)))["tokens"]
    )
    wrong = np.array(LENGTHS)
    wrong[3] += 1
    lying = PackedSequenceSource(PackedSequenceSourceConfig(length=12), source=given, lengths=wrong)
    row = next(i for i in range(len(lying)) if 3 in lying.row_records(i))
    with pytest.raises(
        ValueError, match="record 3 of CountingTokens now has 8 tokens, but 9 when the packing was made"
    ):
        lying.get_records(np.array([row]))


def test_the_worker_recipe_rebuilds_the_same_rows_without_reading_lengths():
    packed = _packed(length=11, seed=2)
    recipe = pickle.loads(pickle.dumps(packed.worker_recipe()))
    assert np.array_equal(np.asarray(recipe[2]["lengths"]), LENGTHS)
    rebuilt = from_recipe(recipe)
    assert isinstance(rebuilt, PackedSequenceSource) and rebuilt.source is not packed.source
    everything = np.arange(len(packed))
    for name, column in packed.get_records(everything).items():
        assert np.array_equal(column, rebuilt.get_records(everything)[name])


def test_a_fixed_shape_token_column_is_packed_too():
    class Fixed(HostSourceModule):
        def __len__(self):
            return 5

        def element_spec(self):
            return {"tokens": jax.ShapeDtypeStruct((3,), np.int32)}

        def read_records(self, indices):
            return {"tokens": (np.asarray(indices)[:, None] * 10 + np.arange(3)).astype(np.int32)}

    packed = PackedSequenceSource(PackedSequenceSourceConfig(length=7), source=Fixed(StructuralConfig()))
    assert packed.lengths.tolist() == [3] * 5 and len(packed) == 3
    assert packed.get_records(np.array([0]))["tokens"].tolist() == [[0, 1, 2, 10, 11, 12, 0]]


def test_bad_sources_and_arguments_are_refused():
    config = PackedSequenceSourceConfig(length=4)
    with pytest.raises(TypeError, match="PackedSequenceSource: config must be a PackedSequenceSourceConfig"):
        PackedSequenceSource(StructuralConfig(), source=Tokens(StructuralConfig(), lengths=[1]))
    with pytest.raises(TypeError, match="source must be a HostSourceModule .* got list"):
        PackedSequenceSource(config, source=[1, 2])
    with pytest.raises(ValueError, match=r"has no column 'words'; its columns are \['index', 'tokens'\]"):
        PackedSequenceSource(
            PackedSequenceSourceConfig(length=4, field="words"), source=Tokens(StructuralConfig(), lengths=[1])
        )
    with pytest.raises(ValueError, match=r"column 'index' of Tokens is int64\[\]; expected 1-D integer token arrays"):
        PackedSequenceSource(
            PackedSequenceSourceConfig(length=4, field="index"), source=Tokens(StructuralConfig(), lengths=[1])
        )
    with pytest.raises(ValueError, match="holds no tokens to pack"):
        PackedSequenceSource(config, source=Tokens(StructuralConfig(), lengths=[0, 0]))
    with pytest.raises(
        ValueError, match=r"lengths must hold one non-negative int per record of the source \(2\), got int64\[3\]"
    ):
        PackedSequenceSource(config, source=Tokens(StructuralConfig(), lengths=[1, 2]), lengths=[1, 2, 3])
    with pytest.raises(ValueError, match=r"got int64\[2\]"):
        PackedSequenceSource(config, source=Tokens(StructuralConfig(), lengths=[1, 2]), lengths=[1, -2])
    packed = _packed()
    with pytest.raises(IndexError, match=f"record index {len(packed)} is outside"):
        packed.get_records([len(packed)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"length": 0}, "PackedSequenceSourceConfig: length must be a positive int (at most 2**31 - 1), got 0"),
        (
            {"length": 4, "field": "positions"},
            "PackedSequenceSourceConfig: field must be a non-empty string other than",
        ),
        ({"length": 4, "seed": 1.5}, "PackedSequenceSourceConfig: seed must be an int or None, got 1.5"),
        (
            {"length": 4, "overlong": "wrap"},
            "PackedSequenceSourceConfig: overlong must be one of ('truncate', 'drop', 'error'), got 'wrap'",
        ),
        ({"length": 4, "pad_value": 2**31}, "PackedSequenceSourceConfig: pad_value must be an int32, got 2147483648"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PackedSequenceSourceConfig(**kwargs)


# ------------------------------------------------------------------ through a Pipeline


def _pipeline(**kwargs):
    options = {"batch_size": 3, "rngs": nnx.Rngs(4), "shuffle": True, "num_epochs": 2, "workers": 0, **kwargs}
    return Pipeline(source=_packed(length=12, seed=1), **options)


def _collect(iterator, count=None):
    out = []
    for batch in iterator:
        out.append({k: np.asarray(v).tolist() for k, v in batch.items()})
        if count is not None and len(out) == count:
            break
    return out


def test_each_pipeline_epoch_holds_every_row_and_every_token_once():
    packed = _packed(length=12, seed=1)
    rows = packed.get_records(np.arange(len(packed)))
    all_rows = sorted(map(tuple, rows["tokens"].tolist()))
    batches = _collect(_pipeline())
    per_epoch = -(-len(packed) // 3)
    assert len(batches) == 2 * per_epoch
    expected_tokens = sorted(t for r, size in enumerate(LENGTHS) for t in tokens_of(r, size).tolist())
    orders = []
    for epoch in range(2):
        valid = [
            (tuple(t), tuple(s), tuple(p))
            for b in batches[epoch * per_epoch : (epoch + 1) * per_epoch]
            for t, s, p, ok in zip(b["tokens"], b["segment_ids"], b["positions"], b["valid_mask"], strict=True)
            if ok
        ]
        assert sorted(t for t, _, _ in valid) == all_rows
        assert sorted(x for t, s, _ in valid for x, seg in zip(t, s, strict=True) if seg) == expected_tokens
        for t, s, p in valid:  # each token's position is its place in its record
            assert all(pos == (x % 1000) - 1 for x, seg, pos in zip(t, s, p, strict=True) if seg)
        orders.append([t for t, _, _ in valid])
    assert orders[0] != orders[1]  # shuffled rows, a new order per epoch


def test_worker_threads_give_the_same_stream():
    assert _collect(_pipeline(workers=2, read_ahead=3)) == _collect(_pipeline())


def test_resume_continues_the_stream():
    full = _collect(_pipeline())
    iterator = iter(_pipeline(workers=2))
    _collect(iterator, count=4)
    state = iterator.get_state()
    iterator.close()
    resumed = iter(_pipeline(workers=2))
    resumed.set_state(state)
    assert _collect(resumed) == full[4:]
    resumed.close()


def test_packed_rows_with_token_masking_over_hf_datasets():
    datasets = pytest.importorskip("datasets")
    from datarax.sources import HFSource, HFSourceConfig

    features = datasets.Features({"tokens": datasets.List(datasets.Value("int32")), "id": datasets.Value("int64")})
    rows = {"tokens": [tokens_of(r, n).tolist() for r, n in enumerate(LENGTHS)], "id": list(range(len(LENGTHS)))}
    hf = HFSource(HFSourceConfig(), dataset=datasets.Dataset.from_dict(rows, features=features))
    packed = PackedSequenceSource(PackedSequenceSourceConfig(length=12, seed=5), source=hf)
    reference = _packed(length=12, seed=5)
    everything = np.arange(len(packed))
    for name, column in reference.get_records(everything).items():
        assert np.array_equal(packed.get_records(everything)[name], column)
    masking = TokenMasking(
        TokenMaskingConfig(vocab_size=50, mask_token_id=99, mask_probability=0.25, mask_field="segment_ids")
    )
    pipeline = Pipeline(source=packed, stages=[masking], batch_size=4, rngs=nnx.Rngs(0), shuffle=True)
    seen = 0
    for batch in pipeline:
        batch = {k: np.asarray(v) for k, v in batch.items()}
        for row in np.flatnonzero(batch["valid_mask"]):
            chosen = batch["labels"][row] != -100
            assert not (chosen & (batch["segment_ids"][row] == 0)).any()  # padding never chosen
            assert chosen.sum() == max(1, int(np.floor((batch["segment_ids"][row] > 0).sum() * np.float32(0.25) + 0.5)))
            seen += 1
    assert seen == len(packed)


def test_process_workers_rebuild_the_packed_source(tmp_path):
    """Worker processes rebuild the source from its recipe (the saved dataset and the lengths): same stream."""
    datasets = pytest.importorskip("datasets")
    from datarax.sources import HFSource, HFSourceConfig

    features = datasets.Features({"tokens": datasets.List(datasets.Value("int32"))})
    rows = {"tokens": [tokens_of(r, n).tolist() for r, n in enumerate(LENGTHS)]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path))
    packed = PackedSequenceSource(
        PackedSequenceSourceConfig(length=12, seed=1), source=HFSource(HFSourceConfig(), path=str(tmp_path))
    )

    def run(**kwargs):
        pipeline = Pipeline(source=packed, batch_size=3, rngs=nnx.Rngs(4), shuffle=True, **kwargs)
        return _collect(pipeline)

    assert run(workers=2, worker_kind="process") == run(workers=0) == _collect(_pipeline(num_epochs=1))
