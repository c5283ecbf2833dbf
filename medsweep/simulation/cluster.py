"""N Ray nodes on this machine, each declaring GPUs and CPUs it does not have (ray.cluster_utils).

What a node costs here (measured with experiments/bench_cluster.py, docs/cluster.md): a raylet and
an object store per node, and one worker process per trial in flight, whatever the declared slots.
"""

from __future__ import annotations

import atexit

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
