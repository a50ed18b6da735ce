"""The recaption scheduler: which unit runs where and when, apart from what runs it.

Plain code, no Ray: it drives an `Executor` (pipeline/executor_ray.py: Ray actors and tasks;
pipeline/executor_local.py: threads in this process) through a small interface, and owns every
rule of the job:
  - queue: each model has a queue of input shards (units); a unit goes to an engine of its model
    that has none in feeding, so models never wait for each other;
  - chunks and decode-ahead: a unit's images are decoded in chunks of `chunk_images` by a stream
    the executor runs, which holds at most one decoded chunk until the scheduler takes it; an
    engine is sent at most `prefetch_chunks` chunks it has not taken yet, and each model keeps
    at most (its live engines + `prefetch_units`) streams open, those of its running units
    included, so the next units' first chunks are ready when an engine frees. Decoded chunks
    alive at once are therefore bounded by counts of chunks, never by shard size;
  - retries: a unit whose engine died, or whose input was lost, is sent again from its first
    chunk, at most `max_unit_retries` times; a unit whose own code failed (unreadable shard,
    engine error) fails at once; no error ends the job;
  - deadlines (`UnitClock`): a unit running past `unit_timeout_s` on its engine has the engine
    killed (the executor restarts it) and is retried the same way;
  - metrics, progress and the report (`_count_unit`, `_report`).
"""

from __future__ import annotations

import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.recaption_config import ConfigError, ModelConfig, RecaptionConfig
from recaption.families import get_family
from recaption.units import UnitSpec, unit_done, unit_path, unit_record
from shards import storage
from shards.fingerprint import shard_files_identity


