"""A real 2-node Ray cluster on 127.0.0.1: trials spread over both nodes, and losing a node
mid-trial costs a retry, not the sweep."""

import os
import signal

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.tune import Callback

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
    # No actor reuse: on a loaded machine the first trial can finish while the second's actor is still
    # starting on the worker, and Tune would hand the second the first's actor on the head instead.
    config = cluster_config(cluster, tmp_path, ["cluster.reuse_actors=false"])
    plan = sweep.preflight(config)
    results = sweep.run_sweep(plan)
    assert all(r.error is None for r in results)
    nodes = {r.metrics["node_id"] for r in results}
    assert nodes == {cluster.head_node.node_id, worker.node_id}


class LoseTheWorkerMidTrial(Callback):
    """Loses the worker node as a crashed machine would, once Tune has registered the checkpoint of
    the first evaluation a trial reported there: Ray's processes on the node and the trial's own
    process die together.

    Tune handles a reported checkpoint in steps: the result (callbacks' on_trial_result), a `save`
    call to the trial's actor, registering the checkpoint it returns (on_trial_save), and only then
    the next `train` call, which lets the trial go on past its tune.report. Killed in
    on_trial_save, the trial is always mid-way and always has a checkpoint to resume from.

    cluster.remove_node alone is not a lost machine: it kills the node's raylet but not the trial's
    worker process, which goes on training and reporting to the driver until it notices its raylet
    is gone (Ray checks every raylet_death_check_interval_milliseconds, 1 s). These trials report
    an evaluation every ~0.2-0.8 s, so that process sometimes finished its trial on the "lost" node:
    nothing was retried and no trial ran on both nodes."""

    def __init__(self, cluster, worker):
        self.cluster, self.worker, self.killed = cluster, worker, False

    def __getstate__(self):
        # Tune pickles its callbacks into the experiment state; a live cluster does not pickle, and
        # this sweep is never resumed from that state.
        return {"killed": self.killed}

    def on_trial_save(self, iteration, trials, trial, **info):
        result = trial.last_result
        if self.killed or result.get("node_id") != self.worker.node_id:
            return
        self.cluster.remove_node(self.worker, allow_graceful=False)
        try:
            os.kill(result["pid"], signal.SIGKILL)  # the trial's process, which the machine took with it
        except ProcessLookupError:
            pass
        self.killed = True


@pytest.mark.slow  # a minute or more on 2 cores: `make test-slow`
@pytest.mark.faults
def test_losing_a_worker_node_mid_trial_retries_the_trial(two_nodes, tmp_path):
    cluster, worker = two_nodes
    config = cluster_config(cluster, tmp_path, ["trainer.epochs=4", "sweep.max_failures=2", "sweep.scheduler=none"])
    plan = sweep.preflight(config)
    lose_worker = LoseTheWorkerMidTrial(cluster, worker)
    results = sweep.run_sweep(plan, callbacks=[lose_worker])
    assert lose_worker.killed, "the worker node never ran a trial"
    assert len(results) == 2 and all(r.error is None for r in results)
    for result in results:
        history = result.metrics_dataframe
        assert history["evaluation"].max() == 4 and bool(history["final"].iloc[-1])
    moved = [r for r in results if set(r.metrics_dataframe["node_id"]) == {worker.node_id, cluster.head_node.node_id}]
    assert len(moved) == 1  # the trial that lost its node finished on the head
    # ... from the checkpoint of its first evaluation, not from scratch (that would repeat evaluation 1).
    history = moved[0].metrics_dataframe
    assert list(history["evaluation"]) == [1, 2, 3, 4]
    assert list(history["node_id"]) == [worker.node_id] + [cluster.head_node.node_id] * 3
