"""The recaption job: every (input shard, model) unit captioned by that model's actor pool.

Run locally as `longcap recaption --config run.yaml` (starts a local Ray when none runs), or on a
cluster as `ray job submit --address http://HEAD:8265 --working-dir . -- python -m
pipeline.recaption --config run.yaml`.

How it works: each model has its own pool of engine actors (`recaption.actor`), each holding one
vLLM engine loaded once. Input shards are decoded and resized by Ray CPU tasks, a few units ahead
of the engines, and a decoded shard is shared by every model that wants that image size. The
driver keeps every idle actor busy and waits on all in-flight units at once with `ray.wait`, so
models never wait for each other. A unit whose actor died is sent again (Ray restarts the actor),
at most `max_unit_retries` times; then it is reported failed and the job goes on. A unit that
runs past `unit_timeout_s` (a hung engine) has its actor killed, and is retried the same way. Any
Ray error (actor died, worker crashed, out of memory, object lost) retries or fails one unit;
none ends the job, which always writes its report. Finished units are skipped on a rerun.

Exit codes: 0 every unit done (failed rows are data), 1 finished with failed units, 2 config
error, 3 crash (the report is still written, with the error).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.recaption_config import ConfigError, RecaptionConfig, load_config
from recaption.families import get_family
from recaption.units import decode_shard, unit_done, unit_path, unit_record
from shards.fingerprint import shard_files_identity

NAMESPACE = "longcap"
UNITS_PER_ACTOR = 2
_ENGINE_ENV = {
    "VLLM_LOGGING_LEVEL": "WARNING",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # torch/vLLM deprecation notices, once per actor, drown the driver's output.
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
}


def init_ray(cfg: RecaptionConfig) -> None:
    """Join the job's cluster (RAY_ADDRESS, set by `ray job submit`), a running local one, or
    start a local Ray sized for the config."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=True)
        return
    if _local_cluster_alive():
        ray.init(address="auto", namespace=NAMESPACE)
        return
    # Logical CPUs: enough for every engine actor plus decoding, even on a 2-core laptop (the
    # engines' threads share the real cores; Ray's count only decides what may be scheduled).
    # (+1: an assembly or decode task alongside.)
    need = sum(m.replicas * m.cpus_per_replica for m in cfg.models) + cfg.decode_cpus + 1
    # LONGCAP_RAY_NODE_IP: the address of the local cluster's node. Ray's default is the
    # machine's outward address (it turns 127.0.0.1 into that too); 127.0.0.2 keeps every
    # connection of a one-machine run on loopback (the tests set it).
    node_ip = os.environ.get("LONGCAP_RAY_NODE_IP")
    ray.init(
        address="local",  # never a stale cluster file left by a crashed run
        num_cpus=max(os.cpu_count() or 1, int(need + 0.999)),
        namespace=NAMESPACE,
        include_dashboard=False,
        **({"_node_ip_address": node_ip} if node_ip else {}),
    )


def _local_cluster_alive() -> bool:
    """Is the cluster named in Ray's current-cluster file up? (A crash leaves the file behind,
    and `ray.init(address="auto")` then waits minutes on a dead address.)"""
    import socket
    import tempfile

    tmp = os.path.join(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir(), "ray")
    try:
        host, _, port = Path(tmp, "ray_current_cluster").read_text().strip().rpartition(":")
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except (OSError, ValueError):
        return False


class _Model:
    """Driver-side state of one model: its actors, its queue of shards, its counts."""

    def __init__(self, cfg, job: RecaptionConfig, shards: list[str], force_rebuild: bool = False):
        self.cfg = cfg
        self.job, self.force_rebuild = job, force_rebuild
        self.size = cfg.image_size or get_family(cfg.family).image_size
        self.queue = deque(s for s in shards if not self.done(s))
        self.skipped = len(shards) - len(self.queue)
        self.idle: list[Any] = []
        self.images = self.captioned = self.tokens = self.prompt_tokens = 0
        self.failures: Counter[str] = Counter()
        self.engine_seconds = 0.0
        self.failed_units: list[dict[str, Any]] = []
        self.done_units = 0
        self.live = 0  # actors created and not known to be unable to load
        # Steady state: images of the units finished after the first one, over that span.
        self.first_done: float | None = None
        self.last_done: float | None = None
        self.images_after_first = 0
        self.load_errors: list[str] = []

    def done(self, shard: str) -> bool:
        """The unit's file exists and was made from this config and input shard (else
        FingerprintMismatch, or deleted with force_rebuild)."""
        record = unit_record(self.cfg, shard_files_identity(self.job.input, shard))
        path = unit_path(self.job.output, self.cfg.name, shard)
        return unit_done(path, record, self.force_rebuild)


