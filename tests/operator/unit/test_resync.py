"""The periodic resync's scheduling (kit/resync.py): due times with jitter, an object reconciled by another
path not due, deletion forgotten, at most `concurrency` resyncs at once, and a failed one retried."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from typing import Any

import pytest
from medserve_operator.kit.resync import JITTER, Resyncer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def body(uid: str) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "namespace": "default", "name": f"md-{uid}"}}


def test_objects_fall_due_one_jittered_interval_after_they_are_seen() -> None:
    clock = Clock()
    resyncer = Resyncer("modeldeployments", 30.0, concurrency=4, clock=clock, rng=random.Random(7))
    for i in range(200):
        resyncer.observe(body(str(i)), "ADDED")
    assert len(resyncer) == 200
    clock.now += 30.0 * (1 - JITTER) - 0.01
    assert resyncer.due() == []
    clock.now += 30.0 * 2 * JITTER / 2
    spread = len(resyncer.due())
    assert 0 < spread < 200  # a mass apply falls due over the jitter window, not in one instant
    clock.now += 30.0 * JITTER + 0.02
    due = resyncer.due()
    assert sorted(due, key=int) == [str(i) for i in range(200)]
    assert due == sorted(due, key=lambda uid: resyncer._due[uid])  # oldest first


def test_an_object_reconciled_by_another_path_is_not_due() -> None:
    clock = Clock()
    resyncer = Resyncer("abtests", 10.0, concurrency=1, clock=clock)
    resyncer.observe(body("a"), "ADDED")
    resyncer.observe(body("b"), "ADDED")
    clock.now += 10.0 * (1 + JITTER)
    resyncer.reconciled("a")  # a watch event on a child reconciled it just now
    assert resyncer.due() == ["b"]
    resyncer.reconciled("unknown")  # never observed (or already deleted): nothing is scheduled for it
    assert "unknown" not in resyncer._due


def test_a_deleted_object_is_forgotten() -> None:
    clock = Clock()
    resyncer = Resyncer("retrainpolicies", 5.0, concurrency=1, clock=clock)
    resyncer.observe(body("a"), "ADDED")
    resyncer.observe(body("a"), "MODIFIED")
    resyncer.observe(body("a"), "DELETED")
    clock.now += 60
    assert resyncer.due() == [] and len(resyncer) == 0
    assert resyncer.next_due_in() == 5.0


async def test_the_loop_resyncs_every_object_at_bounded_concurrency() -> None:
    resyncer = Resyncer("modeldeployments", 0.2, concurrency=3)
    for i in range(12):
        resyncer.observe(body(str(i)), "ADDED")
    seen: dict[str, int] = {}
    running = peak = 0

    async def reconcile(obj: Mapping[str, Any], logger: Any) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        seen[obj["metadata"]["uid"]] = seen.get(obj["metadata"]["uid"], 0) + 1
        running -= 1

    loop = asyncio.create_task(resyncer.run(reconcile))
    try:
        for _ in range(200):
            await asyncio.sleep(0.02)
            if len(seen) == 12 and min(seen.values()) >= 2:
                break
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert set(seen) == {str(i) for i in range(12)}
    assert min(seen.values()) >= 2, seen
    assert peak == 3  # the 12 fell due together; never more than `concurrency` at once


async def test_a_failed_resync_is_logged_and_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    resyncer = Resyncer("modeldeployments", 0.1, concurrency=1)
    resyncer.observe(body("a"), "ADDED")
    attempts = 0

    async def reconcile(obj: Mapping[str, Any], logger: Any) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("the registry is unreachable")

    loop = asyncio.create_task(resyncer.run(reconcile))
    with caplog.at_level(logging.WARNING, logger="medserve.resync"):
        try:
            for _ in range(100):
                await asyncio.sleep(0.02)
                if attempts >= 2:
                    break
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
    assert attempts >= 2
    assert any(record.getMessage() == "[default/md-a] resync of modeldeployments failed: RuntimeError: the registry "
               "is unreachable" for record in caplog.records), caplog.text


async def test_resyncs_run_in_the_context_of_the_watch_that_saw_the_object() -> None:
    """kopf.event reads context variables kopf sets per object-processing task: the resync carries them."""
    import contextvars

    queue: contextvars.ContextVar[str] = contextvars.ContextVar("queue")
    resyncer = Resyncer("modeldeployments", 0.05, concurrency=1)
    seen: list[str] = []

    async def watch_handler() -> None:
        queue.set("kopf's event queue")
        resyncer.observe(body("a"), "ADDED")

    await asyncio.create_task(watch_handler())  # its own context, as kopf's processing task has

    async def reconcile(obj: Mapping[str, Any], logger: Any) -> None:
        seen.append(queue.get())

    loop = asyncio.create_task(resyncer.run(reconcile))
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if seen:
                break
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert seen[0] == "kopf's event queue"
