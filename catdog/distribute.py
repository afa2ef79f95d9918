"""Where a run computes: its tf.distribute strategy, devices, precision policy and XLA setting.

Everything here must happen before TensorFlow touches a device, so `setup_distribution` is the
first thing a training run calls. One training loop serves every strategy (catdog/train.py);
this module only chooses and describes the strategy.

    default       one device, no distribution (TensorFlow's default strategy)
    one_device    OneDeviceStrategy on --devices[0] (or the first GPU, else the CPU)
    mirrored      MirroredStrategy over --devices, or every GPU, or the logical CPUs
    multi_worker  MultiWorkerMirroredStrategy across the machines TF_CONFIG names
    auto          mirrored when more than one GPU is visible, else default
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from catdog.config import Config
from catdog.errors import CatdogError


@dataclasses.dataclass(frozen=True)
class Distribution:
    """The strategy a run uses and the facts about it that the log and summary record."""

    strategy: tf.distribute.Strategy
    kind: str
    devices: tuple[str, ...]
    per_replica_batch: int
    precision: str
    jit_compile: bool
    precision_reason: str = ""
    worker_index: int = 0
    num_workers: int = 1

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0

    def line(self) -> str:
        """The start line: e.g. `strategy default, 1 replica, float32 (auto: ...), CPU`."""
        replicas = f"{self.replicas} replica{'s' if self.replicas != 1 else ''}"
        workers = f", worker {self.worker_index} of {self.num_workers}" if (
            self.num_workers > 1) else ""
        kinds = sorted({tf.DeviceSpec.from_string(device).device_type or "CPU"
                        for device in self.devices}) or ["CPU"]
        xla = ", XLA" if self.jit_compile else ""
        return (f"strategy {self.kind}, {replicas}{workers}, {self.precision} "
                f"({self.precision_reason}), {'+'.join(kinds)}{xla}")

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.kind, "strategy_class": type(self.strategy).__name__,
                "replicas": self.replicas, "devices": list(self.devices),
                "per_replica_batch": self.per_replica_batch, "precision": self.precision,
                "precision_reason": self.precision_reason, "jit_compile": self.jit_compile,
                "worker_index": self.worker_index,
                "num_workers": self.num_workers}


def split_cpu(count: int) -> None:
    """Splits the first CPU into `count` logical devices (to try distribution without GPUs)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError as error:
        raise CatdogError(f"--logical_devices={count}: TensorFlow's devices are already "
                          f"initialized in this process ({error}); start a new process") from None


def _gpu_compute_capability(gpu) -> tuple[int, int]:
    details = tf.config.experimental.get_device_details(gpu)
    return details.get("compute_capability", (0, 0))


BFLOAT16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # native bfloat16 arithmetic


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags the CPU reports (empty where /proc/cpuinfo does not exist)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bfloat16_speedup(repeats: int = 5) -> float:
    """How many times faster a VGG16-like 3×3 convolution (4×56×56×128 → 128) runs in bfloat16
    than in float32 on this CPU, measured now (about half a second): native bfloat16 flags do
    not make it faster everywhere (benchmarks/README.md, "bfloat16", has the figures)."""
    images, kernel = tf.random.uniform([4, 56, 56, 128]), tf.random.uniform([3, 3, 128, 128])
    conv = tf.function(lambda a, b: tf.nn.relu(tf.nn.conv2d(a, b, 1, "SAME")))
    inputs = {dtype: (tf.cast(images, dtype), tf.cast(kernel, dtype))
              for dtype in (tf.float32, tf.bfloat16)}

    def seconds(dtype: tf.DType) -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            result = conv(*inputs[dtype])
        result.numpy()
        return time.perf_counter() - start

    for dtype in inputs:
        conv(*inputs[dtype]).numpy()  # trace and warm up
    # The fastest of three alternating rounds each, so a burst of other work on the machine
    # does not decide the policy.
    best = {dtype: min(seconds(dtype) for _ in range(3)) for dtype in inputs}
    return best[tf.float32] / best[tf.bfloat16]


MIN_BFLOAT16_SPEEDUP = 1.1  # below this, bfloat16's lost precision buys too little


def resolve_precision(requested: str, gpus: list, cpu: frozenset[str] = frozenset(),
                      speedup: Callable[[], float] = bfloat16_speedup) -> tuple[str, str]:
    """The Keras policy for `requested`, and why: 'auto' → mixed_float16 when every GPU has
    compute capability ≥ 7.0; on a CPU-only machine whose CPU computes bfloat16 natively (`cpu`
    holds its flags), mixed_bfloat16 when `speedup()` measures it faster, else float32."""
    if requested != "auto":
        return requested, "--mixed_precision"
    if gpus:
        if all(_gpu_compute_capability(g) >= (7, 0) for g in gpus):
            return "mixed_float16", "auto: GPUs of compute capability >= 7.0"
        return "float32", "auto: a GPU below compute capability 7.0"
    native = [flag for flag in BFLOAT16_CPU_FLAGS if flag in cpu]
    if not native:
        return "float32", "auto: the CPU has no native bfloat16 (no amx_bf16 or avx512_bf16)"
    ratio = speedup()
    policy = "mixed_bfloat16" if ratio >= MIN_BFLOAT16_SPEEDUP else "float32"
    return policy, (f"auto: bfloat16 convolutions ran at {ratio:.2f}x float32's speed on this "
                    f"CPU ({', '.join(native)}), measured at start-up")


