"""The models a server holds and the versions of each it serves, as TF Serving's ServerCore does.

- A model is a base path of integer-named version folders (`1`, `00000123`, ...). Its
  `model_version_policy` picks the versions to serve: `latest { num_versions: N }` (default 1),
  `all {}` or `specific { versions: ... }`. `version_labels` name versions for requests.
- Versions are looked for every `poll_seconds`, as FileSystemStoragePathSource and the
  AvailabilityPreservingPolicy do it: a new version is loaded and warmed up before it serves; a
  version the policy no longer wants is unloaded only once a wanted one serves, and only once its
  running requests have finished. A base path that cannot be found changes nothing (logged once,
  until it is back); one that holds no version folder at all unloads the model's versions, as
  TF Serving's empty version list does. A version that fails to load is tried again on later
  polls and logged once per distinct error.
- `StateMonitor` keeps each version's last state (LOADING, AVAILABLE, UNLOADING, END), also after
  it ends, as ServableStateMonitor does: GetModelStatus reads it, newest version first.
- A `ModelServerConfig` (--model_config_file, or HandleReloadConfigRequest) can hold several
  models and be replaced while serving. A config TF Serving would refuse (not a model list, a
  model listed twice, a label on a version that is not AVAILABLE) is refused with TF Serving's
  status and the previous config stays in force. New models and versions are loaded before the
  new config is published, so a label moves only once its version serves. A model whose base
  path moves serves its loaded versions until the new path has loadable ones (a missing or
  broken new path is a poll error, logged and told in the versions' status).
- Beyond TF Serving: a config may not name a publish gate's candidate folder
  (`<export>/candidates/...`: versions the gate has not published), nor, with
  --model_base_path_root, any folder outside that root (INVALID_ARGUMENT), so neither a config
  file nor a reload RPC can serve what did not pass the gate.
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

from catdog import contract
from catdog.serving.servable import Servable
from catdog.serving.status import ServingError, invalid
from catdog.versions import source_of, version_folders  # the one scan, shared with the gate

ModelConfig = model_server_config_pb2.ModelConfig
ModelServerConfig = model_server_config_pb2.ModelServerConfig
_Status = get_model_status_pb2.ModelVersionStatus
_OK = status_pb2.StatusProto(error_code=0, error_message="")


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


class StateMonitor:
    """ServableStateMonitor: the last state of every version of every model, kept after the
    version (or its whole model) is unloaded."""

    def __init__(self):
        self._lock = threading.Lock()
        self._states: dict[str, dict[int, _Status]] = {}
        self._owners: dict[tuple[str, int], object] = {}

    def set(self, name: str, version: int, state: int, error: str = "",
            owner: object = None, note: str = "") -> None:
        """Records a version's new state (`error`: why it failed; `note`: a poll error told
        beside an OK status, e.g. a missing base path while the version keeps serving). An
        unload by a manager that no longer owns the version (its model moved to a new base
        path, whose manager loaded it again) is not recorded over the new manager's state."""
        status = status_pb2.StatusProto(error_message=note) if not error else \
            status_pb2.StatusProto(error_code=grpc.StatusCode.UNKNOWN.value[0],
                                   error_message=error)
        with self._lock:
            if state in (_Status.UNLOADING, _Status.END) and not error and \
                    self._owners.get((name, version), owner) is not owner:
                return
            self._owners[(name, version)] = owner
            self._states.setdefault(name, {})[version] = _Status(
                version=version, state=state, status=status)

    def state(self, name: str, version: int) -> int | None:
        with self._lock:
            found = self._states.get(name, {}).get(version)
        return found.state if found else None

    def statuses(self, name: str, version: int | None = None) -> list[_Status]:
        """GetModelStatusImpl: one version's status, or all of the model's, newest first."""
        with self._lock:
            versions = dict(self._states.get(name, {}))
        if version is not None:
            if version not in versions:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {version} of model {name}")
            return [versions[version]]
        if not versions:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {name}")
        return [versions[v] for v in sorted(versions, reverse=True)]


