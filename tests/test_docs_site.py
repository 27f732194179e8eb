"""The documentation site builds with no warning, renders the API, and its examples run.

``mkdocs build --strict`` (what ``make docs`` runs) fails on any warning: a broken link, a nav
entry without a page, a docstring mkdocstrings cannot render, a cross-reference to a name that
does not exist.
"""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

# Pages whose Python examples run as written (each page in a namespace of its own).
EXAMPLE_PAGES = ["index.md", "getting-started.md", "concepts.md", "sources.md", "operators.md"]

# Names that must be rendered on each API page (as mkdocstrings anchors).
API_NAMES = {
    "api/pipeline/index.html": ["datarax.pipeline.Pipeline", "datarax.pipeline.PipelineIterator.get_state"],
    "api/sources/index.html": ["datarax.sources.MemorySource", "datarax.sources.ArrayRecordSource"],
    "api/operators/index.html": ["datarax.operators.RandomCrop", "datarax.operators.HostFilter"],
    "api/core/index.html": ["datarax.core.OperatorModule", "datarax.core.prng.node_key"],
    "api/samplers/index.html": ["datarax.samplers.ShuffleSampler", "datarax.samplers.feistel_permute"],
    "api/batching/index.html": ["datarax.batching.DefaultBatcher"],
    "api/checkpoint/index.html": ["datarax.checkpoint.OrbaxCheckpointHandler"],
    "api/distributed/index.html": ["datarax.distributed.batch_sharding", "datarax.distributed.initialize"],
    "api/typing/index.html": ["datarax.typing.Checkpointable"],
    "api/config/index.html": ["datarax.config.load_pipeline", "datarax.config.register"],
    "api/testing/index.html": ["datarax.testing.check_resume", "datarax.testing.first_difference"],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out, result


def test_site_builds_without_warnings(site):
    _, result = site
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output


def test_site_has_the_pages(site):
    out, result = site
    assert result.returncode == 0, result.stdout + result.stderr
    for page in [
        "index.html",
        "getting-started",
        "concepts",
        "guarantees",
        "sources",
        "operators",
        "config",
        "cli",
        "distributed",
        "benchmarks",
    ]:
        path = out / page if page.endswith(".html") else out / page / "index.html"
        assert path.is_file(), page


@pytest.mark.parametrize("page", sorted(API_NAMES))
def test_api_pages_render_the_public_names(site, page):
    out, result = site
    assert result.returncode == 0, result.stdout + result.stderr
    html = (out / page).read_text()
    for name in API_NAMES[page]:
        assert f'id="{name}"' in html, (page, name)
    # Doctests are rendered as code: read as Markdown, ">>> x" lines would become nested blockquotes.
    assert "<blockquote>" not in html, page


@pytest.mark.parametrize("page", EXAMPLE_PAGES)
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the examples' temporary files land here
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)
    assert blocks, page
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOCS / page), "exec"), namespace)  # noqa: S102
