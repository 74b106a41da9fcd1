"""The load engine: a run against a live service over HTTP: closed loop (virtual users), open
loop (Poisson arrivals) or paced (connections sharing a rate on a fixed schedule), k6-like
stages, Zipf, fixed-hit-rate or a fixed list of texts, a predict/bulk mix; a live progress line;
samples kept for the report (loadtest/plots.py writes JSON, CSV and PNGs). The benchmarks'
closed_loop and paced are runs of it."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from loadtest.client import Connection, Reply
from loadtest.stats import Sample, latency_ms, percentile
from loadtest.traffic import Mix, Stage, target_at, total_seconds


class TextSource(Protocol):
    def next(self) -> str: ...


class Exhausted(Exception):
    """A finite text source has no more texts: the run ends when the last ones are answered."""


class TextList:
    """Each of a fixed list of texts, once, in order, shared by every connection (closed and
    paced runs: the run ends when the list does)."""

    def __init__(self, texts: Sequence[str]):
        self._texts = iter(texts)

    def next(self) -> str:
        try:
            return next(self._texts)
        except StopIteration:
            raise Exhausted from None


@dataclass
class RunConfig:
    """One run. Targets are virtual users (closed) or requests/s (open, paced)."""

    url: str
    stages: list[Stage]
    texts: TextSource
    mode: Literal["closed", "open", "paced"] = "closed"
    mix: Mix = field(default_factory=Mix)
    max_connections: int = 512  # open loop: arrivals beyond this wait (and it shows)
    connections: int = 1  # paced: connections sharing the rate, each on a fixed schedule
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
        self.drained = asyncio.Event()  # a finite text source ran out

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
        latency = self.now() - scheduled  # before reading the body: not the client's work
        cached = _cached(reply, bulk) if reply.status == 200 else 0
        self.samples.append(Sample(scheduled, latency, reply.status, route,
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
            except Exhausted:
                self.drained.set()
            finally:
                await conn.close()

        while (t := self.now()) < self.end and not self.drained.is_set():
            wanted = round(target_at(self.c.stages, t))
            users = [u for u in users if not u.done()]
            running = len(users)
            users += [asyncio.create_task(user(i)) for i in range(running, wanted)]
            # Woken early when the texts run out: the run's length is a figure.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drained.wait(), timeout=0.1)
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

    async def paced(self) -> None:
        """`connections` connections sharing the stage's rate, each sending on its own fixed
        schedule (staggered): an open loop per connection, and no queue of arrivals. A late
        send goes at once and its latency counts from the send: the path's own latency."""

        async def connection(index: int) -> None:
            conn = Connection(self.c.url)
            scheduled = index / self.c.connections * self._interval(0.0)
            try:
                while scheduled < self.end:
                    delay = scheduled - self.now()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await self.request(conn, max(scheduled, self.now()))
                    scheduled += self._interval(scheduled)
            except Exhausted:
                pass
            finally:
                await conn.close()

        await asyncio.gather(*(connection(k) for k in range(self.c.connections)))

    def _interval(self, t: float) -> float:
        """Seconds between one connection's sends at `t` (50 ms while the rate is 0)."""
        rate = target_at(self.c.stages, t)
        return self.c.connections / rate if rate > 0 else 0.05

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
            loops = {"closed": self.closed, "open": self.open, "paced": self.paced}
            await loops[self.c.mode]()
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


async def closed_loop(url: str, texts: list[str], concurrency: int) -> dict[str, Any]:
    """`concurrency` virtual users sharing one pass over `texts`, each sending the next text as
    soon as it has an answer (the benchmarks' saturated runs)."""
    config = RunConfig(url=url, stages=list(constant(concurrency, math.inf)),
                       texts=TextList(texts), progress=False)
    result = await _Runner(config).run()
    return bench_summary(result.samples, result.seconds)


async def paced(url: str, texts: list[str], concurrency: int, rate: float) -> dict[str, Any]:
    """`concurrency` connections sharing `rate` requests/s on a fixed schedule (open loop per
    connection), len(texts) // concurrency requests each: latency of the path itself, not of
    a saturated queue (Little's law)."""
    sent = len(texts) // concurrency * concurrency
    # The last sends are due just before the end: the list's length bounds them exactly.
    config = RunConfig(url=url, stages=list(constant(rate, sent / rate)),
                       texts=TextList(texts[:sent]), mode="paced", connections=concurrency,
                       progress=False)
    result = await _Runner(config).run()
    return {"offered_rps": round(rate, 1)} | bench_summary(result.samples, result.seconds)


def bench_summary(samples: Sequence[Sample], seconds: float) -> dict[str, Any]:
    """The benchmarks' summary (k6run's too): requests, statuses, latency percentiles of every
    request. Throughput counts answers (200): a shed request (503) is not served work."""
    statuses: dict[int, int] = {}
    for s in samples:
        statuses[s.status] = statuses.get(s.status, 0) + 1
    return {"requests": len(samples), "seconds": round(seconds, 3),
            "rps": round(statuses.get(200, 0) / seconds, 1), "statuses": statuses,
            **latency_ms([s.latency for s in samples])}
