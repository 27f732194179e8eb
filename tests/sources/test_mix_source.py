"""MixSource: exact shares, each source's own exact epochs, a pure index -> record map, inside a Pipeline."""

import pickle

import jax
import numpy as np
import pytest
from flax import nnx

from datarax import Pipeline
from datarax.core.constructor_args import from_recipe
from datarax.core.host_source import HostSourceModule
from datarax.core.spec import BytesSpec
from datarax.samplers.feistel import feistel_permute_np
from datarax.sources import MemorySource, MemorySourceConfig, NumpyFileSource, NumpyFileSourceConfig
from datarax.sources.mix_source import MixSource, MixSourceConfig


def _npy_source(folder, tag, count):
    """A .npy source whose records name themselves: ``source`` = tag, ``index`` = position, ``image`` from both."""
    folder.mkdir(exist_ok=True)
    np.save(folder / f"source{tag}.npy", np.full(count, tag, np.int32))
    np.save(folder / f"index{tag}.npy", np.arange(count, dtype=np.int64))
    np.save(folder / f"image{tag}.npy", (10 * tag + np.arange(count * 3, dtype=np.uint8)).reshape(count, 3))
    paths = {name: str(folder / f"{name}{tag}.npy") for name in ("source", "index", "image")}
    return NumpyFileSource(NumpyFileSourceConfig(), paths=paths)


class Tagged(HostSourceModule):
    """A small host source held in memory: record ``i`` is ``{"source": tag, "index": i, "blob": bytes}``."""

    def __init__(self, config, *, tag, count):
        super().__init__(config)
        self.tag, self.count = tag, count

    def __len__(self):
        return self.count

    def element_spec(self):
        return {
            "source": jax.ShapeDtypeStruct((), np.int32),
            "index": jax.ShapeDtypeStruct((), np.int64),
            "blob": BytesSpec(),
        }

    def read_records(self, indices):
        indices = np.asarray(indices, np.int64)
        return {
            "source": np.full(len(indices), self.tag, np.int32),
            "index": indices.copy(),
            "blob": [b"%d:%d" % (self.tag, i) for i in indices.tolist()],
        }


def _tagged(*counts):
    from datarax.core.config import StructuralConfig

    return [Tagged(StructuralConfig(), tag=j, count=n) for j, n in enumerate(counts)]


@pytest.fixture
def pair(tmp_path):
    return [_npy_source(tmp_path, 0, 5), _npy_source(tmp_path, 1, 13)]


@pytest.mark.parametrize(
    "weights",
    [(0.7, 0.3), (1, 1), (0.01, 0.99), (1, 2, 3), (0.5, 0.2, 0.2, 0.1), (0.05, 3, 0.4, 1.7)],
)
def test_every_prefix_holds_each_source_in_its_share_within_one_record(weights):
    mix = MixSource(MixSourceConfig(weights=weights, length=5000), sources=_tagged(*[7] * len(weights)))
    which, _ = mix.locate(np.arange(len(mix)))
    shares = np.asarray(weights) / np.sum(weights)
    prefix = np.cumsum(np.eye(len(weights), dtype=np.int64)[which], axis=0)  # c_j(i + 1)
    expected = np.arange(1, len(mix) + 1)[:, None] * shares[None, :]
    assert np.abs(prefix - expected).max() < 1
    assert prefix.sum(axis=1).tolist() == list(range(1, len(mix) + 1))
    for total in (0, 1, 17, 999, 5000):
        assert mix.counts(total).tolist() == np.bincount(which[:total], minlength=len(weights)).tolist()


def test_each_source_reads_its_records_in_exact_own_epochs():
    sources = _tagged(5, 13, 4)
    mix = MixSource(MixSourceConfig(weights=(0.5, 0.3, 0.2), seed=7, length=300), sources=sources)
    batch = mix.get_records(np.arange(len(mix)))
    epochs_seen = []
    for j, source in enumerate(sources):
        mine = batch["index"][batch["source"] == j]  # in draw order: draws grow with the index
        whole = len(mine) // len(source)
        assert whole >= 2
        chunks = mine[: whole * len(source)].reshape(whole, len(source))
        for chunk in chunks:
            assert sorted(chunk.tolist()) == list(range(len(source)))
        epochs_seen.append([chunk.tolist() for chunk in chunks])
    assert epochs_seen[1][0] != epochs_seen[1][1]  # a new permutation every own epoch
    assert batch["blob"][:3] == [b"%d:%d" % (s, i) for s, i in zip(batch["source"][:3], batch["index"][:3])]