class ModelManager:
    """Loads, serves and unloads the versions of one model."""

    def __init__(self, config: ModelConfig, servable_options: dict, monitor: StateMonitor):
        self.config = config
        self.labels: dict[str, int] = {}  # published with the config, once checked
        self._options, self._monitor = servable_options, monitor
        self._lock = threading.Lock()
        self._loaded: dict[int, Servable] = {}
        self._unloading: list[threading.Thread] = []
        self._failed: dict[int, str] = {}
        self._base_missing = False
        self._refreshing = threading.Lock()  # one poll at a time (poller, config reload)

    @property
    def name(self) -> str:
        return self.config.name

    def refresh(self, retire: bool = True) -> None:
        """One poll: load the versions the policy wants, then (unless not `retire`) unload the
        ones it does not."""
        with self._refreshing:
            self._refresh(retire)

    def _refresh(self, retire: bool) -> None:
        folders = version_folders(Path(self.config.base_path))
        if folders is None:  # FileSystemStoragePathSource emits nothing for a missing base path
            self._note_base_path(f"Could not find base path {self.config.base_path} for "
                                 f"servable {self.name}; serving the loaded versions")
            return
        self._note_base_path("")
        wanted = aspired_versions(self.config, folders)
        self._failed = {v: m for v, m in self._failed.items() if v in wanted}
        with self._lock:  # a version loaded from another base path (the config moved) is new
            current = {v for v, servable in self._loaded.items()
                       if servable.path == folders.get(v)}
        for version in sorted(wanted - current, reverse=True):
            self._load(version, folders[version])
        if not retire:
            return
        with self._lock:
            # AvailabilityPreservingPolicy: unload unwanted versions once a wanted one serves,
            # or when nothing at all is wanted (an empty version list).
            retire = [v for v in self._loaded if v not in wanted] if (
                not wanted or wanted & set(self._loaded)) else []
            retired = [self._loaded.pop(v) for v in retire]
        for servable in retired:
            self._unload(servable)
        if not folders:
            logging.log_first_n(logging.WARNING, "No versions of servable %s found under base "
                                "path %s", 1, self.name, self.config.base_path)

    def _note_base_path(self, problem: str) -> None:
        """Logs a missing base path once (and its return), and tells it in the status of every
        version still serving, as TF Serving logs the poll error and keeps serving them."""
        if bool(problem) == self._base_missing:
            return
        self._base_missing = bool(problem)
        if problem:
            logging.error("%s until it is back", problem)
        else:
            logging.info("base path %s of %s is back", self.config.base_path, self.name)
        for version in self.loaded_versions():
            self._monitor.set(self.name, version, _Status.AVAILABLE, owner=self, note=problem)

    def _load(self, version: int, path: Path) -> None:
        """Loads and warms up a version; one that fails is retried on the next poll. A version
        of the same number loaded from the old base path serves until this one replaces it,
        and its state stays AVAILABLE meanwhile."""
        replacing = version in self.loaded_versions()
        if not replacing:
            self._monitor.set(self.name, version, _Status.LOADING, owner=self)
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
            if replacing:
                self._monitor.set(self.name, version, _Status.AVAILABLE, owner=self,
                                  note=f"{path} did not load ({message}); serving the version "
                                       "loaded before")
            else:
                self._monitor.set(self.name, version, _Status.END, message, owner=self)
            return
        self._failed.pop(version, None)
        with self._lock:
            replaced = self._loaded.get(version)  # the same number from the old base path
            self._loaded[version] = servable
        self._monitor.set(self.name, version, _Status.AVAILABLE, owner=self)
        warm_up = ("warm-up off (--noenable_model_warmup)" if warmed is None
                   else f"warmed up with {warmed} requests")
        logging.info("serving %s version %d from %s (%s; %s)",
                     self.name, version, path, warm_up, _trained_by(path))
        if replaced is not None:
            self._in_background(replaced.close)

    def _unload(self, servable: Servable, wait: bool = False) -> None:
        """UNLOADING until its running requests finish, then END (in the background unless
        `wait`)."""
        logging.info("unloading %s version %d", self.name, servable.version)
        self._monitor.set(self.name, servable.version, _Status.UNLOADING, owner=self)

        def close():
            servable.close()
            self._monitor.set(self.name, servable.version, _Status.END, owner=self)

        if wait:
            close()
        else:
            self._in_background(close)

    def _in_background(self, action) -> None:
        """Runs an unload on a thread of its own, remembered so that `stop` waits for it (a
        process that exits while TensorFlow closes a session aborts)."""
        thread = threading.Thread(target=action, name="unload", daemon=True)
        with self._lock:
            self._unloading = [t for t in self._unloading if t.is_alive()] + [thread]
        thread.start()

    def failures(self) -> dict[int, str]:
        """The versions that failed to load on the last poll, with why (one line each)."""
        return dict(self._failed)

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
            if spec.version_label not in self.labels:
                raise invalid(f"Unrecognized servable version label: {spec.version_label}")
            version = self.labels[spec.version_label]
        else:
            version = spec.version.value if choice == "version" else None
        if version is None and loaded:
            return loaded[max(loaded)]
        if version in loaded:
            return loaded[version]
        request = f"Specific({self.name}, {version})" if version is not None else \
            f"Latest({self.name})"
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")

    def stop(self) -> None:
        """Unloads every version (their states END), waiting for their requests and for
        unloads already under way."""
        with self._lock:
            servables, self._loaded = list(self._loaded.values()), {}
            unloading = list(self._unloading)
        for servable in servables:
            self._unload(servable, wait=True)
        for thread in unloading:
            thread.join()


def _trained_by(version: Path) -> str:
    """Which run and epoch a version came from, as its export recorded it."""
    source = source_of(version)
    if not {"run_dir", "epoch"} <= set(source):
        return "no record of the run that trained it"
    return f"trained by {source['run_dir']}, epoch {source['epoch']}"


