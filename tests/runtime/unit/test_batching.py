"""The micro-batcher: concurrent jobs share forwards, cheap forwards run on the event loop, slow ones on
the forward thread, every job gets its own rows back."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
from medserve_runtime.batching import INLINE_S, MicroBatcher


class Forward:
    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.calls: list[tuple[int, str]] = []  # (rows, thread name)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append((len(x), threading.current_thread().name))
        if self.seconds:
            time.sleep(self.seconds)
        return np.stack([x[:, 0], -x[:, 0]], axis=1).astype(np.float32)


async def run_jobs(batcher: MicroBatcher, count: int) -> list[np.ndarray]:
    rows = [np.full((1, 3), i, dtype=np.float32) for i in range(count)]
    return list(await asyncio.gather(*(batcher.run(r) for r in rows)))


async def test_cheap_batches_run_on_the_loop_and_share_forwards() -> None:
    forward = Forward()
    batcher = MicroBatcher(forward, max_batch_size=8, max_latency_ms=2)
    out = await run_jobs(batcher, 32)
    await batcher.close()
    assert [float(o[0, 0]) for o in out] == list(range(32)) and all(o.shape == (1, 2) for o in out)
    assert sum(rows for rows, _ in forward.calls) == 32 and len(forward.calls) < 32
    assert max(rows for rows, _ in forward.calls) == 8
    assert {name for _, name in forward.calls} == {threading.current_thread().name}


async def test_slow_forwards_go_to_the_forward_thread() -> None:
    forward = Forward(seconds=INLINE_S * 4)
    batcher = MicroBatcher(forward, max_batch_size=4, max_latency_ms=2, name="slow")
    await run_jobs(batcher, 1)  # the first forward is measured (on the loop: nothing is known yet)
    out = await run_jobs(batcher, 8)
    await batcher.close()
    assert [float(o[0, 0]) for o in out] == list(range(8))
    assert forward.calls[0][1] == threading.current_thread().name
    assert all(name.startswith("forward-slow") for _, name in forward.calls[1:]), forward.calls
