"""catdog.serving.server: the serve and client command lines, and what stops a server starting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from catdog.errors import CatdogError
from catdog.serving.options import ServerOptions
from catdog.serving.server import start_server

from conftest import CLASSES, free_ports, run_catdog


@pytest.mark.slow  # spawns the server and the client
def test_serve_and_client_command_lines(exported, jpegs, tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "catdog.serve", "--model_name=catdog",
         f"--model_base_path={exported[2]}", "--port=0",
         f"--rest_api_port={free_ports(1)[0]}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    try:
        banner = process.stdout.readline()
        assert banner.startswith("serving catdog on gRPC 127.0.0.1:"), banner
        grpc_port = banner.split("127.0.0.1:")[1].split()[0]
        rest_url = banner.split("REST ")[1].strip()
        for server in (f"grpc://127.0.0.1:{grpc_port}", rest_url):
            result = run_catdog("client", f"--server={server}", "--model=catdog",
                                str(jpegs[0]), str(tmp_path / "missing.jpg"))
            assert result.returncode == 1
            path, label, probability = result.stdout.strip().split("\t")
            assert path == str(jpegs[0]) and label in CLASSES and 0.5 <= float(probability)
            assert "missing.jpg\terror: cannot read image" in result.stderr
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_refuses_a_base_path_without_versions(tmp_path):
    with pytest.raises(CatdogError) as refused:
        start_server(options=ServerOptions(model_base_path=str(tmp_path), port=0,
                                           rest_api_port=0))
    assert str(refused.value) == (
        f"--model_base_path={tmp_path}: {tmp_path} holds no loadable version (an "
        "integer-named folder with saved_model.pb)")


def test_serve_names_the_base_path_of_a_config_that_it_looked_at(tmp_path):
    """The shipped models.config names the container's path; started locally, the error says
    which path was looked at and which config is the local one."""
    config = Path(__file__).resolve().parents[2] / "serving" / "models.config"
    with pytest.raises(CatdogError) as refused:
        start_server(options=ServerOptions(model_config_file=str(config), port=0,
                                           rest_api_port=0,
                                           allow_version_labels_for_unavailable_models=True))
    line = str(refused.value)
    assert line.startswith(f"--model_config_file={config}: /models/catdog does not exist")
    assert "serving/models.local.config" in line and "\n" not in line


def test_grpc_over_a_unix_socket_with_channel_arguments(tfs_models, tmp_path):
    """testPredictUDS and testGoodGrpcChannelArgs (tensorflow_model_server_test.py): the same
    Predict over --grpc_socket_path, with --grpc_channel_arguments passed to the gRPC server."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from catdog.serving.server import start_server

    from tfserving_models import verify_predict

    socket_path = tmp_path / "tf-serving.sock"
    server = start_server(None, tfs_models / "half_plus_two", port=0, rest_api_port=None,
                          verify_graph_ops=False, grpc_socket_path=str(socket_path),
                          grpc_channel_arguments="grpc.max_connection_age_ms=2000,"
                                                 "grpc.so_reuseaddr=1")
    try:
        for target in (f"unix:{socket_path}", f"127.0.0.1:{server.grpc_port}"):
            stub = prediction_service_pb2_grpc.PredictionServiceStub(
                grpc.insecure_channel(target))
            verify_predict(stub, "default", 3.0)  # --model_name defaults to "default"
    finally:
        server.stop()


def test_version_prints_tf_servings_two_lines():
    result = run_catdog("serve", "--version")
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 2, result.stderr
    assert lines[0].startswith("TensorFlow ModelServer: ")
    assert lines[1].startswith("TensorFlow Library: 2.")


@pytest.mark.slow  # spawns the server
def test_tf_serving_test_harness_command_line_starts_the_server(tfs_models, tmp_path):
    """The exact command line tensorflow_model_server_test_base.py's RunServer builds (with
    --model_name/--model_base_path, monitoring, batching and a config poll period) starts the
    server, which then answers over TCP, the UNIX socket and REST."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from tfserving_models import rest_port_answers, verify_predict

    grpc_port, rest_port = free_ports(2)
    socket_path = tmp_path / "tf-serving.sock"
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, path: "/monitoring/metrics" }')
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 1000 }")
    command = [sys.executable, "-m", "catdog.serve", f"--port={grpc_port}",
               f"--rest_api_port={rest_port}", "--rest_api_timeout_in_ms=5000",
               f"--grpc_socket_path={socket_path}", "--model_name=default",
               f"--model_base_path={tfs_models / 'half_plus_two'}",
               f"--monitoring_config_file={monitoring}",
               "--model_config_file_poll_wait_seconds=1", "--enable_batching",
               f"--batching_parameters_file={batching}",
               "--grpc_channel_arguments=grpc.so_reuseaddr=1",
               "--noverify_graph_ops"]  # TF Serving's test models are not catdog's graphs
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        banner = process.stdout.readline()
        assert banner.startswith("serving default"), process.stderr.read()
        for target in (f"127.0.0.1:{grpc_port}", f"unix:{socket_path}"):
            verify_predict(prediction_service_pb2_grpc.PredictionServiceStub(
                grpc.insecure_channel(target)), "default", 3.0)
        assert rest_port_answers(rest_port, "/v1/models/default") == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize("taken", ["port", "rest_api_port"])
def test_a_taken_port_is_found_before_any_model_loads(exported, monkeypatch, taken):
    """Binding is cheap and loading is not: a port in use stops the start in one line naming
    it, before a version is loaded or warmed up."""
    import socket

    from catdog.serving import server as server_module

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded although a port is taken")

    monkeypatch.setattr(server_module, "ServerCore", must_not_load)
    with socket.create_server(("127.0.0.1", 0)) as occupied:
        port = occupied.getsockname()[1]
        ports = {"port": 0, "rest_api_port": 0, taken: port}
        with pytest.raises(CatdogError, match=rf"^--{taken}={port}: cannot listen on 127\.0\.0\.1"):
            start_server("catdog", exported[2], **ports)
