"""Distributed ingest: img2dataset's URL shards downloaded by Ray tasks on the cluster's nodes.

`python -m pipeline.ingest_ray -- <img2dataset arguments>` is `pipeline.safe_download` (the URL
policy's fetch in place of img2dataset's) with one more swap: img2dataset's `ray` distributor
is replaced by `cluster_distributor` below, and the process joins the Ray cluster named in
`LONGCAP_INGEST_RAY` (JSON: address, CPUs per shard, the tasks' environment, where to write the
report). Everything else is img2dataset's own: its reader splits the URL list into shard files
(under the output folder, which every node must see), its downloader fetches, resizes and
writes `NNNNN.tar`, `NNNNN.parquet` and, last, `NNNNN_stats.json`; its incremental mode skips
the shards whose stats file exists. So a shard is one Ray task, and resume and conservation are
what they are on one machine: a shard counts as downloaded when its stats file exists, and every
URL row of a finished shard is a sample or a failure row of img2dataset's Parquet.

Why not img2dataset's own `ray` distributor: it submits every shard at once, ignores a shard
that failed (img2dataset's downloader returns False rather than raising) and gives up on the
first lost task. Here a shard task runs with Ray's retries for lost workers and nodes
(`max_retries`), is spread over the nodes with CPUs free (`SPREAD`), and a shard that failed is
sent again up to img2dataset's `max_shard_retry` times; what stays failed has no stats file, and
the build says so (and a rerun downloads it). Every node runs the same policy: a task
unpickles img2dataset's downloader, whose class is `pipeline.safe_download.PolicyDownloader`, so
importing it there swaps in the policy's fetch, and the policy travels in the task's environment
(`LONGCAP_URL_POLICY`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

SETTINGS_ENV = "LONGCAP_INGEST_RAY"


def download_shard(downloader: Any, row: tuple[int, str]) -> tuple[bool, tuple[int, str], str]:
    """One shard on whichever node Ray chose: (img2dataset's status, the row, the node's
    address). Importing `pipeline.safe_download` first puts the URL policy's fetch in place even
    if this worker has not unpickled the downloader's class yet."""
    import ray

    import pipeline.safe_download  # noqa: F401  (the swap happens on import)

    ok, row = downloader(row)
    return ok, row, ray.util.get_node_ip_address()


def _settings() -> dict[str, Any]:
    raw = os.environ.get(SETTINGS_ENV)
    if not raw:
        raise RuntimeError(f"{SETTINGS_ENV} is not set; distributed ingest runs from longcap build")
    return json.loads(raw)


def cluster_distributor(
    processes_count: int, downloader: Any, reader: Any, _subjob_size: int, max_shard_retry: int
) -> None:
    """img2dataset's distributor contract: download every (shard id, shard file) the reader
    yields, by Ray tasks; keeps about two tasks per slot of the cluster in flight, so the reader
    writes shard files only a little ahead of the downloads."""
    import ray
    from ray.exceptions import RayError

    settings = _settings()
    cpus = float(settings["cpus_per_shard"])
    task = ray.remote(download_shard).options(
        num_cpus=cpus,
        max_retries=int(settings["max_task_retries"]),  # a lost worker or node: Ray resends
        runtime_env={"env_vars": settings["env"]},
        # Over the nodes with CPUs free at that moment (Ray's default packs tasks onto few).
        scheduling_strategy="SPREAD",
    )
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))
    window = 2 * slots
    report_path = Path(settings["report"])
    report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.exists() else {}
    shards: dict[str, Any] = report.setdefault("shards", {})
    pending: dict[Any, tuple[tuple[int, str], int]] = {}
    rows = iter(reader)
    exhausted = False
    t0 = time.time()

    shared = ray.put(downloader)  # pickled once, not once per shard

    def submit(row: tuple[int, str], tries: int) -> None:
        pending[task.remote(shared, row)] = (row, tries)

    while pending or not exhausted:
        while not exhausted and len(pending) < window:
            row = next(rows, None)
            if row is None:
                exhausted = True
            else:
                submit(row, 1)
        if not pending:
            break
        done, _ = ray.wait(list(pending), num_returns=1)
        ref = done[0]
        row, tries = pending.pop(ref)
        name = f"{row[0]:05d}"
        try:
            ok, _row, node = ray.get(ref)
            error = None if ok else "img2dataset's downloader failed (see img2dataset.log)"
        except RayError as exc:  # Ray's own retries are spent: the node or worker kept dying
            ok, node, error = False, None, f"{type(exc).__name__}: {str(exc)[-300:]}"
        shards[name] = {"node": node, "tries": tries, "ok": ok, "error": error}
        if not ok and tries <= max_shard_retry:
            print(f"ingest: shard {name} failed ({error}); try {tries + 1}", flush=True)
            submit(row, tries + 1)
        _write_json(report_path, report)
    report["last_run_seconds"] = time.time() - t0
    _write_json(report_path, report)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    import ray

    import pipeline.safe_download as safe

    settings = _settings()
    _main = safe._main
    _main.ray_distributor = cluster_distributor  # looked up when download() picks "ray"
    ray.init(
        address=settings["address"], namespace="longcap", log_to_driver=True, logging_level="ERROR"
    )
    try:
        return safe.main(argv)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    # By the module's own name, so that Ray pickles `download_shard` by reference.
    from pipeline.ingest_ray import main as _run

    sys.exit(_run(sys.argv[1:]))
