"""The persistent compilation cache: a fresh process reads the step compiled by an earlier one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from datarax.pipeline.compilation_cache import disable_compilation_cache, enable_compilation_cache

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, sys
import jax
import numpy as np
from jax import monitoring
from pipeline_helpers import build_resume_pipeline
from datarax.pipeline.compilation_cache import enable_compilation_cache

hits = []
monitoring.register_event_listener(lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
enable_compilation_cache(sys.argv[1])
batch = next(iter(build_resume_pipeline()))
print(json.dumps({"hits": len(hits), "x": np.asarray(batch["x"]).tolist()}))
"""


def _child(cache_dir: Path) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(HERE)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(cache_dir)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_reads_the_compiled_step_from_the_cache(tmp_path):
    first = _child(tmp_path)
    assert any(p.name.startswith("jit_pipeline_step") for p in tmp_path.iterdir()), sorted(tmp_path.iterdir())
    second = _child(tmp_path)
    assert first["hits"] == 0
    assert second["hits"] >= 1  # the step (at least) came from the cache
    assert second["x"] == first["x"]  # and computes the same batch


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(TypeError, match="directory must be a path, got int"):
        enable_compilation_cache(42)
    with pytest.raises(ValueError, match="min_compile_time_secs must be a number >= 0, got -1"):
        enable_compilation_cache(tmp_path, min_compile_time_secs=-1)
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        enable_compilation_cache(a_file)


def test_enable_creates_the_directory_and_disable_turns_it_off(tmp_path):
    import jax

    target = tmp_path / "nested" / "cache"
    try:
        assert enable_compilation_cache(target) == target.resolve()
        assert target.is_dir()
        assert jax.config.jax_compilation_cache_dir == str(target.resolve())
    finally:
        disable_compilation_cache()
    assert jax.config.jax_compilation_cache_dir is None
