"""`python -m catdog.data check|download|prepare`: the dataset verbs, over catdog.data and
catdog.prepare (kept apart from both so that neither imports the other's command line)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from catdog import data, prepare
from catdog.errors import CatdogError


def main(argv: Sequence[str]) -> int:
    command, values = argv[1:2], flags.FLAGS
    if command == ["check"] and len(argv) == 3:
        bad = data.check_folder(argv[2], values.max_image_pixels)
        for item in bad:
            print(f"{item.path}: {item.reason}")
        print(f"{len(bad)} bad file(s)", file=sys.stderr)
        return 1 if bad else 0
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
    raise CatdogError("usage: python -m catdog.data check DIR | download [--data_dir=DIR] | "
                      "prepare --data_dir=DIR --output_dir=OUT [--image_size=N]")


def run() -> None:
    """The `catdog-data` console script (and `python -m catdog.data`)."""
    from catdog import cli
    from catdog import flags as catdog_flags

    cli.run(main, catdog_flags.define_data_flags)


if __name__ == "__main__":
    run()
