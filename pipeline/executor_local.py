"""The local executor of the recaption scheduler (`executor: local`, `--executor local`): no Ray.

Everything runs in this process. Each engine (model replica) is an `EngineWorker` in a thread of
its own that runs its calls one after another, in the order sent, as a Ray actor does. Each
stream of decoded chunks is a thread running `recaption.units.iter_chunks` that waits until the
scheduler has taken the chunk it made (a queue of one), as the Ray stream's backpressure does.
The same scheduler drives it, so retries, deadlines and the report are the same; output files
are identical to the Ray executor's (same worker code, same batches).

What differs: `kill` cannot stop a thread, so a hung engine's thread is abandoned (it keeps its
memory until the call returns) and a new `EngineWorker` is loaded in a new thread, within
`max_actor_restarts`; every replica shares this process's CPUs and GPUs; at most one vLLM
engine runs in a process (two abort it; other engines may run side by side); `ray_address` and
`decode_cpus` are not used.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from pipeline.recaption_config import ConfigError, ModelConfig, RecaptionConfig
from recaption.units import UnitSpec, iter_chunks


class EngineDied(RuntimeError):
    """The engine's thread was given up (killed for a deadline): its calls failed with it."""


class _Call:
    """A call's result, set once by whichever thread finishes it; `wait` wakes on it."""

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        with self._cond:
            if self._done:
                return  # already failed (its engine was killed): a late result means nothing
            self._value, self._error, self._done = value, error, True
            self._cond.notify_all()

    def get(self) -> Any:
        """The value (or error), once set: waits for it, as `ray.get` does. (Without the wait,
        the build read its last assembly task's result before the task had run, and counted
        the dataset one shard short now and then.)"""
        with self._cond:
            self._cond.wait_for(lambda: self._done)
        if self._error is not None:
            raise self._error
        return self._value


class _Engine:
    """One engine: a worker thread per incarnation; a kill starts the next incarnation."""

    def __init__(self, ex: LocalExecutor, model: ModelConfig) -> None:
        self.ex, self.model = ex, model
        self.restarts_left = ex.job.max_actor_restarts
        self.incarnation = 0
        self.calls: queue.Queue | None = None
        self.pending: list[_Call] = []
        self.loaded: _Call | None = None
        self._spawn()

    def _spawn(self) -> None:
        self.incarnation += 1
        self.calls = queue.Queue()
        self.loaded = _Call(self.ex.cond)
        args = (self.incarnation, self.calls, self.loaded)
        threading.Thread(
            target=self._serve, args=args, daemon=True, name=f"longcap-{self.model.name}"
        ).start()

    def _serve(self, incarnation: int, calls: queue.Queue, loaded: _Call) -> None:
        from recaption.actor import EngineWorker

        try:
            worker = EngineWorker(self.model)
        except Exception as exc:
            loaded.set(error=exc)
            return
        loaded.set(worker.engine.load_seconds)
        while incarnation == self.incarnation:
            item = calls.get()
            if item is None:
                return
            method, args, call = item
            try:
                # A chunk arrives as the call that made it: its decoding error is this call's.
                args = [a.get() if isinstance(a, _Call) else a for a in args]
                call.set(getattr(worker, method)(*args))
            except Exception as exc:
                call.set(error=exc)
            del item, args  # the chunk goes free now, not when the next call comes

    def submit(self, method: str, *args: Any) -> _Call:
        call = _Call(self.ex.cond)
        self.pending = [c for c in self.pending if not c.done()] + [call]
        self.calls.put((method, args, call))
        return call

    def kill(self) -> None:
        """Fail every call sent to this incarnation, and start the next one if allowed."""
        died = EngineDied(f"engine of model {self.model.name!r} killed (unit_timeout_s)")
        for call in self.pending:
            call.set(error=died)
        self.pending = []
        self.calls.put(None)  # an idle thread ends now; a hung one ends when its call returns
        if self.restarts_left > 0:
            self.restarts_left -= 1
            self._spawn()
        else:
            self.incarnation += 1
            self.loaded = _Call(self.ex.cond)
            self.loaded.set(error=EngineDied(f"{died}; no restarts left (max_actor_restarts)"))


