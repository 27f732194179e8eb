"""A TOML pipeline is the same pipeline as the one built in code: same batches, same state."""

import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from datarax import Pipeline
from datarax.config import example_path, load_pipeline, load_pipeline_text
from datarax.config.builtins import digits
from datarax.operators import (
    Normalize,
    NormalizeConfig,
    RandomBrightness,
    RandomBrightnessConfig,
    RandomCrop,
    RandomCropConfig,
    RandomFlip,
    RandomFlipConfig,
)


def _same_batches(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]))


def test_the_demo_file_is_the_demo_pipeline_built_in_code():
    from_file = load_pipeline(example_path("demo"), overrides={"num_epochs": 1})
    in_code = Pipeline(
        source=digits(),
        stages=[
            RandomCrop(RandomCropConfig(size=(8, 8), padding=1)),
            Normalize(NormalizeConfig(mean=(0.0,), std=(1.0,))),
        ],
        batch_size=64,
        rngs=nnx.Rngs(0),
        shuffle=True,
        num_epochs=1,
    )
    assert from_file.fingerprint() == in_code.fingerprint()
    file_iterator = iter(from_file)
    first = [next(file_iterator) for _ in range(3)]
    state = file_iterator.get_state()
    code_iterator = iter(in_code)
    _same_batches(first, [next(code_iterator) for _ in range(3)])
    resumed = iter(in_code)
    resumed.set_state(state)  # a state from the file's pipeline fits the code's, and continues it
    _same_batches(file_iterator, resumed)


def test_a_graph_is_the_dag_built_in_code(load):
    text = textwrap.dedent("""
        [pipeline]
        batch_size = 4
        seed = 7
        shuffle = true

        [source]
        type = "images"

        [graph]
        edges = [["source", "flip"], ["flip", "bright"]]
        sink = "bright"

        [graph.nodes.flip]
        type = "RandomFlip"

        [graph.nodes.bright]
        type = "RandomBrightness"
        magnitude = 0.3
        """)
    from datarax_config_testing import images

    in_code = Pipeline.from_dag(
        source=images(),
        nodes={
            "flip": RandomFlip(RandomFlipConfig()),
            "bright": RandomBrightness(RandomBrightnessConfig(magnitude=0.3)),
        },
        edges=[("source", "flip"), ("flip", "bright")],
        sink="bright",
        batch_size=4,
        rngs=nnx.Rngs(7),
        shuffle=True,
    )
    from_file = load(text)
    assert from_file.fingerprint() == in_code.fingerprint()
    _same_batches(from_file, in_code)


def test_nested_components_build(load):
    text = textwrap.dedent("""
        [pipeline]
        batch_size = 4
        seed = 1

        [source]
        type = "images"

        [[stages]]
        type = "ProbabilisticOperator"
        probability = 0.5
        stochastic = true
        stream_name = "maybe"
        name = "maybe_flip"
        [stages.operator]
        type = "RandomFlip"
        probability = 1.0

        [[stages]]
        type = "SelectorOperator"
        stochastic = true
        stream_name = "choose"
        weights = [1, 3]
        [[stages.operators]]
        type = "RandomBrightness"
        [[stages.operators]]
        type = "RandomContrast"
        draw = "sign"

        [[stages]]
        type = "RandAugment"
        num_ops = 2
        magnitude = 5

        [[stages]]
        type = "RandAugment"
        num_ops = 1
        operators = [{ type = "Grayscale", keep_channels = true }, { type = "RandomFlip" }]

        [[stages]]
        type = "CompositeOperator"
        operators = [{ type = "CenterCrop", size = 6 }, { type = "Normalize" }]
        """)
    pipeline = load(text)
    assert [type(op).__name__ for op in pipeline.nodes.values()] == [
        "ProbabilisticOperator",
        "SelectorOperator",
        "RandAugment",
        "RandAugment",
        "CompositeOperator",
    ]
    assert pipeline.nodes["stage_0"].name == "maybe_flip"
    batch = next(iter(pipeline))
    assert batch["image"].shape == (4, 6, 6, 3) and batch["image"].dtype == np.float32


def test_rand_augment_takes_operators_or_a_magnitude(load):
    from datarax.config import ConfigError

    base = '[pipeline]\nbatch_size = 4\n\n[source]\ntype = "images"\n\n[[stages]]\ntype = "RandAugment"\n'
    with pytest.raises(ConfigError, match=r"p.toml:7: stages\[0\]: ValueError: RandAugment: give operators"):
        load(base)
    with pytest.raises(ConfigError, match=r"stages\[0\].magnitude: .*magnitude"):
        load(base + "magnitude = 50\n")


def test_settings_reach_the_pipeline(load):
    text = textwrap.dedent("""
        [pipeline]
        batch_size = 5
        seed = 3
        shuffle = true
        drop_remainder = true
        num_epochs = inf
        prefetch = 1

        [source]
        type = "images"
        """)
    pipeline = load(text)
    assert (pipeline.batch_size, pipeline.shuffle, pipeline.drop_remainder, pipeline.num_epochs) == (
        5,
        True,
        True,
        None,
    )
    assert pipeline.prefetch == 1 and len(pipeline) == 3
    assert pipeline.seed == Pipeline(source=pipeline.source, batch_size=5, rngs=nnx.Rngs(3), shuffle=True).seed
    assert load(text, overrides={"num_epochs": 2, "batch_size": 4}).num_epochs == 2


def test_a_sharded_pipeline_splits_its_batches_over_the_devices(load):
    text = '[pipeline]\nbatch_size = 16\n\n[source]\ntype = "images"\n\n[sharding]\ndata_axis = "data"\n'
    pipeline = load(text)
    batch = next(iter(pipeline))
    assert batch["image"].shape == (16, 8, 8, 3)
    assert len(batch["image"].sharding.device_set) == len(jax.devices())
    pipeline = load(text + "model_axes = { model = 2 }\n")
    assert next(iter(pipeline))["image"].sharding.mesh.axis_names == ("data", "model")


def test_text_without_a_base_dir_reads_relative_to_the_current_directory(tmp_path, monkeypatch):
    np.save(tmp_path / "label.npy", np.arange(8, dtype=np.int32))
    monkeypatch.chdir(tmp_path)
    text = '[pipeline]\nbatch_size = 4\n\n[source]\ntype = "NumpyFileSource"\npaths = { label = "label.npy" }\n'
    assert len(load_pipeline_text(text)) == 2


def test_a_file_that_is_not_utf8_or_too_large_is_refused(tmp_path):
    from datarax.config import ConfigError
    from datarax.config.loader import MAX_FILE_BYTES

    (tmp_path / "bad.toml").write_bytes(b"[pipeline]\nbatch_size = 4 # \xff\n")
    with pytest.raises(ConfigError, match="bad.toml: the file is not UTF-8 text"):
        load_pipeline(tmp_path / "bad.toml")
    (tmp_path / "big.toml").write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="big.toml: the file is larger than"):
        load_pipeline(tmp_path / "big.toml")
    with pytest.raises(FileNotFoundError):
        load_pipeline(tmp_path / "missing.toml")
