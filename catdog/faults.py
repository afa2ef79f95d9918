"""Named crash points: the moments between two writes where a killed writer would leave the disk
in a state of its own, so that the tests can kill it at each of them once, as databases test
their recovery, instead of at random moments that may miss one.

A writer calls `crash_point("<name>")` at each such moment. It does nothing unless the
environment variable CATDOG_CRASH_AT names that point: then the process SIGKILLs itself there,
as a power cut or the OOM killer would, with no Python cleanup (`finally`, atexit) run. The
tests (tests/test_faults.py and the writers' own) read POINTS to kill at every one.
"""

from __future__ import annotations

import os
import signal

CRASH_AT = "CATDOG_CRASH_AT"

# Each point: where the writer stands when it is killed there.
POINTS = {
    # catdog.data prepare (catdog/prepare.py), writing its folder of shards
    "prepare.split_written": "a split's shards are in the temporary folder, the manifest not yet",
    "prepare.manifest_written": "the temporary folder is whole, not yet renamed to --output_dir",
    # training (catdog/train.py, catdog/checkpoints.py)
    "train.epoch_recorded": "the epoch's metrics.csv row is written, its checkpoint not yet",
    "checkpoints.best_saved": "the best-epoch checkpoint is written, the last-epoch one not yet",
    # the candidate's export (catdog/export.py)
    "export.saved_model_written": "the SavedModel is whole in its temporary folder, not renamed",
    "export.saved_model_renamed": "the candidate's SavedModel is in place, its .h5 not yet",
    "export.h5_written": "the .h5 is whole in its temporary file, not renamed",
    # publishing and rolling back (catdog/versions.py)
    "publish.record_written": "the candidate holds its gate.json, it is not yet moved",
    "publish.moved": "the new version is in the base path, the published .h5 is still the old",
    "publish.h5_half_copied": "half the new .h5 is in the published .h5's temporary",
    "publish.h5_copied": "the new .h5 is whole in its temporary, not yet renamed",
    "rollback.moved": "the newest version is back among the candidates, its record not updated",
}


def crash_point(name: str) -> None:
    """SIGKILLs this process if CATDOG_CRASH_AT names this point; a no-op otherwise."""
    if os.environ.get(CRASH_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)