class Executor(Protocol):
    """What runs the units. Handles are opaque to the scheduler; `wait` takes pending calls and
    streams alike and returns those that are ready (a call finished, a stream has its next
    chunk or has ended)."""

    name: str

    def start(self) -> None:
        """Connect to (or start) what runs engines and decoding."""

    def start_engine(self, model: ModelConfig, index: int) -> Any:
        """Create engine `index` of `model` (it loads in the background)."""

    def ready(self, engine: Any) -> Any:
        """A call that finishes when `engine` is loaded (raises if it cannot load)."""

    def open_stream(self, shard: str, size: int) -> Any:
        """Start decoding one input shard's chunks (images cut to `size` pixels)."""

    def next_chunk(self, stream: Any) -> Any | None:
        """The next decoded chunk of a ready stream, or None when the stream has ended."""

    def close_stream(self, stream: Any) -> None:
        """Stop a stream the scheduler no longer needs."""

    def release(self, engines: list[Any]) -> None:
        """The job is over: stop these engines for good (a next job may reuse their names)."""

    def feed(self, engine: Any, unit: UnitSpec, chunk: Any) -> Any:
        """Send a chunk to an engine: a call that returns the number of images taken."""

    def finish(self, engine: Any, unit: UnitSpec) -> Any:
        """End a unit on its engine: a call that writes the unit and returns its summary."""

    def wait(self, items: list[Any], timeout: float | None) -> list[Any]:
        """At least one ready item of `items`, or none after `timeout` seconds."""

    def result(self, call: Any) -> Any:
        """The value of a finished call, or the error it raised."""

    def classify(self, exc: BaseException) -> str | None:
        """ "unit", "actor" or "infra" (see `pipeline.executor_ray.failure_kind`), None for an
        error that is no executor's (a bug: it ends the job)."""

    def restarting(self, exc: BaseException) -> bool:
        """Did `ready` fail only because the engine is restarting (ask again later)?"""

    def describe(self, exc: BaseException) -> str:
        """The line of an error that says what went wrong."""

    def kill(self, engine: Any) -> None:
        """Kill a hung engine; the executor restarts it (its calls fail as "actor")."""

    def task(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on a CPU (build's assembly); a call."""


class UnitClock:
    """Per-unit deadlines. An engine runs its units one after another, so a unit's clock starts
    when it reaches the head of its engine's lane, not when it was sent."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.lanes: dict[Any, list[Any]] = {}
        self.started: dict[Any, float] = {}

    def submit(self, ref: Any, lane: Any, now: float) -> None:
        queue = self.lanes.setdefault(lane, [])
        queue.append(ref)
        if len(queue) == 1:
            self.started[ref] = now

    def finish(self, ref: Any, lane: Any, now: float) -> None:
        queue = self.lanes.get(lane, [])
        if ref in queue:
            queue.remove(ref)
        self.started.pop(ref, None)
        if queue and queue[0] not in self.started:
            self.started[queue[0]] = now

    def drop_lane(self, lane: Any) -> list[Any]:
        """Stop timing a lane (its engine is being killed); returns its units."""
        queue = self.lanes.pop(lane, [])
        for ref in queue:
            self.started.pop(ref, None)
        return queue

    def expired(self, now: float) -> list[Any]:
        if self.timeout is None:
            return []
        return [ref for ref, t in self.started.items() if now - t >= self.timeout]

    def next_due(self, now: float) -> float | None:
        """Seconds until the earliest deadline (0 when one has passed), None when none runs."""
        if self.timeout is None or not self.started:
            return None
        return max(0.0, min(self.started.values()) + self.timeout - now)


class _Model:
    """Scheduler-side state of one model: its engines, its queue of shards, its counts."""

    def __init__(self, cfg, job: RecaptionConfig, shards: list[str], force_rebuild: bool = False):
        self.cfg = cfg
        self.job, self.force_rebuild = job, force_rebuild
        self.size = cfg.image_size or get_family(cfg.family).image_size
        self.queue = deque(s for s in shards if not self.done(s))
        self.skipped = len(shards) - len(self.queue)
        self.engines: list[_Engine] = []
        self.prefetched: dict[str, Any] = {}  # shard -> its stream, opened ahead
        self.images = self.captioned = self.tokens = self.prompt_tokens = 0
        self.failures: Counter[str] = Counter()
        self.engine_seconds = 0.0
        self.failed_units: list[dict[str, Any]] = []
        self.done_units = 0
        self.live = 0  # engines created and not known to be unable to load
        # Steady state: images of the units finished after the first one, over that span.
        self.first_done: float | None = None
        self.last_done: float | None = None
        self.images_after_first = 0
        self.load_errors: list[str] = []
        self.nodes: Counter[str] = Counter()  # units done per Ray node (recaption.actor)

    def done(self, shard: str) -> bool:
        """The unit's file exists and was made from this config and input shard (else
        FingerprintMismatch, or deleted with force_rebuild)."""
        record = unit_record(self.cfg, shard_files_identity(self.job.input, shard))
        path = unit_path(self.job.output, self.cfg.name, shard)
        return unit_done(path, record, self.force_rebuild)


@dataclass(eq=False)
class _Engine:
    handle: Any
    model: _Model
    state: str = "loading"  # loading | ready | restarting | dead
    feeding: _Unit | None = None  # the unit whose chunks are being sent
    unacked: int = 0  # chunks sent to it and not yet taken (of any unit)
    units: list[_Unit] = field(default_factory=list)  # sent and not finished, in order


@dataclass(eq=False)
class _Unit:
    model: _Model
    spec: UnitSpec
    engine: _Engine
    stream: Any = None
    resolved: bool = False  # done, failed or given up (its late calls are ignored)


def run_units(
    job: RecaptionConfig,
    executor: Executor,
    source: Callable[[], tuple[list[str], bool]] | None,
    on_unit: Callable[[str, str], None] | None,
    force_rebuild: bool,
    t_start: float,
    models_out: dict[str, _Model],
) -> None:
    """Schedule every unit of the job on `executor` until none is left. `models_out` is filled
    with the models' state at once, so the caller can write the report whatever happens."""
    from shards.readers import shard_names

    finished = True
    if source is None:
        names = shard_names(storage.as_path(job.input))
    else:
        names, more = source()
        finished = not more
    if job.shards is not None:
        unknown = sorted(set(job.shards) - set(names))
        if unknown:
            raise ConfigError(f"shards: {unknown} not found in {job.input}")
        names = [n for n in names if n in set(job.shards)]
    models = models_out
    for m in job.models:
        models[m.name] = _Model(m, job, names, force_rebuild)
    known = set(names)
    if on_unit is not None:
        for m in models.values():
            for shard in sorted(set(names) - set(m.queue)):
                on_unit(m.cfg.name, shard)
    total = sum(len(m.queue) for m in models.values())
    executor.start()
    ex = executor
    # What each pending call is: ("ready", engine), ("feed", unit) or ("finish", unit).
    pending: dict[Any, tuple[str, Any]] = {}
    # Engines load in parallel; a model's units start as soon as one of its engines is ready.
    index = 0
    for model in models.values():
        if model.queue or not finished:
            for _ in range(model.cfg.replicas):
                engine = _Engine(ex.start_engine(model.cfg, index), model)
                model.engines.append(engine)
                pending[ex.ready(engine.handle)] = ("ready", engine)
                model.live += 1
                index += 1

    recheck: list[tuple[float, _Engine]] = []  # restarting engines: ask `ready` again later
    bar = _progress(job, total)
    attempts: Counter[tuple[str, str]] = Counter()
    clock = UnitClock(job.unit_timeout_s)
    streams: dict[Any, _Unit] = {}  # stream of a unit in feeding -> the unit

    def give_up(unit: _Unit) -> None:
        """The unit leaves its engine; calls of it still pending are ignored when they end."""
        unit.resolved = True
        engine = unit.engine
        if unit in engine.units:
            engine.units.remove(unit)
        if engine.feeding is unit:
            engine.feeding = None
        if unit.stream is not None:
            streams.pop(unit.stream, None)
            ex.close_stream(unit.stream)
            unit.stream = None
        clock.finish(unit, id(engine), time.time())

    def fail_unit(model: _Model, shard: str, error: str) -> None:
        model.failed_units.append({"shard": shard, "error": error})
        bar.update(1)

    def restart_wait(engine: _Engine) -> None:
        if engine.state not in ("restarting", "dead"):
            engine.state = "restarting"
            recheck.append((time.time() + 1.0, engine))

    def retry(unit: _Unit, kind: str, error: str) -> None:
        """Send a unit again (engine died, or something it needed was lost), or fail it past
        `max_unit_retries`. A dead engine is restarted by the executor; it gets work again once
        it answers `ready` (its engine reloaded). The unit is decoded and sent again."""
        model, shard = unit.model, unit.spec.shard
        attempts[(model.cfg.name, shard)] += 1
        if kind == "actor":
            restart_wait(unit.engine)
        if attempts[(model.cfg.name, shard)] <= job.max_unit_retries:
            model.queue.appendleft(shard)
        else:
            fail_unit(model, shard, error)

    def unit_error(unit: _Unit, exc: BaseException) -> None:
        """Retry or fail a unit whose call raised; the job always goes on."""
        if unit.resolved:
            return  # a late call of a unit already retried or failed
        kind = ex.classify(exc)
        if kind is None:
            raise exc
        give_up(unit)
        if kind == "unit":
            # The unit itself is broken (unreadable shard): retrying would fail again.
            fail_unit(unit.model, unit.spec.shard, ex.describe(exc))
        else:
            retry(unit, kind, ex.describe(exc))

    def kill_late_units() -> None:
        """Kill the engine of every unit past its deadline (the executor restarts it): the unit
        is retried, the one queued behind it on that engine is sent again without counting."""
        for unit in clock.expired(time.time()):
            if unit.resolved:
                continue
            engine = unit.engine
            behind = [u for u in clock.drop_lane(id(engine)) if u is not unit]
            ex.kill(engine.handle)
            give_up(unit)
            error = (
                f"unit timed out after {job.unit_timeout_s:g}s (unit_timeout_s); "
                "its actor was killed and restarted"
            )
            retry(unit, "actor", error)
            for other in behind:
                give_up(other)
                other.model.queue.appendleft(other.spec.shard)

    def engine_lost(engine: _Engine, error: str) -> None:
        model = engine.model
        engine.state = "dead"
        model.live -= 1
        model.load_errors.append(error)
        if model.live == 0:
            # No engine of this model can load: fail its units now, clearly.
            error = f"no engine could load: {model.load_errors[-1]}"
            bar.update(len(model.queue))
            model.failed_units += [{"shard": s, "error": error} for s in model.queue]
            model.queue.clear()
            for stream in model.prefetched.values():
                ex.close_stream(stream)
            model.prefetched.clear()

    def assign(model: _Model) -> None:
        """Start queued units on the model's free engines (least busy first)."""
        while model.queue:
            free = [
                e
                for e in model.engines
                if e.state == "ready" and e.feeding is None and len(e.units) < 2
            ]
            if not free:
                return
            engine = min(free, key=lambda e: len(e.units))
            shard = _next_shard(model)
            stream = model.prefetched.pop(shard, None)
            if stream is None:
                stream = ex.open_stream(shard, model.size)
            spec = UnitSpec(shard, attempts[(model.cfg.name, shard)])
            unit = _Unit(model, spec, engine, stream)
            engine.feeding = unit
            engine.units.append(unit)
            streams[stream] = unit
            clock.submit(unit, id(engine), time.time())

    def _next_shard(model: _Model) -> str:
        """The queued shard whose decoded chunk is ready, if any, else the queue's head. A
        decoding stream waiting for its chunk to be taken keeps its CPU: an engine that waited
        for a stream still to be scheduled (the retry of one lost with its node) while ready
        streams held every free CPU would wait forever (tests/pipeline/test_multinode.py)."""
        shard = model.queue[0]
        if model.prefetched:
            ready = ex.wait(list(model.prefetched.values()), 0)
            found = [s for s, st in model.prefetched.items() if ready and st is ready[0]]
            if found and found[0] in model.queue:
                shard = found[0]
        model.queue.remove(shard)
        return shard

    def take_chunk(stream: Any) -> None:
        unit = streams[stream]
        engine = unit.engine
        chunk = ex.next_chunk(stream)
        if chunk is None:  # every chunk sent: the unit ends after them
            streams.pop(stream)
            unit.stream = None
            engine.feeding = None
            pending[ex.finish(engine.handle, unit.spec)] = ("finish", unit)
            return
        pending[ex.feed(engine.handle, unit.spec, chunk)] = ("feed", unit)
        engine.unacked += 1

    try:
        while True:
            if not finished:
                names, more = source()
                finished = not more
                for shard in [n for n in names if n not in known]:
                    known.add(shard)
                    for m in models.values():
                        if m.done(shard):
                            m.skipped += 1
                            if on_unit is not None:
                                on_unit(m.cfg.name, shard)
                        elif m.live > 0:
                            m.queue.append(shard)
                            bar.total += 1
                        else:
                            m.failed_units.append({"shard": shard, "error": "no engine could load"})
            now = time.time()
            for _due, engine in [r for r in recheck if r[0] <= now]:
                pending[ex.ready(engine.handle)] = ("ready", engine)
            recheck = [r for r in recheck if r[0] > now]
            for model in models.values():
                assign(model)
                # Decode-ahead: the next units' streams start now (one chunk each, at most).
                # Open streams, running units' included, stay within live engines +
                # prefetch_units: with one-chunk shards as with long ones, the same number of
                # chunks wait decoded.
                room = model.live + job.prefetch_units - len(model.prefetched)
                room -= sum(u.model is model for u in streams.values())
                for shard in model.queue:
                    if room <= 0:
                        break
                    if shard not in model.prefetched:
                        model.prefetched[shard] = ex.open_stream(shard, model.size)
                        room -= 1
            feeding = [u.stream for u in streams.values() if u.engine.unacked < job.prefetch_chunks]
            # Done when no unit waits or runs: an engine still (re)starting then has nothing to
            # do, and an actor lost with its node may never find room again (multi-node tests).
            units_running = streams or any(
                kind != "ready" and not obj.resolved for kind, obj in pending.values()
            )
            if finished and not units_running and not any(m.queue for m in models.values()):
                break
            waiting = list(pending) + feeding
            if not waiting:
                time.sleep(0.5)
                continue
            timeout = 0.5 if recheck or not finished else None
            due = clock.next_due(time.time())
            if due is not None:
                timeout = due if timeout is None else min(timeout, due)
            done = ex.wait(waiting, timeout)
            for item in done:
                if item in streams:
                    take_chunk(item)
                    continue
                what, obj = pending.pop(item)
                if what == "ready":
                    engine = obj
                    try:
                        ex.result(item)
                        engine.state = "ready"
                    except Exception as exc:
                        if ex.restarting(exc):
                            recheck.append((time.time() + 1.0, engine))
                        else:
                            engine_lost(engine, ex.describe(exc))
                    continue
                unit = obj
                if what == "feed":
                    unit.engine.unacked -= 1  # taken or failed, it no longer waits there
                try:
                    value = ex.result(item)
                except Exception as exc:
                    unit_error(unit, exc)
                    continue
                if unit.resolved:
                    continue  # a call of a unit already given up: its result means nothing
                if what == "feed":
                    continue
                give_up(unit)
                _count_unit(unit.model, value)
                if on_unit is not None:
                    on_unit(unit.model.cfg.name, unit.spec.shard)
                bar.update(1)
                bar.set_postfix_str(_rates(models, t_start), refresh=False)
            # After the finished calls: a unit done just as its deadline passed counts.
            kill_late_units()
    finally:
        bar.close()
        for stream in list(streams) + [s for m in models.values() for s in m.prefetched.values()]:
            try:
                ex.close_stream(stream)
            except Exception:  # noqa: S110 - closing is best effort; the crash (if any) goes on
                pass
        try:
            ex.release([e.handle for m in models.values() for e in m.engines])
        except Exception:  # noqa: S110 - best effort, as above
            pass


def _count_unit(model: _Model, summary: dict[str, Any]) -> None:
    """Add a finished unit's summary to its model's counts."""
    model.done_units += 1
    now = time.time()
    if model.first_done is None:
        model.first_done = now
    else:
        model.images_after_first += summary["engine_images"]
    model.last_done = now
    model.images += summary["images"]
    model.captioned += summary["captioned"]
    model.tokens += summary["generated_tokens"]
    model.prompt_tokens += summary.get("prompt_tokens", 0)
    model.engine_seconds += summary["seconds"]
    model.failures.update(summary["failures"])
    model.nodes[summary.get("node") or "unknown"] += 1


def _progress(job: RecaptionConfig, total: int):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc="recaption units",
        unit="unit",
        disable=not job.progress,
        mininterval=0.5 if sys.stderr.isatty() else 10.0,
    )


