"""Bad input across the public API, table-driven.

Every case gives one bad input and expects the documented exception type, a message that names
the argument (or file, column, field) and quotes the bad value (checked as substrings), and the
objects involved left as they were:

* construction (sources, ``Pipeline`` arguments, operator configs, meshes, files): the source
  and operator objects handed to the failed call still build a pipeline that serves an exact
  epoch, and the failed call started no thread and no process;
* reads of corrupt records: the iterator still reports the state of the last batch it served,
  and continues past the bad batch (or, once the file is repaired, from that state) exactly;
* ``set_state`` / checkpoint restores: the iterator (and every other item of the checkpoint)
  reports the same state and produces the same next batch, bit for bit, as before the call;
* other calls (``scan``, ``prefetch_to_device``, ...): the iterator is unchanged likewise.

Components already tested in depth elsewhere (``tests/sources``, ``tests/checkpoint``,
``tests/pipeline/test_pipeline_errors.py``) appear here once, so that one table shows how the
whole API meets bad input. The TOML / CLI layer has its own tests (``tests/config``).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from datarax import DefaultBatcher, DefaultBatcherConfig, OrbaxCheckpointHandler, Pipeline, prefetch_to_device
from datarax.operators import (
    BatchMixConfig,
    CenterCropConfig,
    CompositeOperatorConfig,
    ElementOperator,
    ElementOperatorConfig,
    GaussianBlurConfig,
    GaussianNoiseConfig,
    Grayscale,
    GrayscaleConfig,
    HostMapOperator,
    HostMapOperatorConfig,
    LogMelSpectrogramConfig,
    Normalize,
    NormalizeConfig,
    PadOrTruncate,
    PadOrTruncateConfig,
    ProbabilisticOperatorConfig,
    RandomBrightnessConfig,
    RandomCrop,
    RandomCropConfig,
    RandomErasingConfig,
    RandomFlip,
    RandomFlipConfig,
    RandomHueConfig,
    RandomTimeShiftConfig,
    ResizeConfig,
    TokenMaskingConfig,
)
from datarax.pipeline import HostStageError
from datarax.samplers import ShuffleSamplerConfig
from datarax.sources import (
    ArrayRecordSource,
    ArrayRecordSourceConfig,
    HFSource,
    HFSourceConfig,
    HFStreamingSource,
    HFStreamingSourceConfig,
    IterableSource,
    IterableSourceConfig,
    MemorySource,
    MemorySourceConfig,
    NumpyFileSource,
    NumpyFileSourceConfig,
    ParquetSource,
    ParquetSourceConfig,
    TFDSSource,
    TFDSSourceConfig,
    encode_record,
    write_array_record,
)

N = 10  # records of the world's good source
IMAGE = (8, 8, 1)


# -- the world the cases act on ---------------------------------------------------------------------


@dataclasses.dataclass
class World:
    """A good source and operator that bad calls are given, and files good and bad."""

    tmp: Path
    source: MemorySource
    flip: RandomFlip
    files: dict[str, str]

    def pipeline(self, **kwargs: Any) -> Pipeline:
        kwargs = {"stages": [self.flip], "batch_size": 4, "rngs": nnx.Rngs(0), "shuffle": True, **kwargs}
        return Pipeline(source=self.source, **kwargs)


def _memory_source() -> MemorySource:
    image = np.arange(N * int(np.prod(IMAGE)), dtype=np.float32).reshape(N, *IMAGE)
    return MemorySource(MemorySourceConfig(), data={"image": image, "label": np.arange(N, dtype=np.int32)})


def _write_files(tmp: Path) -> dict[str, str]:
    files = {}

    def path(name: str) -> str:
        files[name] = str(tmp / name)
        return files[name]

    np.save(path("label.npy"), np.arange(N, dtype=np.int32))
    np.save(path("eleven.npy"), np.arange(N + 1, dtype=np.int32))
    np.save(path("objects.npy"), np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    Path(path("bad_header.npy")).write_bytes(b"\x93NUMPY\x01\x00garbage")
    np.save(path("truncated.npy"), np.arange(1000, dtype=np.int64))
    os.truncate(files["truncated.npy"], 400)
    table = pa.table({"label": np.arange(N, dtype=np.int32)})
    pq.write_table(table, path("table.parquet"))
    raw = Path(files["table.parquet"]).read_bytes()
    Path(path("truncated.parquet")).write_bytes(raw[: len(raw) // 2])
    write_array_record(path("good.array_record"), ({"label": np.int32(i)} for i in range(N)))
    raw = Path(files["good.array_record"]).read_bytes()
    Path(path("truncated.array_record")).write_bytes(raw[: len(raw) // 2])
    path("missing.array_record")
    path("missing_hf")
    path("missing.parquet")
    path("tfds")
    return files


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    return World(tmp=tmp, source=_memory_source(), flip=RandomFlip(RandomFlipConfig()), files=_write_files(tmp))


def _labels(batches: Any) -> list[int]:
    return sorted(np.concatenate([np.asarray(b["label"])[np.asarray(b["valid_mask"])] for b in batches]).tolist())


def _assert_usable(world: World) -> None:
    """The world's source and operator still build a pipeline that serves an exact epoch."""
    assert _labels(world.pipeline()) == list(range(N))


def _assert_same_batch(got: Any, want: Any) -> None:
    assert set(got) == set(want)
    for key in want:
        a, b = np.asarray(got[key]), np.asarray(want[key])
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), key


