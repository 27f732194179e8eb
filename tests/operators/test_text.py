"""Tests for datarax.operators.text: PadOrTruncate (host), TokenMasking and TokenDropout (device).

References are numpy: slicing and padding written out for ``PadOrTruncate``; for the device
operators the exact number of chosen tokens per record (``floor(p * n + 1/2)`` in float32, at least
one), the positions that may be chosen, and the proportions of the outcomes over many records, each
checked within a tolerance of about 5 binomial standard deviations (stated at each check).
Nothing here is differentiable w.r.t. token ids (integers); the gradient test checks that a float
field travelling beside the tokens keeps its identity gradient through the operators.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from datarax import Pipeline
from datarax.core.config import StructuralConfig
from datarax.core.host_source import HostSourceModule
from datarax.core.prng import node_key, record_keys
from datarax.core.spec import RaggedSpec
from datarax.operators.text import (
    PadOrTruncate,
    PadOrTruncateConfig,
    TokenDropout,
    TokenDropoutConfig,
    TokenMasking,
    TokenMaskingConfig,
    _k_smallest,
    _selection_scores,
)
from datarax.sources import MemorySource, MemorySourceConfig

IGNORE = -100
MASK_ID = 1000
VOCAB = 900


def _keys(n, seed=0):
    return record_keys(node_key(seed, "text"), 0, jnp.arange(n))


def _padded_batch(n, length, seed=0, low=0):
    """``n`` rows of ``length`` tokens in ``[1, VOCAB)``, each with a random count (>= low) of real tokens."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(low, length + 1, n)
    tokens = rng.integers(1, VOCAB, (n, length)).astype(np.int32)
    mask = np.arange(length)[None, :] < counts[:, None]
    tokens = np.where(mask, tokens, 0).astype(np.int32)
    return {"tokens": tokens, "tokens_mask": mask}


def _expected_count(n_eligible, p):
    k = np.floor(np.asarray(n_eligible, np.float32) * np.float32(p) + np.float32(0.5)).astype(np.int64)
    return np.where(n_eligible > 0, np.maximum(k, 1), 0) if p > 0 else np.zeros_like(k)


# ------------------------------------------------------------------ PadOrTruncate


def _pad_reference(tokens, length, pad, truncation, padding):
    kept = list(tokens[:length]) if truncation == "right" else list(tokens[-length:] if len(tokens) else [])
    kept = kept[-length:] if truncation == "left" else kept
    fill = [pad] * (length - len(kept))
    out = kept + fill if padding == "right" else fill + kept
    mask = [1] * len(kept) + [0] * len(fill) if padding == "right" else [0] * len(fill) + [1] * len(kept)
    return out, mask


@pytest.mark.parametrize("truncation", ["right", "left"])
@pytest.mark.parametrize("padding", ["right", "left"])
def test_pad_or_truncate_matches_the_reference(truncation, padding):
    rng = np.random.default_rng(3)
    op = PadOrTruncate(PadOrTruncateConfig(length=6, pad_value=-7, truncation=truncation, padding=padding))
    for size in [0, 1, 5, 6, 7, 13]:
        tokens = rng.integers(0, 50, size).astype(np.int64)
        out = op.apply({"tokens": tokens, "label": np.int32(4)}, None)
        expected, mask = _pad_reference(tokens.tolist(), 6, -7, truncation, padding)
        assert out["tokens"].dtype == np.int32 and out["tokens"].shape == (6,)
        assert out["tokens"].tolist() == expected
        assert out["tokens_mask"].dtype == np.bool_ and out["tokens_mask"].astype(int).tolist() == mask
        assert int(out["label"]) == 4


