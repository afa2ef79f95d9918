"""catdog.serving.config_files and serving/: the shipped TF Serving config files parse as the protos
TF Serving reads, and a bad one is refused in TF Serving's words."""

from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from catdog.errors import CatdogError
from catdog.serving.options import ServerOptions
from catdog.serving.server import start_server

SERVING = Path(__file__).resolve().parents[2] / "serving"


def test_models_config_is_a_model_server_config_for_catdog():
    config = text_format.Parse((SERVING / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (
        "catdog", "/models/catdog", "tensorflow")
    assert model.model_version_policy.latest.num_versions == 2
    assert dict(model.version_labels) == {"stable": 1}  # what one training run publishes


def test_the_local_models_config_differs_only_in_its_base_path():
    def parsed(name: str) -> model_server_config_pb2.ModelServerConfig:
        return text_format.Parse((SERVING / name).read_text(),
                                 model_server_config_pb2.ModelServerConfig())

    local, container = parsed("models.local.config"), parsed("models.config")
    assert local.model_config_list.config[0].base_path == "export/catdog"
    local.model_config_list.config[0].base_path = "/models/catdog"
    assert local == container


def test_compose_mounts_the_configs_it_passes_to_the_server():
    compose = (SERVING / "docker-compose.yml").read_text()
    for name in ("models.config", "batching.config", "monitoring.config"):
        assert f"./{name}:/config/{name}" in compose
        assert f"=/config/{name}" in compose
    assert '"127.0.0.1:8500:8500"' in compose and '"127.0.0.1:8501:8501"' in compose
    assert "tensorflow/serving:" in compose and "-gpu" in compose


def test_monitoring_and_batching_configs_name_their_fields():
    assert 'path: "/monitoring/prometheus/metrics"' in (SERVING / "monitoring.config").read_text()
    batching = (SERVING / "batching.config").read_text()
    for field in ("max_batch_size", "batch_timeout_micros", "num_batch_threads"):
        assert f"{field} {{ value:" in batching


def test_bad_model_config_is_one_line(tmp_path):
    """S testBadModelConfig: TF Serving's words for a config it cannot parse."""
    bad = tmp_path / "bad.config"
    bad.write_text("improperly formatted file")
    with pytest.raises(CatdogError, match="Error parsing text-format "
                                          "tensorflow.serving.ModelServerConfig"):
        start_server(options=ServerOptions(port=0, rest_api_port=None,
                                           model_config_file=str(bad)))