def _engine_env(m) -> dict[str, str]:
    env = dict(_ENGINE_ENV)
    if m.gpus_per_replica == 0:
        # vLLM's CPU worker warns about thread binding at every step: thousands of lines a run.
        env["VLLM_LOGGING_LEVEL"] = "ERROR"
    return env


def _make_actor(model: _Model, job: RecaptionConfig, index: int):
    from recaption.actor import actor_class

    m = model.cfg
    return (
        actor_class()
        .options(
            name=f"longcap-{m.name}-{index}",
            num_cpus=m.cpus_per_replica,
            num_gpus=m.gpus_per_replica,
            max_restarts=job.max_actor_restarts,
            max_task_retries=0,  # the driver decides what to resend
            runtime_env={"env_vars": _engine_env(m)},
        )
        .remote(m)
    )


def run(
    job: RecaptionConfig,
    source: Callable[[], tuple[list[str], bool]] | None = None,
    on_unit: Callable[[str, str], None] | None = None,
    force_rebuild: bool = False,
) -> dict[str, Any]:
    """Run the recaption job to the end; returns (and writes) the run report.

    By default the job captions the shards in `job.input` when it starts. With `source`, it
    follows a stage still writing them: `source()` returns the shard names ready so far and
    whether more may come, and is asked again about once a second. `on_unit(model, shard)` is
    called for every unit that is done (written now or found finished). A finished unit made
    from another model config or input shard stops the job (FingerprintMismatch) unless
    `force_rebuild`, which captions it again.

    Holds the lock of `job.output` (`shards.runlock`) for the whole run: a second run on it
    raises OutputLocked at once."""
    from shards.runlock import lock_output, remove_stale_temps, unlock_output

    lock_output(job.output, "longcap recaption")
    try:
        for m in job.models:  # unit temps of killed runs (never a live run's)
            remove_stale_temps(Path(job.output) / "captions" / m.name)
        return _run(job, source, on_unit, force_rebuild)
    finally:
        unlock_output(job.output)


