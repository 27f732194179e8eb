"""Tests for datarax.sources.hf_source.HFSource, on Hugging Face datasets built and saved here (no hub)."""

import io
import json
import pickle

import jax
import numpy as np
import pytest
from flax import nnx

datasets = pytest.importorskip("datasets")

from datasets import Array2D, Audio, ClassLabel, Features, Image, List, Value  # noqa: E402

from datarax import Pipeline  # noqa: E402
from datarax.core.constructor_args import from_recipe  # noqa: E402
from datarax.core.spec import BytesSpec, RaggedSpec  # noqa: E402
from datarax.sources.hf_source import HFSource, HFSourceConfig  # noqa: E402

SDS = jax.ShapeDtypeStruct
N = 37
NAMES = ("cat", "dog", "emu")
FEATURES = Features(
    {
        "id": Value("int64"),
        "score": Value("float32"),
        "flag": Value("bool"),
        "fix": List(Value("int16"), length=3),
        "grid": Array2D((2, 3), "float32"),
        "tokens": List(Value("int32")),
        "points": List(List(Value("uint8"), length=2)),
        "text": Value("string"),
        "label": ClassLabel(names=list(NAMES)),
    }
)


def _rows(n=N):
    ids = np.arange(n)
    return {
        "id": ids.tolist(),
        "score": (ids * 0.5).tolist(),
        "flag": (ids % 3 == 0).tolist(),
        "fix": [[i, -i, 2 * i] for i in ids.tolist()],
        "grid": [np.arange(6, dtype=np.float32).reshape(2, 3) + i for i in ids.tolist()],
        "tokens": [list(range(i, i + i % 5)) for i in ids.tolist()],
        "points": [[[i % 256, 7]] * (i % 3) for i in ids.tolist()],
        "text": [f"r\u00e9{i}" for i in ids.tolist()],
        "label": (ids % 3).tolist(),
    }


@pytest.fixture(scope="module")
def memory():
    return datasets.Dataset.from_dict(_rows(), features=FEATURES)


