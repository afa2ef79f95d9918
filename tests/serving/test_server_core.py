"""catdog.serving.server_core: versions appear, swap and retire without failing a request; version
policies, labels and config reloads behave as TF Serving's (S tensorflow_model_server_test.py)."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import functools
import json
import shutil
import threading
import time
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from catdog.errors import CatdogError
from catdog.serving import server as server_lib
from catdog.serving.client import Client
from catdog.serving.options import ServerOptions
from catdog.serving.status import ServingError

from conftest import CLASSES, TINY_PNG, copy_version, garble_warmup
from tfserving_models import TWO_VERSIONS, rest, verify_predict

# Warm-up replays six requests at every load, about a second each time here. These tests are
# about versions, labels and reloads, so their servers load without it; the one below about
# warm-up turns it on.
start_server = functools.partial(server_lib.start_server, enable_model_warmup=False)


def test_a_new_version_is_picked_up(add_version, tmp_path, jpegs):
    base = tmp_path / "catdog"
    add_version(base)
    server = start_server("catdog", base, port=0, rest_api_port=None,
                          file_system_poll_wait_seconds=60)
    try:
        client = Client(f"grpc://127.0.0.1:{server.grpc_port}", "catdog")
        assert client.status()[0]["version"] == 1
        add_version(base)
        server.core.refresh()  # what the poller does every --file_system_poll_wait_seconds
        assert client.status()[0]["version"] == 2
        assert client.predict(jpegs[:1])[0].label in CLASSES
    finally:
        server.stop()


def test_shipped_models_config_serves_its_label_after_one_run(add_version, tmp_path, jpegs):
    """serving/models.config as shipped (its base path moved here) over what one training run
    publishes, version 1, with the flag docker-compose.yml passes: it answers on its `stable`
    label. Without the flag the first config's labels stop the start even with version 1 on
    disk, as in TF Serving (server_core.cc runs UpdateModelVersionLabelMap before
    AddModelsViaModelConfigList loads anything). With the canary label its comment describes
    and a second version, status lists both newest first and a label does not narrow it
    (get_model_status_impl.cc)."""
    base = tmp_path / "catdog"
    add_version(base)
    shipped = (Path(__file__).resolve().parents[2] / "serving" / "models.config").read_text()
    config = tmp_path / "models.config"
    config.write_text(shipped.replace('"/models/catdog"', f'"{base}"'))
    with pytest.raises(CatdogError, match="Request to assign label to version 1 of "
                                          "model catdog, which is not currently available"):
        start_server(options=ServerOptions(port=0, rest_api_port=None,
                                           model_config_file=str(config)))
    as_compose_runs_it = ServerOptions(port=0, rest_api_port=0, model_config_file=str(config),
                                       allow_version_labels_for_unavailable_models=True)
    server = start_server(options=as_compose_runs_it)
    try:
        assert server.core.manager("catdog").labels == {"stable": 1}
        code, answer = rest(server, "POST", "/v1/models/catdog/labels/stable:predict",
                            json.dumps({"instances": [
                                {"b64": base64.b64encode(jpegs[0].read_bytes()).decode()}]}))
        assert code == 200 and answer["predictions"][0]["classes"] in CLASSES
    finally:
        server.stop()
    commented_out = ("# version_labels", "#   key", "#   value", "# }")  # the canary block
    config.write_text("\n".join(
        line.replace("# ", "", 1) if line.strip().startswith(commented_out) else line
        for line in config.read_text().splitlines()))
    add_version(base)
    server = start_server(options=as_compose_runs_it)
    try:
        url = f"http://127.0.0.1:{server.rest_port}"
        assert [s["version"] for s in Client(url).status()] == [2, 1]
        assert server.core.manager("catdog").labels == {"stable": 1, "canary": 2}
        for label in ("stable", "canary"):
            code, body = rest(server, "GET", f"/v1/models/catdog/labels/{label}")
            assert [s["version"] for s in body["model_version_status"]] == ["2", "1"]
    finally:
        server.stop()


@pytest.fixture
def add_version(exported):
    """Adds a version to a base path as an export does (conftest.copy_version)."""
    return functools.partial(copy_version, exported)


def _served(server, name: str = "catdog") -> list[int]:
    return sorted(server.core.manager(name).loaded_versions())


def test_a_version_whose_warm_up_fails_is_not_served_unless_warm_up_is_off(add_version, tmp_path):
    """TF Serving's --enable_model_warmup: on by default, a version's warm-up requests run
    before it serves, and one that fails fails the load; off, they are not run."""
    base = tmp_path / "catdog"
    garble_warmup(add_version(base))
    with pytest.raises(CatdogError, match=r"^--model_base_path=.*no_such_signature"):
        server_lib.start_server("catdog", base, port=0, rest_api_port=None)
    server = start_server("catdog", base, port=0, rest_api_port=None)
    try:
        assert _served(server) == [1]
    finally:
        server.stop()


def test_a_half_copied_version_is_served_once_complete(add_version, tmp_path):
    base = tmp_path / "catdog"
    first = add_version(base)
    server = start_server("catdog", base, port=0, rest_api_port=None,
                          file_system_poll_wait_seconds=3600)
    try:
        partial = base / "2"
        shutil.copytree(first / "variables", partial / "variables")  # saved_model.pb not yet
        server.core.refresh()
        assert _served(server) == [1]
        shutil.copy(first / "saved_model.pb", partial / "saved_model.pb")
        shutil.copytree(first / "assets", partial / "assets")
        shutil.copytree(first / "assets.extra", partial / "assets.extra")
        server.core.refresh()  # TF Serving retries a failed load on later polls
        assert _served(server) == [2]
        shutil.rmtree(partial)  # the newest disappears: the newest that remains is served
        server.core.refresh()
        assert _served(server) == [1]
    finally:
        server.stop()


@pytest.mark.slow
def test_version_swaps_under_load_fail_no_request(add_version, tmp_path):
    """6 clients (gRPC and REST) while two new versions replace the served one
    (--keep_versions=1 deletes the old folder): zero failed requests."""

    base = tmp_path / "catdog"
    add_version(base)
    server = start_server("catdog", base, port=0, rest_api_port=0,
                          file_system_poll_wait_seconds=0.2)
    try:
        with _under_load(server, pairs=3) as (failures, counts):
            for version in (2, 3):
                add_version(base, keep_versions=1)
                deadline = time.monotonic() + 60
                while _served(server) != [version]:
                    assert time.monotonic() < deadline, _served(server)
                    time.sleep(0.05)
    finally:
        server.stop()
    assert not failures, failures[:3]
    assert sum(counts) > 0


def test_a_retired_version_runs_the_requests_that_found_it(add_version, tmp_path):
    """A request holding version 1 when version 2 replaces it still runs on version 1; the old
    version is closed only after that request ends."""
    import numpy as np
    from tensorflow_serving.apis import model_pb2

    base = tmp_path / "catdog"
    add_version(base)
    server = start_server("catdog", base, port=0, rest_api_port=None,
                          file_system_poll_wait_seconds=3600)
    try:
        with server.core.use(model_pb2.ModelSpec(name="catdog")) as old:
            add_version(base, keep_versions=1)
            server.core.refresh()
            assert _served(server) == [2] and old.version == 1
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
        model_config_file_poll_wait_seconds=0.1, verify_graph_ops=False))
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


# --- model status, from the state monitor (get_model_status_impl_test.cc,
# servable_state_monitor_test.cc) ------------------------------------------------------------------

def _status(server, name="catdog", **spec) -> list[tuple[int, str, str]]:
    """(version, state, error message) of GetModelStatus over gRPC."""
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    stub = model_service_pb2_grpc.ModelServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    if "label" in spec:
        request.model_spec.version_label = spec["label"]
    response = stub.GetModelStatus(request, 30)
    return [(s.version, get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
             s.status.error_message) for s in response.model_version_status]


def _status_error(server, **spec) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        _status(server, **spec)
    return error.value.code(), error.value.details()


def test_status_lists_versions_newest_first_and_keeps_unloaded_ones_as_end(add_version,
                                                                           tmp_path):
    """VersionMapDescendingOrder and UpdatingStates (servable_state_monitor_test.cc), through
    AllVersionsSuccess and SingleVersionSuccess (get_model_status_impl_test.cc): a version the
    policy retired stays in the list, END with an OK status."""
    base = tmp_path / "catdog"
    add_version(base)
    server = start_server("catdog", base, port=0, rest_api_port=None,
                          file_system_poll_wait_seconds=3600)
    try:
        add_version(base)
        server.core.refresh()
        deadline = time.monotonic() + 30
        while _status(server) != [(2, "AVAILABLE", ""), (1, "END", "")]:
            assert time.monotonic() < deadline, _status(server)
            time.sleep(0.05)
        assert _status(server, version=1) == [(1, "END", "")]
        assert _status(server, label="anything") == _status(server)  # a label does not narrow
    finally:
        server.stop()


def test_status_of_an_unknown_model_or_version_is_not_found(tfs_server):
    """InvalidModelNameFailure, InvalidModelVersionFailure (get_model_status_impl_test.cc)."""
    assert _status_error(tfs_server, name="nope") == (
        grpc.StatusCode.NOT_FOUND, "Could not find any versions of model nope")
    assert _status_error(tfs_server, name="default", version=999) == (
        grpc.StatusCode.NOT_FOUND, "Could not find version 999 of model default")


def _list_config(*models: tuple[str, Path], labels: str = "", policy: str = "") -> str:
    return "model_config_list {" + "".join(
        f' config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" '
        f"{policy} {labels} }}" for name, path in models) + " }"


def _config(text: str):
    from google.protobuf import text_format

    from catdog.serving.config_files import ModelServerConfig

    return text_format.Parse(text, ModelServerConfig())


@pytest.fixture
def two_version_base(add_version, tmp_path) -> Path:
    base = tmp_path / "catdog"
    for _ in range(2):
        add_version(base)
    return base


def test_a_model_dropped_by_a_reload_still_answers_its_status_with_end(two_version_base,
                                                                       tmp_path):
    other = tmp_path / "other"
    shutil.copytree(two_version_base / "2", other / "7")
    server = start_server(options=ServerOptions(port=0, rest_api_port=None,
                                                model_config_file=_write(tmp_path, _list_config(
                                                    ("catdog", two_version_base),
                                                    ("other", other)))))
    try:
        server.core.reload_config(_config(_list_config(("catdog", two_version_base))))
        deadline = time.monotonic() + 30
        while _status(server, name="other") != [(7, "END", "")]:
            assert time.monotonic() < deadline, _status(server, name="other")
            time.sleep(0.05)
    finally:
        server.stop()


def _write(folder: Path, text: str) -> str:
    path = folder / "models.config"
    path.write_text(text)
    return str(path)


def test_reloads_tf_serving_refuses_leave_the_config_in_force(two_version_base, tmp_path):
    """DuplicateModelNameInConfig, AssignLabelToUnavailableVersion,
    IllegalReconfigurationToCustomConfig (server_core_test.cc), through gRPC's
    HandleReloadConfigRequest (model_service_impl.cc)."""
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    good = _list_config(("catdog", two_version_base), policy="model_version_policy { all {} }")
    server = start_server(options=ServerOptions(port=0, rest_api_port=None,
                                                model_config_file=_write(tmp_path, good)))
    stub = model_service_pb2_grpc.ModelServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
    cases = {
        "model listed twice": (_config(_list_config(("catdog", two_version_base),
                                                    ("catdog", two_version_base))),
                               grpc.StatusCode.INVALID_ARGUMENT,
                               "Illegal to list model catdog multiple times in config list"),
        "label on a missing version": (
            _config(_list_config(("catdog", two_version_base),
                                 labels='version_labels { key: "nice try" value: 42 }')),
            grpc.StatusCode.FAILED_PRECONDITION, "Request to assign label to version 42 of "
            "model catdog, which is not currently available for inference"),
        "no model list": (_config(""), grpc.StatusCode.INVALID_ARGUMENT,
                          "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                          "Only ModelConfigList is currently supported"),
    }
    try:
        for case, (config, code, message) in cases.items():
            with pytest.raises(grpc.RpcError) as error:
                stub.HandleReloadConfigRequest(
                    model_management_pb2.ReloadConfigRequest(config=config), 30)
            assert (error.value.code(), error.value.details()) == (code, message), case
            assert sorted(server.core.manager("catdog").loaded_versions()) == [1, 2], case
        labelled = _config(_list_config(("catdog", two_version_base),
                                        policy="model_version_policy { all {} }",
                                        labels='version_labels { key: "stable" value: 1 }'))
        stub.HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=labelled), 30)
        assert server.core.manager("catdog").labels == {"stable": 1}
    finally:
        server.stop()


def test_labels_for_unavailable_versions_follow_the_flag(two_version_base, tmp_path):
    """AssignLabelToUnavailableVersionAllowed and
    AssignExistingLabelToUnavailableVersionDisallowed (server_core_test.cc)."""
    policy = "model_version_policy { all {} }"
    server = start_server(options=ServerOptions(
        port=0, rest_api_port=None, allow_version_labels_for_unavailable_models=True,
        model_config_file=_write(tmp_path, _list_config(("catdog", two_version_base),
                                                        policy=policy))))
    try:
        def labelled(labels):
            return _config(_list_config(("catdog", two_version_base), policy=policy,
                                        labels=labels))

        server.core.reload_config(labelled('version_labels { key: "A" value: 1 } '
                                           'version_labels { key: "B" value: 2 } '
                                           'version_labels { key: "nice try" value: 42 }'))
        with pytest.raises(ServingError, match="not currently available for inference"):
            server.core.reload_config(labelled('version_labels { key: "A" value: 42 }'))
        assert server.core.manager("catdog").labels == {"A": 1, "B": 2, "nice try": 42}
    finally:
        server.stop()


def test_a_bad_config_file_is_logged_once_and_the_previous_config_serves(two_version_base,
                                                                         tmp_path, caplog):
    """An empty, a malformed and a duplicate-model rewrite of --model_config_file: each is one
    logged error; the models of the last good config go on serving; a good rewrite applies."""
    config = Path(_write(tmp_path, _list_config(("catdog", two_version_base))))
    server = start_server(options=ServerOptions(
        port=0, rest_api_port=None, model_config_file=str(config),
        model_config_file_poll_wait_seconds=0.05))
    try:
        for bad in ("", "model_config_list { config { nonsense: 1 } }",
                    _list_config(("catdog", two_version_base), ("catdog", two_version_base))):
            caplog.clear()
            (tmp_path / "new").write_text(bad)
            (tmp_path / "new").replace(config)
            deadline = time.monotonic() + 30
            while not [r for r in caplog.records if "config-poller failed" in r.getMessage()]:
                assert time.monotonic() < deadline, "the bad config was never read"
                time.sleep(0.05)
            time.sleep(0.3)  # several more polls: still one line
            assert len([r for r in caplog.records
                        if "config-poller failed" in r.getMessage()]) == 1, bad
            assert _served(server, "catdog") == [2]
        (tmp_path / "new").write_text(_list_config(("renamed", two_version_base)))
        (tmp_path / "new").replace(config)
        deadline = time.monotonic() + 30
        while {m.name for m in server.core.models()} != {"renamed"}:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        server.stop()


def test_a_base_path_that_vanishes_or_holds_a_corrupt_version_keeps_serving(two_version_base,
                                                                           caplog):
    """FileSystemStoragePathSource emits nothing for a missing base path (logged once, until it
    is back), and the AvailabilityPreservingPolicy keeps the served version while the only
    wanted one fails to load; an emptied base path is an empty version list, which unloads."""
    base = two_version_base
    server = start_server("catdog", base, port=0, rest_api_port=None,
                          file_system_poll_wait_seconds=3600)
    try:
        aside = base.with_name("aside")
        base.rename(aside)
        for _ in range(3):
            server.core.refresh()
        assert _served(server, "catdog") == [2]
        assert len([r for r in caplog.records
                    if "Could not find base path" in r.getMessage()]) == 1
        aside.rename(base)
        (base / "3").mkdir()
        (base / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
        shutil.rmtree(base / "2")
        server.core.refresh()
        assert _served(server, "catdog") == [2]  # its folder is gone, version 3 cannot load
        shutil.rmtree(base / "3")
        shutil.rmtree(base / "1")
        server.core.refresh()
        assert _served(server, "catdog") == []
    finally:
        server.stop()


@contextlib.contextmanager
def _under_load(server, pairs: int):
    """`pairs` gRPC and `pairs` REST clients predicting on `server` until the block ends;
    yields (failures, counts): every failed request, and each client's answered count."""
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

    urls = [f"grpc://127.0.0.1:{server.grpc_port}",
            f"http://127.0.0.1:{server.rest_port}"] * pairs
    with concurrent.futures.ThreadPoolExecutor(len(urls)) as pool:
        for url in urls:
            pool.submit(client_loop, url)
        try:
            yield failures, counts
        finally:
            stop.set()


