"""What a fresh worker process costs each trial: the same sweep with `cluster.reuse_actors=false`
(Ray starts a process per trial, which imports torch, transformers and peft again) and with
`cluster.reuse_actors=true` (medsweep's default: the next trial runs in the process the last one left),
alternating, in one process run. Short trials on the tiny random model through one trial slot, so the
start-up cost is not hidden behind training.

    python experiments/bench_reuse.py            # ~3 min on 2 cores
    python experiments/bench_reuse.py --part data   # ~1 min: the token cache and loading the base weights

The last line is `ratio=X.XX` (sweep time with reuse over without; --part data: a trial's data
preparation with a warm token cache over none).

--part data times what each trial does before training, in this process, both sides alternated:
`prepare_data` (read + split the data, tokenize train and validation) without the token cache
(data.cache=false, what every trial paid before) and with it warm (the entry the first trial wrote), on the shipped lr_lora data (500
abstracts) and on the whole training split; and `build_model` (the MiniLM base from its safetensors)
the first time in the process and again, against a deep copy of an already loaded model (what keeping
the weights in memory would cost instead).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import ray

from medsweep.search import sweep
from medsweep.run import compose


def sweep_seconds(trials: int, reuse: bool) -> tuple[float, int]:
    """Wall time of run_sweep (Ray already started, so only the trials count) and worker processes used."""
    with tempfile.TemporaryDirectory() as run_dir:
        config = compose(["model=tiny_random", "+sweep=smoke", f"sweep.num_trials={trials}", "sweep.max_concurrent=1",
                          "sweep.scheduler=none", "cluster.num_cpus=1", "cluster.cpus_per_trial=1", "trainer.epochs=1",
                          "trainer.max_length=32", "data.max_train_samples=48", "data.max_eval_samples=40",
                          f"cluster.reuse_actors={str(reuse).lower()}"], run_dir)
        plan = sweep.preflight(config)
        sweep.init_ray(config["cluster"])
        started = time.time()
        results = sweep.run_sweep(plan)
        elapsed = time.time() - started
        ray.shutdown()
    assert all(r.error is None for r in results), [str(r.error) for r in results if r.error]
    return elapsed, len({r.metrics["pid"] for r in results})


def data_part(repeats: int) -> None:
    from medsweep.hf import quiet_libraries
    from medsweep.training.model import build_model
    from medsweep.training.trial import prepare_data

    quiet_libraries()
    started = time.time()
    base = compose(["+sweep=lr_lora"], ".")
    first_model = build_model(base["model"], [str(i) for i in range(5)])
    first_load = time.time() - started
    ratios = []
    for label, limit in (("lr_lora data, 500 abstracts", 500), ("whole training split", None)):
        times = {False: [], True: []}
        with tempfile.TemporaryDirectory() as warm_dir:
            for repeat in range(repeats + 1):
                for warm in (False, True):
                    with tempfile.TemporaryDirectory() as cold_dir:
                        config = compose(["+sweep=lr_lora", f"data.max_train_samples={limit or 'null'}",
                                          f"data.cache={str(warm).lower()}"], warm_dir if warm else cold_dir)
                        clock = time.time()
                        prepared = prepare_data(config, dict(config["trainer"]))
                        seconds = time.time() - clock
                    assert prepared.cache_hits["train"] == (warm and repeat > 0)
                    if repeat > 0:  # the first round fills the warm cache and warms this process
                        times[warm].append(seconds)
        cold, hit = statistics.median(times[False]), statistics.median(times[True])
        ratios.append(hit / cold)
        print(f"{label:30s} prepare_data uncached {cold:5.2f} s   cached {hit:5.2f} s   saved {cold - hit:5.2f} s per trial "
              f"(median of {repeats})", flush=True)
    loads, copies = [], []
    for _ in range(repeats):
        clock = time.time()
        build_model(base["model"], [str(i) for i in range(5)])
        loads.append(time.time() - clock)
        clock = time.time()
        copy.deepcopy(first_model)
        copies.append(time.time() - clock)
    print(f"MiniLM build_model: first in the process {first_load:5.2f} s (imports + first read), then "
          f"{statistics.median(loads):5.2f} s; a deep copy of the loaded model {statistics.median(copies):5.2f} s")
    print(f"ratio={ratios[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["workers", "data"], default="workers")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.part == "data":
        data_part(max(args.repeats, 3))
        return
    times = {False: [], True: []}
    for _ in range(args.repeats):
        for reuse in (False, True):  # alternated, so drift on a shared machine hits both sides
            seconds, processes = sweep_seconds(args.trials, reuse)
            times[reuse].append(seconds)
            print(f"reuse_actors={str(reuse).lower():5}  {args.trials} trials  {seconds:6.1f} s  "
                  f"{processes} worker process(es)", flush=True)
    fresh, reused = statistics.median(times[False]), statistics.median(times[True])
    print(f"tiny random BERT, {args.trials} one-epoch trials through one slot, median of {args.repeats}")
    print(f"fresh process per trial   {fresh:6.1f} s")
    print(f"reused worker process     {reused:6.1f} s   saved {(fresh - reused) / args.trials:.1f} s per trial")
    print(f"ratio={reused / fresh:.2f}")


if __name__ == "__main__":
    main()