def check_base_paths(config: ModelServerConfig, root: str = "") -> None:
    """Refuses (INVALID_ARGUMENT) a model whose base path lies in a publish gate's candidate
    folder, or outside `root` when one is given."""
    for model in config.model_config_list.config:
        path = Path(model.base_path).resolve()
        if root and not path.is_relative_to(Path(root).resolve()):
            raise invalid(f"base_path {model.base_path} of model {model.name} is outside "
                          f"--model_base_path_root={root}")
        gate = next((folder for folder in [path, *path.parents]
                     if folder.name == contract.CANDIDATES_DIR
                     and any(folder.parent.glob(".*.publish.lock"))), None)
        if gate is not None:
            raise invalid(f"base_path {model.base_path} of model {model.name} lies in the "
                          f"publish gate's candidate folder {gate}: only versions the gate "
                          "published are served")


def check_model_config(config: ModelServerConfig) -> None:
    """ServerCore::ReloadConfig's first checks (ValidateModelConfigList): TF Serving's status
    for a config that is not a model list or lists a model twice."""
    if config.WhichOneof("config") != "model_config_list":
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                           "Cannot transition to requested config. It is only legal to "
                           "transition from one ModelConfigList to another.")
    names = set()
    for model in config.model_config_list.config:
        if model.name in names:
            raise invalid(f"Illegal to list model {model.name} multiple times in config list")
        names.add(model.name)


class ServerCore:
    """The models a server holds, by name; kept in line with the files every poll."""

    def __init__(self, config: ModelServerConfig, servable_options: dict | None = None,
                 allow_version_labels_for_unavailable_models: bool = False,
                 base_path_root: str = ""):
        self._options = servable_options or {}
        self._base_path_root = base_path_root
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self.monitor = StateMonitor()
        self._models: dict[str, ModelManager] = {}
        self._unknown_names_told: set[str] = set()
        self._lock = threading.Lock()
        self._reloading = threading.Lock()  # one config change at a time
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        if config.WhichOneof("config"):  # TF Serving takes no action for a first empty config
            self.reload_config(config)

    def reload_config(self, config: ModelServerConfig) -> None:
        """Serves the models `config` lists, or raises ServingError (TF Serving's status) and
        changes nothing. New models and versions load before the config is published; dropped
        models are unloaded once their requests finish."""
        with self._reloading:
            check_model_config(config)
            check_base_paths(config, self._base_path_root)
            configs = {c.name: c for c in config.model_config_list.config}
            with self._lock:
                current = dict(self._models)
            labels = {name: self._checked_labels(c, current.get(name))
                      for name, c in configs.items()}
            models = {}
            for name, model_config in configs.items():
                # A model whose base path moves keeps its manager, so its loaded versions serve
                # until the new path has loadable ones (a missing or broken path is a poll
                # error: TF Serving's FileSystemStoragePathSource emits nothing for it).
                manager = current.get(name) or ModelManager(model_config, self._options,
                                                            self.monitor)
                manager.config = model_config
                manager.refresh(retire=False)
                models[name] = manager
            with self._lock:  # labels move only now, when their new versions serve
                for name, manager in models.items():
                    manager.labels = labels[name]
                self._models = models
            for manager in models.values():
                manager.refresh()  # now unload what the new config no longer wants
            for manager in current.values():
                if models.get(manager.name) is not manager:
                    dropped = threading.Thread(target=manager.stop, name="unload-model",
                                               daemon=True)
                    self._threads.append(dropped)  # `stop` waits for it
                    dropped.start()

    def _checked_labels(self, config: ModelConfig, current: ModelManager | None
                        ) -> dict[str, int]:
        """UpdateModelVersionLabelMap: each label must name an AVAILABLE version, unless
        --allow_version_labels_for_unavailable_models (which still may not move an existing
        label to another unavailable version)."""
        existing = current.labels if current else {}
        for label, version in config.version_labels.items():
            available = self.monitor.state(config.name, version) == _Status.AVAILABLE
            allowed = self._allow_unavailable_labels and existing.get(label, version) == version
            if not (available or allowed):
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"Request to assign label to version {version} of model "
                                   f"{config.name}, which is not currently available for "
                                   "inference")
        return dict(config.version_labels)

    def manager(self, name: str) -> ModelManager:
        if not name:
            raise invalid("Missing model name in request.")
        with self._lock:
            manager = self._models.get(name)
            served = sorted(self._models)
        if manager is None:
            if name not in self._unknown_names_told:  # once per name: a hint, not a flood
                self._unknown_names_told.add(name)
                logging.warning("a request named model %r, which this server does not serve "
                                "(it serves %s; --model_name or the config names them)", name,
                                ", ".join(map(repr, served)) or "nothing yet")
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
        """Runs `action` every `seconds` on a background thread until `stop()`; 0 means never.
        An error is logged once until the action succeeds again."""
        if seconds <= 0:
            return

        def loop():
            last_error = None
            while not self._stop.wait(seconds):
                try:
                    action()
                    last_error = None
                except Exception as error:  # a poll that fails must not end polling
                    if str(error) != last_error:
                        logging.error("%s failed: %s", name, error)
                    last_error = str(error)

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


def single_model_config(name: str, base_path: str | Path) -> ModelServerConfig:
    """The config TF Serving builds from --model_name and --model_base_path."""
    config = ModelServerConfig()
    config.model_config_list.config.add(name=name, base_path=str(Path(base_path).resolve()),
                                        model_platform="tensorflow")
    return config
