"""catdog.batch (Apache Beam, one worker and two worker processes) against catdog.predict on the
same photos: images/s and the peak memory of the whole process tree.

    python benchmarks/batch.py --photos=1200 \
        --weights=../shared/weights/vgg16_hed_notop.weights.h5 [--image_size=150]

Exports an untrained classifier (VGG16 with the given weights and a fresh head: the cost of a
forward pass does not depend on what the head learned) as a SavedModel version in float32, links
`--photos` of the shared training photos (half cats, half dogs) into a temporary folder, and
runs each command as a whole process, as a user would, sampling the resident memory of the
process and its children every 0.2 s. Also times the three stages of one photo's answer in
this process (read the file, decode and resize, the VGG16 forward pass) to say what limits it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import machine  # benchmarks/ is on sys.path when this file runs as a script
from absl import app, flags

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/datasets/cats_vs_dogs", "Photos.")
_PHOTOS = flags.DEFINE_integer("photos", 1200, "How many training photos to label.")
_WEIGHTS = flags.DEFINE_string("weights", "none", "VGG16 weights: none or a weights file.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 150, "The model's image size.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per forward pass, for both.")


def tree_rss_kib(root: int) -> int:
    """The resident memory of `root` and every process descending from it, in KiB."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parents[int(entry.name)] = int(fields["PPid"])
        rss[int(entry.name)] = int(fields.get("VmRSS", "0 kB").split()[0])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(rss.get(pid, 0) for pid in tree)


def timed(command: list[str]) -> tuple[float, int, subprocess.CompletedProcess]:
    """Wall seconds, peak tree memory (KiB) and the finished process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], tree_rss_kib(process.pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, err = process.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    result = subprocess.CompletedProcess(command, process.returncode, out, err)
    if process.returncode not in (0, 1):
        sys.exit(f"{command[2]} failed ({process.returncode}): {err[-2000:]}")
    return wall, peak[0], result


def export_model(root: Path) -> Path:
    import keras

    from catdog import export
    from catdog import model as model_lib

    keras.utils.set_random_seed(0)
    model = model_lib.build_classifier(2, _IMAGE_SIZE.value, _WEIGHTS.value)
    return export.export_all(model, ["cats", "dogs"], root, "catdog").saved_model


def link_photos(folder: Path) -> list[Path]:
    linked = []
    for name in ("cats", "dogs"):
        (folder / name).mkdir(parents=True)
        source = sorted((Path(_DATA_DIR.value) / "train" / name).iterdir())
        for path in source[:_PHOTOS.value // 2]:
            (folder / name / path.name).symlink_to(path.resolve())
            linked.append(folder / name / path.name)
    return linked


def stage_seconds(version: Path, photos: list[Path]) -> dict[str, float]:
    """Seconds per photo to read, to decode and resize, and to answer (a batch's forward pass
    through predict_pixels, the same graph serving_default runs after decoding)."""
    import numpy as np
    import tensorflow as tf

    from catdog import images, inference

    sample = photos[:_BATCH_SIZE.value * 2]
    start = time.perf_counter()
    encoded = [p.read_bytes() for p in sample]
    read = time.perf_counter() - start
    start = time.perf_counter()
    pixels = np.stack([tf.cast(images.resize_image(images.decode_image(tf.constant(e)),
                                                   _IMAGE_SIZE.value), tf.float32).numpy()
                       for e in encoded])
    decode = time.perf_counter() - start
    classifier = inference.load_classifier(version)
    classifier.predict(pixels[:_BATCH_SIZE.value])  # traced once
    start = time.perf_counter()
    for i in range(0, len(pixels), _BATCH_SIZE.value):
        classifier.predict(pixels[i:i + _BATCH_SIZE.value])
    forward = time.perf_counter() - start
    return {"read": read / len(sample), "decode and resize": decode / len(sample),
            "VGG16 forward": forward / len(sample)}


def main(argv: list[str]) -> None:
    del argv
    work = Path(tempfile.mkdtemp(prefix="catdog-batch-bench-"))
    version = export_model(work / "export")
    photos = link_photos(work / "photos")
    python = sys.executable
    batch = [python, "-m", "catdog.batch", f"--model={version}", f"--input={work / 'photos'}",
             f"--batch_size={_BATCH_SIZE.value}"]
    commands = {
        "catdog.predict --format=jsonl": [python, "-m", "catdog.predict", f"--model={version}",
                                          "--format=jsonl", f"--batch_size={_BATCH_SIZE.value}",
                                          str(work / "photos")],
        "catdog.batch, 1 worker": [*batch, f"--output={work / 'one' / 'labels'}"],
        "catdog.batch, 2 worker processes": [
            *batch, f"--output={work / 'two' / 'labels'}", "--", "--direct_num_workers=2",
            "--direct_running_mode=multi_processing"],
    }
    print(f"{machine.cpu_description()}; {len(photos)} photos at "
          f"{_IMAGE_SIZE.value} px, batch {_BATCH_SIZE.value}, weights {_WEIGHTS.value}")
    print("| command | wall s | images/s | peak memory (process tree) |")
    print("|---|---:|---:|---:|")
    for name, command in commands.items():
        wall, peak, _ = timed(command)
        print(f"| `{name}` | {wall:.1f} | {len(photos) / wall:.1f} | {peak / 1024:.0f} MiB |",
              flush=True)
    stages = stage_seconds(version, photos)
    print("per photo, in one process: " + ", ".join(
        f"{name} {seconds * 1000:.1f} ms" for name, seconds in stages.items()))


if __name__ == "__main__":
    app.run(main)
