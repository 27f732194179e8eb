"""Every mistake in a pipeline file is a ConfigError naming the file, line, key, value and what was expected."""

import sys
import textwrap

import pytest
from datarax_config_testing import HEADER

from datarax.config import ConfigError


def _error(load, text, **kwargs):
    with pytest.raises(ConfigError) as info:
        load(textwrap.dedent(text), **kwargs)
    return info.value


def test_an_unknown_component_is_named_with_the_closest_names(load):
    error = _error(load, HEADER + '\n[[stages]]\ntype = "RandomFlip"\n\n[[stages]]\ntype = "RandomFlipp"\n')
    assert (error.key, error.line, error.file) == ("stages[1].type", 11, "p.toml")
    assert str(error).startswith(
        "p.toml:11: stages[1].type: unknown component 'RandomFlipp'; did you mean 'RandomFlip'"
    )


def test_a_source_type_in_lowercase_suggests_the_class_name(load):
    error = _error(load, HEADER.replace('"images"', '"parquet"'))
    assert error.key == "source.type" and error.line == 5
    assert "did you mean 'ParquetSource'" in str(error)


def test_an_unknown_key_is_named_with_the_keys_the_component_takes(load):
    error = _error(load, HEADER + '\n[[stages]]\ntype = "RandomBrightness"\nmagnitud = 0.2\n')
    assert (error.key, error.line) == ("stages[0].magnitud", 9)
    assert "unknown key 'magnitud' for RandomBrightness; did you mean 'magnitude'?" in str(error)
    assert "draw, fields, learnable, magnitude, name" in str(error)


@pytest.mark.parametrize(
    ("stage", "key", "line", "message"),
    [
        ('magnitude = "high"', "stages[0].magnitude", 9, "expected a number, got 'high' (a string)"),
        ("learnable = 1", "stages[0].learnable", 9, "expected a boolean, got 1 (an integer)"),
        ("fields = 'image'", "stages[0].fields", 9, "expected an array of strings, got 'image' (a string)"),
        ('fields = ["image", 3]', "stages[0].fields[1]", 9, "expected a string, got 3 (an integer)"),
        ("fields = { a = 1 }", "stages[0].fields", 9, "expected an array of strings, got {'a': 1} (a table)"),
        ("magnitude = 1979-05-27", "stages[0].magnitude", 9, "(a date-time)"),
    ],
)
def test_a_value_of_the_wrong_type_is_named(load, stage, key, line, message):
    error = _error(load, HEADER + f'\n[[stages]]\ntype = "RandomBrightness"\n{stage}\n')
    assert (error.key, error.line) == (key, line)
    assert message in str(error)


def test_an_array_of_the_wrong_length_is_named(load):
    error = _error(load, HEADER + '\n[[stages]]\ntype = "RandomCrop"\nsize = [8, 8, 3]\n')
    assert (error.key, error.line) == ("stages[0].size", 9) or error.key == "stages[0]"
    error = _error(load, HEADER + '\n[[host_stages]]\ntype = "HostResize"\nsize = [8]\n')
    assert (error.key, error.line) == ("host_stages[0].size", 9)
    assert "expected an array of 2 integers, got 1 items: [8]" in str(error)


def test_missing_required_fields_are_named_at_their_table(load):
    error = _error(load, HEADER + '\n[[host_stages]]\ntype = "HostResize"\nfield = "image"\n')
    assert (error.key, error.line) == ("host_stages[0]", 7)
    assert "HostResize is missing the required key 'size' (an array of 2 integers)" in str(error)
    error = _error(load, HEADER + "\n[[stages]]\nprobability = 0.5\n")
    assert (error.key, error.line) == ("stages[0]", 7)
    assert "has no 'type' key" in str(error)
    error = _error(load, HEADER.replace("batch_size = 4", "shuffle = true"))
    assert (error.key, error.line) == ("pipeline", 1)
    assert "missing the required key 'batch_size'" in str(error)
    error = _error(load, '[pipeline]\nbatch_size = 4\n[[stages]]\ntype = "RandomFlip"\n')
    assert error.key is None and "no [source] table" in str(error)
    error = _error(load, HEADER + '\n[[stages]]\ntype = "ProbabilisticOperator"\n')
    assert (error.key, error.line) == ("stages[0]", 7)
    assert "missing the required key 'operator' (an operator table (a component: type and its keys))" in str(error)


