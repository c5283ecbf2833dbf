"""Concurrent feedback writers against a real service: how long a burst of N clients, each sending
one POST /feedback at the same instant, takes, and whether every row lands.

    python experiments/bench_feedback.py model=runs/<run>/promoted [clients=32] [bursts=5]

Starts a real uvicorn on 127.0.0.1 (no token check is skipped: a token is set), makes `clients`
predictions per burst, then releases `clients` threads at a barrier, each posting one feedback, and
counts the rows in a fresh SQLite database afterwards. Prints one line per burst and a summary.
"""

import os
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medsweep.serving import serve  # noqa: E402
from medsweep.serving.inference import load_promoted  # noqa: E402
from tests.conftest import serving  # noqa: E402

TOKEN = "bench-feedback-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def main(argv):
    args = dict(a.split("=", 1) for a in argv)
    clients, bursts = int(args.get("clients", 32)), int(args.get("bursts", 5))
    db = Path(tempfile.mkdtemp(prefix="bench-feedback-")) / "fb.sqlite"
    model = load_promoted(args["model"])
    walls, latencies, sent = [], [], 0
    with serving(serve.create_app(model, TOKEN, feedback_db=str(db))) as url:
        for burst in range(bursts):
            answer = httpx.post(f"{url}/predict", json={"texts": [f"Chest pain, case {burst}-{i}." for i in range(clients)]},
                                headers=AUTH, timeout=120).json()
            ids = [p["prediction_id"] for p in answer["predictions"]]
            barrier, statuses, times = threading.Barrier(clients + 1), [], []

            def client(i):
                barrier.wait()
                started = time.perf_counter()
                response = httpx.post(f"{url}/feedback", json={"prediction_id": ids[i], "label": answer["labels"][0]},
                                      headers=AUTH, timeout=60)
                times.append(time.perf_counter() - started)
                statuses.append(response.status_code)

            threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
            for t in threads:
                t.start()
            barrier.wait()
            started = time.perf_counter()
            for t in threads:
                t.join()
            walls.append(time.perf_counter() - started)
            latencies += times
            sent += clients
            print(f"burst {burst}: {clients} clients in {walls[-1] * 1000:.0f} ms, statuses {sorted(set(statuses))}")
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT COUNT(*), COUNT(DISTINCT prediction_id) FROM feedback").fetchone()
    latencies.sort()
    print(f"sent {sent}, rows {rows[0]} ({rows[1]} distinct), lost {sent - rows[0]}; burst wall median "
          f"{sorted(walls)[len(walls) // 2] * 1000:.0f} ms [{min(walls) * 1000:.0f}-{max(walls) * 1000:.0f}]; "
          f"per-request p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, p99 "
          f"{latencies[int(len(latencies) * 0.99) - 1] * 1000:.0f} ms")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
