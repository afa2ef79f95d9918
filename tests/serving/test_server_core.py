"""catdog.serving.server_core: versions appear, swap and retire without failing a request; version
policies, labels and config reloads behave as TF Serving's (S tensorflow_model_server_test.py)."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import threading
import time
from pathlib import Path

import grpc
import keras
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from catdog import export
from catdog import model as model_lib
from catdog.serving.client import Client
from catdog.serving.options import ServerOptions
from catdog.serving.server import start_server
from catdog.serving.status import ServingError

from conftest import CLASSES, TINY_PNG
from tfserving_models import TWO_VERSIONS, rest, verify_predict


def test_a_new_version_is_picked_up(exported, tmp_path, jpegs):
    model, _, _ = exported
    base = tmp_path / "catdog"
    export.export_saved_model(model, CLASSES, base)
    server = start_server("catdog", base, port=0, rest_api_port=None,
                          file_system_poll_wait_seconds=60)
    try:
        client = Client(f"grpc://127.0.0.1:{server.grpc_port}", "catdog")
        assert client.status()[0]["version"] == 1
        export.export_saved_model(model, CLASSES, base)
        server.core.refresh()  # what the poller does every --file_system_poll_wait_seconds
        assert client.status()[0]["version"] == 2
        assert client.predict(jpegs[:1])[0].label in CLASSES
    finally:
        server.stop()


def test_shipped_models_config_serves_its_labels(exported, tmp_path, jpegs):
    """serving/models.config as shipped (its base path moved here): latest 2 versions,
    labels stable → 1 and canary → 2."""
    model = exported[0]
    base = tmp_path / "catdog"
    for _ in range(2):
        export.export_saved_model(model, CLASSES, base)
    shipped = (Path(__file__).resolve().parents[2] / "serving" / "models.config").read_text()
    config = tmp_path / "models.config"
    config.write_text(shipped.replace('"/models/catdog"', f'"{base}"'))
    server = start_server(options=ServerOptions(
        port=0, rest_api_port=0, model_config_file=str(config)))
    try:
        url = f"http://127.0.0.1:{server.rest_port}"
        assert [s["version"] for s in Client(url).status()] == [1, 2]
        for label, version in (("stable", 1), ("canary", 2)):
            code, body = rest(server, "GET", f"/v1/models/catdog/labels/{label}")
            assert body["model_version_status"][0]["version"] == str(version)
            code, answer = rest(server, "POST", f"/v1/models/catdog/labels/{label}:predict",
                                json.dumps({"instances": [
                                    {"b64": base64.b64encode(jpegs[0].read_bytes()).decode()}]}))
            assert code == 200 and answer["predictions"][0]["classes"] in CLASSES
    finally:
        server.stop()


@pytest.fixture(scope="module")
def small_model():
    keras.utils.set_random_seed(1)
    return model_lib.build_classifier(len(CLASSES), 32, "none")


def _served_versions(server) -> list[int]:
    return sorted(server.core.manager("catdog").loaded_versions())


def test_a_half_copied_version_is_served_once_complete(small_model, tmp_path):
    import shutil


    base = tmp_path / "catdog"
    first = export.export_saved_model(small_model, CLASSES, base)
    server = start_server("catdog", base, port=0, rest_api_port=None,
                          file_system_poll_wait_seconds=3600)
    try:
        partial = base / "2"
        shutil.copytree(first / "variables", partial / "variables")  # saved_model.pb not yet
        server.core.refresh()
        assert _served_versions(server) == [1]
        shutil.copy(first / "saved_model.pb", partial / "saved_model.pb")
        shutil.copytree(first / "assets", partial / "assets")
        shutil.copytree(first / "assets.extra", partial / "assets.extra")
        server.core.refresh()  # TF Serving retries a failed load on later polls
        assert _served_versions(server) == [2]
        shutil.rmtree(partial)  # the newest disappears: the newest that remains is served
        server.core.refresh()
        assert _served_versions(server) == [1]
    finally:
        server.stop()


@pytest.mark.slow
def test_version_swaps_under_load_fail_no_request(small_model, tmp_path):
    """6 clients (gRPC and REST) while two new versions replace the served one
    (--keep_versions=1 deletes the old folder): zero failed requests."""

    base = tmp_path / "catdog"
    export.export_saved_model(small_model, CLASSES, base)
    server = start_server("catdog", base, port=0, rest_api_port=0,
                          file_system_poll_wait_seconds=0.2)
    stop, failures, counts = threading.Event(), [], []

    def client_loop(url):
        client, done = Client(url, timeout=60, retries=0), 0
        while not stop.is_set():
            try:
                client.predict([TINY_PNG])
                done += 1
            except ServingError as error:
                failures.append(error)
        counts.append(done)

    urls = [f"grpc://127.0.0.1:{server.grpc_port}", f"http://127.0.0.1:{server.rest_port}"] * 3
    with concurrent.futures.ThreadPoolExecutor(len(urls)) as pool:
        for url in urls:
            pool.submit(client_loop, url)
        try:
            for version in (2, 3):
                export.export_saved_model(small_model, CLASSES, base, keep_versions=1)
                deadline = time.monotonic() + 60
                while _served_versions(server) != [version]:
                    assert time.monotonic() < deadline, _served_versions(server)
                    time.sleep(0.05)
        finally:
            stop.set()
    server.stop()
    assert not failures, failures[:3]
    assert sum(counts) > 0


def test_a_retired_version_runs_the_requests_that_found_it(small_model, tmp_path):
    """A request holding version 1 when version 2 replaces it still runs on version 1; the old
    version is closed only after that request ends."""
    import numpy as np
    from tensorflow_serving.apis import model_pb2


    base = tmp_path / "catdog"
    export.export_saved_model(small_model, CLASSES, base)
    server = start_server("catdog", base, port=0, rest_api_port=None,
                          file_system_poll_wait_seconds=3600)
    try:
        with server.core.use(model_pb2.ModelSpec(name="catdog")) as old:
            export.export_saved_model(small_model, CLASSES, base, keep_versions=1)
            server.core.refresh()
            assert _served_versions(server) == [2] and old.version == 1
            outputs = old.predict("serving_default",
                                  {"image_bytes": np.array([TINY_PNG], object)})
            assert outputs["probabilities"].shape == (1, 2)
    finally:
        server.stop()


def test_version_label_over_grpc(tfs_stubs):
    """H Predict via a version label, over gRPC's model_spec.version_label."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.version_label = TWO_VERSIONS, "Version_Label"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0]]))
    result = tfs_stubs[0].Predict(request, 20)
    assert result.model_spec.version.value == 123 and list(result.outputs["y"].float_val) == [2.5]


