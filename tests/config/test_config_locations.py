"""KeyLines finds the line of every key path, for the forms TOML 1.0 writes."""

import tomllib

import pytest

from datarax.config.locations import KeyLines

DOCUMENT = '''\
# a comment with [brackets] and key = "value"
title = "x"                                  # 2
"quoted key" = 1                             # 3
dotted.inner = 2                             # 4

[pipeline]                                   # 6
batch_size = 8                               # 7
description = """                            # 8
[not a table]
fake = 1
"""
after = 'literal # not a comment'            # 12

[source]                                     # 14
type = "MixSource"                           # 15
weights = [                                  # 16
  0.5,                                       # 17
  # a comment inside an array
  0.5,                                       # 19
]

[[source.sources]]                           # 22
type = "ParquetSource"                       # 23
paths = "a.parquet"

[[source.sources]]                           # 26
type = "NumpyFileSource"
paths = { label = "b.npy", "my col" = "c.npy" }   # 28

[[stages]]                                   # 30
type = "RandomFlip"

[[stages]]                                   # 33
type = "ProbabilisticOperator"
probability = 0.5                            # 35

[stages.operator]                            # 37
type = "RandomBrightness"
magnitude = 'high'                           # 39

[[stages.extra]]                             # 41
x = 1

[[stages]]                                   # 44
  type = "Normalize"                         # 45
  mean = [0.1, 0.2,
          0.3]                               # 47

[graph.nodes."odd name"]                     # 49
type = "RandomFlip"                          # 50
inline = [{ a = 1 }, { b = [1, {c = 2}] }]   # 51
escaped = "a \\" quote # and [brackets]"     # 52
multi = \'\'\'
[[stages]]
\'\'\'
last = 1                                     # 56
'''


@pytest.fixture(scope="module")
def lines():
    tomllib.loads(DOCUMENT)  # the document is valid TOML
    return KeyLines(DOCUMENT)


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (("title",), 2),
        (("quoted key",), 3),
        (("dotted", "inner"), 4),
        (("pipeline",), 6),
        (("pipeline", "batch_size"), 7),
        (("pipeline", "description"), 8),
        (("pipeline", "after"), 12),
        (("source",), 14),
        (("source", "type"), 15),
        (("source", "weights"), 16),
        (("source", "weights", 0), 17),
        (("source", "weights", 1), 19),
        (("source", "sources", 0), 22),
        (("source", "sources", 0, "type"), 23),
        (("source", "sources", 1), 26),
        (("source", "sources", 1, "paths", "label"), 28),
        (("source", "sources", 1, "paths", "my col"), 28),
        (("stages", 0), 30),
        (("stages", 1), 33),
        (("stages", 1, "probability"), 35),
        (("stages", 1, "operator"), 37),
        (("stages", 1, "operator", "magnitude"), 39),
        (("stages", 1, "extra", 0), 41),
        (("stages", 2), 44),
        (("stages", 2, "type"), 45),
        (("stages", 2, "mean", 2), 47),
        (("graph", "nodes", "odd name"), 49),
        (("graph", "nodes", "odd name", "inline", 1, "b", 1, "c"), 51),
        (("graph", "nodes", "odd name", "escaped"), 52),
        (("graph", "nodes", "odd name", "last"), 56),
    ],
)
def test_every_key_is_found_on_its_line(lines, path, line):
    assert lines.line(path) == line


def test_a_missing_key_falls_back_to_its_table(lines):
    assert lines.line(("stages", 1, "operator", "draw")) == 37
    assert lines.line(("stages", 5)) == 30  # the first [[stages]]: where the array is
    assert lines.line(("nowhere",)) is None


def test_text_inside_strings_never_counts_as_a_header(lines):
    assert lines.line(("not a table",)) is None
    assert lines.line(("pipeline", "fake")) == 6  # not line 10: only the table is recorded
    assert lines.line(("stages", 3)) == 30  # the '[[stages]]' inside a multi-line literal string is text