def test_pad_or_truncate_names_and_dtypes():
    op = PadOrTruncate(PadOrTruncateConfig(length=4, field="ids", mask_field="attention", mask_dtype="int32"))
    element = {"ids": [3, 4], "other": np.ones(2)}
    out = op.apply(element, None)
    assert out["ids"].tolist() == [3, 4, 0, 0] and out["attention"].tolist() == [1, 1, 0, 0]
    assert out["attention"].dtype == np.int32
    assert element["ids"] == [3, 4] and set(element) == {"ids", "other"}  # the input is not modified
    assert np.array_equal(out["other"], np.ones(2))
    out = op.apply({"ids": np.array([5], np.uint16)}, None)
    assert out["ids"].dtype == np.int32 and out["ids"].tolist() == [5, 0, 0, 0]


def test_pad_or_truncate_rejects_bad_records():
    op = PadOrTruncate(PadOrTruncateConfig(length=4))
    with pytest.raises(ValueError, match=r"PadOrTruncate: field 'tokens' is not in the element \(keys: \['x'\]\)"):
        op.apply({"x": np.arange(3)}, None)
    with pytest.raises(ValueError, match=r"must be a 1-D token array, got shape \(2, 2\)"):
        op.apply({"tokens": np.zeros((2, 2), np.int32)}, None)
    with pytest.raises(TypeError, match="must hold integer token ids, got dtype float32"):
        op.apply({"tokens": np.zeros(3, np.float32)}, None)
    with pytest.raises(ValueError, match=f"holds the id {2**40}, outside int32"):
        op.apply({"tokens": np.array([1, 2**40])}, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"length": 0}, "PadOrTruncateConfig: length must be a positive int, got 0"),
        ({"length": 2.0}, "PadOrTruncateConfig: length must be a positive int, got 2.0"),
        ({"length": 4, "field": ""}, "PadOrTruncateConfig: field must be a non-empty string (an element key), got ''"),
        ({"length": 4, "mask_field": "tokens"}, "PadOrTruncateConfig: the element keys must differ"),
        ({"length": 4, "pad_value": 2**31}, "PadOrTruncateConfig: pad_value must be an int in"),
        (
            {"length": 4, "truncation": "middle"},
            "PadOrTruncateConfig: truncation must be 'right' or 'left', got 'middle'",
        ),
        ({"length": 4, "padding": "up"}, "PadOrTruncateConfig: padding must be 'right' or 'left', got 'up'"),
        ({"length": 4, "mask_dtype": "float32"}, "PadOrTruncateConfig: mask_dtype must be 'bool' or 'int32'"),
        (
            {"length": 4, "stochastic": True, "stream_name": "pad"},
            "PadOrTruncateConfig: the operator draws nothing, so stochastic must be False",
        ),
    ],
)
def test_pad_or_truncate_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PadOrTruncateConfig(**kwargs)


def test_pad_or_truncate_wants_its_config():
    with pytest.raises(TypeError, match="PadOrTruncate: config must be a PadOrTruncateConfig, got TokenDropoutConfig"):
        PadOrTruncate(TokenDropoutConfig())


class _Documents(HostSourceModule):
    """Record ``r`` is a token list of ``(r * 7) % 11`` tokens ``r * 100 + j``, plus its index."""

    def __len__(self):
        return 40

    def element_spec(self):
        return {"tokens": RaggedSpec(np.int64, 1), "index": jax.ShapeDtypeStruct((), np.int64)}

    def read_records(self, indices):
        return {
            "tokens": [r * 100 + np.arange((r * 7) % 11) for r in indices.tolist()],
            "index": np.asarray(indices, np.int64),
        }


