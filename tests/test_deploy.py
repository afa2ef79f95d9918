"""deploy/: every Kubernetes manifest validates against the Kubernetes schemas offline
(kubernetes-validate, strict: no unknown fields), and its ports, paths, names and flags agree
with serving/ and with catdog. No cluster runs them here."""

import os
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from absl import flags

from catdog import flags as catdog_flags

ROOT = Path(__file__).resolve().parents[1]
# The oldest Kubernetes release still in common use, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# Custom resources have no schema in Kubernetes itself: their pod templates are checked instead.
POD_TEMPLATES_OF = {"TFJob": lambda doc: [replica["template"] for replica in
                                          doc["spec"]["tfReplicaSpecs"].values()]}


def documents() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in sorted((ROOT / "deploy").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(kind: str, name: str = "") -> dict:
    (doc,) = [doc for _, doc in documents()
              if doc["kind"] == kind and doc["metadata"]["name"].startswith(name)]
    return doc


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(version):
    checked = 0
    for _name, doc in documents():
        if doc["kind"] in POD_TEMPLATES_OF:
            for template in POD_TEMPLATES_OF[doc["kind"]](doc):
                kubernetes_validate.validate(
                    {"apiVersion": "v1", "kind": "PodTemplate",
                     "metadata": {"name": doc["metadata"]["name"]}, "template": template},
                    version, strict=True)
        else:
            kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 9


def test_an_invalid_manifest_is_caught():
    """The validator is strict: a misspelt field fails (so the test above can fail)."""
    deployment = find("Deployment", "catdog-serving")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_config_map_holds_servings_config_files_verbatim():
    data = find("ConfigMap")["data"]
    for name in ("models.config", "monitoring.config", "batching.config"):
        assert data[name] == (ROOT / "serving" / name).read_text(), name


def serving_container() -> dict:
    (container,) = find("Deployment", "catdog-serving")["spec"]["template"]["spec"]["containers"]
    return container


def test_tf_serving_runs_as_docker_compose_runs_it():
    compose = yaml.safe_load((ROOT / "serving" / "docker-compose.yml").read_text())
    service = compose["services"]["serving"]
    container = serving_container()
    assert container["image"] == service["image"]
    assert container["args"] == service["command"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    flags_given = dict(arg.lstrip("-").split("=", 1) for arg in container["args"])
    assert ports == {"grpc": int(flags_given["port"]), "http": int(flags_given["rest_api_port"])}
    assert [f"127.0.0.1:{p}:{p}" for p in ports.values()] == service["ports"]  # loopback only


def test_mounts_match_the_paths_the_configs_name():
    container = serving_container()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    flags_given = dict(arg.lstrip("-").split("=", 1) for arg in container["args"])
    config_files = set(find("ConfigMap")["data"])
    for flag in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
        folder, name = os.path.split(flags_given[flag])
        assert folder == mounts["config"] and name in config_files, flag
    base_paths = re.findall(r'base_path: "([^"]+)"', find("ConfigMap")["data"]["models.config"])
    assert base_paths == [mounts["models"]]  # the published base path alone, not candidates/
    (models,) = [m for m in container["volumeMounts"] if m["name"] == "models"]
    assert models["readOnly"] and models["subPath"] == os.path.basename(base_paths[0])


def test_compose_mounts_only_the_published_base_path_read_only():
    compose = yaml.safe_load((ROOT / "serving" / "docker-compose.yml").read_text())
    base_paths = re.findall(r'base_path: "([^"]+)"', (ROOT / "serving" / "models.config")
                            .read_text())
    mounts = [v for v in compose["services"]["serving"]["volumes"] if v.startswith("../export")]
    assert mounts == [f"../export/{os.path.basename(p)}:{p}:ro" for p in base_paths]


def test_probes_ask_the_model_status_route_of_the_served_model():
    container = serving_container()
    model = re.search(r'name: "([^"]+)"', find("ConfigMap")["data"]["models.config"]).group(1)
    route = f"/v1/models/{model}"
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": route, "port": "http"}, probe
    readiness = " ".join(container["readinessProbe"]["exec"]["command"])
    assert f"GET {route} " in readiness and "/8501" in readiness and "AVAILABLE" in readiness


def test_a_rollout_keeps_old_pods_serving_and_every_selector_finds_the_pods():
    deployment = find("Deployment", "catdog-serving")
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert find("Service", "catdog-serving")["spec"]["selector"].items() <= labels.items()
    assert find("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = find("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    container_ports = {p["name"] for p in serving_container()["ports"]}
    assert {p["targetPort"] for p in find("Service", "catdog-serving")["spec"]["ports"]} == (
        container_ports)


def test_the_training_job_runs_catdog_train_with_valid_flags(monkeypatch):
    """Its flags parse with catdog's own definitions (flagfiles read from the checkout, as the
    image's working directory holds it)."""
    monkeypatch.chdir(ROOT)
    for template in POD_TEMPLATES_OF["TFJob"](find("TFJob")):
        (container,) = template["spec"]["containers"]
        assert container["command"] == ["python", "-m", "catdog.train"]
        values = flags.FlagValues()
        catdog_flags.define_train_flags(values)
        values(["train", *container["args"]])
        config = catdog_flags.config_from_flags(values)
        assert config.strategy == "multi_worker"
        # The gate publishes into <export_dir>/<model_name>: the base path TF Serving watches,
        # never the candidates/ folder beside it.
        (base_path,) = re.findall(r'base_path: "([^"]+)"',
                                  find("ConfigMap")["data"]["models.config"])
        assert base_path == f"/models/{config.model_name}"
        assert "candidates" not in base_path


def data_service_args(name: str) -> tuple[list[str], flags.FlagValues]:
    (container,) = find("Deployment", name)["spec"]["template"]["spec"]["containers"]
    values = flags.FlagValues()
    catdog_flags.define_data_service_flags(values)
    values(["data_service", *container["args"]])
    return container["command"], values


def test_the_data_service_servers_and_the_trainer_agree_on_addresses(monkeypatch):
    command, dispatcher = data_service_args("catdog-data-dispatcher")
    assert command == ["python", "-m", "catdog.data_service", "dispatcher"]
    service = find("Service", "catdog-data-dispatcher")
    (port,) = service["spec"]["ports"]
    assert port["port"] == dispatcher.port
    address = f"{service['metadata']['name']}:{port['port']}"
    command, worker = data_service_args("catdog-data-worker")
    assert command[-1] == "worker" and worker.dispatcher == address
    assert worker.worker_address == f"$(POD_IP):{worker.port}"
    monkeypatch.chdir(ROOT)
    for template in POD_TEMPLATES_OF["TFJob"](find("TFJob")):
        (container,) = template["spec"]["containers"]
        assert f"--data_service=grpc://{address}" in container["args"]


def test_only_the_training_pods_reach_the_data_service():
    """The tf.data service runs any graph it is sent: a NetworkPolicy selects the dispatcher's
    and the workers' pods and admits only the TFJob's pods and the service's own, on the two
    named ports."""
    policy = find("NetworkPolicy", "catdog-data-service")["spec"]
    service_apps = set()
    for name in ("catdog-data-dispatcher", "catdog-data-worker"):
        service_apps.add(find("Deployment", name)["spec"]["template"]["metadata"]["labels"]["app"])
    (selects,) = policy["podSelector"]["matchExpressions"]
    assert (selects["key"], selects["operator"], set(selects["values"])) == (
        "app", "In", service_apps)
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    trainers = [t["metadata"]["labels"] for t in POD_TEMPLATES_OF["TFJob"](find("TFJob"))]
    admitted = rule["from"]
    assert admitted[0] == {"podSelector": {"matchLabels": trainers[0]}}
    assert all(labels == trainers[0] for labels in trainers)
    (own,) = admitted[1]["podSelector"]["matchExpressions"]
    assert set(own["values"]) == service_apps and len(admitted) == 2
    assert {p["port"] for p in rule["ports"]} == {"dispatcher", "worker"}
    for name in ("catdog-data-dispatcher", "catdog-data-worker"):
        _, values = data_service_args(name)
        assert values.host == "0.0.0.0"  # the servers start, guarded by the policy