def _run(job: RecaptionConfig, source, on_unit, force_rebuild: bool) -> dict[str, Any]:
    import ray
    from ray.exceptions import ActorUnavailableError, RayError

    from shards.readers import shard_names

    t_start = time.time()
    finished = True
    if source is None:
        names = shard_names(Path(job.input))
    else:
        names, more = source()
        finished = not more
    if job.shards is not None:
        unknown = sorted(set(job.shards) - set(names))
        if unknown:
            raise ConfigError(f"shards: {unknown} not found in {job.input}")
        names = [n for n in names if n in set(job.shards)]
    models = {m.name: _Model(m, job, names, force_rebuild) for m in job.models}
    known = set(names)
    if on_unit is not None:
        for m in models.values():
            for shard in sorted(set(names) - set(m.queue)):
                on_unit(m.cfg.name, shard)
    total = sum(len(m.queue) for m in models.values())
    init_ray(job)
    decode = ray.remote(decode_shard).options(num_cpus=job.decode_cpus, max_retries=2)
    decoded: dict[tuple[str, int], Any] = {}
    # Engines load in parallel; a model's units start as soon as one of its engines is ready.
    # An actor holds UNITS_PER_ACTOR units at a time (slots): while it captions one, the next
    # one's decoded images are already on their way, so the engine never idles between units.
    loading: dict[Any, tuple[_Model, Any, int]] = {}
    actor_index = 0
    for model in models.values():
        if model.queue or not finished:
            for _ in range(model.cfg.replicas):
                actor = _make_actor(model, job, actor_index)
                loading[actor.ready.remote()] = (model, actor, UNITS_PER_ACTOR)
                model.live += UNITS_PER_ACTOR
                actor_index += 1

    def decoded_ref(shard: str, size: int):
        if (shard, size) not in decoded:
            decoded[(shard, size)] = decode.remote(job.input, shard, size)
        return decoded[(shard, size)]

    def release(shard: str, size: int) -> None:
        # Drop our reference once no model still queues this shard at this size.
        if not any(shard in m.queue and m.size == size for m in models.values()):
            decoded.pop((shard, size), None)

    # Actors that are restarting: ask them `ready` again after a pause.
    recheck: list[tuple[float, _Model, Any, int]] = []
    bar = _progress(job, total)
    inflight: dict[Any, tuple[_Model, Any, str]] = {}
    attempts: Counter[tuple[str, str]] = Counter()
    clock = UnitClock(job.unit_timeout_s)
    timed_out: set[Any] = set()  # units whose actor was killed for passing the deadline
    bystanders: set[Any] = set()  # other units queued on such an actor: resent, not counted

    def fail_unit(model: _Model, shard: str, error: str) -> None:
        model.failed_units.append({"shard": shard, "error": error})
        bar.update(1)

    def unit_error(ref, model: _Model, actor, shard: str, exc: BaseException) -> None:
        """Retry or fail a unit whose call raised; the job always goes on."""
        kind, error = failure_kind(exc), _short(exc)
        if ref in bystanders:
            bystanders.discard(ref)
            model.queue.appendleft(shard)
            recheck.append((time.time() + 1.0, model, actor, 1))
            return
        if ref in timed_out:
            timed_out.discard(ref)
            kind = "actor"
            error = (
                f"unit timed out after {job.unit_timeout_s:g}s (unit_timeout_s); "
                "its actor was killed and restarted"
            )
        if kind == "unit":
            # The unit itself is broken (unreadable shard): retrying would fail again.
            model.idle.append(actor)
            fail_unit(model, shard, error)
            return
        # Infrastructure: the actor died (killed, OOM, node lost, deadline), or a task or object
        # the unit needed was lost. Ray restarts a dead actor; it gets work again once it
        # answers `ready` (its engine reloaded). The unit is decoded and sent again.
        attempts[(model.cfg.name, shard)] += 1
        if kind == "actor":
            recheck.append((time.time() + 1.0, model, actor, 1))
        else:
            model.idle.append(actor)
        if attempts[(model.cfg.name, shard)] <= job.max_unit_retries:
            model.queue.appendleft(shard)
        else:
            fail_unit(model, shard, error)

    def kill_late_units() -> None:
        """Kill the actor of every unit past its deadline (Ray restarts it); the unit and those
        queued behind it on that actor come back through ray.wait as actor errors."""
        for ref in clock.expired(time.time()):
            _model, actor, _shard = inflight[ref]
            timed_out.add(ref)
            for other in clock.drop_lane(id(actor)):
                if other is not ref:
                    bystanders.add(other)
            ray.kill(actor, no_restart=False)

    crash: BaseException | None = None
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
                        elif m.live > 0 or m.idle:
                            m.queue.append(shard)
                            bar.total += 1
                        else:
                            m.failed_units.append({"shard": shard, "error": "no engine could load"})
            now = time.time()
            for _due, model, actor, slots in [r for r in recheck if r[0] <= now]:
                loading[actor.ready.remote()] = (model, actor, slots)
            recheck = [r for r in recheck if r[0] > now]
            for model in models.values():
                while model.idle and model.queue:
                    shard = model.queue.popleft()
                    # The free slot of the least busy actor: spread units before stacking them.
                    busy = Counter(id(a) for m, a, _ in inflight.values() if m is model)
                    actor = min(model.idle, key=lambda a: busy[id(a)])
                    model.idle.remove(actor)
                    ref = actor.caption_unit.remote(decoded_ref(shard, model.size), job.output)
                    inflight[ref] = (model, actor, shard)
                    clock.submit(ref, id(actor), time.time())
                    release(shard, model.size)
                for shard in list(model.queue)[: job.prefetch_units]:
                    decoded_ref(shard, model.size)  # engines never wait for the CPU
            if not inflight and not loading and not recheck and finished:
                break
            waiting = list(inflight) + list(loading)
            if not waiting:
                time.sleep(0.5)
                continue
            timeout = 0.5 if recheck or not finished else None
            due = clock.next_due(time.time())
            if due is not None:
                timeout = due if timeout is None else min(timeout, due)
            done, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
            kill_late_units()
            for ref in done:
                if ref in loading:
                    model, actor, slots = loading.pop(ref)
                    try:
                        ray.get(ref)
                        model.idle += [actor] * slots
                    except ActorUnavailableError:
                        recheck.append((time.time() + 1.0, model, actor, slots))  # restarting
                    except RayError as exc:
                        model.live -= slots
                        model.load_errors.append(_short(exc))
                        if model.live == 0:
                            # No engine of this model can load: fail its units now, clearly.
                            error = f"no engine could load: {model.load_errors[-1]}"
                            bar.update(len(model.queue))
                            model.failed_units += [
                                {"shard": s, "error": error} for s in model.queue
                            ]
                            model.queue.clear()
                    continue
                model, actor, shard = inflight.pop(ref)
                clock.finish(ref, id(actor), time.time())
                try:
                    summary = ray.get(ref)
                except RayError as exc:
                    unit_error(ref, model, actor, shard, exc)
                    continue
                timed_out.discard(ref)  # finished just as its deadline passed: it counts
                bystanders.discard(ref)
                model.idle.append(actor)
                _count_unit(model, summary)
                if on_unit is not None:
                    on_unit(model.cfg.name, shard)
                bar.update(1)
                bar.set_postfix_str(_rates(models, t_start), refresh=False)
    except BaseException as exc:
        crash = exc  # the report still says what was done (below), then the error goes on
        raise
    finally:
        bar.close()
        report = _report(job, models, t_start)
        if crash is not None:
            report["complete"] = False
            report["error"] = f"{type(crash).__name__}: {crash}"[:1000]
        out = Path(job.output)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".recaption_report.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, out / "recaption_report.json")
    return report


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