def test_unknown_version_label_is_invalid_argument_over_grpc(tfs_stubs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.version_label = TWO_VERSIONS, "nope"
    with pytest.raises(grpc.RpcError) as error:
        tfs_stubs[0].Predict(request, 20)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_model_config_reload(tfs_models, tmp_path):
    """S testModelConfigReload: a rewritten --model_config_file is applied on the next poll."""
    config = tmp_path / "model_config.txt"
    base = 'model_config_list: {{ config: {{ name: "{name}", base_path: "{path}", ' \
           'model_platform: "tensorflow" }} }}'
    config.write_text(base.format(name="half_plus_two", path=tfs_models / "half_plus_two"))
    server = start_server(options=ServerOptions(
        port=0, rest_api_port=None, model_config_file=str(config),
        model_config_file_poll_wait_seconds=0.1))
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
        verify_predict(stub, "half_plus_two", 3.0, specify_output=False)
        new = tmp_path / "model_config.new"  # replaced whole, so no poll reads half a file
        new.write_text(base.format(name="half_plus_three", path=tfs_models / "half_plus_three"))
        new.replace(config)
        deadline = time.monotonic() + 30
        while {m.name for m in server.core.models()} != {"half_plus_three"}:
            assert time.monotonic() < deadline, "the new config was never applied"
            time.sleep(0.05)
        verify_predict(stub, "half_plus_three", 4.0, specify_output=False)
    finally:
        server.stop()