@pytest.mark.slow
def test_a_base_folder_renamed_away_for_3_s_under_load_fails_no_request(two_version_base):
    """4 clients (gRPC and REST) while the base folder is renamed away for 3 s and back, with
    polls every 0.2 s: zero failed requests, and version 2 still served after."""
    server = start_server("catdog", two_version_base, port=0, rest_api_port=0,
                          file_system_poll_wait_seconds=0.2)
    try:
        with _under_load(server, pairs=2) as (failures, counts):
            aside = two_version_base.with_name("aside")
            two_version_base.rename(aside)
            time.sleep(3)  # the blink being tested, not a measurement
            aside.rename(two_version_base)
            time.sleep(1)
        served = _served(server, "catdog")
    finally:
        server.stop()
    assert not failures, failures[:3]
    assert sum(counts) > 0 and served == [2]


@pytest.mark.slow
def test_a_label_moved_by_a_reload_under_load_fails_no_request(two_version_base, tmp_path):
    """Clients on label "stable" through TF Serving's rollout and back: load version 2 beside
    1, move the label, drop 1; then the reverse. A label moves only onto an AVAILABLE version
    and a version unloads only after the new config (and its labels) serve, so no request on
    the label fails."""
    def config(versions, label):
        specific = " ".join(f"versions: {v}" for v in versions)
        return _list_config(("catdog", two_version_base),
                            policy=f"model_version_policy {{ specific {{ {specific} }} }}",
                            labels=f'version_labels {{ key: "stable" value: {label} }}')

    steps = [((1, 2), 1), ((1, 2), 2), ((2,), 2), ((1, 2), 2), ((1, 2), 1), ((1,), 1)]
    server = start_server(options=ServerOptions(
        port=0, rest_api_port=None, allow_version_labels_for_unavailable_models=True,
        model_config_file=_write(tmp_path, config((1,), 1))))
    stop, failures, done = threading.Event(), [], []

    def on_label():
        from tensorflow_serving.apis import model_pb2

        while not stop.is_set():
            try:
                with server.core.use(model_pb2.ModelSpec(name="catdog",
                                                         version_label="stable")):
                    done.append(1)
            except ServingError as error:
                failures.append(error)

    threads = [threading.Thread(target=on_label) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for versions, label in steps:
            server.core.reload_config(_config(config(versions, label)))
            assert _served(server, "catdog") == list(versions)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        server.stop()
    assert not failures, failures[:3]
    assert done


def _reload_over_grpc(server, config_text: str):
    """HandleReloadConfigRequest as any gRPC client sends it: None, or the RpcError."""
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    stub = model_service_pb2_grpc.ModelServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
    try:
        stub.HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=_config(config_text)), 30)
    except grpc.RpcError as error:
        return error
    return None


