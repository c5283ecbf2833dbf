"""Dynamic batching for the HTTP service: concurrent /predict requests share one forward pass.

One worker thread runs the model (a fast tokenizer must not be used by two threads at once, and one
forward pass already uses every core). While it runs, new requests wait in an asyncio queue; when it
is free it takes everything queued, up to `max_texts` texts, as the next batch. Under load the batch
grows by itself to the number of waiting requests; an idle service answers a lone request at once
(plus `wait_s`, an optional collection window, default 0: the measured gain came from the requests
that queue up during a forward pass, see experiments/bench_serve.py).

`max_texts=1` is the old behaviour, one request per forward pass (the benchmark's baseline).

Requests are batched only with requests for the same loaded model (a reload swaps the model while
older requests are still queued: they finish on the model they arrived on) and of the same kind
(single texts or text pairs). A batch that fails is retried request by request, so one request
that breaks the model cannot fail the others it happened to be batched with.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

log = logging.getLogger("medsweep.serve")


@dataclass
class Job:
    model: object  # a medsweep.serving.inference.PromotedModel
    texts: list[str]
    pairs: Optional[list[str]]
    future: asyncio.Future = field(repr=False)

    def joins(self, first: "Job") -> bool:
        return self.model is first.model and (self.pairs is None) == (first.pairs is None)


class Batcher:
    def __init__(self, max_texts: int = 64, wait_s: float = 0.0):
        self.max_texts, self.wait_s = max(1, max_texts), wait_s
        self.queue: Optional[asyncio.Queue] = None
        self.task: Optional[asyncio.Task] = None
        self.executor: Optional[ThreadPoolExecutor] = None
        self.batches = 0  # forward passes run (the benchmark and tests read it)

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medsweep-predict")
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        if self.executor is not None:
            self.executor.shutdown(wait=True)

    async def predict(self, model, texts: list[str], pairs: Optional[list[str]]) -> np.ndarray:
        """(len(texts), num_labels) probabilities from `model`, computed in a batch with whatever else
        is waiting."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(Job(model, texts, pairs, future))
        return await future

    async def _run(self) -> None:
        held: Optional[Job] = None  # taken from the queue but not batchable with the batch before it
        while True:
            first = held or await self.queue.get()
            held = None
            if self.wait_s > 0 and self.queue.empty():
                await asyncio.sleep(self.wait_s)
            batch, size = [first], len(first.texts)
            while size < self.max_texts and not self.queue.empty():
                job = self.queue.get_nowait()
                if not job.joins(first) or size + len(job.texts) > self.max_texts:
                    held = job
                    break
                batch.append(job)
                size += len(job.texts)
            batch = [job for job in batch if not job.future.done()]  # a client that went away
            if batch:
                await self._forward(batch)

    async def _forward(self, batch: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        texts = [t for job in batch for t in job.texts]
        pairs = [p for job in batch for p in job.pairs] if batch[0].pairs is not None else None
        self.batches += 1
        try:
            probs = await loop.run_in_executor(self.executor, batch[0].model.predict, texts, pairs)
        except Exception as exc:  # noqa: BLE001 - handed to the requests; the message may quote input
            if len(batch) > 1:
                for job in batch:  # only the request that breaks the model fails
                    await self._forward([job])
                return
            _settle(batch[0].future, exception=exc)
            return
        start = 0
        for job in batch:
            _settle(job.future, result=probs[start:start + len(job.texts)])
            start += len(job.texts)


def _settle(future: asyncio.Future, result=None, exception: Optional[BaseException] = None) -> None:
    if future.done():  # cancelled: the client disconnected
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
