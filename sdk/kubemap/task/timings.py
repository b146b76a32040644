"""Timing records of one task: where each slice's time went, kept in the task's store.

Every run of a slice (a pod, a warm pool's lease, a local worker's slice: all go through
`runtime.worker.run_slice`) writes one small write-once JSON object

    <task>/timings/<first:012d>-<count>-<attempt>     (".1", ".2"... if a twin wrote first)

    {"v":1,"first":0,"count":100,"attempt":0,"worker":"pod-or-host:pid","start":1764761000.1234,
     "fetch":0.0123,"compute":1.0012,"write":0.0045,"boot":0.41,"ran":100,"ok":100,"failed":0,
     "skipped":0,"unrun":0,"slowest":[57,0.0112],"h":[[-27,98],[-26,2]]}

`start` is the wall clock (epoch seconds) when the slice began; fetch (reading the function
and the slice's inputs), compute (the function over the items) and write (the result object,
error records, cache entries) are seconds. `boot` is the time from the process's start to
its first slice (pod start-up as the pod sees it), only on a process's first slice. `h` is a
histogram of the per-item times in quarter-octave buckets (bucket b holds times in
[2**(b/4), 2**((b+1)/4)) seconds): bounded at ~100 buckets whatever the slice's size, and
merged across slices it gives the task's p50/p95 item time within 9 %. `error` names an
infrastructure failure that ended the attempt.

Why one object per attempt, and not a log: object stores have no append, and a shared object
would need a writer to coordinate; write-once objects keyed like the results need none, a
lost worker loses only its own record, and a twin pod cannot overwrite anyone's. A record is
~250 bytes and there is one per slice, so the records grow with the number of slices, not
items: the SDK's automatic slicing cuts local slices of about a second of work, warm pool
chunks of at least 0.25 s and at most 2 x parallelism pods, so 1,000,000 items of 10 ms make
~10,000 records, ~2.5 MB. Nothing is written to the MapTask and no API call is made.

KUBEMAP_TIMINGS=0 (in the worker's environment) turns recording off: for measuring its cost.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kubemap.stores import KeyNotFound, Store

TIMINGS_PREFIX = "timings/"
TIMING_NAME = re.compile(r"\d{12}-\d+-\d+(?:\.\d+)?")  # the names below TIMINGS_PREFIX
ENV_TIMINGS = "KUBEMAP_TIMINGS"  # "0", "false", "off", "no": record nothing
FORMAT_VERSION = 1
BUCKETS_PER_OCTAVE = 4
MIN_ITEM_SECONDS = 1e-6  # shorter item times count in this bucket
TWINS = 8  # suffixed keys a twin (a duplicate pod, a local rerun) tries before giving up
READ_THREADS = 16
STRAGGLER_FACTOR = 2.0  # a slice whose per-item time is over 2x the median is a straggler...
STRAGGLER_SECONDS = 0.1  # ...if that cost it this much time (microsecond items are noise)


def recording_enabled(environ: dict[str, str] | None = None) -> bool:
    value = (os.environ if environ is None else environ).get(ENV_TIMINGS, "").strip().lower()
    return value not in ("0", "false", "off", "no")


def timing_key(first: int, count: int, attempt: int) -> str:
    return f"{TIMINGS_PREFIX}{first:012d}-{count}-{attempt}"


# -- per-item times, bounded ----------------------------------------------------------------
def bucket_of(seconds: float) -> int:
    return math.floor(math.log2(max(seconds, MIN_ITEM_SECONDS)) * BUCKETS_PER_OCTAVE)


def bucket_seconds(bucket: int) -> float:
    """The bucket's representative time: its geometric middle."""
    return float(2 ** ((bucket + 0.5) / BUCKETS_PER_OCTAVE))


@dataclass
class ItemTimes:
    """The item times of one slice as a histogram, plus the slowest item exactly."""

    buckets: dict[int, int] = field(default_factory=dict)
    slowest: tuple[int, float] | None = None

    def add(self, index: int, seconds: float) -> None:
        bucket = bucket_of(seconds)
        self.buckets[bucket] = self.buckets.get(bucket, 0) + 1
        if self.slowest is None or seconds > self.slowest[1]:
            self.slowest = (index, seconds)


def quantile(buckets: dict[int, int], q: float) -> float | None:
    """The q-quantile (0..1) of the times a merged histogram holds (None if empty)."""
    total = sum(buckets.values())
    if total == 0:
        return None
    rank, seen = q * (total - 1), 0
    for bucket in sorted(buckets):
        seen += buckets[bucket]
        if seen > rank:
            return bucket_seconds(bucket)
    return bucket_seconds(max(buckets))