def test_pad_then_mask_in_a_pipeline_is_the_same_for_any_batch_size():
    """Host PadOrTruncate then device TokenMasking: each record's result depends on nothing but the record."""
    masking = TokenMaskingConfig(vocab_size=VOCAB, mask_token_id=MASK_ID, mask_probability=0.3)

    def run(batch_size, workers):
        pipeline = Pipeline(
            source=_Documents(StructuralConfig()),
            host_stages=[PadOrTruncate(PadOrTruncateConfig(length=8))],
            stages=[TokenMasking(masking)],
            batch_size=batch_size,
            rngs=nnx.Rngs(11),
            shuffle=True,
            workers=workers,
        )
        out = {}
        for batch in pipeline:
            batch = {k: np.asarray(v) for k, v in batch.items()}
            for row in np.flatnonzero(batch["valid_mask"]):
                out[int(batch["index"][row])] = (batch["tokens"][row].tolist(), batch["labels"][row].tolist())
        return out

    small, large = run(4, 0), run(16, 2)
    assert sorted(small) == list(range(40)) and small == large
    for record, (tokens, labels) in small.items():
        size = min((record * 7) % 11, 8)
        original = [record * 100 + j for j in range(size)] + [0] * (8 - size)
        assert labels[size:] == [IGNORE] * (8 - size) and tokens[size:] == [0] * (8 - size)
        chosen = [j for j in range(8) if labels[j] != IGNORE]
        assert len(chosen) == _expected_count(np.array(size), 0.3)
        assert all(labels[j] == original[j] for j in chosen)
        assert all(tokens[j] == original[j] for j in range(8) if j not in chosen)


# ------------------------------------------------------------------ TokenMasking


def _masking(**kwargs):
    return TokenMasking(TokenMaskingConfig(vocab_size=VOCAB, mask_token_id=MASK_ID, **kwargs))


def _apply_all(op, data, keys):
    return {k: np.asarray(v) for k, v in jax.jit(jax.vmap(op.apply))(data, keys).items()}


@pytest.mark.parametrize("p", [0.0, 0.15, 0.5, 1.0])
def test_masking_chooses_exactly_the_rounded_share_of_eligible_tokens(p):
    data = _padded_batch(300, 32, seed=1)
    out = _apply_all(_masking(mask_probability=p), data, _keys(300))
    chosen = out["labels"] != IGNORE
    assert not (chosen & ~data["tokens_mask"]).any()  # padding is never chosen
    assert np.array_equal(chosen.sum(axis=1), _expected_count(data["tokens_mask"].sum(axis=1), p))
    assert np.array_equal(out["labels"][chosen], data["tokens"][chosen])
    assert out["labels"].dtype == np.int32 and out["tokens"].dtype == np.int32
    unchanged = out["tokens"] == data["tokens"]
    assert unchanged[~chosen].all()  # only chosen tokens may change


def test_masking_outcome_proportions():
    """80% [MASK], 10% random, 10% unchanged, each within 5 standard deviations (n ~ 60,000 chosen)."""
    n, length = 2000, 128
    data = _padded_batch(n, length, seed=2, low=64)
    out = _apply_all(_masking(), data, _keys(n, seed=4))
    chosen = out["labels"] != IGNORE
    total = int(chosen.sum())
    assert total == int(_expected_count(data["tokens_mask"].sum(axis=1), 0.15).sum())
    masked = (out["tokens"] == MASK_ID) & chosen
    kept = (out["tokens"] == data["tokens"]) & chosen
    replaced = chosen & ~masked & ~kept
    for share, expected in [(masked, 0.8), (replaced, 0.1 * (1 - 1 / VOCAB)), (kept, 0.1 + 0.1 / VOCAB)]:
        tolerance = 5 * np.sqrt(expected * (1 - expected) / total)
        assert abs(share.sum() / total - expected) < tolerance, (share.sum() / total, expected)
    random_ids = out["tokens"][replaced]
    assert random_ids.min() >= 0 and random_ids.max() < VOCAB
    # Uniform on [0, VOCAB): mean (VOCAB - 1) / 2, standard deviation VOCAB / sqrt(12) per draw.
    assert abs(random_ids.mean() - (VOCAB - 1) / 2) < 5 * VOCAB / np.sqrt(12 * random_ids.size)


