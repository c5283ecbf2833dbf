"""Experiment trackers: the Tracker interface, and Weights & Biases, offline first (`tracker=wandb`).

One owner of tracking: run.py calls check / trial_callbacks / finish_callbacks / log_sweep here, and
they dispatch to the configured backend, a Tracker (W&B below, MLflow in mlflow_tracking.py). The
Ray callback that opens, feeds and finishes one tracker run per trial (TrialRuns) is shared: a
backend only says how to open a run, log an evaluation, close it and record the sweep.

The search stays local (W&B's sweep controller needs its server; many hospital clusters are
air-gapped) and W&B only records it:

- one run per trial, `job_type="trial"`: the trial's resolved config, every evaluation's metrics as
  history (step = optimizer step), the best evaluation's values in the summary (`best_*`);
- one run per sweep, `job_type="sweep"`: the leaderboard as a `wandb.Table`, the report's plots and
  the promoted model as an artifact with alias `best`.

All runs of a sweep share the group `sweep.name`. In the default offline mode they are written
under `<tracker.dir or run dir>/wandb/offline-run-*` and uploaded later with `wandb sync`.

Trial runs are opened and finished by a Ray Tune callback in the driver, not inside the trials:
ASHA stops a trial by ending its actor, whose training thread never reaches a `finally`, so a run
opened there would be left unfinished. Ray's
own WandbLoggerCallback also logs from the driver side, but it records only the sampled parameters
as config, keeps the last (not the best) values in the summary, starts two actors per trial and
needs WANDB_MODE in the environment to run without a key; wandb's multi-run support
(`reinit="create_new"`) does the job in the driver process.

Privacy: trial runs get only whitelisted numbers and the config; the sweep run gets the leaderboard,
plots, metrics and the model. Text (validation examples with predictions) is logged only when
`tracker.log_examples=true`. Console capture is off, so nothing a library prints (an error message
quoting an input, say) reaches the tracker either.
"""

from __future__ import annotations

import math
import netrc
import os
import re
from pathlib import Path
from urllib.parse import urlparse

from medsweep.config import ConfigError
from medsweep.evaluation.metrics import METRIC_NAMES, WORST_GROUP_METRIC_NAMES
from medsweep.release import layout
from medsweep.search.leaderboard import TrialResults
from medsweep.search.space import apply_overrides

# What a trial run's history gets from each evaluation; everything else in Ray's result is dropped.
TRIAL_HISTORY_KEYS = (*(f"val_{name}" for name in METRIC_NAMES + WORST_GROUP_METRIC_NAMES), "epoch", "evaluation",
                      "train_seconds")
EXAMPLES_LOGGED = 20


def wandb_enabled(config: dict) -> bool:
    return config["tracker"]["name"] == "wandb" and config["tracker"]["mode"] != "disabled"


class Tracker:
    """A tracking backend. Trial runs are opened, fed and closed from the driver by TrialRuns."""

    def check(self, config: dict) -> None:
        """Preflight, before any trial: raise ConfigError with one line if the backend cannot work."""

    def start(self, config: dict) -> None:
        """Before the first trial (MLflow opens the sweep's parent run here)."""

    def open_trial(self, config: dict, trial_id: str, resolved: dict, sampled: dict):
        raise NotImplementedError

    def log_evaluation(self, run, values: dict, step: int) -> None:
        raise NotImplementedError

    def close_trial(self, run, best: dict, summary: dict, status: str) -> None:
        """`best`: the best evaluation's TRIAL_HISTORY_KEYS values; `summary`: best_step, evaluations, status."""
        raise NotImplementedError

    def log_sweep(self, config: dict, run_dir: Path, report_dir: Path | None) -> Path | None:
        raise NotImplementedError


def backend(config: dict) -> Tracker | None:
    """The configured tracker, or None (tracker=none, or W&B disabled)."""
    name = config["tracker"]["name"]
    if name == "wandb" and wandb_enabled(config):
        return WandbTracker()
    if name == "mlflow":
        from medsweep.reporting.mlflow_tracking import MlflowTracker

        return MlflowTracker()
    return None


def enabled(config: dict) -> bool:
    return backend(config) is not None


def wandb_dir(config: dict) -> Path:
    """The folder that holds W&B's `wandb/` folder of runs."""
    return Path(config["tracker"]["dir"] or config["run_dir"]).resolve()