def test_a_reload_cannot_point_a_model_past_the_gate(add_version, tmp_path, jpegs):
    """A reload RPC naming the gate's candidate folder (export/candidates/<name>, beside the
    export lock) is refused with INVALID_ARGUMENT, as is one outside --model_base_path_root;
    the published version keeps serving."""
    export = tmp_path / "export"
    add_version(export / "catdog")
    add_version(export / "candidates" / "catdog")
    (export / ".catdog.publish.lock").touch()  # what the gate's writers hold
    elsewhere = tmp_path / "elsewhere"
    add_version(elsewhere)
    server = start_server("catdog", export / "catdog", port=0, rest_api_port=None,
                          model_base_path_root=str(export))
    try:
        refused = _reload_over_grpc(server, _list_config(("catdog",
                                                          export / "candidates" / "catdog")))
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.details() == (
            f"base_path {export}/candidates/catdog of model catdog lies in the publish gate's "
            f"candidate folder {export}/candidates: only versions the gate published are served")
        outside = _reload_over_grpc(server, _list_config(("catdog", elsewhere)))
        assert (outside.code(), outside.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT, f"base_path {elsewhere} of model catdog is outside "
                                              f"--model_base_path_root={export}")
        assert server.core.manager("catdog").config.base_path == str(export / "catdog")
        client = Client(f"grpc://127.0.0.1:{server.grpc_port}", "catdog")
        assert client.predict(jpegs[:1])[0].label in CLASSES
    finally:
        server.stop()