def test_the_k_smallest_scores_match_a_sort():
    """The bitwise selection against numpy's argsort, for every k from 0 to n, eligible or not."""
    rng = np.random.default_rng(6)
    length = 40
    eligible = rng.random(length) < 0.7
    scores = _selection_scores(jax.random.key(3), jnp.asarray(eligible))
    values = np.asarray(scores)
    assert len(set(values[eligible].tolist())) == eligible.sum()  # distinct
    assert (values[~eligible] == 0xFFFFFFFF).all()
    assert np.array_equal(values[eligible] % 64, np.flatnonzero(eligible))  # the position in the low bits
    pick = jax.jit(_k_smallest)
    order = np.flatnonzero(eligible)[np.argsort(values[eligible])]
    for k in range(int(eligible.sum()) + 1):
        chosen = np.asarray(pick(scores, jnp.int32(k))) & eligible
        assert np.array_equal(np.flatnonzero(chosen), np.sort(order[:k]))
    full = rng.integers(0, 2**32, 200, dtype=np.uint64).astype(np.uint32)
    full = np.unique(full)
    for k in [1, 50, len(full)]:
        assert np.array_equal(np.asarray(pick(jnp.asarray(full), jnp.int32(k))), full <= np.sort(full)[k - 1])


def test_masking_chooses_every_eligible_position_alike():
    """Over 4000 records of 16 eligible tokens, each position is chosen about 15% of the time (5 sigma)."""
    n = 4000
    data = {"tokens": np.tile(np.arange(1, 17, dtype=np.int32), (n, 1))}
    out = _apply_all(_masking(mask_field=None, mask_probability=0.25), data, _keys(n, seed=7))
    chosen = out["labels"] != IGNORE
    assert (chosen.sum(axis=1) == 4).all()
    rate = chosen.mean(axis=0)
    assert np.abs(rate - 0.25).max() < 5 * np.sqrt(0.25 * 0.75 / n)


def test_masking_never_chooses_special_tokens_and_accepts_any_mask():
    tokens = np.array([[101, 5, 6, 7, 102, 0], [101, 8, 102, 9, 102, 0]], np.int32)
    segment_ids = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 2, 2, 0]], np.int32)
    op = _masking(mask_field="segment_ids", mask_probability=1.0, special_token_ids=(101, 102))
    out = _apply_all(op, {"tokens": tokens, "segment_ids": segment_ids}, _keys(2))
    assert (out["labels"] != IGNORE).tolist() == [[False, True, True, True, False, False]] + [
        [False, True, False, True, False, False]
    ]
    assert np.array_equal(out["segment_ids"], segment_ids)


def test_masking_is_deterministic_per_key_and_differs_between_keys():
    data = _padded_batch(64, 64, seed=5, low=32)
    op = _masking(mask_probability=0.3)
    keys = _keys(64)
    first, second = _apply_all(op, data, keys), _apply_all(op, data, keys)
    assert all(np.array_equal(first[k], second[k]) for k in first)
    other = _apply_all(op, data, _keys(64, seed=1))
    assert (first["labels"] != other["labels"]).any(axis=1).all()
    # One record alone (eager, no vmap, no jit) gets what it got in the batch.
    alone = op.apply({k: jnp.asarray(v[9]) for k, v in data.items()}, keys[9])
    assert np.array_equal(np.asarray(alone["tokens"]), first["tokens"][9])
    assert np.array_equal(np.asarray(alone["labels"]), first["labels"][9])


def test_masking_output_spec_and_other_keys():
    op = _masking()
    spec = {
        "tokens": jax.ShapeDtypeStruct((16,), jnp.int16),
        "tokens_mask": jax.ShapeDtypeStruct((16,), jnp.bool_),
        "weight": jax.ShapeDtypeStruct((), jnp.float32),
    }
    out = op.output_spec(spec)
    assert out["tokens"] == spec["tokens"] and out["weight"] == spec["weight"]
    assert out["labels"] == jax.ShapeDtypeStruct((16,), jnp.int32)
    element = {k: jnp.zeros(v.shape, v.dtype) for k, v in spec.items()}
    real = op.apply(element, jax.random.key(0))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), real) == jax.tree.map(lambda s: (s.shape, s.dtype), out)


