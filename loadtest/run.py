"""A load run against a live service over HTTP: closed loop (virtual users) or open loop
(Poisson arrivals), k6-like stages, Zipf or fixed-hit-rate texts, a predict/bulk mix; a live
progress line; samples kept for the report (loadtest/plots.py writes JSON, CSV and PNGs)."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from loadtest.client import Connection, Reply
from loadtest.stats import Sample, percentile
from loadtest.traffic import Mix, Stage, target_at, total_seconds


class TextSource(Protocol):
    def next(self) -> str: ...


@dataclass
class RunConfig:
    """One run. Targets are virtual users (closed) or requests/s (open)."""

    url: str
    stages: list[Stage]
    texts: TextSource
    mode: Literal["closed", "open"] = "closed"
    mix: Mix = field(default_factory=Mix)
    max_connections: int = 512  # open loop: arrivals beyond this wait (and it shows)
    progress: bool = True
    seed: int = 1


@dataclass
class RunResult:
    samples: list[Sample]
    seconds: float


class _Runner:
    def __init__(self, config: RunConfig):
        self.c = config
        self.rng = random.Random(config.seed)
        self.samples: list[Sample] = []
        self.t0 = 0.0
        self.end = total_seconds(config.stages)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def request(self, conn: Connection, scheduled: float) -> None:
        """One request; latency runs from `scheduled` (an open-loop arrival that waited for
        a connection counts that wait: no coordinated omission)."""
        bulk = self.rng.random() < self.c.mix.bulk_fraction
        payload: dict[str, Any]
        if bulk:
            texts = [self.c.texts.next() for _ in range(self.c.mix.bulk_size)]
            route, payload = "/v1/bulk-predict", {"texts": texts}
        else:
            route, payload = "/v1/predict", {"text": self.c.texts.next()}
        try:
            reply = await conn.post_json(route, payload)
        except (OSError, asyncio.IncompleteReadError):
            reply = Reply(0, b"", 0.0)
            await conn.close()
        cached = _cached(reply, bulk) if reply.status == 200 else 0
        self.samples.append(Sample(scheduled, self.now() - scheduled, reply.status, route,
                                   len(payload.get("texts", [])) or 1, cached))

    async def closed(self) -> None:
        """Virtual users, started and stopped to follow the stages (checked every 100 ms)."""
        users: list[asyncio.Task[None]] = []

        async def user(index: int) -> None:
            conn = Connection(self.c.url)
            try:
                while (t := self.now()) < self.end and index < round(
                        target_at(self.c.stages, t)):
                    await self.request(conn, t)
            finally:
                await conn.close()

        while (t := self.now()) < self.end:
            wanted = round(target_at(self.c.stages, t))
            users = [u for u in users if not u.done()]
            running = len(users)
            users += [asyncio.create_task(user(i)) for i in range(running, wanted)]
            await asyncio.sleep(0.1)
        await asyncio.gather(*users)

    async def open(self) -> None:
        """Poisson arrivals at the stage's rate; each takes an idle connection or opens one."""
        idle: list[Connection] = []
        opened = 0
        free = asyncio.Condition()
        tasks: set[asyncio.Task[None]] = set()

        async def fire(scheduled: float) -> None:
            nonlocal opened
            async with free:
                while not idle and opened >= self.c.max_connections:
                    await free.wait()
                if idle:
                    conn = idle.pop()
                else:
                    opened += 1
                    conn = Connection(self.c.url)
            await self.request(conn, scheduled)
            async with free:
                idle.append(conn)
                free.notify()

        scheduled = 0.0
        while scheduled < self.end:
            rate = target_at(self.c.stages, scheduled)
            if rate <= 0:
                scheduled += 0.05
                continue
            delay = scheduled - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(fire(scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            scheduled += self.rng.expovariate(rate)
        await asyncio.gather(*tasks)
        for conn in idle:
            await conn.close()

    async def progress(self) -> None:
        """A live line on stderr, once a second."""
        seen = 0
        end = "" if sys.stderr.isatty() else "\n"  # one rewritten line, or a log line each
        while True:
            await asyncio.sleep(1.0)
            recent = self.samples[seen:]
            seen = len(self.samples)
            ok = [s for s in recent if 200 <= s.status < 300]
            hit = sum(s.cached for s in ok) / max(1, sum(s.items for s in ok))
            line = (f"\r  {self.now():6.1f}/{self.end:.0f} s  target "
                    f"{target_at(self.c.stages, self.now()):7.1f}  {len(recent):5d} req/s  "
                    f"p99 {percentile([s.latency for s in ok], 0.99) * 1000:7.1f} ms  "
                    f"errors {len(recent) - len(ok):4d}  hit {hit:4.0%}   ")
            print(line if end == "" else line.lstrip("\r").rstrip(), end=end, file=sys.stderr,
                  flush=True)

    async def run(self) -> RunResult:
        self.t0 = time.perf_counter()
        reporter = asyncio.create_task(self.progress()) if self.c.progress else None
        try:
            await (self.closed() if self.c.mode == "closed" else self.open())
        finally:
            if reporter is not None:
                reporter.cancel()
                print(file=sys.stderr)
        return RunResult(sorted(self.samples, key=lambda s: s.start), self.now())


def _cached(reply: Reply, bulk: bool) -> int:
    try:
        body: Any = reply.json()
    except ValueError:
        return 0
    if bulk:
        return sum(1 for r in body.get("results", []) if r.get("cached"))
    return 1 if body.get("cached") else 0


def run(config: RunConfig) -> RunResult:
    """Run it (blocking)."""
    return asyncio.run(_Runner(config).run())


def constant(target: float, seconds: float) -> Sequence[Stage]:
    """A flat run at `target`."""
    return [Stage(0, target), Stage(seconds, target)]
