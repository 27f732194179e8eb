"""Paths in a pipeline file stay inside the allowed roots: traversal, absolute paths and symlinks are refused."""

import os
import textwrap

import numpy as np
import pytest

from datarax.config import ConfigError, load_pipeline
from datarax.config.paths import PathEscape, PathPolicy

NUMPY_FILES = """\
[pipeline]
batch_size = 4

[source]
type = "NumpyFileSource"

[source.paths]
label = "{path}"
"""


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def outside(tmp_path):
    """A directory beside the pipeline's, holding a real .npy file."""
    folder = tmp_path / "outside"
    folder.mkdir()
    np.save(folder / "label.npy", np.arange(8, dtype=np.int32))
    return folder


@pytest.fixture
def project(tmp_path):
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    np.save(folder / "data" / "label.npy", np.arange(8, dtype=np.int32))
    return folder


def test_paths_are_relative_to_the_file_not_the_current_directory(project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline = load_pipeline(_write(project / "p.toml", NUMPY_FILES.format(path="data/label.npy")))
    assert sorted(np.concatenate([b["label"] for b in pipeline]).tolist()) == list(range(8))


@pytest.mark.parametrize(
    "path", ["../outside/label.npy", "../../../../../../etc/passwd", "/etc/passwd", "data/../../x"]
)
def test_a_path_leaving_the_roots_is_refused_naming_the_key(project, outside, path):
    with pytest.raises(ConfigError) as info:
        load_pipeline(_write(project / "p.toml", NUMPY_FILES.format(path=path)))
    assert (info.value.key, info.value.line) == ("source.paths.label", 8)
    assert f"path {path!r} resolves to" in str(info.value)
    assert f"outside the allowed roots [{project}]" in str(info.value)


def test_an_added_root_allows_reading_there(project, outside):
    pipeline_file = _write(project / "p.toml", NUMPY_FILES.format(path="../outside/label.npy"))
    pipeline = load_pipeline(pipeline_file, allowed_roots=[outside])
    assert len(pipeline) == 2
    with pytest.raises(ValueError, match="allowed root .* is not an existing directory"):
        load_pipeline(pipeline_file, allowed_roots=[outside / "label.npy"])


def test_a_symlink_escaping_the_roots_is_refused(project, outside):
    os.symlink(outside / "label.npy", project / "data" / "linked.npy")
    with pytest.raises(ConfigError) as info:
        load_pipeline(_write(project / "p.toml", NUMPY_FILES.format(path="data/linked.npy")))
    assert info.value.key == "source.paths.label"
    assert f"path 'data/linked.npy' resolves to {outside / 'label.npy'}, outside the allowed roots" in str(info.value)
    # A symlink that stays inside the roots is followed.
    os.symlink(project / "data" / "label.npy", project / "data" / "inside.npy")
    assert len(load_pipeline(_write(project / "q.toml", NUMPY_FILES.format(path="data/inside.npy")))) == 2


def test_a_directory_holding_an_escaping_symlink_is_refused(project, outside):
    dataset = project / "data" / "hf"
    dataset.mkdir()
    (dataset / "nested").mkdir()
    os.symlink(outside, dataset / "nested" / "escape")
    text = '[pipeline]\nbatch_size = 4\n\n[source]\ntype = "HFSource"\npath = "data/hf"\n'
    with pytest.raises(ConfigError) as info:
        load_pipeline(_write(project / "p.toml", text))
    assert (info.value.key, info.value.line) == ("source.path", 6)
    assert f"holds the symlink {dataset / 'nested' / 'escape'} to {outside}, outside the allowed roots" in str(
        info.value
    )


def test_glob_patterns_are_checked_file_by_file(project, outside):
    from datarax.sources import write_array_record

    for shard in range(2):
        records = ({"label": np.int32(shard * 4 + i)} for i in range(4))
        write_array_record(str(project / "data" / f"part-{shard}.array_record"), records)
    text = '[pipeline]\nbatch_size = 4\n\n[source]\ntype = "ArrayRecordSource"\npaths = "{pattern}"\n'
    pipeline = load_pipeline(_write(project / "p.toml", text.format(pattern="data/part-*.array_record")))
    assert sorted(np.concatenate([b["label"] for b in pipeline]).tolist()) == list(range(8))
    with pytest.raises(ConfigError, match=r"p.toml:6: source.paths: path '../\*/label.npy' resolves to .*outside"):
        load_pipeline(_write(project / "p.toml", text.format(pattern="../*/label.npy")))
    write_array_record(str(outside / "part-9.array_record"), [{"label": np.int32(9)}])
    os.symlink(outside / "part-9.array_record", project / "data" / "part-9.array_record")
    with pytest.raises(ConfigError) as info:
        load_pipeline(_write(project / "p.toml", text.format(pattern="data/part-*.array_record")))
    assert info.value.key == "source.paths" and "part-9.array_record, outside the allowed roots" in str(info.value)


class _Payload:
    """Unpickling it creates a directory: the proof a file was (or was not) unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_npy_arrays_are_loaded_without_unpickling(project):
    marker = project / "unpickled"
    np.save(project / "data" / "evil.npy", np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    np.save(project / "data" / "image.npy", np.zeros((8, 2), np.float32))
    text = '[pipeline]\nbatch_size = 4\n\n[source]\ntype = "MemorySource"\n'
    text += 'data = {{ image = "data/image.npy", label = "{path}" }}\n'
    with pytest.raises(ConfigError) as info:
        load_pipeline(_write(project / "p.toml", text.format(path="data/evil.npy")))
    assert (info.value.key, info.value.line) == ("source.data.label", 6)
    assert "cannot read the .npy file" in str(info.value) and "allow_pickle=False" in str(info.value)
    assert not marker.exists()
    pipeline = load_pipeline(_write(project / "p.toml", text.format(path="data/label.npy")))
    assert next(iter(pipeline))["image"].shape == (4, 2)
    np.load(project / "data" / "evil.npy", allow_pickle=True)  # the payload does run when unpickled
    assert marker.is_dir()


def test_the_policy_resolves_and_refuses(tmp_path):
    policy = PathPolicy(tmp_path, allowed_roots=[])
    assert policy.resolve("a/../b.npy") == str(tmp_path.resolve() / "b.npy")
    for bad in ("", 3, None, "a\0b"):
        with pytest.raises(PathEscape, match="expected a file path"):
            policy.resolve(bad)
    assert policy.resolve("~/x") == str(tmp_path.resolve() / "~" / "x")  # no home or variable expansion