def test_float_fields_beside_the_tokens_keep_their_gradient():
    """Token ids are integers (not differentiable); a float field passes through with gradient 1."""
    masking, dropout = _masking(mask_field=None), TokenDropout(TokenDropoutConfig(mask_field=None))
    tokens = jnp.arange(1, 9, dtype=jnp.int32)

    def loss(weight):
        element = masking.apply({"tokens": tokens, "weight": weight}, jax.random.key(1))
        return dropout.apply(element, jax.random.key(2))["weight"] * 3.0

    assert float(jax.grad(loss)(jnp.float32(2.0))) == 3.0


def test_masking_rejects_bad_elements():
    op = _masking()
    with pytest.raises(ValueError, match="TokenMasking is stochastic: apply needs the record's key"):
        op.apply({"tokens": jnp.zeros(4, jnp.int32), "tokens_mask": jnp.ones(4, bool)})
    with pytest.raises(ValueError, match=r"field 'tokens' must be a 1-D integer token array .* got float32\[4\]"):
        op.apply({"tokens": jnp.zeros(4), "tokens_mask": jnp.ones(4, bool)}, jax.random.key(0))
    with pytest.raises(ValueError, match=r"must be a 1-D integer token array .* got int32\[2,4\]"):
        op.apply({"tokens": jnp.zeros((2, 4), jnp.int32), "tokens_mask": jnp.ones((2, 4), bool)}, jax.random.key(0))
    with pytest.raises(ValueError, match="mask_field 'tokens_mask' is not in the element .* set mask_field=None"):
        op.apply({"tokens": jnp.zeros(4, jnp.int32)}, jax.random.key(0))
    with pytest.raises(ValueError, match=r"mask_field 'tokens_mask' has shape \(3,\), but field 'tokens' has shape"):
        op.apply({"tokens": jnp.zeros(4, jnp.int32), "tokens_mask": jnp.ones(3, bool)}, jax.random.key(0))
    with pytest.raises(TypeError, match="TokenMasking: config must be a TokenMaskingConfig, got TokenDropoutConfig"):
        TokenMasking(TokenDropoutConfig())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 0}, "TokenMaskingConfig: vocab_size must be an int in [1, 2147483647], got 0"),
        ({"mask_token_id": 1.5}, "TokenMaskingConfig: mask_token_id must be an int in"),
        ({"mask_probability": 1.5}, "TokenMaskingConfig: mask_probability must be a number in [0, 1], got 1.5"),
        ({"mask_probability": float("nan")}, "TokenMaskingConfig: mask_probability must be a number in [0, 1]"),
        ({"mask_token_fraction": -0.1}, "TokenMaskingConfig: mask_token_fraction must be a number in [0, 1]"),
        (
            {"mask_token_fraction": 0.8, "random_token_fraction": 0.3},
            "TokenMaskingConfig: mask_token_fraction + random_token_fraction must be at most 1, got 0.8 + 0.3",
        ),
        ({"labels_field": "tokens"}, "TokenMaskingConfig: the element keys must differ"),
        ({"mask_field": ""}, "TokenMaskingConfig: mask_field must be a non-empty string (an element key) or None"),
        ({"special_token_ids": 101}, "TokenMaskingConfig: special_token_ids must be a sequence of ints, got 101"),
        ({"special_token_ids": ("a",)}, "TokenMaskingConfig: special_token_ids must be an int in"),
        ({"ignore_index": True}, "TokenMaskingConfig: ignore_index must be an int in"),
        ({"stochastic": False}, "TokenMaskingConfig: stochastic must be True (tokens are chosen per record)"),
    ],
)
def test_masking_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TokenMaskingConfig(**{"vocab_size": VOCAB, "mask_token_id": MASK_ID, **kwargs})


def test_masking_config_defaults():
    config = TokenMaskingConfig(vocab_size=VOCAB, mask_token_id=MASK_ID, special_token_ids=[1, 2])
    assert config.stream_name == "token_masking" and config.special_token_ids == (1, 2)
    assert hash(config) == hash(TokenMaskingConfig(vocab_size=VOCAB, mask_token_id=MASK_ID, special_token_ids=(1, 2)))


