"""`python -m medsweep.run [+sweep=NAME] [key=value ...]`: the command-line entry point.

This is the only module that touches Hydra: it composes conf/, resolves it to a plain dict, and
hands that to the stages. Order: check everything (the plan) -> sweep -> promote -> publish.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from medsweep.config import ConfigError, MedsweepConfig
from medsweep.promotion.gate import EXIT_CODE, Blocked
from medsweep.promotion.ranking import NoUsableTrial
from medsweep.rundir import RunDir, atomic_write
from medsweep.search import driver

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("medsweep")
# Read before cli() sets it for Hydra: only the user's own HYDRA_FULL_ERROR=1 shows tracebacks.
SHOW_TRACEBACK = os.environ.get("HYDRA_FULL_ERROR") == "1"

# The schema: every group file is merged onto it, so an unknown key is an error at composition.
ConfigStore.instance().store(name="medsweep_schema", node=MedsweepConfig)


def compose(overrides=(), run_dir: str | Path = ".") -> dict:
    """The plain config dict `python -m medsweep.run OVERRIDES` would build (minus Hydra's own
    node), for tests, notebooks and experiment scripts that call the stages directly."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides))
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    config["run_dir"] = str(run_dir)
    return config


def execute(config: dict, on_checked: Optional[Callable[[], None]] = None) -> dict:
    """Check, sweep, promote, publish. Returns the promoted model's metrics (empty if promotion is off).

    `on_checked` runs once every check has passed, before anything is written to the run dir. A
    signal at any phase ends in driver.Interrupted (resumable by the same command).
    """
    from medsweep import data
    from medsweep.promotion import gate, ranking, stage
    from medsweep.reporting import tracking
    from medsweep.search import edges, sweep

    started = time.time()
    stop = driver.Stop()
    try:
        plan = sweep.preflight(config)
        gate.check(plan)  # promote.gate names a promoted model of this task on the same test split
        tracking.check(config)
        if on_checked is not None:
            on_checked()
        print("[medsweep] " + data.describe(plan.splits.summary), flush=True)
        atomic_write(plan.run_dir.data_summary, json.dumps(plan.splits.summary, indent=2, default=str))

        stop.phase = "sweep"
        trackers = tracking.trial_callbacks(config)
        sweep.init_ray(config["cluster"])
        stop.install()  # ray.init installs its own SIGTERM handler (exit 15): ours goes after it
        try:
            results = sweep.run_sweep(plan, callbacks=trackers)
            if config["sweep"]["extend_edges"]:
                best = ranking.best_candidate(results, config)
                results, plan = edges.follow_up_round(plan, results, edges.range_hints(best, results, config),
                                                      callbacks=trackers)
        finally:
            tracking.finish_callbacks(trackers)  # an interrupted sweep still closes its tracker runs
        if not config["promote"]["enabled"]:
            ranking.rank_sweep(results, plan.config)  # still writes a multi-objective sweep's Pareto front
            stop.phase = "report"
            publish(plan, plan.run_dir.root)
            return {}
        stop.phase = "promotion"
        try:
            report = stage.promote(plan, results)
        except gate.Blocked:
            stop.phase = "report"
            publish(plan, plan.run_dir.root)  # the sweep's report still shows what was tried
            raise
        print_promoted(report, plan.run_dir.promoted, len(results), time.time() - started)
        stop.phase = "report"
        edges.print_hints(report.get("range_hints") or [])
        publish(plan, plan.run_dir.root)
        return report
    except KeyboardInterrupt:
        raise stop.interrupted() from None
    finally:
        stop.restore()


def print_promoted(report: dict, promoted: Path, num_trials: int, seconds: float) -> None:
    print(f"[medsweep] {num_trials} trial(s) in {seconds:.0f}s; " + summary_line(report), flush=True)
    test, ci = report["test"], report["test_ci"]["intervals"]
    print(f"[medsweep] promoted model: {promoted} ({report['version']})  test macro-F1={test['test_f1_macro']:.4f} "
          f"[{ci['test_f1_macro'][0]:.3f}, {ci['test_f1_macro'][1]:.3f}] AUROC={test['test_auroc']:.4f} "
          f"accuracy={test['test_accuracy']:.4f} ECE={test['test_ece']:.4f}", flush=True)


def summary_line(report: dict) -> str:
    """What was promoted, in one line: the validation value, trial, seed, step, and the seed spread."""
    metric = report["metric"]
    robustness = report["seed_robustness"]
    spread = (f"; over seeds {robustness['seeds']}: {robustness['mean']:.4f} ± {robustness['std']:.4f}"
              if len(robustness["seeds"]) > 1 else "")
    return (f"promoted {metric}={report['validation'][metric]:.4f} (trial {report['trial_id']}, seed "
            f"{report['selection']['promoted_seed']}, step {report['validation']['step']}){spread}")