def failure_kind(exc: BaseException) -> str:
    """How the driver treats a unit whose call raised: "unit" (the unit's own code raised: it
    would fail again, so it fails now), "actor" (the actor died or is unreachable: retry once it
    is back) or "infra" (a task or object it needed was lost: worker crashed, out of memory,
    object lost, node died: retry). Any RayError is one of these; nothing ends the job."""
    from ray.exceptions import RayActorError, RayError, RayTaskError

    if isinstance(exc, RayActorError):
        return "actor"
    if isinstance(exc, RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, RayActorError):
            return "actor"
        if isinstance(cause, RayError) and not isinstance(cause, RayTaskError):
            return "infra"
        return "unit"
    return "infra"


class UnitClock:
    """Per-unit deadlines. An actor runs its units one after another, so a unit's clock starts
    when it reaches the head of its actor's lane, not when it was sent."""

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
        """Stop timing a lane (its actor is being killed); returns its units."""
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


def _short(exc: BaseException) -> str:
    """The line of a Ray error that says what went wrong (its last "XError: ..." line)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"[\w.]*(Error|Exception|Exit)\b.*: ", line)]
    best = errors[-1] if errors else (lines[-1] if lines else type(exc).__name__)
    return best[:500]


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
            "prompt_tokens": m.prompt_tokens,  # as the engine counted them (0: not counted)
            "images_per_s": m.images / wall if wall else None,
            "generated_tokens_per_s": m.tokens / wall if wall else None,
            "engine_seconds": m.engine_seconds,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.recaption", description="Recaption input shards with MLLMs."
    )
    parser.add_argument("--config", required=True, help="run.yaml")
    parser.add_argument(
        "--force-rebuild",
        action="store_true",
        help="caption again the finished units made from another model config or input shard "
        "(without it such a rerun stops, exit 2)",
    )
    args = parser.parse_args(argv)
    from shards.fingerprint import FingerprintMismatch
    from shards.runlock import OutputLocked

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"recaption: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"recaption: {cfg.input} -> {cfg.output}/captions/<model>/ with "
        f"{', '.join(f'{m.name} ({m.family} x{m.replicas})' for m in cfg.models)}"
    )
    try:
        report = run(cfg, force_rebuild=args.force_rebuild)
    except (ConfigError, OutputLocked, FingerprintMismatch) as exc:
        print(f"recaption: error: {exc}", file=sys.stderr)
        return 2
    except Exception:  # a crash: its report is written; exit codes 0-2 mean a finished job
        import traceback

        traceback.print_exc()
        print(f"recaption: crashed; report: {Path(cfg.output) / 'recaption_report.json'}")
        return 3
    for name, m in report["models"].items():
        print(
            f"  {name}: {m['captioned']:,}/{m['images']:,} images captioned, "
            f"{m['units_done']} units done, {m['units_skipped']} skipped, "
            f"{len(m['units_failed'])} failed, {m['images_per_s']:.2f} images/s"
        )
    print(f"report: {Path(cfg.output) / 'recaption_report.json'}")
    return 0 if report["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
