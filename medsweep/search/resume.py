"""A killed driver's saved Tune state, made consistent before the same command resumes it.

Tune saves the trial list (experiment_state-*.json) and the search state (search_gen_state-*.json, a
pickle: how many trials were created, the concurrency limiter's live trials) as separate files, and
copies them from its staging folder into the run dir on a background thread. A driver killed -9
during that copy leaves the two from different moments. Resumed as they are:

- search state newer: Tune believes it created trials its list does not hold and stops early (seen:
  a resume that exited 0 with 21 of 40 trials), and the limiter counts them as running forever;
- trial list newer: Tune would create more trials than sweep.num_trials.

`reconcile` counts the trials Tune knows plus those the killed driver finished that it does not
(their leaderboard rows), and keeps only live trials Tune will resume. Ray's own loader and saver
read and write the file Tuner.restore loads next.
"""

from __future__ import annotations

import json
from pathlib import Path

FINISHED = ("TERMINATED", "ERROR")
STATE_FILES = "experiment_state-*.json"  # Tune's saved trial list, one file per driver session


def saved_trials(experiment: Path) -> dict[str, str]:
    """Trial id -> status in the newest saved trial list ({} when there is none)."""
    states = sorted(experiment.glob(STATE_FILES))
    if not states:
        return {}
    trials = (json.loads(trial) for trial, _ in json.loads(states[-1].read_text())["trial_data"])
    return {trial["trial_id"]: trial["status"] for trial in trials}


def reconcile(experiment: str, finished: set[str]) -> str | None:
    """Make the newest search state agree with the newest trial list (see the module docstring);
    `finished`: the trial ids the leaderboard holds. Returns what was changed, in words, or None. An experiment on remote storage (a URI) is left
    as it is: Tune's upload there is the same copy, but this reads local files."""
    from ray.tune.search.search_generator import SearchGenerator
    from ray.tune.utils.util import _atomic_save, _load_newest_checkpoint

    experiment = Path(experiment)
    if not experiment.is_dir():
        return None
    trials = saved_trials(experiment)
    pattern = SearchGenerator.CKPT_FILE_TMPL.format("*")
    state = _load_newest_checkpoint(str(experiment), pattern) if trials else None
    if not state or "counter" not in state:
        return None
    created = len(trials) + len(finished - set(trials))
    changes = []
    if state["counter"] != created:
        changes.append(f"trials created {state['counter']} -> {created}")
        state["counter"] = created
        state["finished"] = created >= state["total_samples"]
    limiter = state.get("name:ConcurrencyLimiter")
    if limiter is not None:
        live = {trial_id for trial_id in limiter["live_trials"] if trials.get(trial_id) not in (None, *FINISHED)}
        if live != limiter["live_trials"]:
            changes.append(f"live trials {len(limiter['live_trials'])} -> {len(live)}")
            limiter["live_trials"], limiter["num_unfinished_live_trials"] = live, len(live)
    if not changes:
        return None
    newest = max(experiment.glob(pattern)).name
    _atomic_save(state, str(experiment), newest, f"tmp-{newest}")
    return ", ".join(changes)