def publish(plan, run_dir: Path) -> None:
    """The sweep report and the tracker's sweep run, after the results are safe on disk."""
    from medsweep.reporting import report
    from medsweep.reporting import tracking

    config = plan.config
    report_dir = None
    try:
        report_dir = report.write_report(run_dir, config)
        print(f"[medsweep] report: {report_dir / 'index.html'}  leaderboard: {RunDir(run_dir).leaderboard_md}", flush=True)
    except Exception as exc:  # noqa: BLE001  a plotting bug must not cost the tracker's sweep run
        log.warning("the report could not be written (%s: %s); retry with: python -m medsweep.report %s",
                    type(exc).__name__, exc, run_dir)
    wandb_dir = tracking.log_sweep(config, run_dir, report_dir, splits=plan.splits)
    if wandb_dir is not None and config["tracker"]["mode"] == "offline":
        print(f"[medsweep] W&B runs saved offline in {wandb_dir}; upload with: wandb sync {wandb_dir}/offline-run-*",
              flush=True)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    config["run_dir"] = HydraConfig.get().runtime.output_dir
    try:
        with driver.exclusive(config["run_dir"]):  # one driver per run dir
            execute(config, on_checked=lambda: save_hydra_files(cfg, Path(config["run_dir"])))
    except ConfigError as exc:
        # A user mistake: one line, no traceback (HYDRA_FULL_ERROR=1 shows it), non-zero exit.
        if SHOW_TRACEBACK:
            raise
        print(f"medsweep: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Blocked as exc:
        # promote.gate refused the candidate: a verdict, not a crash. One line, its own exit code (3),
        # so a scheduled retrain can tell "kept the old model" from a failure.
        print(f"medsweep: {exc}", file=sys.stderr)
        sys.exit(EXIT_CODE)
    except NoUsableTrial as exc:
        # Every trial failed: the reasons are in leaderboard.csv; the previous promoted model is untouched.
        if SHOW_TRACEBACK:
            raise
        print(f"medsweep: error: {exc} (see {RunDir.of(config).leaderboard_csv})", file=sys.stderr)
        sys.exit(1)
    except driver.Interrupted as exc:
        print(f"[medsweep] {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before execute holds the run (composing the config, taking the lock)
        print("[medsweep] interrupted before the run started; nothing was written", file=sys.stderr)
        sys.exit(130)


def save_hydra_files(cfg: DictConfig, run_dir: Path) -> None:
    """What Hydra writes to .hydra/ (hydra.output_subdir is off in conf/config.yaml), written only
    once the checks pass: a run that fails them leaves an earlier run's .hydra/ in the same dir intact."""
    hydra_cfg = HydraConfig.get()
    target = run_dir / ".hydra"
    target.mkdir(parents=True, exist_ok=True)
    for name, node in [("config.yaml", cfg), ("hydra.yaml", OmegaConf.create({"hydra": hydra_cfg})),
                       ("overrides.yaml", hydra_cfg.overrides.task)]:
        (target / name).write_text(OmegaConf.to_yaml(node))


def one_line(exc: Exception) -> str:
    """A Hydra/OmegaConf composition error (several lines) as one line; a misspelled key gets a guess."""
    cause = exc.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and getattr(cause, "full_key", None):
        known = schema_keys(OmegaConf.structured(MedsweepConfig))
        guess = difflib.get_close_matches(cause.full_key, known, n=1)
        return f"unknown config key {cause.full_key!r}" + (f"; did you mean {guess[0]}?" if guess else "")
    noise = ("full_key:", "reference_type=", "object_type=", "To append to your config")
    # Hydra appends its config search path to a missing group option: not the user's business.
    text = "\n".join((str(exc), str(cause or ""))).split("Config search path:")[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(noise))


def schema_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        child = node[key]
        keys += schema_keys(child, f"{prefix}{key}.") if isinstance(child, DictConfig) else [f"{prefix}{key}"]
    return keys


def cli() -> None:
    """Run main(); a config that does not compose (a misspelled key, a wrong type, an unknown group
    option) is one line on stderr and exit 2, like every other user mistake."""
    if SHOW_TRACEBACK:
        return main()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises the error to us instead of printing it over several lines
    try:
        main()
    except (HydraException, OmegaConfBaseException) as exc:
        print(f"medsweep: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
