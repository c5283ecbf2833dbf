"""The HTTP service under load, on loopback: one request per forward pass (the service before
dynamic batching: `batch_texts=1`) vs concurrent requests batched into one forward pass (the
default, `batch_texts=64`), both as real `python -m medsweep.serve` processes started by this run.

Each client sends one real Medical Abstracts abstract per request (from ../shared/data, else the
embedded copy) and waits for the answer before its next one; 1, 8 and 32 clients. The model is the
embedded MiniLM with an untrained 5-class head, written as a promoted folder here (throughput does
not depend on what the head learned), at the trained-with default of 128 tokens. Cells alternate
between the two servers, `--repeats` times; each cell runs `--seconds`.

Also measured: rejections (401 no token, 413 too many texts, 422 empty text) sent one at a time
while 32 clients load the batched server, against the same with the server idle; and the batched
server's resident memory before and after `--soak` requests (32 clients).

    flock /tmp/medsweep-bench.lock python experiments/bench_serve.py --quick   # ~2-4 min
    flock /tmp/medsweep-bench.lock python experiments/bench_serve.py --seconds 6 --repeats 2 --soak-seconds 60
        # ~7 min on a busy 2-core machine: the run quoted in the notes (ratio=6.90)
    python experiments/bench_serve.py --soak 10000 --soak-seconds 1200   # the full 10,000-request soak

The soak stops at --soak requests or --soak-seconds, whichever comes first, and prints how many it ran.

Prints a table of requests/s and p50/p99 latency (median over repeats, with the spread) and, last,
`ratio=X.XX`: batched requests/s over one-at-a-time requests/s at 32 clients (goal >= 3).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODES = {"one-at-a-time": ["batch_texts=1"], "batched": ["batch_texts=64"]}


def abstracts(n: int = 500) -> list[str]:
    import pandas as pd

    shared = ROOT.parent / "shared" / "data" / "medical_abstracts" / "medical_tc_test.csv"
    source = shared if shared.exists() else ROOT / "medsweep" / "resources" / "medical_abstracts.csv.gz"
    return pd.read_csv(source)["medical_abstract"].dropna().astype(str).tolist()[:n]


def build_promoted(folder: Path) -> Path:
    """The embedded MiniLM with an untrained 5-class head, as a promoted folder (layout.write_*)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from medsweep.hf import quiet_libraries, resolve_model
    from medsweep.release import layout

    quiet_libraries()
    labels = ["neoplasms", "digestive", "nervous", "cardiovascular", "general"]
    path = resolve_model("builtin:minilm-l6")
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    layout.write_model(folder, model, AutoTokenizer.from_pretrained(path))
    config = {"data": {"text_column": "medical_abstract", "text_pair_column": None},
              "trainer": {"max_length": 128, "eval_batch_size": 64}}
    layout.write_record(folder, {"version": "bench"}, config, np.zeros(0, dtype=int), np.zeros((0, len(labels))), labels)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: Path, extra: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "MEDSWEEP_API_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "medsweep.serve", f"model={model}", f"port={port}", *extra],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_up(proc: subprocess.Popen, url: str, log: Path) -> None:
    import httpx

    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.time() > deadline:
            raise SystemExit(f"server did not come up: {log.read_text()[-2000:]}")
        time.sleep(0.25)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(url: str, texts: list[str], clients: int, seconds: float | None = None, requests: int | None = None,
               probe=None) -> dict:
    """`clients` loops of one-abstract requests for `seconds` (or until `requests` answered);
    `probe(client)` runs beside them. Latencies in ms."""
    import httpx

    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    stop_at = started + seconds if seconds else float("inf")
    issued = 0

    async def client(k: int, http) -> None:
        nonlocal errors, issued
        i = k
        while time.perf_counter() < stop_at and (requests is None or issued < requests):
            issued += 1
            t = time.perf_counter()
            response = await http.post(f"{url}/predict", json={"texts": [texts[i % len(texts)]]}, headers=AUTH)
            latencies.append((time.perf_counter() - t) * 1000)
            errors += response.status_code != 200
            i += clients

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        tasks = [asyncio.create_task(client(k, http)) for k in range(clients)]
        probed = await probe(http) if probe else None
        await asyncio.gather(*tasks)
    wall = time.perf_counter() - started
    percentile = (lambda q: float(np.percentile(latencies, q))) if latencies else (lambda q: float("nan"))
    return {"rps": len(latencies) / wall, "p50": percentile(50), "p99": percentile(99), "n": len(latencies),
            "errors": errors, "probe": probed}


