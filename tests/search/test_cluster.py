"""A real 2-node Ray cluster on 127.0.0.1: trials spread over both nodes, and losing a node
mid-trial costs a retry, not the sweep."""

import json
import threading
import time

import pytest
import ray
from ray.cluster_utils import Cluster

from medsweep.search import sweep
from tests.conftest import TINY, compose_config


@pytest.fixture
def two_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes(timeout=60)
    try:
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()


def cluster_config(cluster, tmp_path, extra=()):
    return compose_config(TINY + ["cluster=ray", f"cluster.address={cluster.address}", "cluster.cpus_per_trial=1",
                                  "+sweep=smoke", "sweep.num_trials=2", "sweep.max_concurrent=2",
                                  "data.max_train_samples=96", "data.max_eval_samples=60", *extra], run_dir=tmp_path)


def test_trials_land_on_both_nodes(two_nodes, tmp_path):
    cluster, worker = two_nodes
    config = cluster_config(cluster, tmp_path)
    plan = sweep.preflight(config)
    results = sweep.run_sweep(plan)
    assert all(r.error is None for r in results)
    nodes = {r.metrics["node_id"] for r in results}
    assert nodes == {cluster.head_node.node_id, worker.node_id}


@pytest.mark.slow  # a minute or more on 2 cores: `make test-slow`
@pytest.mark.faults
def test_losing_a_worker_node_mid_trial_retries_the_trial(two_nodes, tmp_path):
    cluster, worker = two_nodes
    config = cluster_config(cluster, tmp_path, ["trainer.epochs=4", "sweep.max_failures=2", "sweep.scheduler=none"])
    plan = sweep.preflight(config)
    killed = threading.Event()

    def kill_worker_after_its_first_report():
        deadline = time.time() + 240
        while time.time() < deadline and not killed.is_set():
            for path in (tmp_path / "ray" / "sweep").glob("*/result.json"):
                lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                if any(r.get("node_id") == worker.node_id for r in lines):
                    cluster.remove_node(worker, allow_graceful=False)
                    killed.set()
                    return
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_worker_after_its_first_report, daemon=True)
    watcher.start()
    results = sweep.run_sweep(plan)
    watcher.join(timeout=10)
    assert killed.is_set(), "the worker node never ran a trial"
    assert len(results) == 2 and all(r.error is None for r in results)
    for result in results:
        history = result.metrics_dataframe
        assert history["evaluation"].max() == 4 and bool(history["final"].iloc[-1])
    moved = [r for r in results if set(r.metrics_dataframe["node_id"]) == {worker.node_id, cluster.head_node.node_id}]
    assert len(moved) == 1  # the trial that lost its node finished on the head
