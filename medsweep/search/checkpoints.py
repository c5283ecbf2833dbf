"""Which checkpoints a trial keeps with cluster.periodic_saves, and when the others are deleted.

A trial keeps two checkpoints: its best evaluation by the primary objective (what promotion
releases) and its latest (what a retried or resumed trial continues from): the two Ray keeps with
`CheckpointConfig(num_to_keep=1)`, medsweep's default. Ray deletes the others as each new one arrives,
and so that its saved experiment state never names a deleted checkpoint, it then rewrites that state
(the whole trial list, ~20 KB a trial) after every trial checkpoint: O(trials) bytes per evaluation,
half the driver's time at 400 trials and more after (experiments/bench_cluster.py, docs/benchmarks.md).

With cluster.periodic_saves Ray keeps them all (num_to_keep=None: it saves its state on its own
clock, at most ~5% of the time) and KeepBest deletes a finished trial's other checkpoints once Ray's
saved state says the trial finished. A resumed sweep never restores a finished trial, so no state a
resume can read names a checkpoint it would load and cannot find. The cost: a running trial holds
every checkpoint it made (at most trainer.evaluations) until it ends, and a finished one its others
for a few seconds more. What a kill -9 costs then is in config.py (ClusterConfig.periodic_saves).
"""

from __future__ import annotations

import time
from fnmatch import fnmatch

from ray.tune import Callback

from medsweep.search.resume import FINISHED, STATE_FILES


class KeepBest(Callback):
    """Deletes each finished trial's checkpoints but its best and its latest, after Ray has saved
    the state that says it finished (two saves later: the first file that lands may be an upload Ray
    started before the trial ended; the second was started after that one had landed)."""

    CHECK_S = 1.0  # how often the saved state's modification time is looked at

    def __init__(self):
        self.pending: list[tuple[int | None, object]] = []  # (saved state's mtime_ns when it ended, trial)
        self.seen: list[int] = []  # the saved state's mtimes, as they change
        self.pruned: set[str] = set()  # trial ids
        self._state = None  # (filesystem, path) of Ray's saved experiment state, once it exists
        self._checked = 0.0

    def __getstate__(self):
        # Pickled with the Tuner (a resumed sweep gets its callbacks back): trials and a filesystem
        # handle are this driver's.
        return {}

    def __setstate__(self, state):
        self.__init__()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.pending.append((self._saved_mtime(trial), trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.on_trial_complete(iteration, trials, trial)

    def on_step_end(self, iteration, trials, **info):
        if not self.pending or time.monotonic() - self._checked < self.CHECK_S:
            return
        self._checked = time.monotonic()
        mtime = self._saved_mtime(self.pending[0][1])
        if mtime is not None and (not self.seen or mtime != self.seen[-1]):
            self.seen.append(mtime)
        waiting = []
        for ended, trial in self.pending:
            if sum(1 for m in self.seen if ended is None or m > ended) >= 2:
                self._prune(trial)
            else:
                waiting.append((ended, trial))
        self.pending = waiting
        # Saves from before the oldest waiting trial ended count for none (the last one is kept to
        # tell the next change): the list stays as short as the saves one trial waits for.
        if all(ended is not None for ended, _ in waiting):
            oldest = min((ended for ended, _ in waiting), default=self.seen[-1] if self.seen else 0)
            self.seen = self.seen[-1:] if not self.seen or self.seen[-1] <= oldest else [m for m in self.seen if m > oldest]

    def on_experiment_end(self, trials, **info):
        # tune.run saves the final state and waits for it before the callbacks hear of the end (not
        # when the loop raised: then only a newer saved state lets a trial go). Finished trials this
        # driver never saw end (a killed driver's) go too: the saved state says they finished.
        now = self._saved_mtime(trials[0]) if trials else None
        ending = {trial.trial_id for ended, trial in self.pending if now is None or (ended is not None and now <= ended)}
        for trial in trials:
            if trial.status in FINISHED and trial.trial_id not in ending:
                self._prune(trial)
        self.pending = []

    def _prune(self, trial) -> None:
        if trial.trial_id not in self.pruned:
            prune(trial)
            self.pruned.add(trial.trial_id)

    def _saved_mtime(self, trial) -> int | None:
        from pyarrow.fs import FileSelector, FileType

        storage = trial.storage
        fs = storage.storage_filesystem
        if self._state is None:
            files = fs.get_file_info(FileSelector(storage.experiment_fs_path))
            names = [f for f in files if fnmatch(f.base_name, STATE_FILES)]
            if not names:
                return None
            # One file per driver session: this driver's is the newest.
            self._state = (fs, max(names, key=lambda f: f.mtime_ns or 0).path)
        info = self._state[0].get_file_info(self._state[1])
        return None if info.type == FileType.NotFound else info.mtime_ns


def prune(trial) -> int:
    """Delete the trial's checkpoints but its best (the one ResultGrid.best_checkpoints ranks first
    by the same rule: promotion.ranking.kept_run) and its latest; returns how many were deleted."""
    manager = trial.run_metadata.checkpoint_manager
    keep = {id(manager.best_checkpoint_result), id(manager.latest_checkpoint_result)}
    deleted = 0
    for result in manager.best_checkpoint_results:
        if id(result) in keep:
            continue
        checkpoint = result.checkpoint
        try:
            checkpoint.filesystem.delete_dir(checkpoint.path)
            deleted += 1
        except FileNotFoundError:
            pass  # pruned already (a resumed sweep prunes its finished trials again at the end)
    return deleted