@pytest.fixture(scope="module")
def saved(memory, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    memory.save_to_disk(str(folder))
    return str(folder)


def _source(columns=None, **kwargs):
    return HFSource(HFSourceConfig(columns=columns), **kwargs)


def _check_equal(batch, dataset, indices):
    """Every column of ``batch`` holds the dataset's rows at ``indices``."""
    for position, index in enumerate(indices):
        row = dataset[int(index)]
        for column, value in batch.items():
            want = row[column]
            if column == "text":
                assert value[position] == want.encode()
            else:
                got = np.asarray(value[position])
                assert np.array_equal(got, np.asarray(want).reshape(got.shape)), (column, index)


def test_element_spec_keeps_every_dtype_and_exposes_class_names(memory):
    source = _source(dataset=memory)
    assert source.element_spec() == {
        "id": SDS((), np.int64),
        "score": SDS((), np.float32),
        "flag": SDS((), np.bool_),
        "fix": SDS((3,), np.int16),
        "grid": SDS((2, 3), np.float32),
        "tokens": RaggedSpec(np.int32, 1),
        "points": RaggedSpec(np.uint8, 2),
        "text": BytesSpec(),
        "label": SDS((), np.int64),
    }
    assert source.class_names == {"label": NAMES}
    assert len(source) == N and source.columns == tuple(FEATURES)


def test_random_access_equals_the_dataset(memory, saved):
    indices = np.random.default_rng(0).integers(0, N, 50)  # repeats included
    for source in (_source(dataset=memory), _source(path=saved)):
        batch = source.get_records(indices)
        assert batch["grid"].dtype == np.float32 and batch["grid"].shape == (50, 2, 3)
        assert batch["fix"].dtype == np.int16 and [t.dtype for t in batch["tokens"]] == [np.int32] * 50
        assert all(p.shape == (int(i) % 3, 2) and p.dtype == np.uint8 for p, i in zip(batch["points"], indices))
        _check_equal(batch, memory, indices)
    empty = _source(dataset=memory).get_records(np.zeros(0, np.int64))
    assert empty["grid"].shape == (0, 2, 3) and empty["text"] == []


def test_only_the_requested_columns_are_read_in_their_order(saved):
    source = _source(("label", "tokens"), path=saved)
    assert list(source.element_spec()) == ["label", "tokens"]
    batch = source.get_records([4, 1])
    assert list(batch) == ["label", "tokens"] and batch["label"].tolist() == [1, 1]
    assert [t.tolist() for t in batch["tokens"]] == [[4, 5, 6, 7], [1]]


def test_an_indices_mapping_left_by_select_or_shuffle_is_honoured(memory):
    shuffled = memory.shuffle(seed=1)
    source = _source(("id",), dataset=shuffled)
    assert source.get_records(np.arange(N))["id"].tolist() == shuffled["id"]


def test_a_dataset_dict_folder_reads_the_split(memory, tmp_path):
    datasets.DatasetDict({"train": memory, "test": memory.select(range(5))}).save_to_disk(str(tmp_path))
    assert len(_source(("id",), path=str(tmp_path), split="test")) == 5
    with pytest.raises(ValueError, match=r"split 'valid' is not in .*\['train', 'test'\]"):
        _source(path=str(tmp_path), split="valid")


def test_load_dataset_builders_read_local_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"x": np.arange(10, dtype=np.int32), "s": [f"s{i}" for i in range(10)]}), tmp_path / "a.parquet"
    )
    source = _source(builder="parquet", data_files=str(tmp_path / "*.parquet"))
    assert source.element_spec() == {"x": SDS((), np.int32), "s": BytesSpec()}
    assert source.get_records([9, 2])["x"].tolist() == [9, 2] and source.get_records([3])["s"] == [b"s3"]
    lines = "".join(json.dumps({"v": [i] * (i % 3), "y": i * 1.5}) + "\n" for i in range(6))
    (tmp_path / "rows.jsonl").write_text(lines)
    source = _source(builder="json", data_files={"train": [str(tmp_path / "rows.jsonl")]})
    batch = source.get_records([5, 0])
    assert [v.tolist() for v in batch["v"]] == [[5, 5], []] and batch["y"].tolist() == [7.5, 0.0]
    rebuilt = from_recipe(pickle.loads(pickle.dumps(source.worker_recipe())))
    assert rebuilt.get_records([4])["y"].tolist() == [6.0]


def test_imagefolder_gives_encoded_bytes_that_decode_image_decodes_in_the_pipeline(tmp_path):
    from PIL import Image as PILImage

    from datarax.operators import DecodeImage, DecodeImageConfig

    pixels = {}
    for number in range(6):
        kind = NAMES[number % 2]
        (tmp_path / kind).mkdir(exist_ok=True)
        array = np.full((4, 5, 3), 10 * number, np.uint8)
        path = tmp_path / kind / f"{number}.png"
        PILImage.fromarray(array).save(path)
        pixels[10 * number] = number % 2
    source = _source(builder="imagefolder", data_files=str(tmp_path / "*" / "*.png"))
    assert source.element_spec() == {"image": BytesSpec(), "label": SDS((), np.int64)}
    assert source.class_names == {"label": ("cat", "dog")}
    encoded = source.get_records([0])["image"][0]
    assert isinstance(encoded, bytes) and encoded.startswith(b"\x89PNG")
    pipeline = Pipeline(
        source=source, host_stages=[DecodeImage(DecodeImageConfig())], batch_size=4, rngs=nnx.Rngs(0), shuffle=True
    )
    seen = []
    for batch in pipeline:
        for image, label, valid in zip(batch["image"], batch["label"], batch["valid_mask"], strict=True):
            image = np.asarray(image)
            if valid:
                assert image.shape == (4, 5, 3) and pixels[int(image[0, 0, 0])] == int(label)
                seen.append(int(image[0, 0, 0]))
    assert sorted(seen) == sorted(pixels)
    # An Image column held as bytes (not a path) is read as those bytes.
    buffer = io.BytesIO()
    PILImage.fromarray(np.zeros((2, 2, 3), np.uint8)).save(buffer, format="PNG")
    in_memory = datasets.Dataset.from_dict({"image": [{"bytes": buffer.getvalue(), "path": None}]}).cast_column(
        "image", Image()
    )
    assert _source(dataset=in_memory).get_records([0])["image"] == [buffer.getvalue()]