@dataclasses.dataclass(frozen=True)
class Bad:
    """One bad input: the call, the exception type it must raise, and what the message must say."""

    id: str
    call: Callable[[World], Any]
    error: type[BaseException]
    says: tuple[str, ...]


def _raises(case: Bad, world: World) -> str:
    with pytest.raises(case.error) as info:
        case.call(world)
    message = str(info.value)
    for text in case.says:
        assert text in message, f"{case.id}: {text!r} not in {message!r}"
    return message


def _memory(**columns: Any) -> MemorySource:
    return MemorySource(MemorySourceConfig(), data=columns)


def _host_source(world: World) -> NumpyFileSource:
    return NumpyFileSource(NumpyFileSourceConfig(), paths={"label": world.files["label.npy"]})


def _stream_source() -> IterableSource:
    return IterableSource(IterableSourceConfig(), records=_stream_records)


def _stream_records() -> Any:
    return ({"label": np.int32(i)} for i in range(N))


def _mesh_sharding(spec: P) -> NamedSharding:
    return NamedSharding(Mesh(np.array(jax.devices()), ("data",)), spec)


def _unpicklable_host_op(element: Any, rng: Any) -> Any:
    return element


# -- construction ------------------------------------------------------------------------------------

CONSTRUCTION = [
    # MemorySource columns
    Bad(
        "memory/ragged-columns",
        lambda w: _memory(x=np.arange(3), y=np.arange(4)),
        ValueError,
        ("ragged", "'x': 3", "'y': 4"),
    ),
    Bad("memory/empty-columns", lambda w: _memory(x=np.zeros((0, 2))), ValueError, ("zero records",)),
    Bad("memory/no-columns", lambda w: _memory(), ValueError, ("data is empty",)),
    Bad("memory/string-dtype", lambda w: _memory(name=np.array(["a", "b"])), TypeError, ("column 'name'", "<U1")),
    Bad("memory/object-dtype", lambda w: _memory(x=np.array([{}, {}], dtype=object)), TypeError, ("'x'", "object")),
    Bad("memory/list-column", lambda w: _memory(x=[1, 2, 3]), TypeError, ("column 'x'", "got list")),
    Bad("memory/scalar-column", lambda w: _memory(x=np.array(1.0)), ValueError, ("column 'x' is a scalar",)),
    Bad(
        "memory/int64-id-over-2**31",
        lambda w: _memory(id=np.array([3, 2**31 + 7], dtype=np.int64)),
        ValueError,
        ("column 'id' (int64) holds 2147483655", "int32", "jax_enable_x64"),
    ),
    Bad(
        "memory/uint64-over-2**32",
        lambda w: _memory(id=np.array([2**40], dtype=np.uint64)),
        ValueError,
        ("column 'id' (uint64) holds 1099511627776", "uint32"),
    ),
    Bad("memory/float64-overflows-float32", lambda w: _memory(x=np.array([1e300])), ValueError, ("'x'", "1e+300")),
    Bad(
        "memory/reserved-valid_mask",
        lambda w: _memory(valid_mask=np.arange(3)),
        ValueError,
        ("'valid_mask'", "reserved"),
    ),
    # Pipeline arguments
    Bad("pipeline/batch_size-0", lambda w: w.pipeline(batch_size=0), ValueError, ("batch_size", "got 0")),
    Bad("pipeline/batch_size-negative", lambda w: w.pipeline(batch_size=-3), ValueError, ("batch_size", "got -3")),
    Bad("pipeline/batch_size-float", lambda w: w.pipeline(batch_size=2.5), ValueError, ("batch_size", "got 2.5")),
    Bad("pipeline/batch_size-bool", lambda w: w.pipeline(batch_size=True), ValueError, ("batch_size", "got True")),
    Bad(
        "pipeline/batch-larger-than-data-drop_remainder",
        lambda w: w.pipeline(batch_size=N + 1, drop_remainder=True),
        ValueError,
        ("drop_remainder=True", "batch_size=11", f"only {N} records"),
    ),
    Bad("pipeline/num_epochs-0", lambda w: w.pipeline(num_epochs=0), ValueError, ("num_epochs", "got 0")),
    Bad("pipeline/num_epochs-negative", lambda w: w.pipeline(num_epochs=-1), ValueError, ("num_epochs", "got -1")),
    Bad("pipeline/prefetch-negative", lambda w: w.pipeline(prefetch=-1), ValueError, ("prefetch", "got -1")),
    Bad("pipeline/shuffle-int", lambda w: w.pipeline(shuffle=1), ValueError, ("shuffle must be a bool", "got 1")),
    Bad("pipeline/shuffle-without-seed", lambda w: w.pipeline(rngs=None), ValueError, ("shuffle=True needs rngs",)),
    Bad("pipeline/seed-as-int", lambda w: w.pipeline(rngs=0), TypeError, ("rngs must be an nnx.Rngs", "got int")),
    Bad(
        "pipeline/rngs-without-default-stream",
        lambda w: w.pipeline(rngs=nnx.Rngs(augment=0)),
        ValueError,
        ("'default' stream", "['augment']"),
    ),
    Bad("sampler/negative-seed", lambda w: ShuffleSamplerConfig(seed=-1), ValueError, ("seed", "2**32", "got -1")),
    Bad("sampler/huge-seed", lambda w: ShuffleSamplerConfig(seed=2**40), ValueError, ("seed", "got 1099511627776")),
    Bad("pipeline/workers-negative", lambda w: w.pipeline(workers=-1), ValueError, ("workers", "got -1")),
    Bad(
        "pipeline/worker_kind-unknown",
        lambda w: w.pipeline(worker_kind="fiber"),
        ValueError,
        ("worker_kind", "'fiber'"),
    ),
    Bad(
        "pipeline/host-workers-negative",
        lambda w: Pipeline(source=_host_source(w), batch_size=4, workers=-2),
        ValueError,
        ("workers", "got -2"),
    ),
    Bad(
        "pipeline/read_ahead-negative",
        lambda w: Pipeline(source=_host_source(w), batch_size=4, read_ahead=-1),
        ValueError,
        ("read_ahead", "got -1"),
    ),
    Bad(
        "pipeline/lambda-to-worker-processes",
        lambda w: Pipeline(
            source=_host_source(w),
            host_stages=[HostMapOperator(HostMapOperatorConfig(), fn=lambda e, r: e)],
            batch_size=4,
            worker_kind="process",
        ),
        TypeError,
        ("worker_kind='process'", "host_stages[0] (HostMapOperator)"),
    ),
    Bad(
        "pipeline/shuffle_buffer-on-random-access",
        lambda w: w.pipeline(shuffle_buffer_size=8),
        ValueError,
        ("shuffle_buffer_size", "MemorySource", "got shuffle_buffer_size=8"),
    ),
    Bad(
        "pipeline/shuffle_buffer-0",
        lambda w: Pipeline(source=_stream_source(), batch_size=4, shuffle_buffer_size=0),
        ValueError,
        ("shuffle_buffer_size", "got 0"),
    ),
    Bad(
        "pipeline/stages-not-a-list",
        lambda w: Pipeline(source=w.source, stages=w.flip, batch_size=4),
        TypeError,
        ("stages must be a sequence", "RandomFlip"),
    ),
    Bad(
        "pipeline/host-operator-as-device-stage",
        lambda w: Pipeline(source=w.source, stages=[PadOrTruncate(PadOrTruncateConfig(length=4))], batch_size=4),
        TypeError,
        ("stage 'stage_0'", "PadOrTruncate", "pass it in host_stages"),
    ),
    Bad(
        "pipeline/device-operator-as-host-stage",
        lambda w: Pipeline(source=_host_source(w), host_stages=[w.flip], batch_size=4),
        TypeError,
        ("host_stages[0]", "RandomFlip", "pass it in stages"),
    ),
    Bad(
        "pipeline/host-stages-on-a-device-source",
        lambda w: Pipeline(
            source=w.source,
            host_stages=[HostMapOperator(HostMapOperatorConfig(), fn=_unpicklable_host_op)],
            batch_size=4,
        ),
        ValueError,
        ("host_stages", "MemorySource lives on the device"),
    ),
    Bad(
        "pipeline/stochastic-stage-without-seed",
        lambda w: Pipeline(source=w.source, stages=[w.flip], batch_size=4),
        ValueError,
        ("stage 'stage_0' is stochastic", "rngs=nnx.Rngs(seed)"),
    ),
    # operator output specs that do not chain
    Bad(
        "spec/field-not-in-element",
        lambda w: w.pipeline(stages=[RandomFlip(RandomFlipConfig(fields=("img",)))]),
        ValueError,
        ("stage 'stage_0' (RandomFlip)", "field 'img' is not in the element", "{'image': float32[8,8,1]"),
    ),
    Bad(
        "spec/normalize-channels",
        lambda w: w.pipeline(stages=[Normalize(NormalizeConfig())]),
        ValueError,
        ("stage 'stage_0' (Normalize)", "3 entries", "1 channels"),
    ),
    Bad(
        "spec/crop-larger-than-image",
        lambda w: w.pipeline(stages=[RandomCrop(RandomCropConfig(size=(16, 16)))]),
        ValueError,
        ("stage 'stage_0' (RandomCrop)", "size (16, 16)", "(8, 8, 1)"),
    ),
    Bad(
        "spec/function-returns-an-array",
        lambda w: w.pipeline(stages=[ElementOperator(ElementOperatorConfig(), fn=lambda e, k: e["image"])]),
        ValueError,
        ("stage 'stage_0' (ElementOperator)", "must return a dict"),
    ),
    Bad(
        "spec/writes-valid_mask",
        lambda w: w.pipeline(
            stages=[ElementOperator(ElementOperatorConfig(), fn=lambda e, k: {**e, "valid_mask": e["label"]})]
        ),
        ValueError,
        ("stage 'stage_0'", "reserved key 'valid_mask'"),
    ),
    Bad(
        "spec/dag-inputs-disagree",
        lambda w: w.pipeline(
            stages=None,
            nodes={
                "crop": ElementOperator(ElementOperatorConfig(), fn=lambda e, k: {"image": e["image"][:4]}),
                "cast": ElementOperator(ElementOperatorConfig(), fn=lambda e, k: {"image": e["image"].astype("int32")}),
                "join": ElementOperator(ElementOperatorConfig(), fn=lambda e, k: e),
            },
            edges=[("source", "crop"), ("source", "cast"), ("crop", "join"), ("cast", "join")],
            sink="join",
        ),
        ValueError,
        ("node 'join' receives key 'image' with different specs",),
    ),
    Bad(
        "dag/cycle",
        lambda w: w.pipeline(
            stages=None,
            nodes={"a": w.flip, "b": Grayscale(GrayscaleConfig())},
            edges=[("source", "a"), ("a", "b"), ("b", "a")],
            sink="b",
        ),
        ValueError,
        ("cycle", "'a'", "'b'"),
    ),
    # operator configs
    Bad(
        "config/probability-above-1",
        lambda w: ProbabilisticOperatorConfig(probability=1.5),
        ValueError,
        ("probability", "[0, 1]", "got 1.5"),
    ),
    Bad(
        "config/probability-negative",
        lambda w: RandomFlipConfig(probability=-0.1),
        ValueError,
        ("probability", "got -0.1"),
    ),
    Bad(
        "config/probability-nan",
        lambda w: RandomErasingConfig(probability=float("nan")),
        ValueError,
        ("probability", "got nan"),
    ),
    Bad(
        "config/magnitude-negative",
        lambda w: RandomBrightnessConfig(magnitude=-0.2),
        ValueError,
        ("magnitude", "got -0.2"),
    ),
    Bad(
        "config/magnitude-infinite",
        lambda w: RandomBrightnessConfig(magnitude=float("inf")),
        ValueError,
        ("magnitude", "got inf"),
    ),
    Bad(
        "config/hue-above-half-turn",
        lambda w: RandomHueConfig(magnitude=0.9),
        ValueError,
        ("magnitude", "[0, 0.5]", "got 0.9"),
    ),
    Bad("config/size-zero", lambda w: ResizeConfig(size=(0, 4)), ValueError, ("size", "got (0, 4)")),
    Bad("config/size-string", lambda w: CenterCropConfig(size="big"), ValueError, ("size", "got 'big'")),
    Bad("config/padding-negative", lambda w: RandomCropConfig(padding=-2), ValueError, ("padding", "got -2")),
    Bad(
        "config/padding-mode",
        lambda w: RandomCropConfig(padding=2, padding_mode="wrapz"),
        ValueError,
        ("padding_mode", "'reflect'", "got 'wrapz'"),
    ),
    Bad(
        "config/audio-pad-mode",
        lambda w: LogMelSpectrogramConfig(pad_mode="wrapz"),
        ValueError,
        ("pad_mode", "got 'wrapz'"),
    ),
    Bad(
        "config/even-blur-kernel",
        lambda w: GaussianBlurConfig(kernel_size=4),
        ValueError,
        ("kernel_size", "odd", "got 4"),
    ),
    Bad("config/noise-std-negative", lambda w: GaussianNoiseConfig(std=-1.0), ValueError, ("std", "got -1.0")),
    Bad(
        "config/scale-reversed",
        lambda w: RandomErasingConfig(scale=(0.5, 0.1)),
        ValueError,
        ("scale", "got (0.5, 0.1)"),
    ),
    Bad(
        "config/std-zero", lambda w: NormalizeConfig(mean=(0.0,), std=(0.0,)), ValueError, ("std", "> 0", "got (0.0,)")
    ),
    Bad("config/alpha-negative", lambda w: BatchMixConfig(alpha=-1.0), ValueError, ("alpha", "got -1.0")),
    Bad(
        "config/mask-fractions-over-1",
        lambda w: TokenMaskingConfig(
            vocab_size=10, mask_token_id=3, mask_token_fraction=0.8, random_token_fraction=0.5
        ),
        ValueError,
        ("mask_token_fraction + random_token_fraction", "0.8 + 0.5"),
    ),
    Bad("config/length-zero", lambda w: PadOrTruncateConfig(length=0), ValueError, ("length", "got 0")),
    Bad("config/shift-negative", lambda w: RandomTimeShiftConfig(max_shift=-1), ValueError, ("max_shift", "got -1")),
    Bad(
        "config/strategy-unknown",
        lambda w: CompositeOperatorConfig(strategy="random"),
        ValueError,
        ("strategy", "got 'random'"),
    ),
    Bad(
        "config/stochastic-without-stream",
        lambda w: ElementOperatorConfig(stochastic=True),
        ValueError,
        ("stream_name",),
    ),
    Bad(
        "config/stochastic-not-bool",
        lambda w: ElementOperatorConfig(stochastic="yes"),
        ValueError,
        ("stochastic must be a bool", "got 'yes'"),
    ),
    Bad(
        "operator/fn-not-callable",
        lambda w: ElementOperator(ElementOperatorConfig(), fn=3),
        TypeError,
        ("fn must be callable", "got 3"),
    ),
    # meshes
    Bad(
        "mesh/does-not-divide-the-batch",
        lambda w: w.pipeline(batch_size=12, sharding=_mesh_sharding(P("data"))),
        ValueError,
        ("batch_size=12", "8 data shards", "multiple of 8"),
    ),
    Bad(
        "mesh/batch-axis-not-split",
        lambda w: w.pipeline(batch_size=8, sharding=_mesh_sharding(P(None, "data"))),
        ValueError,
        ("P(None, 'data')", "does not split the batch axis"),
    ),
    Bad(
        "mesh/not-a-sharding",
        lambda w: w.pipeline(batch_size=8, sharding="data"),
        TypeError,
        ("sharding must be a jax.sharding.NamedSharding", "got str"),
    ),
    # files
    Bad(
        "npy/missing-file",
        lambda w: NumpyFileSource(NumpyFileSourceConfig(), paths={"label": str(w.tmp / "nope.npy")}),
        FileNotFoundError,
        ("column 'label'", "nope.npy does not exist"),
    ),
    Bad(
        "npy/corrupt-header",
        lambda w: NumpyFileSource(NumpyFileSourceConfig(), paths={"x": w.files["bad_header.npy"]}),
        ValueError,
        ("bad_header.npy is not a valid .npy file",),
    ),
    Bad(
        "npy/truncated-file",
        lambda w: NumpyFileSource(NumpyFileSourceConfig(), paths={"x": w.files["truncated.npy"]}),
        ValueError,
        ("truncated.npy is truncated or corrupt", "int64[1000]", "has 400 bytes"),
    ),
    Bad(
        "npy/ragged-columns",
        lambda w: NumpyFileSource(
            NumpyFileSourceConfig(), paths={"a": w.files["label.npy"], "b": w.files["eleven.npy"]}
        ),
        ValueError,
        ("column 'a'", "10 records", "column 'b'", "has 11"),
    ),
    Bad(
        "npy/pickled-objects",
        lambda w: NumpyFileSource(NumpyFileSourceConfig(), paths={"x": w.files["objects.npy"]}),
        TypeError,
        ("objects.npy holds Python objects", "never uses"),
    ),
    Bad(
        "parquet/truncated-file",
        lambda w: ParquetSource(ParquetSourceConfig(), paths=w.files["truncated.parquet"]),
        ValueError,
        ("truncated.parquet is not a readable Parquet file",),
    ),
    Bad(
        "parquet/missing-column",
        lambda w: ParquetSource(ParquetSourceConfig(columns=("image",)), paths=w.files["table.parquet"]),
        ValueError,
        ("columns ['image'] are not in", "table.parquet", "['label']"),
    ),
    Bad(
        "array_record/truncated-file",
        lambda w: ArrayRecordSource(ArrayRecordSourceConfig(), paths=w.files["truncated.array_record"]),
        ValueError,
        ("cannot open", "truncated.array_record", "truncated or corrupt"),
    ),
    Bad(
        "local_files_only/array_record",
        lambda w: ArrayRecordSource(
            ArrayRecordSourceConfig(local_files_only=True), paths=w.files["missing.array_record"]
        ),
        FileNotFoundError,
        ("local_files_only=True", "missing.array_record"),
    ),
    Bad(
        "local_files_only/hf-saved-dataset",
        lambda w: HFSource(HFSourceConfig(local_files_only=True), path=w.files["missing_hf"]),
        FileNotFoundError,
        ("local_files_only=True", "missing_hf"),
    ),
    Bad(
        "local_files_only/hf-streaming-files",
        lambda w: HFStreamingSource(
            HFStreamingSourceConfig(local_files_only=True), builder="parquet", data_files=w.files["missing.parquet"]
        ),
        FileNotFoundError,
        ("local_files_only=True", "missing.parquet"),
    ),
    Bad(
        "local_files_only/tfds",
        lambda w: TFDSSource(TFDSSourceConfig(local_files_only=True), dataset_name="mnist", data_dir=w.files["tfds"]),
        FileNotFoundError,
        ("local_files_only=True", "'mnist'", "tfds/mnist"),
    ),
]