def test_masking_in_a_pipeline_is_the_same_for_any_batch_size():
    data = _padded_batch(50, 24, seed=8)
    data["index"] = np.arange(50, dtype=np.int32)
    config = TokenMaskingConfig(vocab_size=VOCAB, mask_token_id=MASK_ID, mask_probability=0.4)

    def run(batch_size):
        source = MemorySource(MemorySourceConfig(), data=data)
        pipeline = Pipeline(
            source=source, stages=[TokenMasking(config)], batch_size=batch_size, rngs=nnx.Rngs(3), shuffle=True
        )
        rows = {}
        for batch in pipeline:
            batch = {k: np.asarray(v) for k, v in batch.items()}
            for row in np.flatnonzero(batch["valid_mask"]):
                rows[int(batch["index"][row])] = (batch["tokens"][row].tolist(), batch["labels"][row].tolist())
        return rows

    small, large = run(7), run(32)
    assert sorted(small) == list(range(50)) and small == large
    counts = [sum(label != IGNORE for label in small[r][1]) for r in range(50)]
    assert counts == _expected_count(data["tokens_mask"].sum(axis=1), 0.4).tolist()


# ------------------------------------------------------------------ TokenDropout


def test_dropout_proportion_and_eligibility():
    """Each eligible token is dropped with probability 0.2 (5 sigma over ~100,000 tokens); padding never."""
    n, length = 1600, 128
    data = _padded_batch(n, length, seed=9)
    op = TokenDropout(TokenDropoutConfig(probability=0.2, replacement_id=-1, special_token_ids=(7,)))
    out = _apply_all(op, data, _keys(n, seed=3))
    dropped = out["tokens"] == -1
    eligible = data["tokens_mask"] & (data["tokens"] != 7)
    assert not (dropped & ~eligible).any()
    assert np.array_equal(out["tokens"][~dropped], data["tokens"][~dropped])
    assert np.array_equal(out["tokens_mask"], data["tokens_mask"])  # the mask is left as it is
    rate, total = dropped.sum() / eligible.sum(), int(eligible.sum())
    assert abs(rate - 0.2) < 5 * np.sqrt(0.2 * 0.8 / total)
    again = _apply_all(op, data, _keys(n, seed=3))
    assert np.array_equal(again["tokens"], out["tokens"])
    assert not np.array_equal(_apply_all(op, data, _keys(n, seed=4))["tokens"], out["tokens"])


def test_dropout_deterministic_extremes_and_dtype():
    element = {"tokens": jnp.array([5, 6, 7, 0], jnp.uint16), "tokens_mask": jnp.array([1, 1, 1, 0])}
    never = TokenDropout(TokenDropoutConfig(probability=0.0, stochastic=False))
    always = TokenDropout(TokenDropoutConfig(probability=1.0, stochastic=False, replacement_id=3))
    assert never.apply(element)["tokens"].tolist() == [5, 6, 7, 0]
    out = jax.jit(always.apply)(element)["tokens"]
    assert out.dtype == jnp.uint16 and out.tolist() == [3, 3, 3, 0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"probability": 2}, "TokenDropoutConfig: probability must be a number in [0, 1], got 2"),
        ({"probability": True}, "TokenDropoutConfig: probability must be a number in [0, 1], got True"),
        ({"probability": 0.5, "stochastic": False}, "TokenDropoutConfig: probability=0.5 needs a draw per token"),
        ({"replacement_id": 2**32}, "TokenDropoutConfig: replacement_id must be an int in"),
        ({"mask_field": "tokens"}, "TokenDropoutConfig: the element keys must differ"),
        ({"field": None}, "TokenDropoutConfig: field must be a non-empty string (an element key), got None"),
    ],
)
def test_dropout_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TokenDropoutConfig(**kwargs)