def _pipeline(source, **kwargs):
    return Pipeline(source=source, batch_size=8, rngs=nnx.Rngs(0), shuffle=True, **kwargs)


def _stream(pipeline):
    return [{key: np.asarray(value).tolist() for key, value in batch.items()} for batch in pipeline]


def test_a_shuffled_epoch_is_a_permutation_and_the_same_for_any_thread_count(saved, memory):
    source = _source(("id", "grid", "label"), path=saved)
    stream = _stream(_pipeline(source, workers=0))
    ids = [i for batch in stream for i, valid in zip(batch["id"], batch["valid_mask"], strict=True) if valid]
    assert sorted(ids) == list(range(N)) and ids != list(range(N))
    for batch in stream:
        for i, grid, label in zip(batch["id"], batch["grid"], batch["label"], strict=True):
            assert label == i % 3 and np.array_equal(grid, np.arange(6).reshape(2, 3) + i)
    assert _stream(_pipeline(_source(("id", "grid", "label"), path=saved), workers=2)) == stream
    assert _stream(_pipeline(_source(("id", "grid", "label"), dataset=memory), workers=2)) == stream


def test_process_workers_refuse_an_in_memory_dataset_but_not_a_saved_one(memory, saved):
    with pytest.raises(TypeError, match=r"held in memory.*save_to_disk\(folder\).*path=folder"):
        _pipeline(_source(("id",), dataset=memory), workers=2, worker_kind="process")
    file_backed = _source(("id",), dataset=datasets.load_from_disk(saved))
    recipe = pickle.dumps(file_backed.worker_recipe())
    assert len(recipe) < 20_000  # the Arrow file is referenced, not copied
    assert from_recipe(pickle.loads(recipe)).get_records([5])["id"].tolist() == [5]


def test_from_recipe_rebuilds_the_path_form(saved):
    source = _source(("id", "tokens"), path=saved)
    rebuilt = from_recipe(pickle.loads(pickle.dumps(source.worker_recipe())))
    assert rebuilt.element_spec() == source.element_spec()
    assert rebuilt.get_records([3])["id"].tolist() == [3]