def test_a_value_the_component_refuses_is_reported_at_its_key(load):
    error = _error(load, HEADER + '\n[[stages]]\ntype = "RandomBrightness"\nmagnitude = -1.0\n')
    assert (error.key, error.line) == ("stages[0].magnitude", 9)
    assert str(error) == (
        "p.toml:9: stages[0].magnitude: ValueError: RandomBrightnessConfig: magnitude must be a finite number in "
        "[0, inf], got -1.0"
    )
    error = _error(load, HEADER + '\n[[stages]]\ntype = "Normalize"\nmean = [0.5, 0.5]\nstd = [1.0, 1.0, 1.0]\n')
    assert error.key == "stages[0].std" and "mean and std must have the same length" in str(error)


def test_a_nested_component_error_names_the_nested_key(load):
    text = HEADER + textwrap.dedent("""
        [[stages]]
        type = "ProbabilisticOperator"
        probability = 0.5
        stochastic = true
        stream_name = "maybe"

        [stages.operator]
        type = "RandomBrightness"
        draw = "sometimes"
        """)
    error = _error(load, text)
    assert (error.key, error.line) == ("stages[0].operator.draw", 15)
    assert "'sometimes'" in str(error)


def test_the_pipelines_own_errors_name_the_stage_or_setting(load):
    two_flips = '\n[[stages]]\ntype = "RandomFlip"\n\n[[stages]]\ntype = "RandomFlip"\nfields = ["x"]\n'
    error = _error(load, HEADER + two_flips)
    assert (error.key, error.line) == ("stages[1]", 10)
    assert "stage 'stage_1' (RandomFlip) cannot take the element" in str(error)
    error = _error(load, HEADER.replace("batch_size = 4", "batch_size = 4\nprefetch = -1"))
    assert (error.key, error.line) == ("pipeline.prefetch", 3)
    assert "prefetch must be a non-negative int, got -1" in str(error)
    error = _error(load, HEADER.replace("batch_size = 4", "batch_size = 0"))
    assert (error.key, error.line) == ("pipeline.batch_size", 2)
    error = _error(load, HEADER + '\n[[host_stages]]\ntype = "HostResize"\nsize = [4, 4]\n')
    assert (error.key, error.line) == ("host_stages", 7)
    assert "MemorySource lives on the device" in str(error)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("num_epochs = 1.5", "expected a positive integer, or inf to run forever, got 1.5 (a float)"),
        ("num_epochs = -inf", "expected a positive integer, or inf to run forever, got -inf (a float)"),
        ("num_epochs = 0", "num_epochs must be a positive int or None, got 0"),
        ("seed = 4294967296", "expected an integer in [0, 2**32) (the pipeline's 32-bit seed), got 4294967296"),
        ("seed = -1", "expected an integer in [0, 2**32)"),
        ("worker_kind = 'fiber'", 'expected "thread" or "process", got \'fiber\''),
        ("shuffle = 'yes'", "expected a boolean, got 'yes' (a string)"),
    ],
)
def test_pipeline_settings_are_checked(load, setting, message):
    error = _error(load, HEADER.replace("batch_size = 4", f"batch_size = 4\n{setting}"))
    assert (error.key, error.line) == (f"pipeline.{setting.split()[0]}", 3)
    assert message in str(error)


def test_unknown_tables_and_misshapen_tables_are_named(load):
    error = _error(load, HEADER + '\n[[stage]]\ntype = "RandomFlip"\n')
    assert (error.key, error.line) == ("stage", 7)
    assert "unknown key 'stage' for a pipeline file; did you mean 'stages'?" in str(error)
    error = _error(load, HEADER + '\n[stages]\ntype = "RandomFlip"\n')
    assert (error.key, error.line) == ("stages", 7)
    assert "expected an array of tables ([[stages]]), got {'type': 'RandomFlip'} (a table)" in str(error)
    error = _error(load, HEADER.replace("batch_size = 4", "batch_size = 4\nbatch = 8"))
    assert (error.key, error.line) == ("pipeline.batch", 3)
    error = _error(load, 'pipeline = 3\n[source]\ntype = "images"\n')
    assert (error.key, error.line) == ("pipeline", 1)


def test_malformed_toml_is_reported_with_tomllibs_line(load):
    error = _error(load, HEADER + '\n[[stages]]\ntype = "RandomFlip"\naxis = \n')
    assert error.line == 9 and error.key is None
    assert str(error).startswith("p.toml:9: invalid TOML: ")
    error = _error(load, HEADER + "\n[pipeline]\nshuffle = true\n")
    assert error.line == 7 and "invalid TOML" in str(error)


