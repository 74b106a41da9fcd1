"""A model of Knative's pod autoscaler (KPA, concurrency metric) driving pods whose speed is
the measured capacity curve, for a traffic trace: pods over time, predicted p99, requests that
waited on a cold start, pod-seconds.

The decision rule follows Knative Serving's autoscaler (pkg/autoscaler/scaling): every tick
(2 s) it averages the observed concurrency (requests in pods plus those the activator holds)
over the stable window (60 s) and the panic window (10% of it), and with
target_per_pod = target x utilization (target defaults to containerConcurrency):
    stable = ceil(stable_avg / target_per_pod), panic = ceil(panic_avg / target_per_pod)
limited to [floor(ready / max_scale_down_rate), ceil(ready x max_scale_up_rate)]. Panic mode
starts when panic / ready >= 200% and ends a stable window after that stops; in panic the count
never drops. The result is the maximum over the scale-down delay, clamped to [min, max] scale;
the last pod goes only after the scale-to-zero grace period and the retention period.

Requests are a fluid in a FIFO queue (the activator / queue-proxy). Service times (tens to
hundreds of ms) are short next to the autoscaler's seconds, so pods are taken to be at their
steady state: serving r req/s per pod means running at the concurrency c where the curve gives
r (Little's law), up to containerConcurrency. Ready pods drain the queue at up to their
capacity; whatever exceeds it waits. A request's predicted latency is its wait in that queue
plus the latency of a pod receiving r req/s at random: loadtest/podqueue.py simulates the
pod's micro-batcher (threads taking whole batches from one queue) under Poisson arrivals,
with forward-pass times taken from the curve. (An earlier estimate, the curve's p99 at a
Poisson spread of c in flight, was 34-79% under the measured p99 at 60-90% load in
`python -m loadtest validate`: open-loop arrivals queue more than that.) The autoscaler
observes the requests in pods (ready x c) plus those waiting. New pods are ready after the
measured cold start.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loadtest.curve import Curve
from loadtest.podqueue import PodModel, pod_model


@dataclass(frozen=True)
class KpaConfig:
    """Knative's settings (annotation names in comments); defaults are Knative's."""

    container_concurrency: int = 0  # spec.containerConcurrency (0 = unlimited)
    target: float | None = None  # autoscaling.knative.dev/target (default: cc, else 100)
    utilization: float = 0.7  # target-utilization-percentage / 100
    min_scale: int = 0  # min-scale
    max_scale: int = 0  # max-scale (0 = unbounded)
    initial_scale: int = 1  # initial-scale
    stable_window_s: float = 60.0  # window
    panic_window_pct: float = 10.0  # panic-window-percentage
    panic_threshold_pct: float = 200.0  # panic-threshold-percentage
    scale_down_delay_s: float = 0.0  # scale-down-delay
    scale_to_zero_grace_s: float = 30.0  # config-autoscaler scale-to-zero-grace-period
    retention_s: float = 0.0  # scale-to-zero-pod-retention-period
    max_scale_up_rate: float = 1000.0  # config-autoscaler
    max_scale_down_rate: float = 2.0  # config-autoscaler
    target_burst_capacity: float = 211.0  # target-burst-capacity
    tick_s: float = 2.0  # the autoscaler's decision interval

    @property
    def target_per_pod(self) -> float:
        """In-flight requests per pod the autoscaler aims for."""
        return self.total_per_pod * self.utilization

    @property
    def total_per_pod(self) -> float:
        """The target before utilization."""
        if self.target is not None:
            return self.target
        return float(self.container_concurrency or 100)


def desired_pods(observed_concurrency: float, target_per_pod: float) -> int:
    """Pods for an observed total concurrency: ceil(observed / target_per_pod)."""
    return math.ceil(observed_concurrency / target_per_pod - 1e-9)


@dataclass
class Trace:
    """Offered requests/s over time."""

    rate: Callable[[float], float]
    seconds: float
    name: str = "trace"


def trace(kind: str, seconds: float, rate: float, low: float = 0.0,
          period_s: float = 600.0, at_s: float = 60.0, length_s: float = 30.0) -> Trace:
    """constant (rate), diurnal (low..rate, a sine of period_s), spike (low, rate during
    [at_s, at_s + length_s)), onoff (rate for length_s, then 0 for period_s - length_s)."""
    shapes: dict[str, Callable[[float], float]] = {
        "constant": lambda t: rate,
        "diurnal": lambda t: low + (rate - low) * (1 - math.cos(2 * math.pi * t / period_s)) / 2,
        "spike": lambda t: rate if at_s <= t < at_s + length_s else low,
        "onoff": lambda t: rate if (t % period_s) < length_s else 0.0,
    }
    if kind not in shapes:
        raise ValueError(f"unknown trace {kind!r}: one of {', '.join(shapes)}")
    return Trace(shapes[kind], seconds, kind)


@dataclass
class _Cohort:
    arrived: float
    count: float
    cold: bool  # arrived while no pod was ready


@dataclass
class SimResult:
    summary: dict[str, Any]
    series: list[dict[str, Any]] = field(default_factory=list)


def simulate(config: KpaConfig, curve: Curve, load: Trace, cold_start_s: float,
             dt: float = 0.1, timeout_s: float = 30.0, record_every_s: float = 1.0,
             workers: int = 2, max_batch: int = 32) -> SimResult:
    """Run the trace through the autoscaler and the pods (`workers` model threads and
    SURGE_MAX_BATCH_SIZE per pod: the predictor's 2 CPUs and the default, 32)."""
    cc = float(config.container_concurrency or math.inf)
    pod_c, pod_rate = curve.best(cc)  # a pod's most requests/s within containerConcurrency
    pod = pod_model(curve, workers, max_batch, cc)
    panic_window = config.stable_window_s * config.panic_window_pct / 100
    state = _State(ready=float(max(config.initial_scale, config.min_scale)))
    history: deque[tuple[float, float]] = deque()  # (t, observed total concurrency)
    delay_window: deque[tuple[float, int]] = deque()
    panic_since: float | None = None
    max_panic_pods = 0
    zero_since: float | None = None
    last_tick = -config.tick_s
    desired = int(state.ready)
    series: list[dict[str, Any]] = []
    steps = int(load.seconds / dt)
    every = max(1, round(record_every_s / dt))
    for step in range(steps):
        t = step * dt
        state.start_pods(t)
        rate = load.rate(t)
        c_now = state.serve(t, rate * dt, dt, curve, pod, pod_rate, pod_c, cc, timeout_s)
        observed = state.ready * c_now + state.waiting
        history.append((t, observed))
        while history[0][0] < t - config.stable_window_s:
            history.popleft()
        state.account(dt, panic_since is not None,
                      state.ready * config.total_per_pod - config.target_burst_capacity
                      - observed < 0)
        if t - last_tick >= config.tick_s - 1e-9:
            last_tick = t
            want, panic_since, max_panic_pods = _decide(
                config, _mean(history, t - config.stable_window_s),
                _mean(history, t - panic_window), state.ready, t, panic_since, max_panic_pods)
            delay_window.append((t, want))
            while delay_window[0][0] < t - config.scale_down_delay_s - 1e-9:
                delay_window.popleft()
            want = max(config.min_scale, max(w for _, w in delay_window))
            if config.max_scale:
                want = min(want, config.max_scale)
            if want == 0 and state.pods > 0:
                zero_since = t if zero_since is None else zero_since
                if t - zero_since < max(config.scale_to_zero_grace_s, config.retention_s):
                    want = 1  # the last pod lingers
            else:
                zero_since = None
            desired = want
            state.scale_to(desired, t + cold_start_s)
        if step % every == 0:
            series.append(state.row(t, rate, desired, c_now, pod, pod_rate, panic_since))
    return SimResult(state.summary(load, dt, steps), series)


@dataclass
class _State:
    """Pods and the request queue as the simulation goes."""

    ready: float
    pending: list[float] = field(default_factory=list)  # ready-at times of starting pods
    queue: deque[_Cohort] = field(default_factory=deque)
    waiting: float = 0.0
    # (wait + the curve's p99, weight) and (wait + the curve's p50, weight) per served portion
    latencies: list[tuple[float, float]] = field(default_factory=list)
    medians: list[tuple[float, float]] = field(default_factory=list)
    cold_waiters: float = 0.0
    timed_out: float = 0.0
    served: float = 0.0
    pod_seconds: float = 0.0
    panic_seconds: float = 0.0
    in_path_s: float = 0.0
    max_ready: int = 0
    per_pod_rate: float = 0.0  # requests/s each ready pod served in the last step

    @property
    def pods(self) -> float:
        return self.ready + len(self.pending)

    def start_pods(self, t: float) -> None:
        if self.pending and min(self.pending) <= t:
            self.ready += sum(1 for r in self.pending if r <= t)
            self.pending = [r for r in self.pending if r > t]
        self.max_ready = max(self.max_ready, int(self.ready))

    def serve(self, t: float, arriving: float, dt: float, curve: Curve, pod: PodModel,
              pod_rate: float, pod_c: float, cc: float, timeout_s: float) -> float:
        """Queue the arrivals, drain what ready pods can serve (FIFO); the per-pod
        concurrency the pods ran at."""
        if arriving > 0:
            self.queue.append(_Cohort(t, arriving, cold=self.ready < 1))
            self.waiting += arriving
            if self.ready < 1:
                self.cold_waiters += arriving
        while self.queue and t - self.queue[0].arrived > timeout_s:
            lost = self.queue.popleft().count
            self.timed_out += lost
            self.waiting -= lost
        if self.ready < 1 or not self.queue:
            return 0.0
        budget = min(self.waiting, self.ready * pod_rate * dt)
        self.per_pod_rate = budget / dt / self.ready
        c_now = min(cc, curve.concurrency_for(self.per_pod_rate, cc))
        service = pod.p99_s(self.per_pod_rate)
        typical = pod.p50_s(self.per_pod_rate)
        left = budget
        while self.queue and left > 1e-9:
            cohort = self.queue[0]
            take = min(left, cohort.count)
            self.latencies.append((t - cohort.arrived + service, take))
            self.medians.append((t - cohort.arrived + typical, take))
            cohort.count -= take
            left -= take
            if cohort.count <= 1e-9:
                self.queue.popleft()
        self.waiting = max(0.0, self.waiting - budget)
        self.served += budget
        return c_now

    def account(self, dt: float, panicking: bool, activator_in_path: bool) -> None:
        self.pod_seconds += self.pods * dt
        self.panic_seconds += dt if panicking else 0.0
        self.in_path_s += dt if activator_in_path else 0.0

    def scale_to(self, desired: int, ready_at: float) -> None:
        """Start pods (ready after the cold start) or stop them (starting ones first)."""
        if desired > self.pods:
            self.pending += [ready_at] * int(desired - self.pods)
        elif desired < self.pods:
            drop = int(self.pods - desired)
            cut = min(drop, len(self.pending))
            self.pending = self.pending[: len(self.pending) - cut]
            self.ready -= drop - cut

    def row(self, t: float, rate: float, desired: int, c_now: float, pod: PodModel,
            pod_rate: float, panic_since: float | None) -> dict[str, Any]:
        """What a request arriving now would see: the queue ahead of it, then the pods."""
        drain = self.ready * pod_rate
        wait = self.waiting / drain if drain else 0.0
        if self.ready < 1 and self.pending:
            wait = max(wait, min(self.pending) - t)
        return {"t": round(t, 2), "rate": round(rate, 2), "desired": desired,
                "ready": int(self.ready), "per_pod_concurrency": round(c_now, 2),
                "queued": round(self.waiting, 2),
                "p99_ms": round((wait + pod.p99_s(self.per_pod_rate)) * 1000, 1),
                "panic": panic_since is not None}

    def summary(self, load: Trace, dt: float, steps: int) -> dict[str, Any]:
        offered = sum(load.rate(s * dt) * dt for s in range(steps))
        return {
            "offered": round(offered, 1), "served": round(self.served, 1),
            "throughput_rps": round(self.served / load.seconds, 2),
            "p99_ms": round(_weighted_quantile(self.latencies, 0.99) * 1000, 1),
            "p50_ms": round(_weighted_quantile(self.medians, 0.5) * 1000, 1),
            "cold_start_waiters": round(self.cold_waiters, 1),
            "timed_out": round(self.timed_out, 1), "pod_seconds": round(self.pod_seconds, 1),
            "max_pods": self.max_ready, "panic_seconds": round(self.panic_seconds, 1),
            "activator_in_path_fraction": round(self.in_path_s / load.seconds, 3),
        }


def _decide(config: KpaConfig, stable: float, panic: float, ready: float, t: float,
            panic_since: float | None, max_panic_pods: int) -> tuple[int, float | None, int]:
    """One autoscaler tick: (desired pods, panic start or None, max pods while panicking)."""
    per_pod = config.target_per_pod
    counted = max(1.0, ready)  # Knative treats 0 ready pods as 1 for the rate limits
    up_limit = math.ceil(config.max_scale_up_rate * counted)
    down_limit = math.floor(counted / config.max_scale_down_rate)
    dspc = min(max(desired_pods(stable, per_pod), down_limit), up_limit)
    dppc = min(max(desired_pods(panic, per_pod), down_limit), up_limit)
    over = dppc / counted >= config.panic_threshold_pct / 100
    if over:
        panic_since = t if panic_since is None else panic_since
        last_over = t
    else:
        last_over = None
    if panic_since is not None and not over and t - panic_since >= config.stable_window_s:
        panic_since, max_panic_pods = None, 0
    if panic_since is not None:
        # Knative provisions for the larger of the two windows and never scales down in panic.
        want = max(dspc, dppc, max_panic_pods)
        max_panic_pods = want
        if last_over is not None:
            panic_since = t  # a panic lasts a stable window from the last time it was over
        return want, panic_since, max_panic_pods
    if stable == 0 and panic == 0:
        return 0, None, 0
    return dspc, None, 0


def _mean(history: deque[tuple[float, float]], since: float) -> float:
    values = [v for t, v in history if t >= since]
    return sum(values) / len(values) if values else 0.0


def _weighted_quantile(pairs: list[tuple[float, float]], q: float) -> float:
    if not pairs:
        return math.nan
    ordered = sorted(pairs)
    total = sum(w for _, w in ordered)
    running = 0.0
    for value, weight in ordered:
        running += weight
        if running >= q * total:
            return value
    return ordered[-1][0]
