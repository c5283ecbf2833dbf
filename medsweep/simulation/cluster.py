"""N Ray nodes on this machine, each declaring GPUs and CPUs it does not have (ray.cluster_utils).

What a node costs here (measured with experiments/bench_cluster.py, docs/cluster.md): a raylet and
an object store per node, and one worker process per trial in flight, whatever the declared slots.
"""

from __future__ import annotations

import atexit
import os
import signal

from ray.tune import Callback

_running = None  # the driver's simulated cluster, while it runs


def start(simulate: dict):
    """Start the simulated nodes (once per driver process) and return the cluster; ray.init joins it."""
    global _running
    from ray.cluster_utils import Cluster

    if _running is not None:
        return _running
    store = simulate["object_store_mb"] * 1024 * 1024
    # The head holds the driver and the curve server and declares nothing a trial could take.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, "object_store_memory": store})
    for _ in range(simulate["nodes"]):
        cluster.add_node(num_cpus=simulate["cpus_per_node"], num_gpus=simulate["gpus_per_node"], object_store_memory=store)
    cluster.wait_for_nodes(timeout=120)
    _running = cluster
    atexit.register(stop)
    return cluster


def stop() -> None:
    global _running
    import ray

    if _running is None:
        return
    ray.shutdown()
    _running.shutdown()
    _running = None


class LoseANodeWithItsTrials(Callback):
    """Once `count` running trials on one node have reported a checkpoint: the node is removed and its
    trials' processes killed, as a machine that died would take them (remove_node alone leaves them
    running until they notice their raylet is gone; see tests/search/test_cluster.py). Used by
    tests/simulation/test_faults_at_scale.py and experiments/bench_cluster_faults.py."""

    def __init__(self, count: int):
        self.count, self.lost, self.trials = count, None, set()

    def __getstate__(self):
        return {"count": self.count}

    def on_experiment_end(self, trials, **info):
        self.failures = {trial.trial_id: trial.num_failures for trial in trials if trial.num_failures}

    def on_step_end(self, iteration, trials, **info):
        if self.lost is not None:
            return
        by_node = {}
        for trial in trials:
            result = trial.last_result or {}
            if trial.status == "RUNNING" and result.get("node_id") and trial.checkpoint is not None:
                by_node.setdefault(result["node_id"], []).append(trial)
        node_id, on_it = max(by_node.items(), key=lambda item: len(item[1]), default=(None, []))
        if len(on_it) < self.count:
            return
        node = next(n for n in _running.worker_nodes if n.node_id == node_id)
        _running.remove_node(node, allow_graceful=False)
        for trial in on_it:
            try:
                os.kill(trial.last_result["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.lost, self.trials = node_id, {trial.trial_id for trial in on_it}