def check(config: dict) -> None:
    """Preflight: a tracker that cannot work fails before any trial starts. Raises ConfigError."""
    tracker = backend(config)
    if tracker is not None:
        tracker.check(config)


def check_wandb(config: dict) -> None:
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError("tracker=wandb needs the wandb package: pip install wandb") from None
    if config["tracker"]["mode"] == "online" and not has_credentials():
        raise ConfigError("tracker.mode=online but no W&B credentials were found (run `wandb login` or set "
                          "WANDB_API_KEY); or keep tracker.mode=offline and upload later with `wandb sync`")


def has_credentials() -> bool:
    """Whether wandb will find credentials, without asking the server (which may be unreachable)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def init_run(config: dict, *, job_type: str, name: str, run_config: dict):
    import wandb

    tracker = config["tracker"]
    directory = wandb_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=tracker["project"], entity=tracker["entity"], mode=tracker["mode"], dir=str(directory),
        group=config["sweep"]["name"], job_type=job_type, name=name, config=run_config,
        # Several trial runs are open at once in the driver process.
        reinit="create_new",
        settings=wandb.Settings(
            console="off", silent=True, save_code=False,
            # System metrics would be the driver's machine, not the trial's: misleading on a cluster.
            x_disable_stats=True,
        ),
    )


class TrialRuns(TrialResults):
    """One tracker run per trial, written from the driver as Ray reports results."""

    def __init__(self, config: dict, tracker: Tracker | None = None):
        super().__init__(config["sweep"]["metric"], config["sweep"]["mode"])
        self.config = config
        self.tracker = tracker or backend(config)
        self.runs: dict[str, object] = {}

    def _run(self, trial):
        if trial.trial_id not in self.runs:
            resolved = apply_overrides(self.config, trial.config)
            self.runs[trial.trial_id] = self.tracker.open_trial(self.config, trial.trial_id, resolved, trial.config)
        return self.runs[trial.trial_id]

    # --- Ray Tune callback hooks -----------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = int(result.get("step", result["training_iteration"]))  # the optimizer step, when the trial says
        self.tracker.log_evaluation(self._run(trial), {k: result[k] for k in TRIAL_HISTORY_KEYS if k in result}, step)
        super().on_trial_result(iteration, trials, trial, result, **info)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finish(trial.trial_id, self.end_status(trial.trial_id))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.finish(trial.trial_id, "error")

    def on_experiment_end(self, trials, **info):
        self.finish_all()

    # --- finishing ---------------------------------------------------------------------------------
    def finish(self, trial_id: str, status: str) -> None:
        run = self.runs.pop(trial_id, None)
        if run is None:
            return
        best = self.best.get(trial_id, {})
        self.tracker.close_trial(run, {k: best[k] for k in TRIAL_HISTORY_KEYS if k in best},
                                 {"best_step": best.get("step"), "evaluations": self.evaluations.get(trial_id, 0),
                                  "status": status}, status)

    def finish_all(self) -> None:
        """Close every run still open (an interrupted sweep): called from run_sweep's `finally`."""
        for trial_id in list(self.runs):
            self.finish(trial_id, "unfinished")


def trial_callbacks(config: dict) -> list:
    tracker = backend(config)
    if tracker is None:
        return []
    tracker.start(config)
    return [TrialRuns(config, tracker)]


def finish_callbacks(callbacks: list) -> None:
    for callback in callbacks:
        callback.finish_all()


def log_sweep(config: dict, run_dir: str | Path, report_dir: str | Path | None) -> Path | None:
    """The tracker's record of the sweep (leaderboard, plots, promoted model). Returns W&B's folder of
    offline runs (run.py prints how to upload them), else None."""
    tracker = backend(config)
    if tracker is None:
        return None
    return tracker.log_sweep(config, Path(run_dir).resolve(), None if report_dir is None else Path(report_dir))


# --- Weights & Biases -----------------------------------------------------------------------------

class WandbTracker(Tracker):
    def check(self, config: dict) -> None:
        check_wandb(config)

    def open_trial(self, config: dict, trial_id: str, resolved: dict, sampled: dict):
        return init_run(config, job_type="trial", name=f"trial-{trial_id}", run_config={**resolved, "trial_id": trial_id})

    def log_evaluation(self, run, values: dict, step: int) -> None:
        run.log(values, step=step)

    def close_trial(self, run, best: dict, summary: dict, status: str) -> None:
        try:
            # Under best_* keys: the history's last row is flushed at finish and would overwrite
            # same-named summary values with the last evaluation's.
            run.summary.update({f"best_{k}": v for k, v in best.items()})
            run.summary.update(summary)
        finally:
            run.finish(exit_code=1 if status in ("error", "unfinished") else 0)

    def log_sweep(self, config: dict, run_dir: Path, report_dir: Path | None) -> Path | None:
        return log_wandb_sweep(config, run_dir, report_dir)


