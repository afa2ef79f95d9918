"""The models a server holds and the versions of each it serves, as TF Serving's ServerCore does.

- A model is a base path of integer-named version folders (`1`, `00000123`, ...). Its
  `model_version_policy` picks the versions to serve: `latest { num_versions: N }` (default 1),
  `all {}` or `specific { versions: ... }`. `version_labels` name versions for requests.
- Versions are looked for every `poll_seconds`. A new version is loaded and warmed up before it
  serves; a version the policy no longer wants is unloaded only after that (availability
  preserving) and only once its running requests have finished. A version that fails to load is
  tried again on later polls and logged once per distinct error; when the newest folder
  disappears, the newest that remains is served.
- A `ModelServerConfig` (--model_config_file) can hold several models and be re-read while
  serving (--model_config_file_poll_wait_seconds).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
from absl import logging
from tensorflow_serving.apis import get_model_status_pb2, model_pb2, status_pb2
from tensorflow_serving.config import model_server_config_pb2

from catdog.serving.servable import Servable
from catdog.serving.status import ServingError, invalid

ModelConfig = model_server_config_pb2.ModelConfig
_Status = get_model_status_pb2.ModelVersionStatus


def version_folders(base_path: Path) -> dict[int, Path]:
    """Integer-named sub-folders (zero padding allowed, as TF Serving parses them)."""
    if not base_path.is_dir():
        return {}
    found = {}
    for path in base_path.iterdir():
        if path.name.isdigit() and path.is_dir() and not path.name.startswith("."):
            found.setdefault(int(path.name), path)
    return found


def aspired_versions(config: ModelConfig, available: Iterable[int]) -> set[int]:
    """The versions the config's model_version_policy wants served."""
    available = sorted(available)
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(available)
    if choice == "specific":
        return set(policy.specific.versions) & set(available)
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions else 1
    return set(available[-count:])


class ModelManager:
    """Loads, serves and unloads the versions of one model."""

    def __init__(self, config: ModelConfig, servable_options: dict):
        self.config = config
        self._options = servable_options
        self._lock = threading.Lock()
        self._loaded: dict[int, Servable] = {}
        self._failed: dict[int, str] = {}
        self._refreshing = threading.Lock()  # one poll at a time (poller, config reload)

    @property
    def name(self) -> str:
        return self.config.name

    def refresh(self) -> None:
        """One poll: load the versions the policy wants, then retire the ones it does not."""
        with self._refreshing:
            self._refresh()

    def _refresh(self) -> None:
        folders = version_folders(Path(self.config.base_path))
        wanted = aspired_versions(self.config, folders)
        self._failed = {v: m for v, m in self._failed.items() if v in wanted}
        for version in sorted(wanted - set(self._loaded), reverse=True):
            self._load(version, folders[version])
        with self._lock:
            serving_wanted = wanted & set(self._loaded)
            retire = [v for v in self._loaded if v not in wanted] if serving_wanted else \
                [v for v in self._loaded if v not in folders]
            retired = [self._loaded.pop(v) for v in retire]
        for servable in retired:
            logging.info("unloading %s version %d", self.name, servable.version)
            threading.Thread(target=servable.close, name="unload", daemon=True).start()
        if not self._loaded and folders:
            logging.log_first_n(logging.WARNING, "%s: no version of %s could be loaded", 1,
                                self.name, self.config.base_path)

    def _load(self, version: int, path: Path) -> None:
        servable = None
        try:
            servable = Servable(self.name, version, path, **self._options)
            warmed = servable.warm_up()
        except Exception as error:  # a broken version must not stop the server
            if servable is not None:
                servable.close()
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            if self._failed.get(version) != message:
                logging.error("could not load %s version %d from %s: %s (will retry)",
                              self.name, version, path, message)
            self._failed[version] = message
            return
        self._failed.pop(version, None)
        with self._lock:
            self._loaded[version] = servable
        logging.info("serving %s version %d from %s (warmed up with %d requests)", self.name,
                     version, path, warmed)

    def loaded_versions(self) -> set[int]:
        with self._lock:
            return set(self._loaded)

    @contextlib.contextmanager
    def use(self, spec: model_pb2.ModelSpec) -> Iterator[Servable]:
        """The version a request's spec names, counted as in use until the block ends: it is
        picked and counted under the same lock that retires versions, so a version is never
        closed between a request finding it and running on it."""
        with self._lock:
            servable = self._pick(spec, dict(self._loaded))
            servable.acquire()
        try:
            yield servable
        finally:
            servable.release()

    def servable(self, spec: model_pb2.ModelSpec) -> Servable:
        """The version a request's spec names (version, label or latest), or TF Serving's error;
        for reading it (metadata). Running it goes through `use`."""
        with self._lock:
            return self._pick(spec, dict(self._loaded))

    def _pick(self, spec: model_pb2.ModelSpec, loaded: dict[int, Servable]) -> Servable:
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            if spec.version_label not in self.config.version_labels:
                raise invalid(f"Unrecognized servable version label: {spec.version_label}")
            version = self.config.version_labels[spec.version_label]
        else:
            version = spec.version.value if choice == "version" else None
        if version is None and loaded:
            return loaded[max(loaded)]
        if version in loaded:
            return loaded[version]
        request = f"Specific({self.name}, {version})" if version is not None else \
            f"Latest({self.name})"
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")

    def status(self, version: int | None) -> list[_Status]:
        """GetModelStatus: AVAILABLE for served versions, END with the error for failed loads."""
        statuses = [_Status(version=v, state=_Status.AVAILABLE,
                            status=status_pb2.StatusProto(error_code=0, error_message=""))
                    for v in sorted(self._loaded)]
        statuses += [_Status(version=v, state=_Status.END, status=status_pb2.StatusProto(
            error_code=grpc.StatusCode.UNKNOWN.value[0], error_message=message))
            for v, message in sorted(self._failed.items())]
        if version is not None:
            statuses = [s for s in statuses if s.version == version]
            if not statuses:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {version} of model {self.name}")
        if not statuses:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {self.name}")
        return statuses

    def stop(self) -> None:
        with self._lock:
            servables, self._loaded = list(self._loaded.values()), {}
        for servable in servables:
            servable.close()


