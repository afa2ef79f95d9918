"""Distribution: mirrored over logical CPUs, mixed precision, XLA, multi-worker, and bad setups.

Devices can only be split before TensorFlow starts, so distributed runs happen in subprocesses.
"""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest

from catdog import distribute, steps, train
from catdog import model as model_lib
from catdog.config import Config

from conftest import free_ports, run_catdog, run_python

RELOAD_IN_FLOAT32 = """
import sys, json, numpy as np, tensorflow as tf, keras
from catdog import inference
h5, saved_model, pixels = sys.argv[1:4]
assert keras.mixed_precision.global_policy().name == "float32"
model = inference.load_h5(h5)[0]
out = {"h5_compute": model.get_layer("dense").compute_dtype}
if len(sys.argv) == 4:  # a fifth argument asks for the compute dtype only
    x = np.load(pixels)
    a = model(x, training=False).numpy()
    b = tf.saved_model.load(saved_model).signatures["predict_pixels"](pixels=tf.constant(x))
    b = b["probabilities"].numpy()
    out.update({"h5_dtype": str(a.dtype), "saved_model_dtype": str(b.dtype),
                "h5": a.tolist(), "saved_model": b.tolist()})
print(json.dumps(out))
"""


def cli_flags(dataset_dir, run: Path, *extra):
    return [f"--data_dir={dataset_dir}", "--weights=none", "--image_size=32", "--batch_size=8",
            "--epochs=2", "--flip=none", "--zoom=0", "--seed=11", f"--run_dir={run}",
            f"--export_dir={run / 'export'}", "--publish=never", *extra]


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_matches_one_device(dataset_dir, tmp_path):
    # float32: bfloat16's rounding would hide what is compared, the summation order alone.
    one = run_catdog("train", *cli_flags(dataset_dir, tmp_path / "one", "--strategy=default",
                                         "--mixed_precision=float32"))
    two = run_catdog("train", *cli_flags(dataset_dir, tmp_path / "two", "--strategy=mirrored",
                                         "--logical_devices=2", "--mixed_precision=float32"))
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    single, mirrored = summary_of(tmp_path / "one"), summary_of(tmp_path / "two")
    assert mirrored["distribution"]["strategy_class"] == "MirroredStrategy"
    assert mirrored["distribution"]["replicas"] == 2
    assert mirrored["distribution"]["per_replica_batch"] == 4
    assert len(mirrored["distribution"]["devices"]) == 2
    # Same global batch and seed: the same training up to float summation order.
    for a, b in zip(single["epochs"], mirrored["epochs"]):
        for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[metric] == pytest.approx(b[metric], abs=1e-4), (a["epoch"], metric)
    w1 = [np.asarray(w) for w in keras.models.load_model(
        tmp_path / "one" / "export" / "candidates" / "catdog" / "1.h5", compile=False).weights]
    w2 = [np.asarray(w) for w in keras.models.load_model(
        tmp_path / "two" / "export" / "candidates" / "catdog" / "1.h5", compile=False).weights]
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("policy, compute, loss_scaled", [
    ("mixed_float16", "float16", True), ("mixed_bfloat16", "bfloat16", False)])
def test_mixed_precision_on_cpu(dataset_dir, tmp_path, policy, compute, loss_scaled):
    config = Config(data_dir=str(dataset_dir), weights="none", image_size=32, batch_size=8,
                    epochs=1, mixed_precision=policy, run_dir=str(tmp_path / "run"),
                    export_dir=str(tmp_path / "export"), strategy="default",
                    publish="never")
    result = train.train(config)
    assert result.summary["distribution"]["precision"] == policy
    model = result.model
    assert model.get_layer("dense").compute_dtype == compute
    assert model.get_layer("probabilities").compute_dtype == "float32"
    trainer = steps.Trainer(config, 2, distribute.setup_distribution(config))
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer) == loss_scaled

    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "pixels.npy", pixels)
    out = json.loads(run_python(RELOAD_IN_FLOAT32, str(result.exports.h5),
                                str(result.exports.saved_model),
                                str(tmp_path / "pixels.npy")).stdout.strip().splitlines()[-1])
    assert out["h5_dtype"] == out["saved_model_dtype"] == "float32"
    assert out["h5_compute"] == "float32"  # exports compute in float32 unless asked otherwise
    in_float32 = model_lib.in_policy(model, "float32")(pixels, training=False).numpy()
    np.testing.assert_allclose(out["h5"], in_float32, atol=1e-5)
    np.testing.assert_allclose(out["saved_model"], in_float32, atol=1e-5)
    in_memory = model(pixels, training=False).numpy()
    np.testing.assert_allclose(in_float32, in_memory, atol=0.05)  # same weights, less precision


