"""The sweep's Optuna study: where it is stored, what Ray's OptunaSearch writes into it, warm starts.

Every Optuna-guided sweep keeps its study in storage another process can read while the sweep runs:
by default Optuna's journal file `<run dir>/optuna.journal` (appends under a lock file: safe on NFS,
where SQLite's locking is not), or `sweep.storage=<RDB URL>` (sqlite:///, postgresql://, mysql://),
which several drivers and `optuna-dashboard` can share. `study.json` in the run dir says where it is.

Ray's OptunaSearch already reports each evaluation as an intermediate value, but it tells an early
stopped trial COMPLETE with its last value, raises if a resumed trial reports to a finished Optuna
trial, and never hears of the trials Tune stops all at once (a time budget). SweepSearch fixes these
with Optuna's own API; StudyCloser settles what is left when the experiment ends.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from medsweep.config import ConfigError
from medsweep.rundir import JOURNAL_FILE, STUDY_FILE, RunDir, atomic_write
from medsweep.search import budget
from medsweep.search.leaderboard import end_status

# User attributes medsweep sets on the Optuna trials it creates.
RAY_TRIAL = "ray_trial_id"
EXPERIMENT = "medsweep_experiment"
STATUS = "medsweep_status"  # completed | early_stopped | budget_stopped | error | not_started | orphaned
WARM_FROM = "warm_start_from"


def is_url(storage: str) -> bool:
    return "://" in storage


def storage_url(config: dict) -> str:
    """sweep.storage, or the journal file in the run dir (absolute: Ray's workers and a dashboard
    started elsewhere read the same file)."""
    return config["sweep"]["storage"] or str(RunDir.of(config).journal)


def study_name(config: dict) -> str:
    return config["sweep"]["study_name"] or config["sweep"]["name"]


def open_storage(url: str):
    """An Optuna storage for a URL (RDB) or a file path (journal)."""
    from optuna.storages.journal import JournalFileBackend

    if is_url(url):
        return optuna.storages.RDBStorage(url)
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(url))


def redacted(url: str) -> str:
    """The storage as it may be written down: an RDB URL without its password."""
    if not is_url(url):
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def directions(sweep: dict) -> list[str]:
    from medsweep.plan import objectives

    return [objective.direction for objective in objectives(sweep)]


def recorded_objectives(config: dict) -> dict:
    """What study.json records of the objective (and a warm start compares): the primary metric and
    mode, and the multi-objective lists as configured."""
    from medsweep.plan import primary

    sweep, first = config["sweep"], primary(config)
    return {"metric": first.metric, "mode": first.mode, "metrics": list(sweep["metrics"]), "modes": list(sweep["modes"])}


def check_storage(config: dict) -> None:
    """Before Ray starts: an RDB URL that cannot be opened, or a study of that name that optimises in
    another direction, is one line."""
    url = storage_url(config)
    if not is_url(url):
        if not Path(url).exists():
            return
    elif not url.split("://", 1)[0].split("+")[0] in ("sqlite", "postgresql", "mysql"):
        raise ConfigError(f"sweep.storage must be a file path or a sqlite://, postgresql:// or mysql:// URL, got {redacted(url)!r}")
    try:
        storage = open_storage(url)
        existing = {s.study_name: s for s in storage.get_all_studies()}
    except Exception as exc:  # noqa: BLE001  any driver/connection/journal error, as one line
        raise ConfigError(f"sweep.storage {redacted(url)!r} cannot be opened: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    found = existing.get(study_name(config))
    wanted = directions(config["sweep"])
    if found is not None and [d.name.lower() for d in found.directions] != wanted:
        raise ConfigError(f"study {study_name(config)!r} in {redacted(url)} optimises "
                          f"{[d.name.lower() for d in found.directions]}, this sweep {wanted}; set sweep.study_name")


def write_study_file(config: dict, experiment: str) -> None:
    """study.json: where the study is and what it optimises (what a warm start checks)."""
    sweep = config["sweep"]
    run_dir = Path(config["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(RunDir(run_dir).study_file, json.dumps({
        "storage": redacted(storage_url(config)), "study_name": study_name(config), "experiment": experiment,
        **recorded_objectives(config), "search_space": sweep["search_space"],
        "dashboard": f"optuna-dashboard {redacted(storage_url(config))}",
    }, indent=2, default=str))


def best_intermediate(frozen, mode: str):
    """A trial's best evaluation, by the one rule (plan.Objective); None when it has none."""
    from medsweep.plan import Objective

    return Objective("", mode).best_value(frozen.intermediate_values.values())