def test_missing_local_files(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"not in the local cache and local_files_only=True.*nowhere"):
        HFSource(HFSourceConfig(local_files_only=True), path=missing)
    with pytest.raises(FileNotFoundError, match=r"path .*nowhere does not exist"):
        _source(path=missing)
    with pytest.raises(FileNotFoundError, match=r"'parquet:.*nowhere.*local_files_only=True"):
        HFSource(HFSourceConfig(local_files_only=True), builder="parquet", data_files=[missing])
    with pytest.raises(FileNotFoundError, match=r"data_files not found: .*\*\.json"):
        _source(builder="json", data_files=str(tmp_path / "*.json"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a folder written by Dataset.save_to_disk"):
        _source(path=str(tmp_path / "empty"))


def test_bad_arguments_are_named(memory, saved):
    with pytest.raises(ValueError, match=r"exactly one of dataset=.*got none"):
        _source()
    with pytest.raises(ValueError, match=r"exactly one of .*\['dataset', 'path'\]"):
        _source(dataset=memory, path=saved)
    with pytest.raises(ValueError, match=r"builder must be one of \['parquet', 'json', 'csv', 'imagefolder'\].*'text'"):
        _source(builder="text", data_files="a.txt")
    with pytest.raises(ValueError, match="needs data_files"):
        _source(builder="csv")
    with pytest.raises(ValueError, match="data_files is only read with builder"):
        _source(path=saved, data_files="a.csv")
    with pytest.raises(ValueError, match="local files .*'hf://datasets/x/y.parquet'"):
        _source(builder="parquet", data_files="hf://datasets/x/y.parquet")
    with pytest.raises(ValueError, match=r"columns \['nope'\] are not in the dataset; its columns are \['id'"):
        _source(("id", "nope"), dataset=memory)
    with pytest.raises(TypeError, match=r"DatasetDict .*dataset=dataset\['train'\]"):
        _source(dataset=datasets.DatasetDict({"train": memory}))
    with pytest.raises(TypeError, match="dataset must be a datasets.Dataset .*got dict"):
        _source(dataset={"id": [1]})
    with pytest.raises(TypeError, match="config must be an HFSourceConfig"):
        HFSource(object(), dataset=memory)
    with pytest.raises(ValueError, match="did you mean"):
        HFSourceConfig(columns="id")
    with pytest.raises(ValueError, match="local_files_only"):
        HFSourceConfig(local_files_only="yes")
    with pytest.raises(ValueError, match="reserved"):
        _source(dataset=datasets.Dataset.from_dict({"valid_mask": [1]}))
    with pytest.raises(IndexError, match=r"record index 37 is outside \[0, 37\)"):
        _source(dataset=memory).get_records([37])


def test_unsupported_features_are_refused_naming_the_column():
    nested = datasets.Dataset.from_dict({"n": [[[1], [2, 3]]], "d": [{"a": 1}]})
    with pytest.raises(TypeError, match=r"column 'n' .*a length other than the outermost varies"):
        _source(("n",), dataset=nested)
    with pytest.raises(TypeError, match=r"column 'd' has feature \{'a': Value\('int64'\)\}"):
        _source(("d",), dataset=nested)


def test_a_null_is_refused_naming_the_column_and_record():
    data = datasets.Dataset.from_dict({"x": [1, None, 3], "t": [[1], [None], [2]]})
    source = _source(dataset=data)
    assert source.get_records([2, 0])["x"].tolist() == [3, 1]
    with pytest.raises(ValueError, match=r"column 'x', record 1: holds a null value"):
        source.get_records([0, 1])
    with pytest.raises(ValueError, match=r"column 't', record 1: holds a null value"):
        _source(("t",), dataset=data).get_records([2, 1])


def test_an_array_with_a_free_first_dimension_is_ragged():
    features = Features({"a": Array2D((None, 3), "float32")})
    data = datasets.Dataset.from_dict({"a": [np.full((i, 3), i, np.float32) for i in range(4)]}, features=features)
    source = _source(dataset=data)
    assert source.element_spec() == {"a": RaggedSpec(np.float32, 2)}
    assert [a.shape for a in source.get_records([3, 0, 2])["a"]] == [(3, 3), (0, 3), (2, 3)]
    assert source.get_records([2])["a"][0].tolist() == [[2.0] * 3] * 2


def test_a_fixed_shape_record_of_another_shape_is_named():
    import pyarrow as pa

    from datarax.sources.hf_source import _Column, _read_column

    column = _Column("fix", "fixed", SDS((3,), np.int16), (3,), np.dtype(np.int16))
    stored = pa.array([[1, 2, 3], [4, 5]], pa.list_(pa.int16()))  # what Array2D storage looks like, one row short
    with pytest.raises(ValueError, match=r"column 'fix', record 11: has a list of length 2 .*needs 3"):
        _read_column(pa, column, stored, np.array([10, 11]))


def test_process_workers_read_a_saved_dataset(saved):
    source = _source(("id", "label"), path=saved)
    inline = _stream(_pipeline(source, workers=0))
    assert _stream(_pipeline(_source(("id", "label"), path=saved), workers=2, worker_kind="process")) == inline


# --- Audio columns: encoded bytes, decoded by DecodeAudio on the host stage -----------------------

RATE = 8000
CLIPS = 13
CLIP_LENGTH = 400  # DecodeAudio's length below: some clips are longer (cropped), some shorter (padded)


def _clip(i):
    """Record ``i``'s PCM16 sine: a known frequency and length, stereo for every third record."""
    count, frequency = 250 + 37 * i, 200 + 50 * i
    t = np.arange(count) / RATE
    channels = 2 if i % 3 == 0 else 1
    wave = np.stack([0.5 / (c + 1) * np.sin(2 * np.pi * frequency * t) for c in range(channels)], axis=1)
    return np.round(wave * 32767).astype(np.int16)


def _encoded(i):
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, _clip(i), RATE, format="FLAC" if i % 2 else "WAV", subtype="PCM_16")
    return buffer.getvalue()


def _mono(i):
    """What DecodeAudio's mono mix of record ``i`` is: the channels' mean of the PCM16 samples over 32768."""
    return _clip(i).astype(np.float32).mean(axis=1, dtype=np.float32) / np.float32(32768)


@pytest.fixture(scope="module")
def audio_memory(tmp_path_factory):
    """Records 0, 4, 8, 12 are held as paths to local files (as a dataset built from file names is)."""
    folder = tmp_path_factory.mktemp("clips")
    rows = []
    for i in range(CLIPS):
        if i % 4 == 0:
            path = folder / f"clip{i}.{'flac' if i % 2 else 'wav'}"
            path.write_bytes(_encoded(i))
            rows.append({"bytes": None, "path": str(path)})
        else:
            rows.append({"bytes": _encoded(i), "path": None})
    data = datasets.Dataset.from_dict({"audio": rows, "id": list(range(CLIPS))})
    return data.cast_column("audio", Audio(sampling_rate=RATE, decode=False))


@pytest.fixture(scope="module")
def audio_saved(audio_memory, tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio_saved")
    audio_memory.save_to_disk(str(folder))
    return str(folder)


def test_an_audio_column_is_its_encoded_bytes_from_memory_files_or_disk(audio_memory, audio_saved):
    # decode=True (the default): still read as stored; Hugging Face's decoder is never called.
    decoding = datasets.Dataset.from_dict({"clip": [{"bytes": _encoded(1), "path": None}]})
    decoding = decoding.cast_column("clip", Audio())
    for source in (_source(dataset=audio_memory), _source(path=audio_saved), _source(dataset=decoding)):
        assert source.element_spec()["audio" if "audio" in source.columns else "clip"] == BytesSpec()
    assert _source(dataset=decoding).get_records([0])["clip"] == [_encoded(1)]
    assert _source(dataset=decoding).audio_sampling_rates == {"clip": None}
    indices = np.array([4, 1, 0, 12, 7, 4])
    for source in (_source(dataset=audio_memory), _source(path=audio_saved)):
        assert source.audio_sampling_rates == {"audio": RATE}
        batch = source.get_records(indices)
        assert batch["audio"] == [_encoded(int(i)) for i in indices]  # path rows read from their files
        assert batch["id"].tolist() == indices.tolist()
    assert _source(("id",), path=audio_saved).audio_sampling_rates == {}


def test_decode_audio_in_the_pipeline_gives_the_written_samples(audio_saved):
    from datarax.operators import DecodeAudio, DecodeAudioConfig

    decode = DecodeAudio(DecodeAudioConfig(length=CLIP_LENGTH, length_field="num_samples"))
    pipeline = Pipeline(source=_source(path=audio_saved), host_stages=[decode], batch_size=4, rngs=nnx.Rngs(0))
    seen = []
    for batch in pipeline:
        assert batch["audio"].shape == (4, CLIP_LENGTH) and batch["audio"].dtype == np.float32
        for samples, i, count, valid in zip(
            np.asarray(batch["audio"]), batch["id"].tolist(), batch["num_samples"].tolist(), batch["valid_mask"]
        ):
            want = _mono(i)
            assert count == len(want)
            if len(want) >= CLIP_LENGTH:  # crop="start": the first CLIP_LENGTH samples, exactly
                assert np.array_equal(samples, want[:CLIP_LENGTH])
            else:
                assert np.array_equal(samples[: len(want)], want) and not samples[len(want) :].any()
            if valid:
                seen.append(i)
    assert sorted(seen) == list(range(CLIPS))


def _random_crop_pipeline(path, **kwargs):
    from datarax.operators import DecodeAudio, DecodeAudioConfig

    decode = DecodeAudio(DecodeAudioConfig(length=CLIP_LENGTH, crop="random", length_field="num_samples"))
    options = {"batch_size": 4, "rngs": nnx.Rngs(7), "shuffle": True, "num_epochs": 2, **kwargs}
    return Pipeline(source=_source(("id", "audio"), path=path), host_stages=[decode], **options)


def _offsets(stream):
    """Each valid row's (batch number, id, crop offset), the offset found in the record's written samples."""
    out = []
    for number, batch in enumerate(stream):
        for i, samples, valid in zip(batch["id"], batch["audio"], batch["valid_mask"], strict=True):
            if not valid:
                continue
            want, samples = _mono(i), np.asarray(samples, np.float32)
            if len(want) <= CLIP_LENGTH:
                assert np.array_equal(samples[: len(want)], want) and not samples[len(want) :].any()
                out.append((number, i, 0))
                continue
            matches = [o for o in range(len(want) - CLIP_LENGTH + 1) if np.array_equal(samples, want[o:][:CLIP_LENGTH])]
            assert matches, i  # a window of the record's own samples
            out.append((number, i, matches[0]))
    return out


def test_a_random_crop_is_the_same_for_any_workers_and_after_a_resume(audio_saved):
    full = _stream(_random_crop_pipeline(audio_saved, workers=0))
    assert len(full) == 2 * 4
    offsets = _offsets(full)
    assert len(offsets) == 2 * CLIPS
    cropped = [(i, o) for _, i, o in offsets if len(_mono(i)) > CLIP_LENGTH]
    assert any(o > 0 for _, o in cropped)
    by_epoch = [{i: o for n, i, o in offsets if (n < 4) == (epoch == 0)} for epoch in (0, 1)]  # 4 batches an epoch
    assert any(by_epoch[0][i] != by_epoch[1][i] for i in by_epoch[0] if len(_mono(i)) > CLIP_LENGTH + 10)
    assert _stream(_random_crop_pipeline(audio_saved, workers=2)) == full
    assert _stream(_random_crop_pipeline(audio_saved, workers=2, worker_kind="process")) == full
    iterator = iter(_random_crop_pipeline(audio_saved, workers=2))
    head = [next(iterator) for _ in range(3)]
    state = json.loads(json.dumps(iterator.get_state()))
    iterator.close()
    assert _stream(head) == full[:3]
    resumed = iter(_random_crop_pipeline(audio_saved, workers=2, worker_kind="process"))
    resumed.set_state(state)
    assert _stream(resumed) == full[3:]
    resumed.close()


def test_audio_read_errors_name_the_record(tmp_path):
    from datarax.operators import DecodeAudio, DecodeAudioConfig
    from datarax.pipeline import HostStageError

    rows = [
        {"bytes": _encoded(1), "path": None},
        {"bytes": None, "path": "https://example.com/clip.wav"},
        {"bytes": None, "path": str(tmp_path / "gone.wav")},
        {"bytes": None, "path": None},
        {"bytes": b"no audio here", "path": None},
    ]
    data = datasets.Dataset.from_dict({"audio": rows}).cast_column("audio", Audio(decode=False))
    source = _source(dataset=data)
    assert source.get_records([0])["audio"] == [_encoded(1)]
    with pytest.raises(ValueError, match=r"'audio', record 1: its audio is at 'https://example.com/clip.wav', not a"):
        source.get_records([0, 1])
    with pytest.raises(ValueError, match=r"'audio', record 2: its audio file .*gone.wav cannot be read"):
        source.get_records([2])
    with pytest.raises(ValueError, match=r"'audio', record 3: is an audio with neither bytes nor a path"):
        source.get_records([3])
    nulls = datasets.Dataset.from_dict({"clip": [None]}).cast_column("clip", Audio())
    with pytest.raises(ValueError, match=r"column 'clip', record 0: holds a null value"):
        _source(dataset=nulls).get_records([0])
    undecodable = datasets.Dataset.from_dict({"audio": [rows[0], rows[4]]}).cast_column("audio", Audio(decode=False))
    decode = DecodeAudio(DecodeAudioConfig(length=CLIP_LENGTH))
    pipeline = Pipeline(source=_source(dataset=undecodable), host_stages=[decode], batch_size=2, rngs=nnx.Rngs(0))
    with pytest.raises(HostStageError, match=r"DecodeAudio failed on record 1 .*13 bytes that could not be decoded"):
        next(iter(pipeline))