@pytest.mark.slow
def test_export_precision_compute_exports_the_training_policy(dataset_dir, tmp_path):
    config = Config(data_dir=str(dataset_dir), weights="none", image_size=32, batch_size=8,
                    epochs=1, mixed_precision="mixed_bfloat16", export_precision="compute",
                    run_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"),
                    strategy="default", publish="never")
    result = train.train(config)
    out = json.loads(run_python(RELOAD_IN_FLOAT32, str(result.exports.h5),
                                str(result.exports.saved_model),
                                str(tmp_path / "unused.npy"), "policy-only"
                                ).stdout.strip().splitlines()[-1])
    assert out["h5_compute"] == "bfloat16"


@pytest.mark.slow
def test_xla_compiled_model_step_trains_on_cpu(dataset_dir, tmp_path):
    config = Config(data_dir=str(dataset_dir), weights="none", image_size=32, batch_size=8,
                    epochs=1, rotation=0.1, jit_compile="true", strategy="default",
                    run_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"),
                    publish="never")
    result = train.train(config)
    assert result.summary["distribution"]["jit_compile"] is True
    assert np.isfinite(result.summary["epochs"][0]["loss"])


def run_two_workers(dataset_dir, run: Path, scratch: Path, epochs: int):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    processes = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(scratch),
               "TF_CONFIG": json.dumps({"cluster": cluster,
                                        "task": {"type": "worker", "index": index}})}
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "catdog.train",
             *cli_flags(dataset_dir, run, "--strategy=multi_worker", f"--epochs={epochs}")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    return outputs