def test_a_component_placed_in_the_wrong_role_is_refused(load):
    error = _error(load, HEADER.replace('"images"', '"RandomFlip"'))
    assert (error.key, error.line) == ("source.type", 5)
    assert "'RandomFlip' is an operator, not a source" in str(error)
    error = _error(load, HEADER + '\n[[stages]]\ntype = "DecodeImage"\n')
    assert "'DecodeImage' is a host operator, not an operator" in str(error)
    error = _error(load, HEADER + '\n[[stages]]\ntype = "images"\n')
    assert (error.key, error.line) == ("stages[0]", 7)
    assert "the registered component 'images' built a MemorySource, which is not an operator" in str(error)


def test_code_only_components_say_how_to_use_them(load):
    error = _error(load, HEADER + '\n[[stages]]\ntype = "ElementOperator"\n')
    assert (error.key, error.line) == ("stages[0].type", 8)
    assert "ElementOperator takes a Python function fn(element, key), which a TOML file cannot hold" in str(error)
    assert "datarax.config.register(" in str(error)


@pytest.mark.parametrize("name", ["os:system", "os.system", "subprocess.Popen", "evil_config_module:build", "a/b"])
def test_a_module_path_is_never_imported(load, tmp_path, monkeypatch, name):
    module = tmp_path / "evil_config_module.py"
    module.write_text("import sys\nsys.evil_config_module_imported = True\ndef build():\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    error = _error(load, HEADER.replace('"images"', f'"{name}"'))
    assert (error.key, error.line) == ("source.type", 5)
    assert f"{name!r} looks like a module path; a pipeline file names registered components only" in str(error)
    assert "evil_config_module" not in sys.modules and not hasattr(sys, "evil_config_module_imported")


def test_a_registered_factory_is_checked_against_its_signature(load, registry):
    def tokens(count, *, length=4):
        if count > 100:
            raise ValueError(f"tokens: count must be at most 100, got {count}")
        return registry.get("images").factory(count)

    registry.register("tokens", tokens)
    text = HEADER.replace('"images"', '"tokens"')
    error = _error(load, text + "count = 8\nlenght = 3\n")
    assert (error.key, error.line) == ("source.lenght", 7)
    assert "unknown key 'lenght' for the registered component 'tokens'; did you mean 'length'?" in str(error)
    error = _error(load, text)
    assert (error.key, error.line) == ("source", 4)
    assert "the registered component 'tokens' is missing the required key 'count'" in str(error)
    error = _error(load, text + "count = 1000\n")
    assert (error.key, error.line) == ("source.count", 6)
    assert "ValueError: tokens: count must be at most 100, got 1000" in str(error)


def test_an_override_is_checked_and_named_as_such(load):
    error = _error(load, HEADER, overrides={"num_epochs": 0})
    assert (error.key, error.line) == ("pipeline.num_epochs", None)
    assert str(error).endswith("(given as an override)")
    error = _error(load, HEADER, overrides={"epochs": 2})
    assert error.key == "pipeline.epochs" and "unknown key 'epochs'" in str(error)


def test_graph_errors_name_the_edge_or_the_sink(load):
    graph = HEADER + '\n[graph]\nedges = [["source", "a"], ["a", "c"]]\nsink = "a"\n'
    graph += '\n[graph.nodes.a]\ntype = "RandomFlip"\n'
    error = _error(load, graph)
    assert (error.key, error.line) == ("graph.edges[1]", 8)
    assert "edge ('a', 'c') names unknown node(s) ['c']" in str(error)
    error = _error(load, graph.replace('["a", "c"]', '["a"]'))
    assert error.key == "graph.edges[1]" and 'expected a ["from", "to"] pair of node names' in str(error)
    error = _error(load, graph.replace(', ["a", "c"]', "").replace('sink = "a"', 'sink = "b"'))
    assert (error.key, error.line) == ("graph.sink", 9)
    error = _error(load, graph.replace('sink = "a"\n', ""))
    assert (error.key, error.line) == ("graph", 7) and "missing the required key 'sink'" in str(error)
    error = _error(load, graph + '\n[[stages]]\ntype = "RandomFlip"\n')
    assert "give either [[stages]] (a linear pipeline) or [graph] (a DAG), not both" in str(error)