# -- one record --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SliceTiming:
    """What one run of the slice [first, first+count) did and how long each part took."""

    first: int
    count: int
    attempt: int
    worker: str
    start: float  # epoch seconds
    fetch: float = 0.0
    compute: float = 0.0
    write: float = 0.0
    ran: int = 0  # items the function was called on
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0  # had a result from an earlier attempt
    unrun: int = 0  # left unrun (a failure that decided the task, or a stop)
    slowest: tuple[int, float] | None = None  # (index, seconds) of the slowest item
    buckets: dict[int, int] = field(default_factory=dict)
    boot: float | None = None  # process start -> this slice, on a process's first slice
    error: str | None = None  # an infrastructure failure ended the attempt

    @property
    def seconds(self) -> float:
        return self.fetch + self.compute + self.write

    @property
    def end(self) -> float:
        return self.start + self.seconds

    @property
    def per_item(self) -> float | None:
        """Mean compute seconds per item run (None if none ran)."""
        return self.compute / self.ran if self.ran else None

    @property
    def outcome(self) -> str:
        """error, failed, stopped (items left unrun), skipped (nothing to run) or succeeded."""
        if self.error:
            return "error"
        if self.failed:
            return "failed"
        if self.unrun:
            return "stopped"
        if not self.ran:
            return "skipped"
        return "succeeded"

    def encode(self) -> bytes:
        body: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "first": self.first,
            "count": self.count,
            "attempt": self.attempt,
            "worker": self.worker,
            "start": round(self.start, 4),
            "fetch": round(self.fetch, 6),
            "compute": round(self.compute, 6),
            "write": round(self.write, 6),
            "ran": self.ran,
            "ok": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "unrun": self.unrun,
        }
        if self.slowest is not None:
            body["slowest"] = [self.slowest[0], round(self.slowest[1], 6)]
        if self.buckets:
            body["h"] = [[b, n] for b, n in sorted(self.buckets.items())]
        if self.boot is not None:
            body["boot"] = round(self.boot, 4)
        if self.error:
            body["error"] = self.error[:300]
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> SliceTiming | None:
        """The record, or None if it is not one this version reads (a newer format, junk)."""
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("v") != FORMAT_VERSION:
                return None
            slowest = raw.get("slowest")
            return cls(
                first=int(raw["first"]),
                count=int(raw["count"]),
                attempt=int(raw["attempt"]),
                worker=str(raw["worker"]),
                start=float(raw["start"]),
                fetch=float(raw.get("fetch", 0.0)),
                compute=float(raw.get("compute", 0.0)),
                write=float(raw.get("write", 0.0)),
                ran=int(raw.get("ran", 0)),
                succeeded=int(raw.get("ok", 0)),
                failed=int(raw.get("failed", 0)),
                skipped=int(raw.get("skipped", 0)),
                unrun=int(raw.get("unrun", 0)),
                slowest=(int(slowest[0]), float(slowest[1])) if slowest else None,
                buckets={int(b): int(n) for b, n in raw.get("h", [])},
                boot=float(raw["boot"]) if raw.get("boot") is not None else None,
                error=str(raw["error"]) if raw.get("error") else None,
            )
        except (ValueError, KeyError, TypeError, IndexError):
            return None


def write_timing(task: Store, timing: SliceTiming) -> bool:
    """Write the record once; a twin of the same attempt (a duplicate pod) gets a suffixed
    key. False if every key was taken. Store errors are the caller's to ignore."""
    key = timing_key(timing.first, timing.count, timing.attempt)
    data = timing.encode()
    for twin in range(TWINS + 1):
        if task.put_if_absent(key if twin == 0 else f"{key}.{twin}", data):
            return True
    return False


def timing_keys(task: Store) -> list[str]:
    return [
        key
        for key in task.list(TIMINGS_PREFIX)
        if TIMING_NAME.fullmatch(key[len(TIMINGS_PREFIX) :])
    ]


def read_timings(task: Store, threads: int = READ_THREADS) -> list[SliceTiming]:
    """Every readable record of the task, in start-time order (one LIST, GETs in parallel)."""
    keys = timing_keys(task)

    def fetch(key: str) -> SliceTiming | None:
        try:
            return SliceTiming.decode(task.get(key))
        except KeyNotFound:
            return None  # removed meanwhile

    if len(keys) <= 1 or threads <= 1:
        found = [fetch(key) for key in keys]
    else:
        with ThreadPoolExecutor(max_workers=min(threads, len(keys))) as pool:
            found = list(pool.map(fetch, keys))
    return sorted((t for t in found if t is not None), key=lambda t: (t.start, t.first))


