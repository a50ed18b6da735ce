"""The Ray executor of the recaption scheduler (`executor: ray`, the default).

Engines are Ray actors (`recaption.actor.actor_class`), one per model replica, named
`longcap-<model>-<i>` in the `longcap` namespace; Ray restarts a dead one (`max_actor_restarts`).
A unit's input shard is decoded by one Ray CPU task that reads the shard once and yields its
chunks as a streaming generator with a backpressure of one chunk: it pauses until the scheduler
has taken the chunk it made, so a stream holds at most one decoded chunk in the object store.
Each chunk travels to its engine as one object (the argument of `caption_chunk`) and is freed
when that call returns. The scheduler's calls are Ray calls (ObjectRefs); `wait` is `ray.wait`.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.recaption_config import ModelConfig, RecaptionConfig
from recaption.units import UnitSpec, iter_chunks

NAMESPACE = "longcap"
_ENGINE_ENV = {
    "VLLM_LOGGING_LEVEL": "WARNING",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # torch/vLLM deprecation notices, once per actor, drown the driver's output.
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
}


def engine_env(m: ModelConfig) -> dict[str, str]:
    """Environment of an engine's process (its actor; the local executor sets it as defaults)."""
    env = dict(_ENGINE_ENV)
    if m.gpus_per_replica == 0:
        # vLLM's CPU worker warns about thread binding at every step: thousands of lines a run.
        env["VLLM_LOGGING_LEVEL"] = "ERROR"
    return env


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
    # Logical CPUs: enough for every engine actor plus every decoding stream the scheduler may
    # keep open (one per engine and `prefetch_units` per model; a stream waiting for its chunk
    # to be taken keeps its CPU), even on a 2-core laptop (the engines' threads share the real
    # cores; Ray's count only decides what may be scheduled). (+1: an assembly task alongside.)
    engines = sum(m.replicas for m in cfg.models)
    streams = engines + cfg.prefetch_units * len(cfg.models)
    need = sum(m.replicas * m.cpus_per_replica for m in cfg.models)
    need += streams * cfg.decode_cpus + 1
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
    tmp = os.path.join(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir(), "ray")
    try:
        host, _, port = Path(tmp, "ray_current_cluster").read_text().strip().rpartition(":")
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except (OSError, ValueError):
        return False


def failure_kind(exc: BaseException) -> str:
    """How the scheduler treats a unit whose call raised: "unit" (the unit's own code raised: it
    would fail again, so it fails now), "actor" (the actor died or is unreachable: retry once it
    is back) or "infra" (a task or object it needed was lost: worker crashed, out of memory,
    object lost, node died; or the actor lost the unit's earlier chunks: retry). Any RayError is
    one of these; nothing ends the job."""
    from ray.exceptions import RayActorError, RayError, RayTaskError

    from recaption.actor import UnitStateLost

    if isinstance(exc, RayActorError):
        return "actor"
    if isinstance(exc, RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, RayActorError):
            return "actor"
        if isinstance(cause, UnitStateLost):
            return "infra"
        if isinstance(cause, RayError) and not isinstance(cause, RayTaskError):
            return "infra"
        return "unit"
    return "infra"


def short_error(exc: BaseException) -> str:
    """The line of an error that says what went wrong (its last "XError: ..." line)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"[\w.]*(Error|Exception|Exit)\b.*: ", line)]
    best = errors[-1] if errors else (lines[-1] if lines else type(exc).__name__)
    return best[:500]


class RayExecutor:
    """Engines as Ray actors, decoding as Ray streaming tasks (see the module docstring)."""

    name = "ray"

    def __init__(self, job: RecaptionConfig) -> None:
        self.job = job
        self._decode = None
        self._tasks: dict[Callable[..., Any], Any] = {}
        self._names: dict[Any, str] = {}  # actor handle -> its name

    def start(self) -> None:
        import ray

        init_ray(self.job)
        self._decode = ray.remote(iter_chunks).options(
            num_cpus=self.job.decode_cpus,
            num_returns="streaming",
            # One chunk made and not yet taken by the scheduler, at most: the stream's share
            # of the object store is one chunk, whatever the shard's size.
            _generator_backpressure_num_objects=1,
            max_retries=2,
        )

    def start_engine(self, model: ModelConfig, index: int) -> Any:
        from recaption.actor import actor_class

        name = f"longcap-{model.name}-{index}"
        actor = (
            actor_class()
            .options(
                name=name,
                num_cpus=model.cpus_per_replica,
                num_gpus=model.gpus_per_replica,
                max_restarts=self.job.max_actor_restarts,
                max_task_retries=0,  # the scheduler decides what to resend
                runtime_env={"env_vars": engine_env(model)},
            )
            .remote(model)
        )
        self._names[actor] = name
        return actor

    def ready(self, engine: Any) -> Any:
        return engine.ready.remote()

    def open_stream(self, shard: str, size: int) -> Any:
        return self._decode.remote(self.job.input, shard, size, self.job.chunk_images)

    def next_chunk(self, stream: Any) -> Any | None:
        try:
            return next(stream)
        except StopIteration:
            return None

    def close_stream(self, stream: Any) -> None:
        import ray

        if not stream.is_finished():
            ray.cancel(stream)  # a stream nobody will read: free its chunk and its CPU

    def feed(self, engine: Any, unit: UnitSpec, chunk: Any) -> Any:
        return engine.caption_chunk.remote(unit, chunk)

    def finish(self, engine: Any, unit: UnitSpec) -> Any:
        return engine.finish_unit.remote(unit, self.job.output)

    def wait(self, items: list[Any], timeout: float | None) -> list[Any]:
        import ray

        # fetch_local=False: a ready chunk stays where it was made; it goes to its engine only.
        done, _ = ray.wait(items, num_returns=1, timeout=timeout, fetch_local=False)
        return done

    def result(self, call: Any) -> Any:
        import ray

        return ray.get(call)

    def classify(self, exc: BaseException) -> str | None:
        from ray.exceptions import RayError

        from recaption.actor import UnitStateLost

        if isinstance(exc, UnitStateLost):
            return "infra"
        return failure_kind(exc) if isinstance(exc, RayError) else None

    def restarting(self, exc: BaseException) -> bool:
        from ray.exceptions import ActorUnavailableError

        return isinstance(exc, ActorUnavailableError)

    def describe(self, exc: BaseException) -> str:
        return short_error(exc)

    def kill(self, engine: Any) -> None:
        import ray

        ray.kill(engine, no_restart=False)

    def release(self, engines: list[Any]) -> None:
        """Kill the job's actors now and wait (up to 30 s) until their names are free: Ray
        frees an actor whose handles are gone only later, and a next job in the same driver
        (a rerun, the tests) names its actors the same."""
        import ray

        names = []
        for engine in engines:
            try:
                ray.kill(engine, no_restart=True)
                names.append(self._names.pop(engine, None))
            except Exception:  # noqa: S112 - already dead or unreachable: nothing to free
                continue
        deadline = time.time() + 30
        for name in filter(None, names):
            while time.time() < deadline:
                try:
                    ray.get_actor(name, namespace=ray.get_runtime_context().namespace)
                except ValueError:
                    break  # the name is free
                time.sleep(0.1)

    def task(self, fn: Callable[..., Any], *args: Any) -> Any:
        import ray

        if fn not in self._tasks:
            self._tasks[fn] = ray.remote(fn).options(num_cpus=1, max_retries=2)
        return self._tasks[fn].remote(*args)