class ServerCore:
    """The models a server holds, by name; kept in line with the files every poll."""

    def __init__(self, config: model_server_config_pb2.ModelServerConfig,
                 servable_options: dict | None = None):
        self._options = servable_options or {}
        self._models: dict[str, ModelManager] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.reload_config(config)

    def reload_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Serves the models `config` lists: new ones are loaded before they are published,
        dropped ones unloaded once their requests finish."""
        if config.WhichOneof("config") != "model_config_list":
            raise ValueError("the model config must hold a model_config_list")
        configs = {c.name: c for c in config.model_config_list.config}
        with self._lock:
            current = dict(self._models)
        models = {}
        for name, model_config in configs.items():
            manager = current.get(name)
            if manager is None or manager.config.base_path != model_config.base_path:
                manager = ModelManager(model_config, self._options)
            manager.config = model_config
            manager.refresh()
            models[name] = manager
        with self._lock:
            self._models = models
        for manager in current.values():
            if models.get(manager.name) is not manager:
                threading.Thread(target=manager.stop, name="unload-model", daemon=True).start()
        for name, model_config in configs.items():
            loaded = models[name].loaded_versions()
            for label, version in model_config.version_labels.items():
                if version not in loaded:
                    logging.warning("%s: label %r names version %d, which is not loaded",
                                    name, label, version)

    def manager(self, name: str) -> ModelManager:
        if not name:
            raise invalid("Missing model name in request.")
        with self._lock:
            manager = self._models.get(name)
        if manager is None:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Latest({name})")
        return manager

    def servable(self, spec: model_pb2.ModelSpec) -> Servable:
        return self.manager(spec.name).servable(spec)

    def use(self, spec: model_pb2.ModelSpec):
        """`ModelManager.use` for the model the spec names."""
        return self.manager(spec.name).use(spec)

    def models(self) -> list[ModelManager]:
        with self._lock:
            return list(self._models.values())

    def every(self, seconds: float, action, name: str) -> None:
        """Runs `action` every `seconds` on a background thread until `stop()`; 0 means never."""
        if seconds <= 0:
            return

        def loop():
            while not self._stop.wait(seconds):
                try:
                    action()
                except Exception as error:  # a poll that fails must not end polling
                    logging.error("%s failed: %s", name, error)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def refresh(self) -> None:
        for manager in self.models():
            manager.refresh()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        for manager in self.models():
            manager.stop()


def single_model_config(name: str, base_path: str | Path
                        ) -> model_server_config_pb2.ModelServerConfig:
    """The config TF Serving builds from --model_name and --model_base_path."""
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name=name, base_path=str(Path(base_path).resolve()),
                                        model_platform="tensorflow")
    return config