def test_the_default_length_is_the_shortest_holding_an_own_epoch_of_every_source(pair):
    mix = MixSource(MixSourceConfig(weights=(0.7, 0.3)), sources=pair)
    counts = mix.counts()
    assert (counts >= [5, 13]).all() and not (mix.counts(len(mix) - 1) >= [5, 13]).all()
    assert counts.sum() == len(mix) and abs(counts[1] - 13) <= 1
    records = mix.get_records(np.arange(len(mix)))
    for j, size in enumerate((5, 13)):
        assert set(records["index"][records["source"] == j].tolist()) == set(range(size))


def test_an_index_always_reads_the_same_record(pair):
    mix = MixSource(MixSourceConfig(weights=(0.7, 0.3), seed=3, length=100), sources=pair)
    whole = mix.get_records(np.arange(100))
    order = np.random.default_rng(0).permutation(100)
    shuffled = mix.get_records(order)
    for name in ("source", "index", "image"):
        assert np.array_equal(shuffled[name], whole[name][order])
    repeated = mix.get_records(np.array([42, 42, 0, 42]))
    assert repeated["index"].tolist() == whole["index"][[42, 42, 0, 42]].tolist()
    which, record = mix.locate(np.arange(100))
    assert np.array_equal(which, whole["source"]) and np.array_equal(record, whole["index"])
    images = np.where(which[:, None] == 0, 0, 10) + 3 * record[:, None] + np.arange(3)
    assert np.array_equal(whole["image"], images.astype(np.uint8))
    other_seed = MixSource(MixSourceConfig(weights=(0.7, 0.3), seed=4, length=100), sources=pair)
    assert np.array_equal(other_seed.locate(np.arange(100))[0], which)  # the seed moves records, not shares
    assert not np.array_equal(other_seed.locate(np.arange(100))[1], record)


def _collect(iterator, count=None):
    out = []
    for batch in iterator:
        out.append({k: np.asarray(v).tolist() for k, v in batch.items()})
        if count is not None and len(out) == count:
            break
    return out


def _pipeline(sources, **kwargs):
    mix = MixSource(MixSourceConfig(weights=(0.7, 0.3), seed=1), sources=sources)
    options = {"batch_size": 4, "rngs": nnx.Rngs(5), "shuffle": True, "num_epochs": 2, **kwargs}
    return mix, Pipeline(source=mix, **options)


def _valid(batches, column):
    return [v for b in batches for v, ok in zip(b[column], b["valid_mask"], strict=True) if ok]


def test_a_shuffled_pipeline_epoch_holds_exactly_the_mixtures_records(pair):
    mix, pipeline = _pipeline(pair, workers=0)
    expected = mix.get_records(np.arange(len(mix)))
    pairs = sorted(zip(expected["source"].tolist(), expected["index"].tolist(), strict=True))
    batches = _collect(pipeline)
    per_epoch = -(-len(mix) // 4)
    epochs = [batches[e * per_epoch : (e + 1) * per_epoch] for e in range(2)]
    orders = []
    for epoch in epochs:
        got = list(zip(_valid(epoch, "source"), _valid(epoch, "index"), strict=True))
        assert sorted(got) == pairs
        orders.append(got)
    assert orders[0] != orders[1]
    for epoch, got in enumerate(orders):  # the pipeline's Feistel order of the mixture's indices
        positions = feistel_permute_np(np.arange(len(mix)), len(mix), pipeline.stream.seed, epoch)
        which, record = mix.locate(positions)
        assert got == list(zip(which.tolist(), record.tolist(), strict=True))
    in_order = _collect(Pipeline(source=mix, batch_size=4, workers=0))
    assert _valid(in_order, "index") == expected["index"].tolist()


def test_the_stream_is_the_same_inline_and_in_worker_threads(pair):
    _, inline = _pipeline(pair, workers=0)
    _, threads = _pipeline(pair, workers=2, read_ahead=3)
    assert _collect(threads) == _collect(inline)


def test_resume_continues_the_stream(pair):
    _, pipeline = _pipeline(pair, workers=0)
    full = _collect(pipeline)
    _, first = _pipeline(pair, workers=2)
    iterator = iter(first)
    _collect(iterator, count=5)
    state = iterator.get_state()
    iterator.close()
    _, second = _pipeline(pair, workers=2)
    resumed = iter(second)
    resumed.set_state(state)
    assert _collect(resumed) == full[5:]
    resumed.close()


def test_the_worker_recipe_rebuilds_every_source(pair):
    mix = MixSource(MixSourceConfig(weights=(2, 1), seed=9, length=40), sources=pair, name="mix")
    rebuilt = from_recipe(pickle.loads(pickle.dumps(mix.worker_recipe())))
    assert isinstance(rebuilt, MixSource) and rebuilt.name == "mix" and len(rebuilt) == 40
    assert rebuilt.sources[0] is not pair[0]
    indices = np.arange(40)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(mix.get_records(indices).values(), rebuilt.get_records(indices).values(), strict=True)
    )


