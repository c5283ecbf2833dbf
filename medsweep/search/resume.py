"""A killed driver's saved Tune state, made consistent before the same command resumes it.

Tune saves the trial list (experiment_state-*.json) and the search state (search_gen_state-*.json, a
pickle: how many trials were created, the concurrency limiter's live trials) as separate files, and
copies them from its staging folder into the run dir on a background thread. A driver killed -9
during that copy leaves the two from different moments. Resumed as they are:

- search state newer: Tune believes it created trials its list does not hold and stops early (seen:
  a resume that exited 0 with 21 of 40 trials), and the limiter counts them as running forever;
- trial list newer: Tune would create more trials than sweep.num_trials.

And Tune saves its state on its own clock (every 10 s or more, search/checkpoints.py), so a trial can
finish after the last save: the saved list still has it running, from an earlier checkpoint, and Tune
would run its last evaluations again (seen: 3 of 502 finished trials, killed at 500 of 1,000).

`reconcile` marks the trials the killed driver finished (their leaderboard rows: their study trials
are told and their tracker runs closed) finished in the saved list, counts the trials Tune knows plus
those finished that it does not, and keeps only live trials Tune will resume. Ray's own loader and
saver read and write the search state Tuner.restore loads next.
"""

from __future__ import annotations

import json
from pathlib import Path

FINISHED = ("TERMINATED", "ERROR")


def saved_trials(experiment: Path) -> dict[str, str]:
    """Trial id -> status in the newest saved trial list ({} when there is none)."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return {}
    trials = (json.loads(trial) for trial, _ in json.loads(states[-1].read_text())["trial_data"])
    return {trial["trial_id"]: trial["status"] for trial in trials}


def finish_saved(experiment: Path, finished: set[str]) -> int:
    """Mark TERMINATED, in the newest saved trial list, the trials in `finished` it has unfinished;
    returns how many. Written whole to a temporary file, then renamed over it."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states or not finished:
        return 0
    saved = json.loads(states[-1].read_text())
    count = 0
    for entry in saved["trial_data"]:
        trial = json.loads(entry[0])
        if trial["trial_id"] in finished and trial["status"] not in FINISHED:
            trial["status"] = "TERMINATED"
            entry[0] = json.dumps(trial)
            count += 1
    if count:
        temporary = states[-1].with_name(f"tmp-{states[-1].name}")
        temporary.write_text(json.dumps(saved))
        temporary.replace(states[-1])
    return count


def reconcile(experiment: str, finished: set[str]) -> str | None:
    """Make the newest saved trial list and search state agree with each other and with the
    leaderboard (see the module docstring); `finished`: the trial ids the leaderboard holds. Returns
    what was changed, in words, or None. An experiment on remote storage (a URI) is left as it is:
    Tune's upload there is the same copy, but this reads local files."""
    from ray.tune.search.search_generator import SearchGenerator
    from ray.tune.utils.util import _atomic_save, _load_newest_checkpoint

    experiment = Path(experiment)
    if not experiment.is_dir():
        return None
    changes = []
    ended = finish_saved(experiment, finished)
    if ended:
        changes.append(f"{ended} finished trial(s) the saved list had running")
    trials = saved_trials(experiment)
    pattern = SearchGenerator.CKPT_FILE_TMPL.format("*")
    state = _load_newest_checkpoint(str(experiment), pattern) if trials else None
    if not state or "counter" not in state:
        return ", ".join(changes) or None
    searched = len(changes)
    created = len(trials) + len(finished - set(trials))
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
    if len(changes) > searched:
        newest = max(experiment.glob(pattern)).name
        _atomic_save(state, str(experiment), newest, f"tmp-{newest}")
    return ", ".join(changes) or None