class SweepSearch(OptunaSearch):
    """Ray's OptunaSearch, recording into the sweep's study (see the module docstring).

    `experiment` is Ray's experiment folder: every Optuna trial this searcher creates is tagged with
    it, so that settle() finishes this experiment's trials and no other driver's. `warm_trials` are
    the earlier sweeps' trials (warm_start_trials), added before the first new one.

    Ray saves a searcher into the experiment state by pickling its __dict__ (OptunaSearch.save) and
    puts that back into the searcher of a resumed sweep (restore): both live there as attributes,
    and the class is importable by name, so a save/restore round trip keeps them.
    """

    def __init__(self, *, experiment: str, warm_trials: list | None = None, **kwargs):
        # Set before OptunaSearch.__init__: given a space, it sets the study up at once (_setup_study).
        self._experiment = experiment
        self._warm_trials = list(warm_trials or [])
        super().__init__(**kwargs)

    def _setup_study(self, mode):
        # The earlier sweeps' trials go in before the points to evaluate (the base configuration) are
        # enqueued, so the study's trial numbers follow what was known, then what this sweep tries.
        # (space.check_points has validated the points already.)
        points, self._points_to_evaluate = self._points_to_evaluate, []
        super()._setup_study(mode)
        self._name_the_objectives()
        self._add_warm_trials(self._warm_trials)
        for point in points or []:
            self._ot_study.enqueue_trial(point)
        self._points_to_evaluate = points

    def _name_the_objectives(self) -> None:
        """The study says what it optimises (optuna-dashboard shows "val_f1_macro", not "Objective 0")."""
        names = list(self.metric) if isinstance(self.metric, list) else [self.metric]
        if not all(names) or self._ot_study.metric_names == names:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # set_metric_names is marked experimental
            self._ot_study.set_metric_names(names)

    def _add_warm_trials(self, trials: list) -> None:
        """The earlier sweeps' trials, before the first new one, so TPE models them at once.
        A study shared with another driver may hold them already: each is added once."""
        if not trials:
            return
        present = {(t.user_attrs.get(WARM_FROM), t.user_attrs.get("source_trial"))
                   for t in self._ot_study.get_trials(deepcopy=False)}
        for trial in trials:
            if (trial.user_attrs[WARM_FROM], trial.user_attrs["source_trial"]) not in present:
                self._ot_study.add_trial(trial)

    def _frozen(self, trial_id: str):
        ot_trial = self._ot_trials.get(trial_id)
        return None if ot_trial is None else self._ot_study._storage.get_trial(ot_trial._trial_id)

    def suggest(self, trial_id: str):
        fresh = trial_id not in self._ot_trials
        params = super().suggest(trial_id)
        if fresh:
            # Which Ray trial this is: a dashboard reader can find it in the leaderboard, and
            # the end of the experiment can settle it (StudyCloser).
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr(RAY_TRIAL, trial_id)
            ot_trial.set_user_attr(EXPERIMENT, self._experiment)
        return params

    def on_trial_result(self, trial_id: str, result: dict):
        if isinstance(self.metric, list):
            return  # Optuna takes no intermediate values for several objectives
        frozen = self._frozen(trial_id)
        # A resumed sweep replays evaluations the study already holds, or reports to a trial
        # the study finished before the driver stopped: Optuna refuses both.
        if (frozen is None or frozen.state.is_finished() or self.metric not in result
                or result.get("training_iteration") in frozen.intermediate_values):
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        frozen = self._frozen(trial_id)
        if frozen is None or frozen.state.is_finished():
            self._completed_trials.add(trial_id)
            return
        ot_trial = self._ot_trials[trial_id]
        # Trials say whether their last evaluation was the final step; a scheduler stopped the others.
        status = "error" if error else end_status(result)
        final = status == "completed"
        ot_trial.set_user_attr(STATUS, status)
        if error or not result or isinstance(self.metric, list):
            # Multi-objective Optuna has no pruning: Ray's tell (last values) stands.
            return super().on_trial_complete(trial_id, result, error)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Tune hands a trial's last result to on_trial_complete only: it is an evaluation too.
            self.on_trial_result(trial_id, result)
            frozen = self._frozen(trial_id)
            if final:
                # Each trial keeps (and promotion uses) its best evaluation: that is its value.
                value = best_intermediate(frozen, self.mode)
                value = value if value is not None else result.get(self.metric)
                self._ot_study.tell(ot_trial, value, state=optuna.trial.TrialState.COMPLETE)
            else:
                # ASHA stopped it: PRUNED, valued by Optuna at its last intermediate value.
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def make_searcher(**kwargs) -> SweepSearch:
    """The sweep's Optuna searcher (OptunaSearch's arguments, plus `experiment` and `warm_trials`)."""
    return SweepSearch(**kwargs)


