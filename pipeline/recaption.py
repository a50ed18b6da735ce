"""The recaption job: every (input shard, model) unit captioned by that model's engines.

Run locally as `longcap recaption --config run.yaml` (starts a local Ray when none runs; with
`--executor local`, or `executor: local` in the config, no Ray at all: engines run in threads of
this process), or on a cluster as `ray job submit --address http://HEAD:8265 --working-dir . --
python -m pipeline.recaption --config run.yaml`.

How it works: `pipeline.scheduler` decides which unit runs where and when; an executor runs it
(`pipeline.executor_ray`: each model has a pool of engine actors, `recaption.actor`, each holding
one engine loaded once; `pipeline.executor_local`: the same workers in threads). A unit's input
shard is read once by a decoding task that yields its images decoded and resized in chunks of
`chunk_images`, each sent to the engine as it is made, so memory is bounded by chunk counts, not
shard size. Engines are kept busy with chunks decoded ahead, and models never wait for each
other. A unit whose engine died is sent again (the executor restarts the engine), at most
`max_unit_retries` times; then it is reported failed and the job goes on. A unit that runs past
`unit_timeout_s` (a hung engine) has its engine killed, and is retried the same way. Any Ray
error (actor died, worker crashed, out of memory, object lost) retries or fails one unit; none
ends the job, which always writes its report. Finished units are skipped on a rerun.

Exit codes: 0 every unit done (failed rows are data), 1 finished with failed units, 2 config
error, 3 crash (the report is still written, with the error).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from pipeline.executor_ray import NAMESPACE, failure_kind, init_ray
from pipeline.executor_ray import short_error as _short
from pipeline.recaption_config import ConfigError, RecaptionConfig, load_config
from pipeline.scheduler import Executor, UnitClock, _report, run_units
from shards import storage

# Names other modules and tests import from here (their home is in the modules above).
__all__ = [
    "NAMESPACE",
    "UnitClock",
    "_short",
    "failure_kind",
    "init_ray",
    "main",
    "make_executor",
    "run",
]


def make_executor(job: RecaptionConfig) -> Executor:
    """The executor `job.executor` names ("ray" or "local")."""
    if job.executor == "local":
        from pipeline.executor_local import LocalExecutor

        return LocalExecutor(job)
    from pipeline.executor_ray import RayExecutor

    return RayExecutor(job)


def run(
    job: RecaptionConfig,
    source: Callable[[], tuple[list[str], bool]] | None = None,
    on_unit: Callable[[str, str], None] | None = None,
    force_rebuild: bool = False,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Run the recaption job to the end; returns (and writes) the run report.

    By default the job captions the shards in `job.input` when it starts. With `source`, it
    follows a stage still writing them: `source()` returns the shard names ready so far and
    whether more may come, and is asked again about once a second. `on_unit(model, shard)` is
    called for every unit that is done (written now or found finished). A finished unit made
    from another model config or input shard stops the job (FingerprintMismatch) unless
    `force_rebuild`, which captions it again. `executor`: what runs the units (default: the one
    `job.executor` names).

    Holds the lock of `job.output` (`shards.runlock`) for the whole run: a second run on it
    raises OutputLocked at once."""
    from shards.runlock import lock_output, remove_stale_temps, unlock_output

    lock_output(job.output, "longcap recaption")
    try:
        for m in job.models:  # unit temps of killed runs (never a live run's)
            remove_stale_temps(storage.join(job.output, "captions", m.name))
        return _run(job, source, on_unit, force_rebuild, executor or make_executor(job))
    finally:
        unlock_output(job.output)


def _run(job: RecaptionConfig, source, on_unit, force_rebuild: bool, executor) -> dict[str, Any]:
    t_start = time.time()
    models: dict[str, Any] = {}
    crash: BaseException | None = None
    try:
        run_units(job, executor, source, on_unit, force_rebuild, t_start, models)
    except BaseException as exc:
        crash = exc  # the report still says what was done (below), then the error goes on
        raise
    finally:
        report = _report(job, models, t_start)
        if crash is not None:
            report["complete"] = False
            report["error"] = f"{type(crash).__name__}: {crash}"[:1000]
        report_path = storage.join(job.output, "recaption_report.json")  # local or s3://
        storage.write_bytes(report_path, json.dumps(report, indent=1).encode())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.recaption", description="Recaption input shards with MLLMs."
    )
    parser.add_argument("--config", required=True, help="run.yaml")
    parser.add_argument(
        "--executor",
        choices=["ray", "local"],
        help="what runs the engines: Ray actors, or threads of this process without Ray "
        "(default: the config's `executor`, else ray)",
    )
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
    if args.executor:
        cfg.executor = args.executor
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
        print(f"recaption: crashed; report: {storage.join(cfg.output, 'recaption_report.json')}")
        return 3
    for name, m in report["models"].items():
        print(
            f"  {name}: {m['captioned']:,}/{m['images']:,} images captioned, "
            f"{m['units_done']} units done, {m['units_skipped']} skipped, "
            f"{len(m['units_failed'])} failed, {m['images_per_s']:.2f} images/s"
        )
    print(f"report: {storage.join(cfg.output, 'recaption_report.json')}")
    return 0 if report["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