@pytest.mark.parametrize("where", ["missing", "broken"])
def test_a_reload_to_a_missing_or_broken_base_path_keeps_serving(add_version, tmp_path, jpegs,
                                                                where):
    """TF Serving's FileSystemStoragePathSource emits nothing for a base path it cannot find,
    so the loaded version serves on (the poll error logged and, here, told in its status); a
    version that does not load is a failed load beside the one serving. Once the new path holds
    a loadable version, it serves."""
    base = tmp_path / "catdog"
    add_version(base)
    moved = tmp_path / "moved"
    if where == "broken":
        (moved / "1").mkdir(parents=True)
        (moved / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    server = start_server("catdog", base, port=0, rest_api_port=None,
                          file_system_poll_wait_seconds=3600)
    client = Client(f"grpc://127.0.0.1:{server.grpc_port}", "catdog")
    try:
        assert _reload_over_grpc(server, _list_config(("catdog", moved))) is None
        server.core.refresh()
        assert client.predict(jpegs[:2])[0].label in CLASSES
        [(version, state, note)] = _status(server)
        assert (version, state) == (1, "AVAILABLE")
        if where == "missing":
            assert note == (f"Could not find base path {moved} for servable catdog; serving "
                            "the loaded versions")
        else:
            assert note.startswith(f"{moved}/1 did not load (Cannot parse file ")
            assert note.endswith("; serving the version loaded before")
        shutil.rmtree(moved, ignore_errors=True)
        add_version(moved)
        add_version(moved)  # version 2 of the new path
        server.core.refresh()
        assert _served(server) == [2] and _status(server)[0][:2] == (2, "AVAILABLE")
        assert client.predict(jpegs[:1])[0].label in CLASSES
    finally:
        server.stop()


def test_stopping_waits_for_unloads_under_way(add_version, tmp_path):
    """A version unloading in the background when the server stops is closed before `stop`
    returns, so the process never exits while TensorFlow closes its session (an abort)."""
    from tensorflow_serving.apis import get_model_status_pb2, model_pb2

    base = tmp_path / "catdog"
    add_version(base)
    server = start_server("catdog", base, port=0, rest_api_port=None,
                          file_system_poll_wait_seconds=3600)
    first = server.core.manager("catdog").servable(model_pb2.ModelSpec(name="catdog"))
    add_version(base)
    server.core.refresh()  # version 2 serves; version 1 unloads on a thread of its own
    server.stop()
    assert first.session is None  # closed, not still closing
    end = get_model_status_pb2.ModelVersionStatus.END
    assert {s.version: s.state for s in server.core.monitor.statuses("catdog")} == {1: end,
                                                                                   2: end}


def test_a_request_for_a_model_not_served_is_logged_once_with_the_served_names(add_version,
                                                                               tmp_path, caplog):
    base = tmp_path / "default"
    add_version(base)
    server = start_server(None, base, port=0, rest_api_port=None)  # TF Serving's "default"
    caplog.set_level("WARNING", logger="absl")
    try:
        for _ in range(3):
            with pytest.raises(ServingError, match=r"Servable not found for request: "
                                                   r"Latest\(catdog\)$"):
                server.core.manager("catdog")
        told = [r.getMessage() for r in caplog.records if "does not serve" in r.getMessage()]
        assert told == ["a request named model 'catdog', which this server does not serve (it "
                        "serves 'default'; --model_name or the config names them)"]
    finally:
        server.stop()


def test_the_log_says_which_run_and_epoch_each_served_version_came_from(add_version, tmp_path,
                                                                       caplog):
    from catdog import contract

    base = tmp_path / "catdog"
    version = add_version(base)
    (version / contract.SOURCE_FILE).write_text(json.dumps(
        {"run_dir": "/runs/best", "epoch": 12, "finished_epochs": 12}))
    caplog.set_level("INFO", logger="absl")
    server = start_server("catdog", base, port=0, rest_api_port=None)
    server.stop()
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("serving ")]
    assert line.endswith("; trained by /runs/best, epoch 12)")