def settle(url: str, name: str, experiment: str, trials: list, budget_stopped: bool) -> int:
    """Finish the Optuna trials this experiment left RUNNING; returns how many.

    Tune stops every trial at once when a stopper ends the experiment (the time budget), without
    telling the searcher: those with evaluations become PRUNED (budget_stopped), the ones that
    never started FAIL (not_started). A trial the driver asked for just before it was killed, and
    that Ray's restored state does not know, FAILs as orphaned. Other drivers' trials are left alone."""
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    known = {t.trial_id for t in trials}
    settled = 0
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if frozen.user_attrs.get(EXPERIMENT) != experiment:
            continue
        ray_id = frozen.user_attrs.get(RAY_TRIAL)
        if ray_id in known and frozen.intermediate_values:
            state, status = optuna.trial.TrialState.PRUNED, "budget_stopped" if budget_stopped else "stopped"
        else:
            state, status = optuna.trial.TrialState.FAIL, "not_started" if ray_id in known else "orphaned"
        study._storage.set_trial_user_attr(frozen._trial_id, STATUS, status)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study.tell(frozen.number, state=state)
        settled += 1
    return settled


class StudyCloser(Callback):
    """A Ray callback that settles the study when the experiment ends (see settle)."""

    def __init__(self, url: str, name: str, experiment: str, run_dir: Path):
        self.url, self.name, self.experiment, self.run_dir = url, name, experiment, run_dir

    def on_experiment_end(self, trials, **info):
        settle(self.url, self.name, self.experiment, trials, budget.exhausted(self.run_dir))


def closer(config: dict, experiment: str) -> StudyCloser:
    """The callback that settles this config's study when `experiment` ends."""
    return StudyCloser(storage_url(config), study_name(config), experiment, Path(config["run_dir"]).resolve())


# --- warm start ------------------------------------------------------------------------------------

def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"sweep.warm_start: {path.parent} has no {path.name} ({what})") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"sweep.warm_start: {path} cannot be read: {exc}") from None


