"""`python -m medsweep.run [+sweep=NAME] [key=value ...]`: the command-line entry point.

This is the only module that touches Hydra: it composes conf/, resolves it to a plain dict, and
hands that to the stages. Order: check everything -> sweep -> promote -> summary.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from medsweep.config import ConfigError, MedsweepConfig

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("medsweep")

# The schema: every group file is merged onto it, so an unknown key is an error at composition.
ConfigStore.instance().store(name="medsweep_schema", node=MedsweepConfig)


def execute(config: dict) -> dict:
    """Check, sweep, promote. Returns the promoted model's metrics (empty if promotion is off)."""
    from medsweep import sweep
    from medsweep.promote import promote_checkpoint

    run_dir = Path(config["run_dir"])
    started = time.time()
    space, splits = sweep.preflight(config)
    summary = splits.summary
    print(f"[medsweep] data: {summary['rows_read']} rows read, {summary['empty_texts_dropped']} empty, "
          f"{summary['conflicting_texts_dropped']} conflicting texts dropped, {summary['duplicates_removed']} duplicates "
          f"removed; train/val/test = {summary['split_sizes']['train']}/{summary['split_sizes']['validation']}/"
          f"{summary['split_sizes']['test']}", flush=True)
    sweep.write_json(run_dir / "data_summary.json", summary)

    results = sweep.run_sweep(config, space, num_train=len(splits.train))
    best, checkpoint = sweep.best_checkpoint(results, config)
    if not config["promote"]["enabled"]:
        publish(config, run_dir)
        return {}
    with checkpoint.as_directory() as checkpoint_dir:
        provenance = {"trial_id": best.metrics.get("trial_id"), "trial_path": best.path, "checkpoint": checkpoint.path,
                      "num_trials": len(results), "sweep": config["sweep"]["name"]}
        promoted = promote_checkpoint(checkpoint_dir, run_dir, provenance)
    report = json.loads((promoted / "metrics.json").read_text())
    metric = config["sweep"]["metric"]
    test = report["test"]
    print(f"[medsweep] {len(results)} trial(s) in {time.time() - started:.0f}s; best {metric}="
          f"{report['validation'][metric]:.4f} (trial {provenance['trial_id']}, step {report['validation']['step']})", flush=True)
    print(f"[medsweep] promoted model: {promoted}  test macro-F1={test['test_f1_macro']:.4f} "
          f"AUROC={test['test_auroc']:.4f} accuracy={test['test_accuracy']:.4f}", flush=True)
    publish(config, run_dir)
    return report


def publish(config: dict, run_dir: Path) -> None:
    """The sweep report and the tracker's sweep run, after the results are safe on disk."""
    from medsweep import report, tracking

    report_dir = None
    try:
        report_dir = report.write_report(run_dir, config)
        print(f"[medsweep] report: {report_dir / 'index.html'}  leaderboard: {run_dir / 'leaderboard.md'}", flush=True)
    except Exception as exc:  # noqa: BLE001  a plotting bug must not cost the tracker's sweep run
        log.warning("the report could not be written (%s: %s); retry with: python -m medsweep.report %s",
                    type(exc).__name__, exc, run_dir)
    wandb_dir = tracking.log_sweep(config, run_dir, report_dir)
    if wandb_dir is not None and config["tracker"]["mode"] == "offline":
        print(f"[medsweep] W&B runs saved offline in {wandb_dir}; upload with: wandb sync {wandb_dir}/offline-run-*",
              flush=True)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    config["run_dir"] = HydraConfig.get().runtime.output_dir
    try:
        execute(config)
    except ConfigError as exc:
        # A user mistake: one line, no traceback (HYDRA_FULL_ERROR=1 shows it), non-zero exit.
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"medsweep: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
