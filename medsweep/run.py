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
    from medsweep import selection, sweep
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
    if not config["promote"]["enabled"]:
        selection.rank_sweep(results, config)  # still writes a multi-objective sweep's Pareto front
        return {}
    chosen = selection.choose(results, config)
    provenance = chosen.provenance(config)
    with chosen.run.checkpoint.as_directory() as checkpoint_dir:
        promoted = promote_checkpoint(checkpoint_dir, run_dir, provenance)
    report = json.loads((promoted / "metrics.json").read_text())
    metric = config["sweep"]["metric"]
    test, ci = report["test"], report["test_ci"]["intervals"]
    seeds = report["seed_robustness"]
    print(f"[medsweep] {len(results)} trial(s) in {time.time() - started:.0f}s; promoted {metric}="
          f"{report['validation'][metric]:.4f} (trial {provenance['trial_id']}, seed {provenance['selection']['promoted_seed']}, "
          f"step {report['validation']['step']}); over seeds {seeds['seeds']}: {seeds['mean']:.4f} ± {seeds['std']:.4f}", flush=True)
    print(f"[medsweep] promoted model: {promoted} ({report['version']})  test macro-F1={test['test_f1_macro']:.4f} "
          f"[{ci['test_f1_macro'][0]:.3f}, {ci['test_f1_macro'][1]:.3f}] AUROC={test['test_auroc']:.4f} "
          f"accuracy={test['test_accuracy']:.4f} ECE={test['test_ece']:.4f}", flush=True)
    return report


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
