"""`longcap build`: URL list -> img2dataset -> recaption (all models) -> assemble -> statistics.

Run locally as `longcap build --config build.yaml` (`--executor local`: no Ray, everything in
this process), or on a cluster as `longcap submit --address http://HEAD:8265 -- build --config
build.yaml` (pipeline/submit.py). The stages overlap: a shard
is recaptioned as soon as img2dataset has finished it, and assembled as soon as every model has
captioned it; no stage waits for a whole earlier stage. Every stage writes one output per shard
atomically and skips what is already written, so a killed build, run again, finishes the work
without redoing or duplicating any. Layout under `output`:
  ingest/urls.parquet, ingest/rejected.parquet   the checked URL list and the rows refused
  ingest/shards/NNNNN.{tar,parquet,_stats.json}  img2dataset's output
  ingest/ingest_tasks.json                       node and tries per shard (distributor: ray)
  recaption/captions/<model>/NNNNN.parquet       captions, recaption/recaption_report.json
  shards/NNNNN.{parquet,tar,_stats.json}         the dataset (shards/rejected/: refused rows)
  stats/stats.json, stats/*.png                  `longcap stats` of the dataset

`output` may be an object-store URI (`s3://bucket/prefix`, docs/STORAGE.md). img2dataset then
downloads into a local mirror of `ingest/` (`storage.mirror_dir`), and each shard it finishes is
uploaded to `OUTPUT/ingest/shards/` at once, its `_stats.json` (the mark) after its tar and
Parquet; recaption and assembly read the shards from the bucket, and every other output is
written there. A rerun rebuilds the mirror from the bucket: the URL list as the first run
prepared it, and the marks of uploaded shards, which img2dataset's incremental mode takes for
done shards, so they are not downloaded again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.config_loader import ConfigError, load_dataclass, read_yaml_mapping
from pipeline.ingest import (
    DISTRIBUTORS,
    IngestConfig,
    prepare_url_list,
    ready_shards,
    start_ingest,
)
from pipeline.recaption_config import RecaptionConfig, parse_config, resolve_model_paths
from shards import storage
from shards.assemble import AssembleConfig
from shards.storage import is_uri


@dataclasses.dataclass
class BuildConfig:
    output: str
    ingest: IngestConfig
    recaption: RecaptionConfig
    assemble: AssembleConfig


def load_build_config(path: str | Path) -> BuildConfig:
    """build.yaml: `output`, `ingest`, `models` (+ recaption options), `assemble`."""
    p = Path(path)
    data = read_yaml_mapping(p)
    base = p.resolve().parent
    for key in ("output", "ingest", "models"):
        if key not in data:
            raise ConfigError(f"{p}: {key}: is required")
    raw_output = str(data.pop("output"))
    if is_uri(raw_output):  # s3://bucket/prefix: every output in the bucket
        output = raw_output.rstrip("/")
    else:
        output = str((base / Path(raw_output).expanduser()).resolve())
    ingest_data = data.pop("ingest")
    assemble_data = data.pop("assemble", {}) or {}
    ingest = _ingest_config(ingest_data, f"{p}: ingest")
    if is_uri(output) and ingest.distributor == "ray":
        raise ConfigError(
            f"{p}: ingest.distributor: ray cannot yet write to an object-store output "
            f"({output}); use distributor: multiprocessing, or a local or shared output folder "
            "(docs/STORAGE.md)"
        )
    if not is_uri(ingest.url_list):  # s3://... stays as given
        ingest.url_list = str((base / Path(ingest.url_list).expanduser()).resolve())
    # A build writes one output shard per input shard into its own folder, from its own
    # captions: those options of `longcap shards` are not the user's to set here.
    assemble = load_dataclass(
        AssembleConfig,
        assemble_data,
        f"{p}: assemble",
        exclude=("shard_size", "max_shard_bytes", "captions"),
    )
    try:
        assemble.validate(f"{p}: assemble")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    recap_data = {
        "input": storage.join(output, "ingest", "shards"),
        "output": storage.join(output, "recaption"),
        **data,
    }
    recaption = parse_config(recap_data, str(p))
    from shards.inputs import RELEASED_LONG_COLUMNS

    taken = sorted({m.name for m in recaption.models} & set(RELEASED_LONG_COLUMNS.values()))
    if taken:
        raise ConfigError(
            f"{p}: models: name(s) {taken} are the names given to released captions of the URL "
            "list (longIB/longSV/longLLA_captions); choose other names"
        )
    resolve_model_paths(recaption.models, base, str(p))
    return BuildConfig(output, ingest, recaption, assemble)


def _ingest_config(data: Any, where: str) -> IngestConfig:
    cfg = load_dataclass(IngestConfig, data, where)
    for f in dataclasses.fields(IngestConfig):
        value, least = getattr(cfg, f.name), 0 if f.name == "retries" else 1
        if f.type == "int" and value < least:
            raise ConfigError(f"{where}.{f.name}: must be an integer >= {least}, got {value!r}")
    if cfg.distributor not in DISTRIBUTORS:
        raise ConfigError(
            f"{where}.distributor: must be one of {list(DISTRIBUTORS)}, got {cfg.distributor!r}"
        )
    if not cfg.cpus_per_shard > 0:
        raise ConfigError(f"{where}.cpus_per_shard: must be > 0, got {cfg.cpus_per_shard!r}")
    if not cfg.deadline_s > 0:
        raise ConfigError(
            f"{where}.deadline_s: must be a number of seconds > 0, got {cfg.deadline_s!r}"
        )
    try:
        cfg.url_policy()
    except ValueError as exc:
        raise ConfigError(
            f"{where}.allowed_networks: {exc}; write networks as CIDRs, e.g. 127.0.0.1/32"
        ) from None
    return cfg


def _write_rejected(work: Path, out: storage.AnyPath) -> None:
    """Rows refused before download become failure rows of the dataset (shards/rejected/)."""
    import pyarrow.parquet as pq

    from shards import schema as S
    from shards.writer import ShardWriter

    target = out / "rejected"
    if (target / "00000_stats.json").exists():
        return
    rows = pq.read_table(work / "rejected.parquet").to_pylist()
    with ShardWriter(storage.as_path(target), formats=["parquet"], max_samples=1 << 62) as writer:
        writer.write_empty()
        for r in rows:
            writer.write(
                S.Sample(
                    key=f"row{r['longcap_row']:09d}",
                    status=r["reason"],
                    # No local path in the dataset: the row number and the reason say enough.
                    error=f"URL list row {r['longcap_row']}: {r.get('detail') or r['reason']}",
                    url=r["url"],
                    caption=r["caption"],
                )
            )


def run_build(cfg: BuildConfig, force_rebuild: bool = False) -> dict[str, Any]:
    """Run every stage; holds the locks of the build's output and of its shards folder (the
    recaption stage locks its own) for the whole run, so a second build exits 2 at once, before
    it could start a second img2dataset. On an object store the locks are objects, and the
    local mirror of `ingest/` is removed at the end (everything in it has been uploaded)."""
    from shards.runlock import lock_output, remove_stale_temps, unlock_output

    shards_out = storage.join(cfg.output, "shards")
    lock_output(cfg.output, "longcap build")
    lock_output(shards_out, "longcap build")
    try:
        remove_stale_temps(shards_out)  # left by assembly tasks of a killed build
        return _run_build(cfg, force_rebuild)
    finally:
        if is_uri(cfg.output):
            shutil.rmtree(storage.mirror_dir(cfg.output, "build"), ignore_errors=True)
        unlock_output(shards_out)
        unlock_output(cfg.output)


# What a build's ingest/ holds besides the shards; url_list.json last: it marks the other two.
_URL_LIST_FILES = ("urls.parquet", "rejected.parquet", "url_list.json")


def _mirror_ingest(cfg: BuildConfig, remote: storage.ObjectPath) -> Path:
    """A fresh local mirror of the bucket's `ingest/` for img2dataset to work in (it writes its
    output folder through fsspec, and the build's work files are written in place).

    Rebuilt from the bucket at every start, so nothing a killed run left on this machine is
    trusted: the prepared URL list (a rerun must cut the same shards), img2dataset's log, and
    each uploaded shard's `_stats.json`, which img2dataset's incremental mode takes for a done
    shard (it skips every shard whose `NNNNN_stats.json` is in its output folder)."""
    work = storage.mirror_dir(cfg.output, "build") / "ingest"
    shutil.rmtree(work.parent, ignore_errors=True)
    (work / "shards").mkdir(parents=True)
    if (remote / "url_list.json").exists():
        for name in (*_URL_LIST_FILES, "img2dataset.log"):
            if (remote / name).exists():
                storage.download(remote / name, work / name)
    for name in ready_shards(remote / "shards"):
        mark = f"{name}_stats.json"
        (work / "shards" / mark).write_bytes((remote / "shards" / mark).read_bytes())
    return work


class _ShardUploader(threading.Thread):
    """Uploads each shard img2dataset finishes in the local mirror to the bucket: its tar and
    Parquet, then its `_stats.json` (`storage.write_marked`), then removes the local data files
    (the local mark stays: img2dataset's resume reads it). Runs until img2dataset has exited
    and a last look found nothing more; `ready()` is what the recaption stage may read."""

    def __init__(self, local: Path, remote: storage.ObjectPath, proc: Any, poll_s: float = 0.5):
        super().__init__(name="longcap-shard-uploader", daemon=True)
        self.local, self.remote, self.proc, self.poll_s = local, remote, proc, poll_s
        self._done = set(ready_shards(remote))
        self._lock = threading.Lock()
        self.uploaded: list[str] = []
        self.error: BaseException | None = None

    def ready(self) -> tuple[list[str], bool]:
        """(shards marked in the bucket, whether more may come); `more` is read first, so a
        shard uploaded between the two reads is never missed."""
        more = self.is_alive()
        with self._lock:
            return sorted(self._done), more

    def run(self) -> None:
        try:
            while True:
                exited = self.proc is None or self.proc.poll() is not None
                for name in ready_shards(self.local):
                    if name not in self._done:
                        self._upload(name)
                if exited:
                    return
                time.sleep(self.poll_s)
        except BaseException as exc:  # reported by the build as a problem; shards stay local
            self.error = exc

    def _upload(self, name: str) -> None:
        files = [
            (self.local / f"{name}{ext}", self.remote / f"{name}{ext}")
            for ext in (".tar", ".parquet")
            if (self.local / f"{name}{ext}").exists()
        ]
        mark = self.local / f"{name}_stats.json"
        storage.write_marked(files, self.remote / mark.name, mark.read_bytes())
        with self._lock:
            self._done.add(name)
            self.uploaded.append(name)
        print(f"build: input shard {name} uploaded to {self.remote}", flush=True)


def _run_build(cfg: BuildConfig, force_rebuild: bool) -> dict[str, Any]:
    from pipeline.recaption import make_executor, run
    from shards.assemble import assemble_shard, finished_shard

    t0 = time.time()
    out = storage.as_path(cfg.output)
    remote = is_uri(cfg.output)
    # Where img2dataset and the URL-list preparation write (`work`), and where the stages after
    # them read the input shards (`inputs`): the same folder locally, mirror and bucket on S3.
    work = _mirror_ingest(cfg, out / "ingest") if remote else out / "ingest"
    inputs = out / "ingest" / "shards"
    shards_out = out / "shards"
    summary = prepare_url_list(cfg.ingest, work)
    if remote and not (out / "ingest" / "url_list.json").exists():
        for name in _URL_LIST_FILES:  # the summary last: it says the other two are complete
            storage.upload(work / name, out / "ingest" / name)
    print(
        f"build: {summary['rows']:,} URL rows, {summary['accepted']:,} to download in "
        f"{summary['shards']} shards, rejected {summary['rejected'] or 'none'}",
        flush=True,
    )
    _write_rejected(work, shards_out)
    acfg = dataclasses.replace(cfg.assemble, captions=str(out / "recaption"))
    # Shards finished by an earlier build from another config or input stop this one now
    # (exit 2), not one by one inside assembly tasks; --force-rebuild deletes them here.
    for mark in sorted(shards_out.glob("*_stats.json")):
        name = mark.name[: -len("_stats.json")]
        finished_shard(str(inputs), name, str(shards_out), acfg, force_rebuild)
    expected = {f"{i:05d}" for i in range(summary["shards"])}
    proc = None
    if cfg.ingest.distributor == "ray" and cfg.recaption.executor != "ray":
        raise ConfigError(
            "ingest.distributor: ray downloads on the Ray cluster; it needs the Ray executor "
            f"(executor: ray), not {cfg.recaption.executor!r}"
        )
    # The recaption stage's executor (Ray, or threads of this process) also runs the assembly;
    # started first: distributed ingest downloads on its cluster.
    executor = make_executor(cfg.recaption)
    executor.start()
    already = set(ready_shards(inputs))
    if remote and already & expected:
        print(
            f"build: {len(already & expected)} input shards already in {inputs}; "
            "img2dataset skips them",
            flush=True,
        )
    if already < expected:
        # img2dataset refuses the images every other loader refuses (shards.limits).
        from shards.limits import img2dataset_args

        address = None
        if cfg.ingest.distributor == "ray":
            import ray

            address = ray.get_runtime_context().gcs_address
        proc = start_ingest(
            cfg.ingest, work, summary["extra_columns"], img2dataset_args(), ray_address=address
        )
    uploader = None
    if remote:
        uploader = _ShardUploader(work / "shards", inputs, proc)
        uploader.start()
    models = {m.name for m in cfg.recaption.models}
    captioned: dict[str, set[str]] = {}
    assembling: dict[str, Any] = {}

    def source() -> tuple[list[str], bool]:
        if uploader is not None:
            names, more = uploader.ready()
        else:
            more = proc is not None and proc.poll() is None
            names = ready_shards(inputs)
        return [s for s in names if s in expected], more

    def on_unit(model: str, shard: str) -> None:
        captioned.setdefault(shard, set()).add(model)
        if captioned[shard] == models and shard not in assembling:
            assembling[shard] = executor.task(
                assemble_shard, str(inputs), shard, str(shards_out), acfg, force_rebuild
            )

    try:
        report = run(cfg.recaption, source, on_unit, force_rebuild, executor=executor)
    finally:
        if remote and (work / "img2dataset.log").exists():
            storage.upload(work / "img2dataset.log", out / "ingest" / "img2dataset.log")
    if proc is not None and proc.wait() != 0:
        print(f"build: img2dataset exited with {proc.returncode}; judging by its stats files")
    problems = []
    if uploader is not None:
        uploader.join()
        if uploader.error is not None:
            problems.append(
                f"uploading input shards to {inputs} failed: {uploader.error!r}; a rerun "
                "downloads the shards not uploaded again"
            )
    missing = sorted(expected - set(ready_shards(inputs)))
    assembled = []
    for shard, ref in sorted(assembling.items()):
        try:
            assembled.append(executor.result(ref))
        except Exception as exc:  # a broken shard: report it, keep the others
            problems.append(f"assembling shard {shard} failed: {executor.describe(exc)}")
    if missing:
        problems.append(
            f"img2dataset did not finish shards {missing} "
            f"(see {out / 'ingest' / 'img2dataset.log'})"
        )
    failed_units = {m: r["units_failed"] for m, r in report["models"].items() if r["units_failed"]}
    if failed_units:
        problems.append(f"recaption units failed: {failed_units}")
    return _finish(cfg, out, summary, assembled, problems, t0)


def _finish(cfg, out, summary, assembled, problems, t0) -> dict[str, Any]:
    from shards.dataset_stats import add_caption_accuracy, collect_stats, format_report, write_plots

    stats = collect_stats(out / "shards")
    report = add_caption_accuracy(stats.report(), out / "shards")
    # Conservation: every URL row is one sample or one recorded failure, and every sample that
    # was downloaded has one entry (caption or failure) per model.
    if report["samples"] != summary["rows"] and not problems:
        problems.append(f"conservation: {summary['rows']} URL rows but {report['samples']} samples")
    for model in (m.name for m in cfg.recaption.models):
        texts = report["by_model"].get(model, {}).get("texts", 0)
        fails = sum(n for k, n in report["failures"].items() if k.startswith(f"{model}:"))
        if texts + fails != report["images"] and not problems:
            problems.append(
                f"conservation: model {model}: {texts} texts + {fails} failures "
                f"!= {report['images']} images"
            )
    # The plots are written by matplotlib into a folder: on an object store into a local
    # staging folder, then uploaded.
    remote = is_uri(cfg.output)
    stats_dir = storage.staging_dir() if remote else out / "stats"
    stats_dir.mkdir(parents=True, exist_ok=True)
    (stats_dir / "stats.json").write_text(json.dumps(report, indent=1))
    write_plots(stats, stats_dir)
    if remote:
        for f in sorted(stats_dir.iterdir()):
            storage.upload(f, out / "stats" / f.name)
        shutil.rmtree(stats_dir, ignore_errors=True)
    print(format_report(report))
    result = {
        "output": str(out),
        "shards": len(assembled),
        "wall_seconds": time.time() - t0,
        "complete": not problems,
        "problems": problems,
        "stats": report,
    }
    storage.write_bytes(out / "build_report.json", json.dumps(result, indent=1).encode())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.build", description=__doc__)
    parser.add_argument("--config", required=True, help="build.yaml")
    parser.add_argument(
        "--executor",
        choices=["ray", "local"],
        help="what runs recaption and assembly: Ray, or threads of this process without Ray "
        "(default: the config's `executor`, else ray)",
    )
    parser.add_argument(
        "--force-rebuild",
        action="store_true",
        help="redo finished units and shards made from another config or input",
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_build_config(args.config)
    except (ConfigError, ValueError) as exc:
        print(f"build: error: {exc}", file=sys.stderr)
        return 2
    if args.executor:
        cfg.recaption.executor = args.executor
    try:
        result = run_build(cfg, args.force_rebuild)
    except ValueError as exc:
        print(f"build: error: {exc}", file=sys.stderr)
        return 2
    except Exception:  # exit codes 0-2 mean a finished build (README)
        import traceback

        traceback.print_exc()
        print("build: crashed (exit 3); a rerun resumes from the finished shards", file=sys.stderr)
        return 3
    out = storage.as_path(result["output"])
    print(
        f"\nbuild: {result['shards']} shards in {out / 'shards'}, statistics in {out / 'stats'}, "
        f"report {out / 'build_report.json'} ({result['wall_seconds']:.0f}s)"
    )
    for p in result["problems"]:
        print(f"build: problem: {p}", file=sys.stderr)
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