# -- what the records say ----------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerTotals:
    worker: str
    slices: int
    items: int
    busy: float  # fetch + compute + write, seconds
    compute: float

    @property
    def per_item(self) -> float | None:
        return self.compute / self.items if self.items else None


@dataclass(frozen=True)
class Summary:
    slices: int
    attempts_retried: int  # records with attempt > 0
    items: int  # items the function ran (over all attempts)
    succeeded: int
    failed: int
    wall: float  # first start to last end, seconds
    items_per_second: float | None
    p50: float | None  # per-item time (compute), seconds
    p95: float | None
    fetch: float  # totals over every record, seconds
    compute: float
    write: float
    boot: float
    slowest_worker: WorkerTotals | None  # the highest compute time per item
    slowest_item: tuple[int, float, str] | None  # (index, seconds, worker)
    stragglers: int
    workers: tuple[WorkerTotals, ...] = ()


def by_worker(timings: Iterable[SliceTiming]) -> list[WorkerTotals]:
    slices: dict[str, list[SliceTiming]] = {}
    for timing in timings:
        slices.setdefault(timing.worker, []).append(timing)
    return [
        WorkerTotals(
            worker=worker,
            slices=len(own),
            items=sum(t.ran for t in own),
            busy=sum(t.seconds for t in own),
            compute=sum(t.compute for t in own),
        )
        for worker, own in sorted(slices.items())
    ]


def median_per_item(timings: Iterable[SliceTiming]) -> float | None:
    rates = [t.per_item for t in timings if t.per_item is not None]
    return statistics.median(rates) if rates else None


def stragglers(timings: Iterable[SliceTiming]) -> list[SliceTiming]:
    """Slices whose compute time per item is over STRAGGLER_FACTOR x the median slice's,
    and that lost at least STRAGGLER_SECONDS to it."""
    timings = list(timings)
    median = median_per_item(timings)
    if median is None or median <= 0:
        return []
    return [
        t
        for t in timings
        if t.per_item is not None
        and t.per_item > STRAGGLER_FACTOR * median
        and t.compute - median * t.ran >= STRAGGLER_SECONDS
    ]


def summarize(timings: Iterable[SliceTiming]) -> Summary:
    timings = list(timings)
    merged: dict[int, int] = {}
    for timing in timings:
        for bucket, n in timing.buckets.items():
            merged[bucket] = merged.get(bucket, 0) + n
    workers = by_worker(timings)
    timed = [w for w in workers if w.per_item is not None]
    slowest_worker = max(timed, key=lambda w: w.per_item or 0.0) if timed else None
    slowest_item = None
    for timing in timings:
        if timing.slowest is not None and (
            slowest_item is None or timing.slowest[1] > slowest_item[1]
        ):
            slowest_item = (timing.slowest[0], timing.slowest[1], timing.worker)
    wall = max((t.end for t in timings), default=0.0) - min((t.start for t in timings), default=0.0)
    items = sum(t.ran for t in timings)
    return Summary(
        slices=len(timings),
        attempts_retried=sum(1 for t in timings if t.attempt > 0),
        items=items,
        succeeded=sum(t.succeeded for t in timings),
        failed=sum(t.failed for t in timings),
        wall=max(wall, 0.0),
        items_per_second=items / wall if wall > 0 else None,
        p50=quantile(merged, 0.50),
        p95=quantile(merged, 0.95),
        fetch=sum(t.fetch for t in timings),
        compute=sum(t.compute for t in timings),
        write=sum(t.write for t in timings),
        boot=sum(t.boot or 0.0 for t in timings),
        slowest_worker=slowest_worker,
        slowest_item=slowest_item,
        stragglers=len(stragglers(timings)),
        workers=tuple(workers),
    )


def throughput(timings: Iterable[SliceTiming], bins: int = 60) -> Iterator[tuple[float, float]]:
    """(seconds since the first start, items/s) per time bin: each slice's items are spread
    evenly over its compute time."""
    timings = [t for t in timings if t.ran]
    if not timings:
        return
    origin = min(t.start for t in timings)
    span = max(t.end for t in timings) - origin
    if span <= 0:
        return
    width = span / bins
    done = [0.0] * bins
    for t in timings:
        lo = t.start + t.fetch - origin
        hi = lo + t.compute
        if hi <= lo:
            done[min(bins - 1, int(lo / width))] += t.ran
            continue
        rate = t.ran / (hi - lo)
        first, last = int(lo / width), min(bins - 1, int(hi / width))
        for b in range(first, last + 1):
            overlap = min(hi, (b + 1) * width) - max(lo, b * width)
            if overlap > 0:
                done[b] += rate * overlap
    for b, n in enumerate(done):
        yield (b + 0.5) * width, n / width
