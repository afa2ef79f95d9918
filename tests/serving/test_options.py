"""catdog.serving.options: ServerOptions is the one source of the serve flags and their rules."""

from __future__ import annotations

import dataclasses

import pytest
from absl import flags

from catdog import contract
from catdog.errors import CatdogError
from catdog.serving import options as options_lib
from catdog.serving.options import ServerOptions


@pytest.fixture
def flag_values():
    values = flags.FlagValues()
    options_lib.define_flags(values)
    return values


def parse(flag_values, *args: str) -> ServerOptions:
    flag_values(["serve", *args])
    return options_lib.from_flags(flag_values)


def test_every_option_is_a_flag_with_its_default_and_help(flag_values, tmp_path):
    for field in dataclasses.fields(ServerOptions):
        flag = flag_values[field.name]
        assert flag.help == field.metadata["help"]
        assert flag.default == (field.default if field.default is not None else 0)
    assert parse(flag_values, f"--model_base_path={tmp_path}") == ServerOptions(
        model_base_path=str(tmp_path))


def test_defaults_are_tf_servings_and_the_contract_ports():
    """main.cc: --model_name defaults to "default"; the ports are the ones the client and the
    deployment files use."""
    options = ServerOptions()
    assert (options.model_name, options.port, options.rest_api_port) == (
        "default", contract.DEFAULT_GRPC_PORT, contract.DEFAULT_REST_PORT)


def test_rest_api_port_zero_on_the_command_line_turns_rest_off(flag_values, tmp_path):
    options = parse(flag_values, f"--model_base_path={tmp_path}", "--rest_api_port=0")
    assert options.rest_api_port is None


@pytest.mark.parametrize("field, value, problem", [
    ("port", 70000, "must be between 0 and 65535"),
    ("max_request_bytes", 10, "must be at least 1024"),
    ("file_system_poll_wait_seconds", 0.0, "must be at least 0.05"),
    ("model_config_file", "/no/such.config", "must name an existing text proto file"),
])
def test_code_and_command_line_refuse_a_value_in_the_same_words(flag_values, tmp_path, field,
                                                                value, problem):
    with pytest.raises(CatdogError, match=f"ServerOptions\\({field}=.*\\): {problem}"):
        ServerOptions(**{field: value})
    with pytest.raises(flags.IllegalFlagValueError, match=problem):
        parse(flag_values, f"--model_base_path={tmp_path}", f"--{field}={value}")


def test_a_missing_base_path_is_refused_on_the_command_line_only_and_not_with_version():
    assert ServerOptions(model_base_path="/no/such/folder").model_base_path == "/no/such/folder"
    values = flags.FlagValues()
    options_lib.define_serve_flags(values)
    with pytest.raises(flags.IllegalFlagValueError, match="must be an existing folder"):
        values(["serve", "--model_base_path=/no/such/folder"])
    values = flags.FlagValues()
    options_lib.define_serve_flags(values)
    values(["serve", "--model_base_path=/no/such/folder", "--version"])
    assert values.version


def test_channel_arguments_must_be_key_value_pairs():
    assert ServerOptions(grpc_channel_arguments="grpc.so_reuseaddr=1,a=b").grpc_channel_arguments
    with pytest.raises(CatdogError, match="key=value"):
        ServerOptions(grpc_channel_arguments="grpc.so_reuseaddr")