def _rates(models: dict[str, _Model], t_start: float) -> str:
    wall = max(time.time() - t_start, 1e-9)
    return " ".join(f"{n}: {m.images} img {m.images / wall:.1f}/s" for n, m in models.items())


def _report(job: RecaptionConfig, models: dict[str, _Model], t_start: float) -> dict[str, Any]:
    wall = time.time() - t_start
    per_model = {}
    for name, m in models.items():
        per_model[name] = {
            "family": m.cfg.family,
            "path": m.cfg.path,
            "units_done": m.done_units,
            "units_skipped": m.skipped,
            "units_failed": m.failed_units,
            "images": m.images,
            "captioned": m.captioned,
            "failures": dict(sorted(m.failures.items())),
            "generated_tokens": m.tokens,
            "prompt_tokens": m.prompt_tokens,
            "images_per_s": m.images / wall if wall else None,
            "generated_tokens_per_s": m.tokens / wall if wall else None,
            "engine_seconds": m.engine_seconds,
            "units_by_node": dict(sorted(m.nodes.items())),
            "steady_images_per_s": (
                m.images_after_first / (m.last_done - m.first_done)
                if m.first_done is not None and m.last_done > m.first_done
                else None
            ),
        }
    return {
        "input": job.input,
        "output": job.output,
        "wall_seconds": wall,
        "models": per_model,
        "complete": all(not m["units_failed"] for m in per_model.values()),
    }