async def rejections(http, url: str, rounds: int) -> dict:
    """Latency (ms) of each kind of rejection, sent one at a time; each must get its status."""
    too_many = {"texts": ["Acute myocardial infarction."] * 65}
    kinds = {401: ({"texts": ["Acute myocardial infarction."]}, {}), 413: (too_many, AUTH), 422: ({"texts": [" "]}, AUTH)}
    times = {status: [] for status in kinds}
    for _ in range(rounds):
        for status, (body, headers) in kinds.items():
            t = time.perf_counter()
            response = await http.post(f"{url}/predict", json=body, headers=headers)
            times[status].append((time.perf_counter() - t) * 1000)
            assert response.status_code == status, (status, response.status_code, response.text)
            await asyncio.sleep(0.02)
    return {status: (float(np.percentile(v, 50)), float(np.percentile(v, 99))) for status, v in times.items()}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} [{min(values):.1f}-{max(values):.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="per cell (mode x clients x repeat)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--soak", type=int, default=10_000, help="requests between the two RSS readings")
    parser.add_argument("--soak-seconds", type=float, default=180.0, help="...or until this many seconds have passed")
    parser.add_argument("--quick", action="store_true", help="3 s cells, 1 repeat, 1,000-request soak")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats, args.soak, args.soak_seconds = 3.0, 1, 1000, 30.0
    clients = [int(c) for c in args.clients.split(",")]
    texts = abstracts()
    tokens = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_promoted(tmp / "promoted")
        from transformers import AutoTokenizer

        tokens = [len(ids) for ids in AutoTokenizer.from_pretrained(model)(texts, truncation=True, max_length=128)["input_ids"]]
        print(f"{len(texts)} real abstracts, {np.mean(tokens):.0f} tokens on average at max_length=128 "
              f"({np.mean(np.array(tokens) == 128):.0%} truncated); torch threads per server: default; "
              f"MiniLM-L6 with an untrained head; os.cpu_count()={os.cpu_count()}")
        servers = {mode: start(model, extra, tmp / f"{mode}.log") for mode, extra in MODES.items()}
        try:
            for mode, (proc, url) in servers.items():
                wait_up(proc, url, tmp / f"{mode}.log")
            results = {(mode, c): [] for mode in MODES for c in clients}
            for mode, (_, url) in servers.items():  # warm-up: first forward passes, connection set-up
                asyncio.run(load(url, texts, 4, seconds=2))
            for repeat in range(args.repeats):
                for c in clients:
                    for mode, (_, url) in servers.items():
                        result = asyncio.run(load(url, texts, c, seconds=args.seconds))
                        results[mode, c].append(result)
                        print(f"  repeat {repeat + 1} {mode:>13} {c:>2} clients: {result['rps']:6.1f} req/s  "
                              f"p50 {result['p50']:7.1f} ms  p99 {result['p99']:7.1f} ms  (n={result['n']}, "
                              f"non-200: {result['errors']})", flush=True)

            print("\nmode           clients   requests/s [min-max]   p50 ms [min-max]        p99 ms [min-max]")
            for (mode, c), runs in results.items():
                print(f"{mode:>13} {c:>9} {spread([r['rps'] for r in runs])} {spread([r['p50'] for r in runs])}"
                      f" {spread([r['p99'] for r in runs])}")

            _, url = servers["batched"]
            idle = asyncio.run(load(url, texts, 0, probe=lambda http: rejections(http, url, 20)))["probe"]
            busy = asyncio.run(load(url, texts, 32, seconds=8, probe=lambda http: rejections(http, url, 20)))
            print("\nrejections (batched server), latency ms p50 / p99: idle vs 32 clients loading it "
                  f"({busy['rps']:.1f} req/s meanwhile)")
            for status in (401, 413, 422):
                print(f"  {status}: idle {idle[status][0]:6.1f} / {idle[status][1]:6.1f}   "
                      f"under load {busy['probe'][status][0]:6.1f} / {busy['probe'][status][1]:6.1f}")

            proc, url = servers["batched"]
            before = rss_mib(proc.pid)
            started = time.perf_counter()
            soak = asyncio.run(load(url, texts, 32, seconds=args.soak_seconds, requests=args.soak))
            after = rss_mib(proc.pid)
            print(f"\nsoak: {soak['n']} requests (asked for {args.soak}, at most {args.soak_seconds:.0f} s) at 32 clients in {time.perf_counter() - started:.0f} s "
                  f"({soak['rps']:.1f} req/s, non-200: {soak['errors']}); batched server RSS {before:.0f} MiB before, "
                  f"{after:.0f} MiB after ({after - before:+.0f} MiB)")
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)
    one = statistics.median(r["rps"] for r in results["one-at-a-time", clients[-1]])
    many = statistics.median(r["rps"] for r in results["batched", clients[-1]])
    p99 = statistics.median(r["p99"] for r in results["batched", clients[-1]])
    p99_one = statistics.median(r["p99"] for r in results["one-at-a-time", clients[-1]])
    print(f"\nat {clients[-1]} clients: batched {many:.1f} req/s (p99 {p99:.0f} ms) vs one at a time {one:.1f} req/s "
          f"(p99 {p99_one:.0f} ms)")
    print(f"ratio={many / one:.2f}")


if __name__ == "__main__":
    main()
