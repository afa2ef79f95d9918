"""`python -m catdog.data check|download|prepare`: the dataset verbs, over catdog.data and
catdog.prepare (kept apart from both so that neither imports the other's command line)."""

from __future__ import annotations

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
import sys
from collections.abc import Sequence
from pathlib import Path

from absl import flags

from catdog import data, prepare
from catdog.errors import CatdogError


def main(argv: Sequence[str]) -> int:
    command, values = argv[1:2], flags.FLAGS
    if command == ["check"] and len(argv) <= 3:
        return check(argv[2] if len(argv) == 3 else values.data_dir, values.max_image_pixels)
    if command == ["download"] and len(argv) == 2:
        data.download_dataset(values.download_url, values.data_dir, values.download_sha256)
        return 0
    if command == ["prepare"] and len(argv) == 2:
        manifest = prepare.prepare(values.data_dir, values.output_dir, values.image_size,
                                   values.validation_split, values.seed,
                                   values.max_image_pixels, values.shard_images)
        for item in manifest["skipped"]:
            print(f"{item['path']}: {item['reason']}", file=sys.stderr)
        counts = {name: sum(entry["counts"].values())
                  for name, entry in manifest["splits"].items()}
        print(f"prepared {counts['train']} training and {counts['validation']} validation "
              f"images at {values.image_size} px in {values.output_dir} "
              f"({len(manifest['skipped'])} bad file(s) left out)")
        return 0
    raise CatdogError(f"usage: {USAGE}")


USAGE = ("python -m catdog.data check [DIR | --data_dir=DIR] | download [--data_dir=DIR] | "
         "prepare --data_dir=DIR --output_dir=OUT [--image_size=N]")


def check(folder: str, max_pixels: int) -> int:
    """`check`: lists the files training would skip (exit 1 if any); a prepared folder's shards
    are checked against its manifest instead."""
    if data.is_prepared(folder):
        count = data.verify_shards(Path(folder), data.read_manifest(Path(folder)))
        print(f"{folder} is prepared data: its {count} shards match the sha256s in "
              f"{data.PREPARED_MANIFEST}")
        return 0
    bad = data.check_folder(folder, max_pixels)
    for item in bad:
        print(f"{item.path}: {item.reason}")
    print(f"{len(bad)} bad file(s)", file=sys.stderr)
    return 1 if bad else 0


def run() -> None:
    """The `catdog-data` console script (and `python -m catdog.data`)."""
    from catdog import cli

    cli.run_command("data", main)


if __name__ == "__main__":
    run()
