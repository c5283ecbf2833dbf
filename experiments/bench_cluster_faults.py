"""Faults at scale on a simulated cluster (issue: a cluster in a box): the driver killed -9 part-way
through a large replayed sweep, then the same command run again.

`python -m medsweep.run` in a subprocess, as an operator runs it (bench_cluster.py's settings: 32 slots,
LCBench task 3945 replayed at time_scale 0.001, MLflow on), killed with everything it started once the
leaderboard has --kill-at rows; then the same command. What it prints: the seconds to the kill and of
the resume, the leaderboard's rows and distinct trials, how many trials that had finished before the
kill reported again (a trial run again from the start reports evaluation 1 twice), whether the Optuna
study's COMPLETE/PRUNED trials and the MLflow runs are the leaderboard's trials, and the trials left
with more than two checkpoints. The last line is `rerun=N` (0 is the goal).

--lose-node N instead: 2 simulated nodes of 8 declared GPUs at 0.25 (64 slots), 64 trials of 4
evaluations (20 s each: the first 64 overlap; FIFO, sweep.max_failures=4), and once one node has N trials running with a checkpoint it
is removed and their processes killed, as a machine that died would take them
(simulation/cluster.py's LoseANodeWithItsTrials). Prints how many trials were on it, whether every
trial completed, the retries, and how many evaluations were run twice (at most the one after a moved
trial's last checkpoint); the last line is `failed=N` (0 is the goal).

    python experiments/bench_cluster_faults.py --trials 1000 --kill-at 500
    python experiments/bench_cluster_faults.py --trials 200 --kill-at 100     # ~3 min here
    python experiments/bench_cluster_faults.py --lose-node 32
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_cluster

ROOT = Path(__file__).resolve().parents[1]


def leaderboard(run_dir: Path) -> list[dict]:
    path = run_dir / "leaderboard.csv"
    try:
        return list(csv.DictReader(open(path))) if path.exists() else []
    except (OSError, csv.Error):
        return []  # caught mid-rewrite


def command(args, run_dir: Path) -> list[str]:
    chosen = bench_cluster.overrides(args, args.slots, args.trials, "mlflow")
    return [sys.executable, "-m", "medsweep.run", *chosen, "sweep.time_budget_s=36000", f"hydra.run.dir={run_dir}"]


def run_until(cmd: list[str], run_dir: Path, rows: int, timeout: float) -> float:
    """Start the driver, kill -9 it and everything it started once the leaderboard has `rows` rows
    (the fault tests' helper); returns the seconds it ran."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import kill_driver_after_first_trial

    started = time.perf_counter()
    kill_driver_after_first_trial(cmd, run_dir, rows=rows, timeout=timeout)
    return time.perf_counter() - started


def trial_folders(run_dir: Path) -> dict[str, Path]:
    return {folder.name.split("_")[2]: folder for folder in (run_dir / "ray" / "sweep").glob("replay_trial_*")}


def evaluations(folder: Path | None) -> list[int]:
    result = None if folder is None else folder / "result.json"
    if result is None or not result.is_file():
        return []
    return [json.loads(line)["evaluation"] for line in result.read_text().splitlines() if line.strip()]


def lose_node(args, count: int) -> None:
    from medsweep.run import compose
    from medsweep.search import sweep
    from medsweep.simulation import cluster as simulated

    root = Path(tempfile.mkdtemp(prefix="bench_cluster_faults_"))
    chosen = bench_cluster.overrides(args, 64, 64, "none")  # 2 nodes x 8 declared GPUs
    chosen += ["sweep.scheduler=fifo", "sweep.max_failures=4", "trainer.evaluations=4", "replay.evaluation_s=20"]
    lose = simulated.LoseANodeWithItsTrials(count=count)
    try:
        started = time.perf_counter()
        results = sweep.run_sweep(sweep.preflight(compose(chosen, root)), callbacks=[lose])
        wall = time.perf_counter() - started
    finally:
        simulated.stop()
        shutil.rmtree(root, ignore_errors=True)
    if lose.lost is None:
        raise SystemExit(f"no node ever had {count} trials running with a checkpoint")
    moved = [r for r in results if r.metrics.get("trial_id") in lose.trials]
    twice = sum(int((r.metrics_dataframe["evaluation"].value_counts() > 1).sum()) for r in moved)
    failed = sum(r.error is not None for r in results)
    print(f"node lost with {len(lose.trials)} trials running on it; {len(results)} trials in {wall:.1f} s, "
          f"{len(results) - failed} completed; retries per moved trial: {sorted(lose.failures.values())}")
    print(f"moved trials ending on the other node: {sum(r.metrics['node_id'] != lose.lost for r in moved)} of {len(moved)}; "
          f"evaluations run twice (after a moved trial's last checkpoint): {twice}")
    print(f"failed={failed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--kill-at", type=int, default=500)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--tasks", nargs="+", default=["3945"])
    parser.add_argument("--scale", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--periodic-saves", action="store_true", help="cluster.periodic_saves=true")
    parser.add_argument("--lose-node", type=int, default=None, help="run the node-loss scenario (see above)")
    args = parser.parse_args()
    if args.lose_node:
        return lose_node(args, args.lose_node)
    root = Path(tempfile.mkdtemp(prefix="bench_cluster_faults_"))
    run_dir = root / "run"
    run_dir.mkdir()
    cmd = command(args, run_dir)
    # A shell that ran ray.init before would export RAY_ADDRESS; the command starts its own nodes.
    os.environ.pop("RAY_ADDRESS", None)
    try:
        killed_after = run_until(cmd, run_dir, args.kill_at, timeout=3600)
        finished = leaderboard(run_dir)
        print(f"killed -9 after {killed_after:.1f} s with {len(finished)} leaderboard rows", flush=True)
        started = time.perf_counter()
        resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=7200)
        resume_s = time.perf_counter() - started
        if resumed.returncode != 0:
            raise SystemExit(f"the resume exited {resumed.returncode}: {resumed.stderr[-2000:]}")
        repaired = [line for line in resumed.stdout.splitlines() if "disagreed" in line]
        print(f"resume: {resume_s:.1f} s, exit 0{'; ' + repaired[0] if repaired else ''}", flush=True)
        final = leaderboard(run_dir)
        ids = {row["trial_id"] for row in final}
        folders = trial_folders(run_dir)
        rerun = [row["trial_id"] for row in finished
                 if len(set(e := evaluations(folders.get(row["trial_id"])))) != len(e)]
        unsaved = [row["trial_id"] for row in finished if not evaluations(folders.get(row["trial_id"]))]
        print(f"leaderboard: {len(final)} rows, {len(ids)} distinct trials (asked {args.trials})")
        print(f"finished before the kill: {len(finished)}; reported again: {len(rerun)}; "
              f"no result.json (created and finished after Tune's last save): {len(unsaved)}")

        import mlflow
        import optuna

        from medsweep.search import study

        trials = optuna.load_study(study_name="replay_lcbench",
                                   storage=study.open_storage(str(run_dir / "optuna.journal"))).trials
        told = {t.user_attrs.get(study.RAY_TRIAL) for t in trials if t.state.name in ("COMPLETE", "PRUNED")}
        states = {}
        for t in trials:
            states[t.state.name] = states.get(t.state.name, 0) + 1
        print(f"Optuna study: {states}; COMPLETE/PRUNED == leaderboard trials: {told == ids}")
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow' / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("medsweep").experiment_id],
                                  filter_string="tags.`medsweep.kind` = 'trial'", max_results=50000)
        finished_runs = {r.data.tags["medsweep.trial_id"] for r in runs if r.info.status == "FINISHED"}
        lost = sum(r.data.tags.get("medsweep.status") == "lost" for r in runs)
        print(f"MLflow: {len(runs)} trial runs, FINISHED == leaderboard trials: {finished_runs == ids}, lost (KILLED): {lost}")
        heavy = sum(len(list(folder.glob("checkpoint_*"))) > 2 for folder in folders.values())
        print(f"trial folders with more than 2 checkpoints: {heavy} of {len(folders)}")
        print(f"rerun={len(rerun)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
