"""MLflow as a tracker (`tracker=mlflow`, `pip install 'medsweep[mlflow]'`): a Tracker backend.

- one parent run per sweep (run name `sweep-<run dir>`): the resolved config as params, then, at the
  end, the leaderboard files, the report's plots (`report/`), the test metrics, and the promoted
  folder (`promoted/`), registered as a model version with alias `champion`;
- one nested run per trial (tag mlflow.parentRunId): the sampled hyperparameters as params, every
  evaluation's metrics at its optimizer step, the best evaluation's values (`best_*`), and its end
  as the run status (FINISHED, FAILED for an error, KILLED for an unfinished trial) plus the tag
  `medsweep.status` (completed, early_stopped, error, unfinished).

Where: `tracker.tracking_uri` (a server, or any database URI MLflow takes), else a local store with
no server: `sqlite:///<tracker.dir or run dir>/mlflow/mlflow.db`, artifacts beside it. Not MLflow's
file store (`./mlruns`): MLflow 3 raises on it unless MLFLOW_ALLOW_FILE_STORE=true (it is in
maintenance mode), and SQLite also gives the model registry.

Runs are written with MlflowClient (explicit run ids) from the driver, like the W&B runs: several
trial runs are open at once, which MLflow's fluent, one-active-run API does not allow.

Privacy as for W&B: params, numbers and the promoted folder (weights, tokenizer, metrics.json,
model card: no data-set text); validation texts only with `tracker.log_examples=true`.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

from medsweep.config import ConfigError
from medsweep.reporting.trackers import EXAMPLES_LOGGED, Tracker, examples, promoted_model, sweep_summary
from medsweep.rundir import RunDir
from medsweep.search.space import flatten_values

STORE_DIR = "mlflow"
PARENT_FILE = "parent_run_id"  # in the store folder: a resumed sweep goes on in the same parent run
CHAMPION = "champion"
# MLflow takes at most 100 params per log_batch call and 6000 characters per value.
PARAMS_PER_BATCH, PARAM_CHARS = 100, 6000
RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
END_STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "error": "FAILED", "unfinished": "KILLED"}


def store_dir(config: dict) -> Path:
    return Path(config["tracker"]["dir"] or config["run_dir"]).resolve() / STORE_DIR


def tracking_uri(config: dict) -> str:
    return config["tracker"]["tracking_uri"] or f"sqlite:///{store_dir(config) / 'mlflow.db'}"


def model_name(config: dict) -> str:
    """The registered model: one per project and sweep name, so `champion` moves within that sweep."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{config['tracker']['project']}-{config['sweep']['name']}")


def _metrics(values: dict, step: int, prefix: str = ""):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(f"{prefix}{k}", float(v), now, int(step)) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def _params(values: dict):
    from mlflow.entities import Param

    return [Param(k, str(v)[:PARAM_CHARS]) for k, v in values.items()]