class _Stream:
    """Chunks of one input shard, decoded by a thread that keeps at most one waiting."""

    def __init__(self, ex: LocalExecutor, shard: str, size: int) -> None:
        self.ex = ex
        self.slot: queue.Queue = queue.Queue(maxsize=1)
        self.closed = threading.Event()
        self.ended = False
        args = (ex.job.input, shard, size, ex.job.chunk_images)
        threading.Thread(target=self._decode, args=args, daemon=True).start()

    def _decode(self, *args: Any) -> None:
        try:
            for chunk in iter_chunks(*args):
                if not self._put(("chunk", chunk)):
                    return
        except Exception as exc:
            self._put(("error", exc))
            return
        self._put(("end", None))

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self.closed.is_set():
            try:
                self.slot.put(item, timeout=0.2)
            except queue.Full:
                continue
            with self.ex.cond:
                self.ex.cond.notify_all()
            return True
        return False

    def done(self) -> bool:
        return not self.slot.empty()


class LocalExecutor:
    """Engines in threads of this process, decoding in threads (see the module docstring)."""

    name = "local"

    def __init__(self, job: RecaptionConfig) -> None:
        self.job = job
        self.cond = threading.Condition()
        self._pool = None

    def start(self) -> None:
        # Two vLLM engines in one process abort it (vLLM 0.32's CPU attention: "Check failed:
        # input->metadata->thread_num == thread_num", seen with a tiny LLaVA and Qwen2-VL):
        # refuse before loading anything rather than crash mid-run.
        vllm = [(m.name, m.replicas) for m in self.job.models if m.engine == "vllm"]
        if sum(n for _, n in vllm) > 1:
            raise ConfigError(
                f"executor: local runs at most one vLLM engine in its process, this config has "
                f"{', '.join(f'{name} x{n}' for name, n in vllm)}; use `executor: ray` (or "
                "--executor ray), or caption with one vLLM model (replicas: 1) per run"
            )
        # What the Ray executor gives each engine actor, as defaults of this process.
        from pipeline.executor_ray import engine_env

        for m in self.job.models:
            for key, value in engine_env(m).items():
                os.environ.setdefault(key, value)

    def start_engine(self, model: ModelConfig, index: int) -> Any:
        return _Engine(self, model)

    def ready(self, engine: _Engine) -> Any:
        return engine.loaded

    def open_stream(self, shard: str, size: int) -> Any:
        return _Stream(self, shard, size)

    def next_chunk(self, stream: _Stream) -> Any | None:
        kind, value = stream.slot.get()
        if kind == "end":
            stream.ended = True
            return None
        call = _Call(self.cond)
        call.set(value, error=value if kind == "error" else None)
        return call

    def close_stream(self, stream: _Stream) -> None:
        stream.closed.set()

    def feed(self, engine: _Engine, unit: UnitSpec, chunk: _Call) -> Any:
        return engine.submit("caption_chunk", unit, chunk)

    def finish(self, engine: _Engine, unit: UnitSpec) -> Any:
        return engine.submit("finish_unit", unit, self.job.output)

    def wait(self, items: list[Any], timeout: float | None) -> list[Any]:
        with self.cond:
            self.cond.wait_for(lambda: any(i.done() for i in items), timeout)
            return [i for i in items if i.done()]

    def result(self, call: _Call) -> Any:
        return call.get()

    def classify(self, exc: BaseException) -> str | None:
        from recaption.actor import UnitStateLost

        if isinstance(exc, EngineDied):
            return "actor"
        if isinstance(exc, UnitStateLost):
            return "infra"
        # Anything else a call raised is the unit's own failure (an unreadable shard, an engine
        # error), as a RayTaskError is under Ray: it would fail again.
        return "unit" if isinstance(exc, Exception) else None

    def restarting(self, exc: BaseException) -> bool:
        return False  # a restarted engine's `ready` waits for its load

    def describe(self, exc: BaseException) -> str:
        from pipeline.executor_ray import short_error

        return short_error(exc) if str(exc) else type(exc).__name__

    def kill(self, engine: _Engine) -> None:
        engine.kill()

    def release(self, engines: list[_Engine]) -> None:
        """The job is over: each engine's thread ends once idle, and its model is freed."""
        for engine in engines:
            engine.restarts_left = 0
            if engine.calls is not None:
                engine.calls.put(None)

    def task(self, fn: Callable[..., Any], *args: Any) -> Any:
        from concurrent.futures import ThreadPoolExecutor

        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="longcap-task")
        call = _Call(self.cond)

        def run() -> None:
            try:
                call.set(fn(*args))
            except Exception as exc:
                call.set(error=exc)

        self._pool.submit(run)
        return call