def resolve_jit(requested: str, kind: str, gpus: list) -> bool:
    """'auto' → XLA on for a single GPU only (XLA under distribution is measured, not assumed)."""
    if requested != "auto":
        return requested == "true"
    return len(gpus) == 1 and kind in ("default", "one_device")


def _worker_position() -> tuple[int, int]:
    """(index among all training tasks with the chief first, number of such tasks), from
    TF_CONFIG as TensorFlow's own TFConfigClusterResolver reads it."""
    if not os.environ.get("TF_CONFIG"):
        raise CatdogError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                          '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                          '"task": {"type": "worker", "index": 0}})')
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    try:
        cluster = resolver.cluster_spec().as_dict()
        task_type, task_id = resolver.task_type, resolver.task_id
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CatdogError(f"TF_CONFIG is not valid: {error!r}; it needs 'cluster' and "
                          "'task' {'type', 'index'}") from None
    if task_type is None or task_id is None:
        raise CatdogError("TF_CONFIG is not valid: no 'task' {'type', 'index'}; it needs "
                          "'cluster' and 'task'")
    if not any(cluster.get(role) for role in ("chief", "worker")):
        raise CatdogError("TF_CONFIG's cluster names no 'chief' or 'worker' tasks")
    chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
    return task_id + (chiefs if task_type == "worker" else 0), chiefs + workers


def _device_key(name: str) -> tuple[str, int] | None:
    try:
        spec = tf.DeviceSpec.from_string(name if name.startswith("/") else f"/{name}")
    except ValueError:
        return None
    return ((spec.device_type or "").upper(), spec.device_index or 0)


def _available_devices() -> set[tuple[str, int] | None]:
    return {_device_key(d.name) for d in tf.config.list_logical_devices()}


def _make_strategy(config: Config, gpus: list) -> tuple[tf.distribute.Strategy, str]:
    kind = config.strategy
    if kind == "auto":
        kind = "mirrored" if len(gpus) > 1 else "default"
    if kind == "default":
        return tf.distribute.get_strategy(), kind
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy(), kind
    unknown = [d for d in config.devices if _device_key(d) not in _available_devices()]
    if unknown:
        raise CatdogError(f"--devices: unknown device(s) {unknown}; this machine has "
                          f"{sorted(d.name for d in tf.config.list_logical_devices())}")
    if kind == "one_device":
        device = (config.devices[0] if config.devices else
                  "/gpu:0" if gpus else "/cpu:0")
        return tf.distribute.OneDeviceStrategy(device), kind
    devices = list(config.devices) or None
    if devices is None and not gpus:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices), kind


def _devices_of(strategy: tf.distribute.Strategy) -> tuple[str, ...]:
    try:
        return tuple(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy runs where TensorFlow places ops by default
        return ((tf.config.list_logical_devices("GPU")
                 or tf.config.list_logical_devices("CPU"))[0].name,)


def setup_distribution(config: Config) -> Distribution:
    """Configures devices, precision and strategy for `config`; call before any other TF work."""
    worker_index, num_workers = 0, 1
    if config.strategy == "multi_worker":
        worker_index, num_workers = _worker_position()
    if config.logical_devices:
        split_cpu(config.logical_devices)
    gpus = tf.config.list_physical_devices("GPU")
    strategy, kind = _make_strategy(config, gpus)  # first: multi-worker needs a fresh context
    precision, reason = resolve_precision(config.mixed_precision, gpus, cpu_flags())
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise CatdogError(f"--batch_size={config.batch_size} does not divide among {replicas} "
                          f"replicas; use a multiple of {replicas}")
    keras.mixed_precision.set_global_policy(precision)
    devices = _devices_of(strategy)
    distribution = Distribution(
        strategy=strategy, kind=kind, devices=devices,
        per_replica_batch=config.batch_size // replicas, precision=precision,
        precision_reason=reason, jit_compile=resolve_jit(config.jit_compile, kind, gpus),
        worker_index=worker_index, num_workers=num_workers)
    return distribution


def learning_rate_for(base: float, distribution: Distribution, scale: bool) -> float:
    """`base`, times the replica count when `scale` (--scale_learning_rate: linear scaling)."""
    return base * distribution.replicas if scale else base