@pytest.mark.parametrize("case", CONSTRUCTION, ids=[c.id for c in CONSTRUCTION])
def test_construction_refuses_bad_input_and_builds_nothing(case, world):
    threads, children = threading.active_count(), len(multiprocessing.active_children())
    _raises(case, world)
    assert threading.active_count() <= threads, "a refused construction left a thread running"
    assert len(multiprocessing.active_children()) <= children, "a refused construction left a process running"
    _assert_usable(world)


def test_a_refused_checkpoint_handler_creates_no_directory(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep must be a positive int or None, got 0"):
        OrbaxCheckpointHandler(tmp_path / "checkpoints", max_to_keep=0)
    assert not (tmp_path / "checkpoints").exists()


def test_seeds_are_jax_keys_of_32_bits():
    """What datarax receives is ``nnx.Rngs``' key, not the int: JAX (without x64) keeps 32 bits of it.

    So ``nnx.Rngs(-1)`` is the seed ``2**32 - 1`` and ``nnx.Rngs(2**32)`` is ``nnx.Rngs(0)``; a seed
    that does not fit 64 bits is refused by JAX itself, before datarax sees it.
    """
    source = _memory_source()

    def seed(value):
        return Pipeline(source=source, batch_size=4, rngs=nnx.Rngs(value), shuffle=True).seed

    assert seed(-1) == 2**32 - 1 and seed(2**32) == seed(0) == 0
    with pytest.raises(OverflowError):
        nnx.Rngs(2**70)


# -- corrupt records, found while reading --------------------------------------------------------------


def _corrupt_array_record(tmp: Path) -> tuple[Any, str]:
    path = str(tmp / "corrupt.array_record")
    records = [encode_record({"label": np.int32(i)}) for i in range(N)]
    records[5] = b"\x80\x04\x95 a pickle, not a record"
    _write_raw_array_record(path, records)
    return ArrayRecordSource(ArrayRecordSourceConfig(), paths=path), path


def _write_raw_array_record(path: str, records: list[bytes]) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(path, "group_size:1")
    for record in records:
        writer.write(record)
    writer.close()


def _corrupt_parquet_page(tmp: Path) -> tuple[Any, str]:
    """Row group 1 (rows 4..7) of a file in row groups of 4 gets its bytes inverted."""
    path = str(tmp / "corrupt.parquet")
    pq.write_table(pa.table({"label": np.arange(N, dtype=np.int32)}), path, row_group_size=4)
    column = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    raw = bytearray(Path(path).read_bytes())
    for i in range(start, start + column.total_compressed_size):
        raw[i] ^= 0xFF
    Path(path).write_bytes(bytes(raw))
    return ParquetSource(ParquetSourceConfig(), paths=path), path


def _parquet_with_a_null(tmp: Path) -> tuple[Any, str]:
    path = str(tmp / "null.parquet")
    labels = pa.array([None if i == 5 else i for i in range(N)], pa.int32())
    pq.write_table(pa.table({"label": labels}), path, row_group_size=4)
    return ParquetSource(ParquetSourceConfig(), paths=path), path


def _npy_cut_after_construction(tmp: Path) -> tuple[Any, str]:
    path = str(tmp / "cut.npy")
    np.save(path, np.arange(N, dtype=np.int32))
    source = NumpyFileSource(NumpyFileSourceConfig(), paths={"label": path})
    os.truncate(path, os.path.getsize(path) - 4 * 6)  # records 4..9 gone
    return source, path


READS = [
    # (id, make source, what the error names, whether the file is repaired before resuming)
    ("array_record/corrupt-record", _corrupt_array_record, ("ArrayRecordSource", "record 5", "decode"), False),
    ("parquet/corrupt-page", _corrupt_parquet_page, ("ParquetSource", "row group 1"), False),
    (
        "parquet/null-value",
        _parquet_with_a_null,
        ("ParquetSource", "row group 1", "column 'label' holds 1 null"),
        False,
    ),
    ("npy/truncated-after-construction", _npy_cut_after_construction, ("column 'label'", "truncated after"), True),
]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(("case_id", "make", "says", "repair"), READS, ids=[r[0] for r in READS])
def test_a_corrupt_record_names_the_file_and_the_iterator_keeps_its_state(
    tmp_path, case_id, make, says, repair, workers
):
    source, path = make(tmp_path)
    pipeline = Pipeline(source=source, batch_size=4, workers=workers, num_epochs=1)  # rows 4..7 are batch 1
    iterator = iter(pipeline)
    assert np.asarray(next(iterator)["label"]).tolist() == [0, 1, 2, 3]
    state = iterator.get_state()
    with pytest.raises(HostStageError) as info:
        next(iterator)
    message = str(info.value)
    assert path in message and all(text in message for text in says), message
    assert iterator.get_state() == state  # still the last batch served
    if repair:
        np.save(path, np.arange(N, dtype=np.int32))
        iterator.set_state(state)
        assert _labels(list(iterator)) == list(range(4, N))
    else:  # skip the bad batch: the iterator continues from any state of its stream
        iterator.set_state({**state, "position": state["position"] + 4})
        assert np.asarray(next(iterator)["label"]).tolist() == [8, 9, 9, 9]
    iterator.close()


# -- states -------------------------------------------------------------------------------------------


def _state_of(**kwargs: Any) -> dict[str, Any]:
    """The state after one batch of a pipeline built otherwise than the world's."""
    source = kwargs.pop("source", None) or _memory_source()
    stages = kwargs.pop("stages", None) or [RandomFlip(RandomFlipConfig())]
    kwargs = {"batch_size": 4, "rngs": nnx.Rngs(0), "shuffle": True, "num_epochs": 2, **kwargs}
    iterator = iter(Pipeline(source=source, stages=stages, **kwargs))
    next(iterator)
    return iterator.get_state()


STATES = [
    # (id, bad state from the good state s, error, what the message says)
    ("missing-key", lambda s: {k: v for k, v in s.items() if k != "epoch"}, ValueError, ("missing=['epoch']",)),
    ("extra-key", lambda s: {**s, "cursor": 3}, ValueError, ("unexpected=['cursor']",)),
    ("another-version", lambda s: {**s, "version": 2}, ValueError, ("state version 2 is not 1",)),
    ("version-as-bool", lambda s: {**s, "version": True}, ValueError, ("state version True",)),
    (
        "another-batch-size",
        lambda s: _state_of(batch_size=5),
        ValueError,
        ("differently configured", "batch_size is 5"),
    ),
    ("another-seed", lambda s: _state_of(rngs=nnx.Rngs(1)), ValueError, ("differently configured", "seed is 1")),
    (
        "another-dataset",
        lambda s: _state_of(
            source=_memory(image=np.zeros((11, *IMAGE), np.float32), label=np.arange(11, dtype=np.int32))
        ),
        ValueError,
        ("num_records is 11",),
    ),
    (
        "another-operator",
        lambda s: _state_of(stages=[RandomFlip(RandomFlipConfig(probability=0.25))]),
        ValueError,
        ("fingerprint is",),
    ),
    ("unshuffled-pipeline", lambda s: _state_of(shuffle=False), ValueError, ("differently configured",)),
    (
        "batch_size-as-float",
        lambda s: {**s, "batch_size": 4.0},
        ValueError,
        ("batch_size is 4.0 in the state but 4 here",),
    ),
    ("shuffle-as-int", lambda s: {**s, "shuffle": 1}, ValueError, ("shuffle is 1 in the state but True here",)),
    ("seed-as-bool", lambda s: {**s, "seed": False}, ValueError, ("seed is False in the state but 0 here",)),
    (
        "position-not-a-multiple",
        lambda s: {**s, "position": 3},
        ValueError,
        ("position must be a multiple of 4", "got 3"),
    ),
    ("position-past-the-epoch", lambda s: {**s, "position": 12}, ValueError, ("[0, 12)", "got 12")),
    ("position-huge", lambda s: {**s, "position": 2**70}, ValueError, ("position", str(2**70))),
    ("epoch-negative", lambda s: {**s, "epoch": -1}, ValueError, ("epoch must be an int >= 0", "got -1")),
    ("epoch-as-string", lambda s: {**s, "epoch": "1"}, ValueError, ("epoch", "got '1'")),
    ("stop-before-epoch", lambda s: {**s, "epoch": 1, "stop_epoch": 0}, ValueError, ("stop_epoch", "got 0")),
    ("a-list", lambda s: list(s.items()), TypeError, ("state must be a dict", "got list")),
    ("json-text", lambda s: json.dumps(s), TypeError, ("state must be a dict", "got str")),
]


@pytest.fixture(scope="module")
def states_world():
    """A running iterator factory over the world's pipeline, and the batch after its first."""
    source, flip = _memory_source(), RandomFlip(RandomFlipConfig())

    def running():
        iterator = iter(
            Pipeline(source=source, stages=[flip], batch_size=4, rngs=nnx.Rngs(0), shuffle=True, num_epochs=2)
        )
        next(iterator)
        return iterator

    reference = running()
    return running, reference.get_state(), {k: np.asarray(v) for k, v in next(reference).items()}


@pytest.mark.parametrize(("case_id", "bad", "error", "says"), STATES, ids=[s[0] for s in STATES])
def test_a_refused_state_leaves_the_iterator_unchanged(states_world, case_id, bad, error, says):
    running, good, next_batch = states_world
    iterator = running()
    with pytest.raises(error) as info:
        iterator.set_state(bad(json.loads(json.dumps(good))))
    assert all(text in str(info.value) for text in says), str(info.value)
    assert iterator.get_state() == good
    _assert_same_batch(next(iterator), next_batch)


def _stream_iterator():
    pipeline = Pipeline(
        source=_stream_source(), batch_size=3, shuffle=True, shuffle_buffer_size=4, rngs=nnx.Rngs(0), num_epochs=1
    )
    iterator = iter(pipeline)
    next(iterator)
    return iterator


STREAM_STATES = [
    ("buffer-missing", lambda s: {k: v for k, v in s.items() if k != "stream_buffer"}, ("missing=['stream_buffer']",)),
    (
        "buffer-position-out-of-range",
        lambda s: {**s, "stream_buffer": {**s["stream_buffer"], "positions": [0, 1, 2, 99]}},
        ("stream_buffer positions", "[0, 1, 2, 99]"),
    ),
    (
        "buffer-repeated-position",
        lambda s: {**s, "stream_buffer": {**s["stream_buffer"], "positions": [6, 6, 5, 4]}},
        ("distinct",),
    ),
    (
        "buffer-drawn-not-position",
        lambda s: {**s, "stream_buffer": {**s["stream_buffer"], "drawn": 2}},
        ("drawn must equal position 3", "got 2"),
    ),
    (
        "buffer-extra-key",
        lambda s: {**s, "stream_buffer": {**s["stream_buffer"], "records": []}},
        ("stream_buffer must be a dict with keys",),
    ),
]


@pytest.mark.parametrize(("case_id", "bad", "says"), STREAM_STATES, ids=[s[0] for s in STREAM_STATES])
def test_a_refused_stream_state_leaves_the_iterator_unchanged(case_id, bad, says):
    iterator, reference = _stream_iterator(), _stream_iterator()
    good = iterator.get_state()
    with pytest.raises(ValueError) as info:
        iterator.set_state(bad(json.loads(json.dumps(good))))
    assert all(text in str(info.value) for text in says), str(info.value)
    assert iterator.get_state() == good
    _assert_same_batch(next(iterator), next(reference))


# -- checkpoints ------------------------------------------------------------------------------------


def _training_items():
    """A pipeline, its iterator after 2 batches, and a model: what a training run checkpoints."""
    pipeline = Pipeline(
        source=_memory_source(),
        stages=[RandomFlip(RandomFlipConfig())],
        batch_size=4,
        rngs=nnx.Rngs(0),
        shuffle=True,
        num_epochs=3,
    )
    iterator = iter(pipeline)
    next(iterator)
    next(iterator)
    return {"model": nnx.Linear(2, 1, rngs=nnx.Rngs(0)), "pipeline": pipeline, "data": iterator}


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    """A real checkpoint (step 1) of a run after 2 batches, with the model changed by 1."""
    directory = tmp_path_factory.mktemp("checkpoint")
    items = _training_items()
    items["model"].kernel.set_value(items["model"].kernel[...] + 1)
    with OrbaxCheckpointHandler(directory) as handler:
        handler.save(1, items)
    return directory


def _rewrite_json(path: Path, change: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _set_in_state(key: str, value: Any) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        doc["state"][key] = value

    return change


def _corrupt_arrays(step: Path) -> None:
    for path in (step / "model.arrays").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[:3])


CHECKPOINTS = [
    # (id, damage to step directory 1, error, what the message says)
    (
        "truncated-json",
        lambda d: os.truncate(d / "data.json" / "metadata", 20),
        ValueError,
        ("item 'data' of step 1", "data.json/metadata", "truncated or not JSON"),
    ),
    (
        "garbage-json",
        lambda d: (d / "data.json" / "metadata").write_bytes(os.urandom(64)),
        ValueError,
        ("item 'data' of step 1", "truncated or not JSON"),
    ),
    (
        "deleted-json",
        lambda d: (d / "data.json" / "metadata").unlink(),
        FileNotFoundError,
        ("item 'data' of step 1", "is missing"),
    ),
    (
        "another-format",
        lambda d: _rewrite_json(d / "data.json" / "metadata", lambda doc: doc.update(format="datarax.checkpoint/2")),
        ValueError,
        ("data.json/metadata is not a datarax.checkpoint/1 document",),
    ),
    (
        "state-of-another-pipeline",
        lambda d: _rewrite_json(d / "data.json" / "metadata", _set_in_state("batch_size", 8)),
        ValueError,
        ("differently configured", "batch_size is 8"),
    ),
    (
        "state-with-an-extra-key",
        lambda d: _rewrite_json(d / "data.json" / "metadata", _set_in_state("cursor", 7)),
        ValueError,
        ("unexpected=['cursor']",),
    ),
    ("corrupt-arrays", _corrupt_arrays, ValueError, ("item 'model' of step 1", "model.arrays", "missing or corrupt")),
    (
        "arrays-disagree-with-json",
        lambda d: _rewrite_json(d / "model.json" / "metadata", lambda doc: doc["state"]["kernel"].update(shape=[1, 2])),
        ValueError,
        ("item 'model' of step 1", "float32[2, 1] on disk but float32[1, 2]"),
    ),
    ("missing-step", lambda d: shutil.rmtree(d), FileNotFoundError, ("no step 1", "available steps: []")),
]


@pytest.mark.parametrize(("case_id", "damage", "error", "says"), CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_a_damaged_checkpoint_changes_no_item(saved_checkpoint, tmp_path, case_id, damage, error, says):
    directory = tmp_path / "checkpoint"
    shutil.copytree(saved_checkpoint, directory)
    damage(directory / "1")
    items, reference = _training_items(), _training_items()
    before = {name: item.get_state() for name, item in items.items() if name != "model"}
    kernel = np.asarray(items["model"].kernel[...])
    with OrbaxCheckpointHandler(directory) as handler, pytest.raises(error) as info:
        handler.restore(items, step=1)
    assert all(text in str(info.value) for text in says), str(info.value)
    # All or nothing: the model, the pipeline and the iterator are as they were.
    assert np.array_equal(np.asarray(items["model"].kernel[...]), kernel)
    assert items["data"].get_state() == before["data"]
    assert items["pipeline"].get_state()["next_epoch"] == before["pipeline"]["next_epoch"]
    _assert_same_batch(next(items["data"]), next(reference["data"]))


def test_an_undamaged_copy_of_the_checkpoint_restores(saved_checkpoint, tmp_path):
    """The control of the table above: the same copy, undamaged, restores every item."""
    directory = tmp_path / "checkpoint"
    shutil.copytree(saved_checkpoint, directory)
    items = _training_items()
    items["data"] = iter(items["pipeline"])
    with OrbaxCheckpointHandler(directory) as handler:
        assert handler.restore(items) == 1
    assert items["data"].get_state()["position"] == 8
    assert np.array_equal(
        np.asarray(items["model"].kernel[...]), np.asarray(nnx.Linear(2, 1, rngs=nnx.Rngs(0)).kernel[...]) + 1
    )


# -- other calls on a running iterator ------------------------------------------------------------------

CALLS = [
    (
        "scan-length-0",
        lambda it: it.scan(lambda batch: 0, length=0),
        ValueError,
        ("length must be a positive int", "got 0"),
    ),
    ("scan-past-the-end", lambda it: it.scan(lambda batch: 0, length=50), ValueError, ("length=50", "batches remain")),
    ("prefetch-size-0", lambda it: prefetch_to_device(it, 0), ValueError, ("size must be a positive int", "got 0")),
    (
        "get_batch_at-size-0",
        lambda it: _memory_source().get_batch_at(0, 0),
        ValueError,
        ("size must be a positive int", "got 0"),
    ),
    (
        "batcher-batch_size-0",
        lambda it: list(DefaultBatcher(DefaultBatcherConfig())(iter(_memory_source()), batch_size=0)),
        ValueError,
        ("batch_size", "got 0"),
    ),
    ("source-index-out-of-range", lambda it: _memory_source()[N], IndexError, ("index 10 out of range", "10 records")),
]


@pytest.mark.parametrize(("case_id", "call", "error", "says"), CALLS, ids=[c[0] for c in CALLS])
def test_a_refused_call_leaves_the_iterator_unchanged(states_world, case_id, call, error, says):
    running, good, next_batch = states_world
    iterator = running()
    with pytest.raises(error) as info:
        call(iterator)
    assert all(text in str(info.value) for text in says), str(info.value)
    assert iterator.get_state() == good
    _assert_same_batch(next(iterator), next_batch)


def test_the_table_holds_at_least_forty_distinct_bad_inputs():
    ids = [c.id for c in CONSTRUCTION] + [r[0] for r in READS] + [s[0] for s in STATES]
    ids += [s[0] for s in STREAM_STATES] + [c[0] for c in CHECKPOINTS] + [c[0] for c in CALLS]
    assert len(ids) == len(set(ids)) and len(ids) >= 40