def warm_start_trials(config: dict, fingerprints: dict | None = None) -> list:
    """The earlier sweeps' finished trials as Optuna FrozenTrials for this sweep's study: their
    configurations and best values. With `fingerprints` (the new splits'), first check that each
    earlier run is comparable: same splits, same objective, same search dimensions. ConfigError
    (one line, naming the difference) otherwise."""
    from medsweep.search.space import build_search_space

    sweep = config["sweep"]
    if not sweep["warm_start"]:
        return []
    if sweep["searcher"] != "optuna":
        raise ConfigError("sweep.warm_start needs sweep.searcher=optuna (it hands TPE the earlier trials)")
    distributions = OptunaSearch.convert_search_space(build_search_space(sweep["search_space"], config))
    primary_mode = recorded_objectives(config)["mode"]
    out = []
    for source in sweep["warm_start"]:
        run_dir = Path(source).expanduser().resolve()
        if not run_dir.is_dir():
            raise ConfigError(f"sweep.warm_start: {source} is not a run directory")
        recorded = read_json(RunDir(run_dir).study_file, "the study record a sweep writes")
        if fingerprints is not None:
            earlier = read_json(RunDir(run_dir).data_summary, "the split fingerprints").get("fingerprints", {})
            for split in ("train", "validation", "test"):
                if earlier.get(split) != fingerprints.get(split):
                    raise ConfigError(f"sweep.warm_start: {source} used a different {split} split "
                                      f"(fingerprint {earlier.get(split)} vs {fingerprints.get(split)}): its scores are not comparable")
        for key, value in recorded_objectives(config).items():
            if recorded.get(key) != value:
                raise ConfigError(f"sweep.warm_start: {source} optimised sweep.{key}={recorded.get(key)!r}, "
                                  f"this sweep {value!r}")
        url = recorded.get("storage") or str(RunDir(run_dir).journal)
        if is_url(url) and url == redacted(storage_url(config)):
            url = storage_url(config)  # the same database as this sweep's: the URL with its password
        if not is_url(url) and not Path(url).is_file():
            url = str(RunDir(run_dir).journal)  # the run dir was moved since
            if not Path(url).is_file():
                raise ConfigError(f"sweep.warm_start: {source} has no Optuna study ({JOURNAL_FILE})")
        try:
            storage = open_storage(url)
            earlier_study = optuna.load_study(study_name=recorded["study_name"], storage=storage)
        except Exception as exc:  # noqa: BLE001  a missing or unreadable study, as one line
            raise ConfigError(f"sweep.warm_start: the study of {source} cannot be read: {type(exc).__name__}: {exc}") from None
        for frozen in earlier_study.get_trials(deepcopy=False):
            if frozen.user_attrs.get(WARM_FROM):
                continue  # that sweep's own warm start: take it from its source, once
            check_dimensions(source, frozen.params, distributions)
            value = (frozen.values if len(directions(sweep)) > 1 else
                     best_intermediate(frozen, primary_mode) if frozen.intermediate_values else frozen.value)
            if frozen.state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) or value is None:
                continue
            out.append(optuna.trial.create_trial(
                params=dict(frozen.params), distributions=distributions,
                value=None if isinstance(value, list) else value, values=value if isinstance(value, list) else None,
                user_attrs={WARM_FROM: str(run_dir), "source_trial": frozen.number,
                            RAY_TRIAL: frozen.user_attrs.get(RAY_TRIAL), STATUS: "warm_start"}))
    return out


def check_dimensions(source: str, params: dict, distributions: dict) -> None:
    """An earlier trial must set exactly this sweep's dimensions, each inside this sweep's range."""
    label = lambda name: name.replace("/", ".")
    if missing := sorted(set(distributions) - set(params)):
        raise ConfigError(f"sweep.warm_start: {source} did not search {label(missing[0])}, which this sweep does")
    if extra := sorted(set(params) - set(distributions)):
        raise ConfigError(f"sweep.warm_start: {source} searched {label(extra[0])}, which this sweep does not")
    for name, value in params.items():
        distribution = distributions[name]
        try:
            inside = distribution._contains(distribution.to_internal_repr(value))
        except (ValueError, TypeError):
            inside = False
        if not inside:
            raise ConfigError(f"sweep.warm_start: {source} tried {label(name)}={value!r}, outside this sweep's "
                              f"search space for it ({distribution})")
