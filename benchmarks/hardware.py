"""How close catdog's VGG16 runs to this CPU's limits: one table.

    python benchmarks/hardware.py [--fma_units=2] [--seconds=20]

Prints, for the machine at hand:
  - the peak float32 FLOP rate: physical cores × FMA units × float32 lanes × 2 × clock, read
    from lscpu (lanes: 16 with avx512f, 8 with avx2, else 4; FMA units per core cannot be read
    from the machine: 2 on Xeon Gold/Platinum and AMD Zen, 1 on some Xeon Silver/Bronze);
  - a dense float32 matmul (tf.linalg.matmul, 2048²) in the same process: a practical ceiling;
  - VGG16's forward images/s at 150 px, batch 16, and the GFLOP/s that is (benchmarks/flops.py),
    as a fraction of both;
  - the same forward pass under each TensorFlow setting that could move it (oneDNN off, XLA,
    one intra-op thread, one inter-op thread), each in a fresh process since TensorFlow reads
    them at start-up, alternating with the defaults so a busy neighbour hurts both alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

_FMA_UNITS = flags.DEFINE_integer("fma_units", 2, "FMA units per core (see the docstring).")
_SECONDS = flags.DEFINE_float("seconds", 20.0, "How long each measurement runs.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Rounds of the settings comparison.")
_CHILD = flags.DEFINE_string("child", "", "Internal: measure one setting and print JSON.")

IMAGE_SIZE, BATCH = 150, 16
SETTINGS = {  # name: (environment, what the child process sets in TensorFlow)
    "defaults": ({}, {}),
    "oneDNN off": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, {}),
    "XLA (jit_compile)": ({}, {"jit_compile": True}),
    "1 intra-op thread": ({}, {"intra_op": 1}),
    "1 inter-op thread": ({}, {"inter_op": 1}),
}


def lscpu() -> dict[str, str]:
    output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    return {key.strip(): value.strip() for key, _, value in
            (line.partition(":") for line in output.splitlines())}


def peak_gflops(info: dict[str, str], fma_units: int) -> tuple[float, str]:
    """The theoretical float32 peak, and how it was computed."""
    cores = int(info.get("Core(s) per socket", "1")) * int(info.get("Socket(s)", "1"))
    cpu_flags = info.get("Flags", "").split()
    lanes = 16 if "avx512f" in cpu_flags else 8 if "avx2" in cpu_flags else 4
    mhz = float(info.get("CPU max MHz") or _current_mhz())
    peak = cores * fma_units * lanes * 2 * mhz / 1000
    return peak, (f"{cores} cores × {fma_units} FMA units × {lanes} float32 lanes × 2 × "
                  f"{mhz / 1000:.2f} GHz")


def _current_mhz() -> float:
    """/proc/cpuinfo's clock, when lscpu states no maximum (common in VMs)."""
    speeds = [float(line.split(":")[1]) for line in open("/proc/cpuinfo")
              if line.startswith("cpu MHz")]
    return max(speeds)


def timed_rate(run, work: float, seconds: float) -> float:
    """`work` units per second of `run()` (which returns something to block on)."""
    run().numpy()  # trace and warm up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        result = run()
        count += 1
    result.numpy()
    return count * work / (time.perf_counter() - start)


def matmul_gflops(seconds: float) -> float:
    import tensorflow as tf

    n = 2048
    a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
    matmul = tf.function(lambda: tf.linalg.matmul(a, b))
    return timed_rate(matmul, 2 * n**3 / 1e9, seconds)


def vgg16_images_per_second(seconds: float, jit_compile: bool = False) -> float:
    import tensorflow as tf

    from catdog import model as model_lib

    with model_lib.global_policy("float32"):
        model = model_lib.build_classifier(2, IMAGE_SIZE, "none")
    extractor = model_lib.feature_extractor(model)
    images = tf.random.uniform([BATCH, IMAGE_SIZE, IMAGE_SIZE, 3], 0, 255)
    forward = tf.function(lambda: extractor(images, training=False), jit_compile=jit_compile)
    return timed_rate(forward, BATCH, seconds)


def child(setting: str, seconds: float) -> dict[str, float]:
    """One setting's measurements, in this (fresh) process."""
    import tensorflow as tf

    options = SETTINGS[setting][1]
    if "intra_op" in options:
        tf.config.threading.set_intra_op_parallelism_threads(options["intra_op"])
    if "inter_op" in options:
        tf.config.threading.set_inter_op_parallelism_threads(options["inter_op"])
    return {"matmul": matmul_gflops(seconds) if setting == "defaults" else 0.0,
            "vgg16": vgg16_images_per_second(seconds, options.get("jit_compile", False))}


def measure(setting: str, seconds: float) -> dict[str, float]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **SETTINGS[setting][0]}
    output = subprocess.run([sys.executable, __file__, f"--child={setting}",
                             f"--seconds={seconds}"], env=env, capture_output=True, text=True,
                            check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv):
    del argv
    if _CHILD.value:
        print(json.dumps(child(_CHILD.value, _SECONDS.value)))
        return
    import flops  # benchmarks/ is on sys.path when this file runs as a script

    info = lscpu()
    peak, how = peak_gflops(info, _FMA_UNITS.value)
    best: dict[str, dict[str, float]] = {}
    for _ in range(_ROUNDS.value):
        for setting in SETTINGS:
            measured = measure(setting, _SECONDS.value)
            best[setting] = {k: max(v, best.get(setting, {}).get(k, 0.0))
                             for k, v in measured.items()}
    gflop_per_image = flops.forward(IMAGE_SIZE) / 1e9
    matmul = best["defaults"]["matmul"]
    print(f"\n{time.strftime('%Y-%m-%d')}, {info.get('Model name')}, "
          f"{info.get('CPU(s)')} logical CPUs, {info.get('Thread(s) per core')} thread(s) per "
          f"core; VGG16 forward at {IMAGE_SIZE} px = {gflop_per_image:.2f} GFLOP per image\n")
    print("| what | GFLOP/s | of peak | of matmul |")
    print("|---|---:|---:|---:|")
    print(f"| peak float32 ({how}) | {peak:.0f} | 1.00 | |")
    print(f"| dense matmul 2048² (tf.linalg.matmul) | {matmul:.0f} | {matmul / peak:.2f} | 1.00 |")
    for setting, measured in best.items():
        rate = measured["vgg16"] * gflop_per_image
        print(f"| VGG16 forward, batch {BATCH}, {setting}: {measured['vgg16']:.1f} images/s | "
              f"{rate:.0f} | {rate / peak:.2f} | {rate / matmul:.2f} |")


if __name__ == "__main__":
    app.run(main)