@pytest.mark.slow
def test_two_local_workers_train_and_only_the_chief_writes(dataset_dir, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    run = tmp_path / "run"
    outputs = run_two_workers(dataset_dir, run, scratch, epochs=1)
    assert "the chief wrote the run folder" in outputs[1][0]
    assert list(scratch.iterdir()) == []  # the non-chief's scratch writes are gone
    summary = summary_of(run)
    assert summary["distribution"]["num_workers"] == 2
    assert summary["distribution"]["strategy_class"] == "CollectiveAllReduceStrategy"
    assert [e["epoch"] for e in summary["epochs"]] == [1]
    reloaded = run_python(
        "import sys, tensorflow as tf; from catdog import inference;"
        "m, names = inference.load_h5(sys.argv[1]);"
        "s = tf.saved_model.load(sys.argv[2]).signatures['predict_pixels'];"
        "print(names, m.output_shape, sorted(s.structured_outputs))",
        str(run / "export" / "candidates" / "catdog" / "1.h5"),
        str(run / "export" / "candidates" / "catdog" / "1"))
    assert "['cats', 'dogs'] (None, 2) ['class_ids', 'classes', 'probabilities']" in (
        reloaded.stdout)

    # Started again for more epochs, both workers resume from the chief's checkpoint.
    outputs = run_two_workers(dataset_dir, run, scratch, epochs=2)
    for _, stderr in outputs:
        assert "after epoch 1" in stderr and "Epoch 1/2" not in stderr
    assert [e["epoch"] for e in summary_of(run)["epochs"]] == [1, 2]


@pytest.mark.slow  # spawns the CLI, four times
@pytest.mark.parametrize("extra, env, message", [
    (["--strategy=multi_worker"], {}, "--strategy=multi_worker needs the TF_CONFIG environment"),
    (["--strategy=multi_worker"], {"TF_CONFIG": "{not json"}, "TF_CONFIG is not valid"),
    (["--strategy=mirrored", "--logical_devices=2", "--batch_size=7"], {},
     "--batch_size=7 does not divide among 2 replicas; use a multiple of 2"),
    (["--strategy=mirrored", "--devices=/gpu:3"], {}, "--devices: unknown device(s) ['/gpu:3']"),
])
def test_bad_distribution_setups_stop_before_any_work(dataset_dir, tmp_path, extra, env, message):
    result = run_catdog("train", *cli_flags(dataset_dir, tmp_path / "run"), *extra,
                        env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("cpu, speedup, policy, reason", [
    ({"avx2", "avx512f"}, None, "float32", "no native bfloat16"),
    (set(), None, "float32", "no native bfloat16"),
    ({"avx512f", "avx512_bf16"}, 1.9, "mixed_bfloat16", "ran at 1.90x float32's speed on this "
                                                        "CPU (avx512_bf16)"),
    ({"avx512f", "avx512_bf16"}, 0.55, "float32", "ran at 0.55x float32's speed"),
    ({"amx_bf16", "amx_tile"}, 3.0, "mixed_bfloat16", "(amx_bf16)"),
])
def test_auto_precision_is_bfloat16_where_the_cpu_has_it_and_it_is_faster(cpu, speedup, policy,
                                                                          reason):
    def measured():
        assert speedup is not None, "measured on a CPU without native bfloat16"
        return speedup

    chosen, why = distribute.resolve_precision("auto", [], frozenset(cpu), measured)
    assert chosen == policy and reason in why
    assert distribute.resolve_precision("float32", [], frozenset(cpu), measured) == (
        "float32", "--mixed_precision")


def test_the_bfloat16_probe_measures_a_finite_positive_ratio():
    assert 0 < distribute.bfloat16_speedup(repeats=2) < float("inf")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n\n")
    assert distribute.cpu_flags(str(cpuinfo)) == {"fpu", "avx512f", "avx512_bf16"}
    assert distribute.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_auto_choices_without_gpus():
    assert distribute.resolve_jit("auto", "default", []) is False
    assert distribute.resolve_jit("true", "mirrored", []) is True


def test_linear_learning_rate_scaling_is_opt_in():
    four_replicas = types.SimpleNamespace(num_replicas_in_sync=4)
    distribution = distribute.Distribution(
        strategy=four_replicas, kind="mirrored", devices=("a", "b", "c", "d"),
        per_replica_batch=4, precision="float32", jit_compile=False)
    assert distribute.learning_rate_for(0.001, distribution, scale=False) == 0.001
    assert distribute.learning_rate_for(0.001, distribution, scale=True) == pytest.approx(0.004)


def test_the_start_line_is_one_readable_sentence():
    two_gpus = distribute.Distribution(
        strategy=types.SimpleNamespace(num_replicas_in_sync=2), kind="mirrored",
        devices=("/gpu:0", "/gpu:1"), per_replica_batch=8, precision="mixed_float16",
        jit_compile=True, precision_reason="auto: GPUs of compute capability 7.0+")
    assert two_gpus.line() == ("strategy mirrored, 2 replicas, mixed_float16 (auto: GPUs of "
                               "compute capability 7.0+), GPU, XLA")
    chief = distribute.Distribution(
        strategy=types.SimpleNamespace(num_replicas_in_sync=1), kind="default",
        devices=("/device:CPU:0",), per_replica_batch=16, precision="float32",
        jit_compile=False, precision_reason="auto: the CPU has no native bfloat16",
        worker_index=0, num_workers=2)
    assert chief.line() == ("strategy default, 1 replica, worker 0 of 2, float32 (auto: the "
                            "CPU has no native bfloat16), CPU")
