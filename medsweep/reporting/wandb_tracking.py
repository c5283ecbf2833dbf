"""Weights & Biases as a tracker (`tracker=wandb`), offline first: a Tracker backend.

The search stays local (W&B's sweep controller needs its server; many hospital clusters are
air-gapped) and W&B only records it:

- one run per trial, `job_type="trial"`: the trial's resolved config, every evaluation's metrics as
  history (step = optimizer step), the best evaluation's values in the summary (`best_*`);
- one run per sweep, `job_type="sweep"`: the leaderboard as a `wandb.Table`, the report's plots and
  the promoted model as an artifact with alias `best`.

All runs of a sweep share the group `sweep.name`. In the default offline mode they are written
under `<tracker.dir or run dir>/wandb/offline-run-*` and uploaded later with `wandb sync`.

Ray's own WandbLoggerCallback also logs from the driver side, but it records only the sampled
parameters as config, keeps the last (not the best) values in the summary, starts two actors per
trial and needs WANDB_MODE in the environment to run without a key; wandb's multi-run support
(`reinit="create_new"`) does the job in the driver's tracker process (tracking.TrialRuns).

Console capture is off, so nothing a library prints (an error message quoting an input, say)
reaches the tracker.
"""

from __future__ import annotations

import netrc
import os
import re
from pathlib import Path
from urllib.parse import urlparse

from medsweep.config import ConfigError
from medsweep.reporting.trackers import (
    EXAMPLES_LOGGED,
    Tracker,
    artifact_metadata,
    examples,
    promoted_model,
    sweep_summary,
)
from medsweep.rundir import RunDir


def wandb_enabled(config: dict) -> bool:
    return config["tracker"]["name"] == "wandb" and config["tracker"]["mode"] != "disabled"


def wandb_dir(config: dict) -> Path:
    """The folder that holds W&B's `wandb/` folder of runs."""
    return Path(config["tracker"]["dir"] or config["run_dir"]).resolve()


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
        # Several trial runs are open at once in the driver's tracker process.
        reinit="create_new",
        settings=wandb.Settings(
            console="off", silent=True, save_code=False,
            # System metrics would be the driver's machine, not the trial's: misleading on a cluster.
            x_disable_stats=True,
            # The driver's installed packages are the same for every run of a sweep: the sweep run
            # records them once. Listing them parses every package's metadata, ~150 ms of the
            # driver's CPU per trial run (8x the rest of wandb.init; experiments/bench_cluster.py).
            x_save_requirements=job_type != "trial",
        ),
    )


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

    def log_sweep(self, config: dict, run_dir: RunDir, report_dir: Path | None, splits=None) -> Path:
        return log_wandb_sweep(config, run_dir, report_dir, splits)


# --- the sweep-level run ------------------------------------------------------------------------

def artifact_name(run_dir: Path) -> str:
    # One artifact per sweep run: a project-wide name would move `best` to whichever sweep ran last.
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"model-{run_dir.name}")


def log_wandb_sweep(config: dict, run_dir: RunDir, report_dir: Path | None, splits=None) -> Path:
    """The sweep run: leaderboard table, report plots, promoted model. Returns the wandb folder."""
    import pandas as pd
    import wandb

    run_dir = run_dir.resolved()
    run = init_run(config, job_type="sweep", name=f"sweep-{run_dir.root.name}", run_config=config)
    exit_code = 1
    try:
        if run_dir.leaderboard_csv.exists():
            frame = pd.read_csv(run_dir.leaderboard_csv, dtype={"trial_id": str})
            if not frame.empty:
                run.log({"leaderboard": wandb.Table(dataframe=frame)})
        if report_dir is not None:
            plots = sorted(Path(report_dir).glob("*.png"))
            if plots:
                run.log({f"report/{png.stem}": wandb.Image(str(png), caption=png.stem.replace("_", " "))
                         for png in plots})
        promoted = promoted_model(run_dir)
        if promoted is not None:
            folder, metrics = promoted
            run.summary.update(sweep_summary(metrics))
            artifact = wandb.Artifact(artifact_name(run_dir.root), type="model", metadata=artifact_metadata(metrics))
            # The version folder is never modified after promotion: reference it instead of copying
            # the weights into W&B's staging area.
            artifact.add_dir(str(folder), policy="immutable")
            run.log_artifact(artifact, aliases=["best"])
            if config["tracker"]["log_examples"]:
                run.log({"validation_examples": examples_table(config, folder, splits=splits)})
        exit_code = 0
    finally:
        run.finish(exit_code=exit_code)
    return wandb_dir(config) / "wandb"


def examples_table(config: dict, promoted: Path, limit: int = EXAMPLES_LOGGED, splits=None):
    import wandb

    columns, table = examples(config, promoted, limit, splits)
    return wandb.Table(columns=columns, data=table)