# --- the sweep-level run ------------------------------------------------------------------------

def artifact_name(run_dir: Path) -> str:
    # One artifact per sweep run: a project-wide name would move `best` to whichever sweep ran last.
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"model-{run_dir.name}")


def log_wandb_sweep(config: dict, run_dir: Path, report_dir: Path | None) -> Path:
    """The sweep run: leaderboard table, report plots, promoted model. Returns the wandb folder."""
    import pandas as pd
    import wandb

    run_dir = Path(run_dir).resolve()
    run = init_run(config, job_type="sweep", name=f"sweep-{run_dir.name}", run_config=config)
    exit_code = 1
    try:
        leaderboard = run_dir / "leaderboard.csv"
        if leaderboard.exists():
            frame = pd.read_csv(leaderboard, dtype={"trial_id": str})
            if not frame.empty:
                run.log({"leaderboard": wandb.Table(dataframe=frame)})
        if report_dir is not None:
            plots = sorted(Path(report_dir).glob("*.png"))
            if plots:
                run.log({f"report/{png.stem}": wandb.Image(str(png), caption=png.stem.replace("_", " "))
                         for png in plots})
        promoted = run_dir / "promoted"
        if (promoted / layout.METRICS_FILE).exists():
            metrics = layout.read_metrics(promoted)
            run.summary.update(sweep_summary(metrics))
            artifact = wandb.Artifact(artifact_name(run_dir), type="model", metadata=artifact_metadata(metrics))
            # The version folder is never modified after promotion: reference it instead of copying
            # the weights into W&B's staging area.
            artifact.add_dir(str(promoted.resolve()), policy="immutable")
            run.log_artifact(artifact, aliases=["best"])
            if config["tracker"]["log_examples"]:
                run.log({"validation_examples": examples_table(config, promoted)})
        exit_code = 0
    finally:
        run.finish(exit_code=exit_code)
    return wandb_dir(config) / "wandb"


def _finite(value):
    return value if not (isinstance(value, float) and math.isnan(value)) else None


def sweep_summary(metrics: dict) -> dict:
    validation = {f"best_{k}": _finite(v) for k, v in metrics["validation"].items() if k.startswith("val_")}
    return {**validation, **{k: _finite(v) for k, v in metrics["test"].items()},
            "best_trial_id": metrics.get("trial_id"), "best_step": metrics["validation"].get("step"),
            "num_trials": metrics.get("num_trials"), "metric": metrics["metric"]}


def artifact_metadata(metrics: dict) -> dict:
    keys = ("metric", "mode", "validation", "test", "label_names", "data_fingerprints", "base_model", "finetune",
            "trial_id", "sweep")
    return {k: metrics[k] for k in keys if k in metrics}


def examples(config: dict, promoted: Path, limit: int = EXAMPLES_LOGGED) -> tuple[list[str], list[list]]:
    """Validation texts with the promoted model's predictions (columns, rows): raw text, hence behind
    log_examples. Every backend logs these same rows."""
    from medsweep import data
    from medsweep.serving.inference import load_promoted

    splits = data.load_splits(config["data"])
    rows = splits.validation.head(limit)
    pairs = rows["text_pair"].tolist() if "text_pair" in rows.columns else None
    probs = load_promoted(promoted).predict(rows["text"].tolist(), pairs)
    names = splits.label_names
    columns = ["text", *(["text_pair"] if pairs is not None else []), "label", "predicted", "confidence"]
    table = []
    for i, (_, row) in enumerate(rows.iterrows()):
        texts = [row["text"], *([row["text_pair"]] if pairs is not None else [])]
        table.append([*texts, names[int(row["label"])], names[int(probs[i].argmax())], float(probs[i].max())])
    return columns, table


def examples_table(config: dict, promoted: Path, limit: int = EXAMPLES_LOGGED):
    import wandb

    columns, table = examples(config, promoted, limit)
    return wandb.Table(columns=columns, data=table)
