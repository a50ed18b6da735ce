"""The ingest stage of a build: a URL list, cleaned, downloaded into shards by img2dataset.

Before img2dataset sees the list, every row is checked: an empty URL, a URL or caption whose
bytes are not UTF-8, a URL the ingest policy refuses without the network (a scheme other than
http/https, a literal private or loopback address: `pipeline.url_policy.precheck_url`), a URL
seen earlier in the list or a row that cannot be parsed is rejected with its reason (and kept, as
a failure row of the build), so img2dataset gets a clean Parquet list with a `longcap_row` column
naming the input row. img2dataset then runs with its fetch replaced by the policy's
(`pipeline.safe_download`): host names are resolved and checked before connecting, redirects
are re-checked, responses are capped in size and time. img2dataset's exit code is not trusted:
a shard counts as downloaded when its `NNNNN_stats.json` exists (img2dataset writes it after the
tar and the Parquet), and the build checks at the end that every shard the list implies is there.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.processes import popen_tied
from pipeline.url_policy import POLICY_ENV, UrlPolicy, UrlRefused, precheck_url, refusal_status
from shards import storage
from shards.inputs import as_text
from shards.schema import FAIL_URL_NOT_UTF8

# Column names tried in order when the config does not name them (LoTLIP/DreamLIP lists,
# img2dataset's usual names).
URL_COLUMNS = ("url", "URL", "image_url", "Image URL", "Image Path")
CAPTION_COLUMNS = ("caption", "raw_caption", "TEXT", "text", "alt")
REJECT_EMPTY_URL = "empty_url"
REJECT_DUPLICATE_URL = "duplicate_url"
REJECT_NOT_UTF8 = "caption_not_utf8"
REJECT_BAD_ROW = "bad_input_row"
REJECT_URL_NOT_UTF8 = FAIL_URL_NOT_UTF8


@dataclass
class IngestConfig:
    url_list: str
    input_format: str | None = None  # csv, tsv, parquet, jsonl; None: from the file suffix
    url_col: str | None = None
    caption_col: str | None = None
    image_size: int = 256
    resize_mode: str = "keep_ratio"  # img2dataset's: no, keep_ratio, center_crop, border
    processes: int = 1
    threads: int = 16
    number_sample_per_shard: int = 10_000
    timeout: int = 10
    retries: int = 0
    extra_columns: list[str] = field(default_factory=list)  # carried to the shards' metadata
    # URL policy (pipeline/url_policy.py, docs/SECURITY.md). CIDRs whose addresses may be fetched
    # although they are loopback/private/link-local...; empty: only global addresses.
    allowed_networks: list[str] = field(default_factory=list)
    max_bytes: int = 32 << 20  # a response longer than this is refused (url_refused:size)
    deadline_s: float = 60.0  # one request in all: redirects, headers, body (url_refused:deadline)
    # Where the downloads run: "multiprocessing" (img2dataset's processes on the driver's node)
    # or "ray" (one Ray task per URL shard, spread over the cluster's nodes: pipeline/ingest_ray.py;
    # `processes` is then unused, the cluster's CPUs / cpus_per_shard set the concurrency).
    distributor: str = "multiprocessing"
    cpus_per_shard: float = 1.0  # Ray CPUs one shard's task holds (distributor: ray)

    def url_policy(self) -> UrlPolicy:
        """The policy these fields describe; ValueError names a bad `allowed_networks` entry."""
        return UrlPolicy.from_config(
            self.allowed_networks, self.max_bytes, self.deadline_s, self.timeout
        )


def _read_rows(path: Path, fmt: str) -> tuple[list[str], list[dict[str, Any] | None]]:
    """(columns, rows); a row that cannot be parsed is None."""
    if fmt == "parquet":
        table = pq.read_table(path)
        return table.column_names, table.to_pylist()
    if fmt == "jsonl":
        rows: list[dict[str, Any] | None] = []
        columns: dict[str, None] = {}
        with open(path, "rb") as f:
            for raw in f:
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw.decode("utf-8", "surrogateescape"))
                    if not isinstance(rec, dict):
                        raise ValueError("not an object")
                    columns.update(dict.fromkeys(rec))
                    rows.append(rec)
                except ValueError:
                    rows.append(None)
        return list(columns), rows
    import pandas as pd

    opts = dict(
        sep="\t" if fmt == "tsv" else ",",
        dtype=str,
        keep_default_na=False,
        encoding="utf-8",
        encoding_errors="surrogateescape",
    )
    try:
        df = pd.read_csv(path, **opts)
    except pd.errors.ParserError:
        return _read_csv_rowwise(path, opts["sep"])
    return list(df.columns), df.to_dict("records")


def _read_csv_rowwise(path: Path, sep: str) -> tuple[list[str], list[dict[str, Any] | None]]:
    """A CSV that pandas' parser refuses (a line with more fields than the header): read it line
    by line so that such a line becomes one unparsable row (None) instead of stopping the build.
    Short lines are padded with empty cells, as pandas does."""
    import csv

    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter=sep)
        header = next(reader, [])
        rows: list[dict[str, Any] | None] = []
        for cells in reader:
            if not cells:
                continue
            if len(cells) > len(header):
                rows.append(None)
            else:
                cells = cells + [""] * (len(header) - len(cells))
                rows.append(dict(zip(header, cells, strict=True)))
    return header, rows


def _pick(columns: list[str], wanted: str | None, options: tuple[str, ...], what: str, path: Path):
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(
                f"{path}: ingest.{what} {wanted!r} is not a column; columns: {columns}"
            )
        return wanted
    found = next((c for c in options if c in columns), None)
    if found is None and what == "url_col":
        raise ValueError(
            f"{path}: no URL column (tried {list(options)}); set ingest.url_col. Columns: {columns}"
        )
    return found


def prepare_url_list(cfg: IngestConfig, work: Path) -> dict[str, Any]:
    """Write `work/urls.parquet` (clean rows) and `work/rejected.parquet`; idempotent.

    Returns {"rows": input rows, "accepted": n, "rejected": {reason: n}, "shards": n}."""
    summary_path = work / "url_list.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    path = storage.as_path(cfg.url_list)
    if not path.exists():
        raise ValueError(f"ingest.url_list: {path} does not exist")
    if storage.is_uri(path):  # s3://...: one copy into the work folder, read as a local file
        path = storage.download(path, Path(work) / f"url_list_source{path.suffix}")
    fmt = cfg.input_format or path.suffix.lstrip(".").lower()
    if fmt not in ("csv", "tsv", "parquet", "jsonl"):
        raise ValueError(f"ingest.input_format: {fmt!r} is not csv, tsv, parquet or jsonl")
    columns, rows = _read_rows(path, fmt)
    url_col = _pick(columns, cfg.url_col, URL_COLUMNS, "url_col", path)
    cap_col = _pick(columns, cfg.caption_col, CAPTION_COLUMNS, "caption_col", path)
    from shards.inputs import RELEASED_LONG_COLUMNS, TRUTH_COLUMN, truth_text

    carried = (*RELEASED_LONG_COLUMNS, TRUTH_COLUMN, *cfg.extra_columns)
    extra = list(dict.fromkeys(c for c in carried if c in columns))
    policy = cfg.url_policy()
    accepted, rejected, seen = [], [], set()
    safe = lambda v: None if v is None else str(v).encode("utf-8", "replace").decode()  # noqa: E731
    for i, row in enumerate(rows):
        reason, detail = _check_row(row, url_col, cap_col, seen, policy)
        row = row or {}
        url = (as_text(row.get(url_col)) or "").strip()
        caption = as_text(row.get(cap_col)) if cap_col else None
        if reason is not None:
            rejected.append(
                {
                    "longcap_row": i,
                    "url": safe(url),
                    "caption": safe(caption),
                    "reason": reason,
                    "detail": detail,
                }
            )
            continue
        seen.add(url)
        rec = {"longcap_row": i, "url": url, "caption": caption or "", "source": path.stem}
        rec.update({c: safe(row.get(c)) for c in extra})
        if TRUTH_COLUMN in rec:  # a JSONL list's object becomes JSON text, not a Python repr
            rec[TRUTH_COLUMN] = safe(truth_text(row.get(TRUTH_COLUMN)))
        accepted.append(rec)
    work.mkdir(parents=True, exist_ok=True)
    _write_atomic(
        work / "rejected.parquet", rejected, ["longcap_row", "url", "caption", "reason", "detail"]
    )
    _write_atomic(
        work / "urls.parquet", accepted, ["longcap_row", "url", "caption", "source", *extra]
    )
    counts: dict[str, int] = {}
    for r in rejected:
        counts[r["reason"]] = counts.get(r["reason"], 0) + 1
    summary = {
        "rows": len(rows),
        "accepted": len(accepted),
        "rejected": counts,
        "shards": math.ceil(len(accepted) / cfg.number_sample_per_shard) if accepted else 0,
        "extra_columns": extra,
    }
    tmp = summary_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary))
    os.replace(tmp, summary_path)
    return summary


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")  # lone surrogates stand for bytes that were not UTF-8
    except UnicodeEncodeError:
        return False
    return True


def _check_row(
    row: dict[str, Any] | None,
    url_col: str,
    cap_col: str | None,
    seen: set[str],
    policy: UrlPolicy,
) -> tuple[str | None, str | None]:
    """(reason, detail) a row is refused for, or (None, None). Never raises: any row, however
    odd, becomes a URL to download or a failure row."""
    if row is None:
        return REJECT_BAD_ROW, "the row cannot be parsed"
    url = (as_text(row.get(url_col)) or "").strip()
    if not url:
        return REJECT_EMPTY_URL, "the row has no URL"
    if not _is_utf8(url):
        return REJECT_URL_NOT_UTF8, "the URL's bytes are not UTF-8"
    try:
        precheck_url(url, policy)
    except UrlRefused as exc:
        return refusal_status(exc.reason), str(exc)
    if url in seen:
        return REJECT_DUPLICATE_URL, "the URL appears earlier in the list"
    caption = as_text(row.get(cap_col)) if cap_col else None
    if caption is not None and not _is_utf8(caption):
        return REJECT_NOT_UTF8, "the caption's bytes are not UTF-8"
    return None, None


def _write_atomic(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = (
        pa.Table.from_pylist(rows)
        if rows
        else pa.table({c: pa.array([], pa.string()) for c in columns})
    )
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


DISTRIBUTORS = ("multiprocessing", "ray")


def start_ingest(
    cfg: IngestConfig,
    work: Path,
    extra_columns: list[str],
    extra_args: list[str] = (),
    ray_address: str | None = None,
) -> subprocess.Popen:
    """img2dataset in a child process, resuming (incremental mode) into work/shards, with its
    fetch replaced by the URL policy's (`pipeline.safe_download`); `extra_args` are appended to
    its command line (the build's image caps). With `cfg.distributor == "ray"` the child joins
    the cluster at `ray_address` and downloads each shard in a Ray task on the cluster's nodes
    (`pipeline.ingest_ray`); its per-shard record is work/ingest_tasks.json."""
    work = work.resolve()
    distributed = cfg.distributor == "ray"
    if distributed and not ray_address:
        raise ValueError("ingest.distributor: ray needs a running Ray cluster (its address)")
    module = "pipeline.ingest_ray" if distributed else "pipeline.safe_download"
    cmd = [
        sys.executable, "-m", module, "--",
        "--url_list", str(work / "urls.parquet"), "--input_format", "parquet",
        "--url_col", "url", "--caption_col", "caption",
        "--output_format", "webdataset", "--output_folder", str(work / "shards"),
        "--processes_count", str(cfg.processes), "--thread_count", str(cfg.threads),
        "--image_size", str(cfg.image_size), "--resize_mode", cfg.resize_mode,
        "--number_sample_per_shard", str(cfg.number_sample_per_shard),
        "--timeout", str(cfg.timeout), "--retries", str(cfg.retries),
        "--incremental_mode", "incremental", "--distributor", cfg.distributor,
        "--enable_wandb", "False",
        "--save_additional_columns", json.dumps(["longcap_row", "source", *extra_columns]),
        *extra_args,
    ]  # fmt: skip
    log = open(work / "img2dataset.log", "ab")
    # This checkout's `pipeline` first on the child's path: the policy that runs is this one.
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {
        **os.environ,
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "PYTHONPATH": path,
        POLICY_ENV: json.dumps(cfg.url_policy().to_json()),
    }
    if distributed:
        from pipeline.ingest_ray import SETTINGS_ENV

        # The tasks' environment: the policy (every node downloads under it) and this
        # checkout's `pipeline` first on their path, as for the child itself.
        task_env = {k: env[k] for k in (POLICY_ENV, "PYTHONPATH", "NO_ALBUMENTATIONS_UPDATE")}
        env[SETTINGS_ENV] = json.dumps(
            {
                "address": ray_address,
                "cpus_per_shard": cfg.cpus_per_shard,
                "max_task_retries": 3,
                "env": task_env,
                "report": str(work / "ingest_tasks.json"),
            }
        )
    # cwd: `python -m` puts it first on sys.path, where another `pipeline` package could sit.
    # Tied to the driver: a killed build never leaves img2dataset running (pipeline/processes.py).
    return popen_tied(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)


def ready_shards(shard_dir: str | Path | storage.ObjectPath) -> list[str]:
    """Shards img2dataset has finished: their `_stats.json` is written last (in a bucket, the
    build uploads it last). One listing of the folder or prefix."""
    names = {p.name for p in storage.list_files(shard_dir, "*.*")}
    return sorted(
        n[: -len("_stats.json")]
        for n in names
        if n.endswith("_stats.json") and n[: -len("_stats.json")] + ".tar" in names
    )