class MlflowTracker(Tracker):
    def __init__(self):
        self.client = None
        self.parent_id = None
        self.resumed = False  # the parent run was made by an earlier driver of this sweep

    def __getstate__(self):
        return {**self.__dict__, "client": None}

    def __setstate__(self, state):
        # Tune pickles its callbacks (and this tracker in TrialRuns) with the experiment and a resumed
        # sweep runs with those copies: an unpickled tracker always belongs to a resumed sweep.
        self.__dict__.update(state, resumed=True)

    # --- setup -----------------------------------------------------------------------------------
    def _client(self, config: dict):
        if self.client is None:
            from mlflow import MlflowClient

            if not config["tracker"]["tracking_uri"]:
                store_dir(config).mkdir(parents=True, exist_ok=True)
            uri = tracking_uri(config)
            self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return self.client

    def experiment_id(self, config: dict) -> str:
        client, name = self._client(config), config["tracker"]["project"]
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        # A local store keeps artifacts beside the database, in the run dir (MLflow's default is ./mlartifacts).
        location = None if config["tracker"]["tracking_uri"] else (store_dir(config) / "artifacts").as_uri()
        return client.create_experiment(name, artifact_location=location)

    def check(self, config: dict) -> None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError("tracker=mlflow needs the mlflow package: pip install 'medsweep[mlflow]'") from None
        if config["tracker"]["tracking_uri"]:
            # One try with a short timeout: MLflow's default retries take minutes on a dead server.
            saved = {k: os.environ.get(k) for k in RETRY_ENV}
            os.environ.update(RETRY_ENV)
            try:
                self.experiment_id(config)
            except Exception as exc:  # noqa: BLE001  any failure to reach the store is the user's to fix
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(f"tracker.tracking_uri={config['tracker']['tracking_uri']!r} cannot be used: "
                                  f"{first[:200]}") from None
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
                self.client = None  # the trials' client gets MLflow's usual retries

    def parent(self, config: dict) -> str:
        """The sweep's parent run: made before the first trial, reused by a resumed sweep and by log_sweep."""
        if self.parent_id is not None:
            return self.parent_id
        client = self._client(config)
        marker = store_dir(config) / PARENT_FILE
        if marker.exists():
            run_id = marker.read_text().strip()
            try:
                self.parent_id = client.get_run(run_id).info.run_id
            except Exception:  # noqa: BLE001  a store that lost the run: start a new parent
                self.parent_id = None
            if self.parent_id is not None:
                self.resumed = True
                return self.parent_id
        run = client.create_run(self.experiment_id(config), run_name=f"sweep-{RunDir.of(config).resolved().root.name}",
                                tags={"medsweep.kind": "sweep", "medsweep.sweep": str(config["sweep"]["name"])})
        self.parent_id = run.info.run_id
        params = flatten_values({k: v for k, v in config.items() if k != "run_dir"})
        items = list(_params(params))
        for start in range(0, len(items), PARAMS_PER_BATCH):
            client.log_batch(self.parent_id, params=items[start:start + PARAMS_PER_BATCH])
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(self.parent_id)
        return self.parent_id

    def start(self, config: dict) -> None:
        self.parent(config)

    # --- trial runs ------------------------------------------------------------------------------
    def open_trial(self, config: dict, trial_id: str, resolved: dict, sampled: dict):
        client = self._client(config)
        if self.resumed:
            # A trial the killed driver had started goes on in its run: one run per trial, not two.
            earlier = client.search_runs([self.experiment_id(config)], max_results=1,
                                         filter_string=f"tags.`mlflow.parentRunId` = '{self.parent(config)}' "
                                                       f"and tags.`medsweep.trial_id` = '{trial_id}'")
            if earlier:
                client.update_run(earlier[0].info.run_id, status="RUNNING")
                return earlier[0].info.run_id
        run = client.create_run(self.experiment_id(config), run_name=f"trial-{trial_id}",
                                tags={"mlflow.parentRunId": self.parent(config), "medsweep.kind": "trial",
                                      "medsweep.trial_id": trial_id})
        client.log_batch(run.info.run_id, params=_params({**flatten_values(sampled), "trial_id": trial_id}))
        return run.info.run_id

    def log_evaluation(self, run, values: dict, step: int) -> None:
        self.client.log_batch(run, metrics=_metrics(values, step))

    def close_trial(self, run, best: dict, summary: dict, status: str) -> None:
        try:
            from mlflow.entities import RunTag

            # One batch for the best values and the status tag: each store call is a transaction.
            self.client.log_batch(run, metrics=_metrics(best, summary.get("best_step") or 0, prefix="best_")
                                  + _metrics({"evaluations": summary["evaluations"]}, 0),
                                  tags=[RunTag("medsweep.status", status)])
        finally:
            self.client.set_terminated(run, END_STATUS.get(status, "FINISHED"))

    def settle_lost(self, config: dict, trial_ids: set[str]) -> int:
        # A trial the killed driver had started but Tune's last saved state did not hold never runs
        # again (its Optuna trial is settled as FAIL the same way): its run is closed as KILLED.
        if not self.resumed:
            return 0
        client = self._client(config)
        open_runs = client.search_runs([self.experiment_id(config)], max_results=10000,
                                       filter_string=f"tags.`mlflow.parentRunId` = '{self.parent(config)}' "
                                                     "and attributes.status = 'RUNNING'")
        lost = [run for run in open_runs if run.data.tags.get("medsweep.trial_id") not in trial_ids]
        for run in lost:
            client.set_tag(run.info.run_id, "medsweep.status", "lost")
            client.set_terminated(run.info.run_id, "KILLED")
        return len(lost)

    # --- the sweep -------------------------------------------------------------------------------
    def log_sweep(self, config: dict, run_dir: RunDir, report_dir: Path | None, splits=None) -> None:
        client = self._client(config)
        parent = self.parent(config)
        status = "FAILED"
        try:
            # The parent run's artifacts mirror the run dir: its tables, report/, promoted/.
            for table in run_dir.tables():
                client.log_artifact(parent, str(table))
            if report_dir is not None:
                for png in sorted(Path(report_dir).glob("*.png")):
                    client.log_artifact(parent, str(png), run_dir.report.name)
            promoted = promoted_model(run_dir)
            if promoted is not None:
                folder, metrics = promoted
                client.log_batch(parent, metrics=_metrics(sweep_summary(metrics), 0))
                client.log_artifacts(parent, str(folder), run_dir.promoted.name)
                client.set_tag(parent, "medsweep.promoted_version", folder.name)
                self.register(config, parent, run_dir.promoted.name)
                if config["tracker"]["log_examples"]:
                    columns, rows = examples(config, folder, EXAMPLES_LOGGED, splits)
                    client.log_dict(parent, {"columns": columns, "data": rows}, "validation_examples.json")
            status = "FINISHED"
        finally:
            client.set_terminated(parent, status)
        where = config["tracker"]["tracking_uri"] or tracking_uri(config)
        print(f"[medsweep] MLflow: sweep run {parent} in {where}; model {model_name(config)}@{CHAMPION}"
              + ("" if config["tracker"]["tracking_uri"] else f"; browse with: mlflow ui --backend-store-uri {where}"),
              flush=True)

    def register(self, config: dict, parent: str, artifact_path: str) -> None:
        """A model version of the promoted folder (the parent run's `artifact_path`), with alias
        `champion` (moved from any earlier one)."""
        from mlflow.exceptions import MlflowException

        client, name = self.client, model_name(config)
        try:
            client.create_registered_model(name)
        except MlflowException:  # it exists already: a later sweep adds a version
            pass
        version = client.create_model_version(name, source=f"runs:/{parent}/{artifact_path}", run_id=parent)
        client.set_registered_model_alias(name, CHAMPION, version.version)
