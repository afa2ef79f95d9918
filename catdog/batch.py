"""Label photos in bulk on Apache Beam: `python -m catdog.batch --model=export/catdog
--input='photos/**' --output=out/labels [-- BEAM_PIPELINE_OPTIONS]`.

Every image file the input matches gets one record, the same record `catdog.predict
--format=jsonl` writes (path, label, probability, probabilities; or path, error), in JSON lines,
Parquet, or TF Serving PredictionLogs. Local by default (Beam's FnApiRunner, which needs no
download); Beam's own options after `--` choose another runner (Dataflow, Flink, Spark) or local
worker processes. Needs the `beam` extra. The pipeline is catdog/bulk_inference.py.
"""

from __future__ import annotations

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
import logging as std_logging
import os
import sys
from collections.abc import Sequence

from catdog.commands import BATCH_USAGE
from catdog.errors import CatdogError

USAGE = BATCH_USAGE
INSTALL = "pip install 'catdog[beam]' (in a clone: pip install -e '.[beam]')"


def main(argv: Sequence[str]) -> int:
    from absl import flags

    try:
        from catdog import bulk_inference
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] in ("apache_beam", "pyarrow"):
            raise CatdogError(f"catdog.batch runs on Apache Beam, which is not installed: "
                              f"{INSTALL}") from None
        raise
    f = flags.FLAGS
    if not f["verbosity"].present:  # a failed step is catdog's one line, not Beam's log too
        std_logging.getLogger("apache_beam").setLevel(std_logging.CRITICAL)
    options = bulk_inference.pipeline_options(argv[1:])
    version = bulk_inference.resolve_version(f.model)
    patterns = bulk_inference.input_patterns(f.input)
    bulk_inference.check_input(f.input, patterns)
    model_name = f.model_name or os.path.basename(os.path.dirname(version)) or "catdog"
    print(f"labelling {f.input} with {version} ({f.format} to {f.output}*)", file=sys.stderr,
          flush=True)
    found = bulk_inference.run_labelling(options, patterns, version, f.output, f.format,
                                         f.batch_size, f.max_image_pixels, model_name)
    print(f"labelled {found['labelled']} photos, {found['failed']} failed"
          + (f", {found['skipped']} files skipped (not images)" if found["skipped"] else "")
          + f"; records in {f.output}*", file=sys.stderr, flush=True)
    return 1 if found["failed"] else 0


def run() -> None:
    """The `catdog-batch` console script (and `python -m catdog.batch`)."""
    from catdog import cli

    cli.run_command("batch", main)


if __name__ == "__main__":
    run()