def test_mixed_byte_columns_are_lists_in_index_order():
    mix = MixSource(MixSourceConfig(weights=(1, 1), length=10), sources=_tagged(3, 4))
    batch = mix.get_records(np.array([9, 0, 1, 9]))
    assert isinstance(batch["blob"], list)
    assert batch["blob"] == [b"%d:%d" % (s, i) for s, i in zip(batch["source"], batch["index"], strict=True)]


def test_sources_with_different_specs_are_refused_naming_both(pair, tmp_path):
    other = _npy_source(tmp_path / "other", 2, 4)
    np.save(tmp_path / "other" / "image2.npy", np.zeros((4, 5), np.float32))
    other = NumpyFileSource(NumpyFileSourceConfig(), paths={**other.paths})
    with pytest.raises(ValueError) as error:
        MixSource(MixSourceConfig(weights=(1, 1)), sources=[pair[0], other])
    message = str(error.value)
    assert "sources[1]" in message and "float32[5]" in message and "uint8[3]" in message


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ((), "non-empty"),
        ((1, 0), r"weights\[1\] is 0"),
        ((1, -2), r"weights\[1\] is -2"),
        ((float("nan"), 1), r"weights\[0\] is nan"),
        ((1, float("inf")), r"weights\[1\] is inf"),
        ((True, 1), r"weights\[0\] is True"),
        ((1, "2"), r"weights\[1\] is '2'"),
        ("ab", "non-empty sequence"),
    ],
)
def test_bad_weights_are_named(weights, match):
    with pytest.raises(ValueError, match=match):
        MixSourceConfig(weights=weights)


def test_bad_config_and_sources_are_named(pair):
    with pytest.raises(ValueError, match="length must be None or an int"):
        MixSourceConfig(weights=(1,), length=0)
    with pytest.raises(ValueError, match="seed must be an int"):
        MixSourceConfig(weights=(1,), seed=1.5)
    with pytest.raises(ValueError, match="2 sources but 3 weights"):
        MixSource(MixSourceConfig(weights=(1, 1, 1)), sources=pair)
    memory = MemorySource(MemorySourceConfig(), data={"index": np.arange(3)})
    with pytest.raises(TypeError, match=r"sources\[1\] is a MemorySource, a device source"):
        MixSource(MixSourceConfig(weights=(1, 1)), sources=[pair[0], memory])
    with pytest.raises(TypeError, match="must be a MixSourceConfig"):
        MixSource(NumpyFileSourceConfig(), sources=pair)
    with pytest.raises(IndexError, match="outside"):
        MixSource(MixSourceConfig(weights=(1, 1), length=8), sources=pair).get_records([8])


def test_process_workers_rebuild_the_mixture(pair):
    _, inline = _pipeline(pair, workers=0, num_epochs=1)
    _, processes = _pipeline(pair, workers=2, worker_kind="process", num_epochs=1)
    assert _collect(processes) == _collect(inline)


def test_one_source_is_its_own_epochs_back_to_back():
    (source,) = _tagged(6)
    mix = MixSource(MixSourceConfig(weights=(2.5,), seed=1), sources=[source])
    assert len(mix) == 6 and mix.weights == (1.0,)
    assert sorted(mix.get_records(np.arange(6))["index"].tolist()) == list(range(6))


def test_an_empty_source_is_refused():
    with pytest.raises(ValueError, match=r"sources\[1\] \(Tagged\) has no records"):
        MixSource(MixSourceConfig(weights=(1, 1)), sources=_tagged(3, 0))


def test_kept_permutations_read_the_same_records_as_computed_ones(monkeypatch):
    import copy

    from datarax.sources import mix_source

    sources = _tagged(5, 13, 4)
    config = MixSourceConfig(weights=(0.5, 0.3, 0.2), seed=7, length=300)
    kept = MixSource(config, sources=sources)
    monkeypatch.setattr(mix_source, "_CACHE_ENTRIES", 0)
    computed = MixSource(config, sources=sources)
    assert kept._own_epochs.cached and not computed._own_epochs.cached
    indices = np.random.default_rng(1).integers(0, 300, 500)
    for a, b in zip(kept.locate(indices), computed.locate(indices), strict=True):
        assert np.array_equal(a, b)
    clone = copy.deepcopy(kept._own_epochs)
    assert np.array_equal(clone.records(1, np.arange(40)), computed._own_epochs.records(1, np.arange(40)))
