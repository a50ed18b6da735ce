"""`longcap build` end to end: a URL list on 127.0.0.1 -> img2dataset -> two tiny VLMs -> shards.

The builds run as a user runs them, `python -m pipeline.build --config build.yaml` in a child
process, while this process serves the images. One URL list (with the awkward rows a real list
has) and one reference build serve every test of the module: the URLs name the server's port,
so the server runs for the whole module.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 44  # + 4 bad rows that reach img2dataset = 48 rows to download: 6 shards of 8
PER_SHARD = 8
N_SHARDS = 6
MAX_TOKENS = 16
TINY = ("tiny-llava", "tiny-qwen")
RUN_TIMEOUT = 420  # seconds one build may take before the test gives up on it


# --- helpers -------------------------------------------------------------------------------------


def _write_config(path: Path, url_list: Path, out: Path, models: dict) -> Path:
    cfg = {
        "output": str(out),
        "ingest": {
            "url_list": str(url_list),
            "image_size": 64,
            "number_sample_per_shard": PER_SHARD,
            "threads": 4,
            "allowed_networks": ["127.0.0.1/32"],  # the test server; refused by default
        },
        "models": [
            {
                "name": "tiny-llava",
                "family": "llava-1.5",
                "path": str(models["llava-1.5"]),
                "max_tokens": MAX_TOKENS,
            },
            {
                "name": "tiny-qwen",
                "family": "qwen2-vl",
                "path": str(models["qwen2-vl"]),
                "max_tokens": MAX_TOKENS,
            },
        ],
        "progress": False,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _start(cfg: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """The build in its own session, so that it and everything it starts can be killed."""
    with open(log, "ab") as f:
        f.write(f"\n===== build started {time.strftime('%X')} =====\n".encode())
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.build", "--config", str(cfg)],
            cwd=REPO,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _session_pids(sid: int) -> list[tuple[int, str]]:
    """Live (not zombie) processes of session `sid`, with their command lines.

    Ray's workers put themselves in process groups of their own, but stay in the session."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            state, session = fields[0], int(fields[3])
            if session != sid or state == "Z":
                continue
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        found.append((int(d.name), cmd.strip()[:120]))
    return found


def _end_session(proc: subprocess.Popen, kill: bool = True, grace: float = 45.0) -> list:
    """Wait for every process of the build's session to go, SIGKILLing its group first if `kill`.

    Returns the processes still alive after `grace` seconds (then ended by their pid)."""
    if kill:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    deadline = time.time() + grace
    while time.time() < deadline and _session_pids(proc.pid):
        time.sleep(0.2)
    lingering = _session_pids(proc.pid)
    for pid, _ in lingering:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return lingering


def _run_to_end(cfg: Path, env: dict[str, str], log: Path) -> int:
    proc = _start(cfg, env, log)
    try:
        rc = proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        _end_session(proc)
        pytest.fail(f"build did not finish in {RUN_TIMEOUT}s; log: {_tail(log)}")
    lingering = _end_session(proc, kill=False, grace=30)
    assert not lingering, f"30 s after the build exited, its processes still ran: {lingering}"
    return rc


def _tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:]


def _output_parquets(out: Path) -> list[Path]:
    return sorted((out / "shards").glob("*.parquet")) + sorted(
        (out / "shards" / "rejected").glob("*.parquet")
    )


def _rows(path: Path) -> list[dict]:
    cols = ["key", "status", "error", "url", "source", "caption", "long_captions"]
    return pq.read_table(path, columns=cols).to_pylist()


def _url_rows(csv_path: Path) -> list[dict]:
    text = csv_path.read_bytes().decode("utf-8", "surrogateescape")
    return list(csv.DictReader(io.StringIO(text)))


def _fingerprint(out: Path) -> dict[str, tuple[int, int, str]]:
    """(size, mtime_ns, sha256) of every stage output a rerun must leave alone."""
    files = [
        *(out / "ingest" / "shards").iterdir(),
        *(out / "recaption" / "captions").glob("*/*.parquet"),
        # (not the run lock: each run records itself in it, shards.runlock)
        *(p for p in (out / "shards").rglob("*") if p.is_file() and p.name != ".longcap.lock"),
    ]
    result = {}
    for p in sorted(files):
        st = p.stat()
        result[str(p.relative_to(out))] = (
            st.st_size,
            st.st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
    return result


def _comparable(out: Path) -> dict[str, list[tuple]]:
    """Per output shard, what a chaos build must reproduce exactly, in key order.

    Key order, not file order: img2dataset's download threads write a shard's samples in the
    order their downloads finish, so two builds of one URL list order a shard's rows differently
    (an uninterrupted build as much as a killed one). Keys name input rows, and everything else
    compared (captions included: a caption depends on the model's seed and the key) is exact."""
    result = {}
    for path in _output_parquets(out):
        rows = []
        for r in _rows(path):
            longs = tuple(
                (lc["model"], lc["text"], lc["status"], tuple(lc["subcaptions"] or ()))
                for lc in r["long_captions"] or ()
            )
            rows.append((r["key"], r["status"], r["caption"], longs))
        result[str(path.relative_to(out))] = sorted(rows)
    return result


def _check_report(out: Path) -> dict:
    report = json.loads((out / "build_report.json").read_text())
    assert report["complete"] is True, report["problems"]
    assert report["problems"] == []
    assert report["shards"] == N_SHARDS
    return report


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def build_env():
    """The environment of a build: the session's, plus a Ray temp folder of this module's own.

    With its own RAY_TMPDIR a build starts its own local Ray, never joining one another user of
    the machine started (and its session files go away with the folder)."""
    ray_tmp = tempfile.mkdtemp(prefix="lcray", dir="/tmp")  # short: Ray's socket paths
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TMPDIR": ray_tmp,
        "HF_HUB_OFFLINE": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    yield env
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def url_list(tmp_path_factory):
    """urls.csv (44 images and the bad rows), served on 127.0.0.1 for the whole module."""
    from toyworld.loopback import make_url_list, serve

    root = tmp_path_factory.mktemp("urls")
    with serve(root / "www") as base:
        yield make_url_list(root, base, n=N_IMAGES, bad_rows=True)


@pytest.fixture(scope="module")
def reference_build(tmp_path_factory, url_list, tiny_models, build_env):
    """One uninterrupted build; returns (config, output folder, exit code, log)."""
    root = tmp_path_factory.mktemp("ref")
    out = root / "out"
    cfg = _write_config(root / "build.yaml", url_list, out, tiny_models)
    log = root / "build.log"
    rc = _run_to_end(cfg, build_env, log)
    return cfg, out, rc, log


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_build_end_to_end_with_bad_urls(reference_build, url_list, build_env):
    cfg, out, rc, log = reference_build
    assert rc == 0, _tail(log)
    report = _check_report(out)

    # Conservation: every URL row of the list is one row of the output, ok or failed.
    url_rows = _url_rows(url_list)
    assert len(url_rows) == N_IMAGES + 7
    rows = [r for p in _output_parquets(out) for r in _rows(p)]
    assert len(rows) == len(url_rows) == report["stats"]["samples"]
    keys = [r["key"] for r in rows]
    assert len(set(keys)) == len(keys)

    def one(pred: Callable[[dict], bool], what: str) -> dict:
        found = [r for r in rows if pred(r)]
        assert len(found) == 1, f"{what}: {found}"
        return found[0]

    # Rows refused before download, each with its reason.
    assert one(lambda r: r["caption"] == "a row without a URL", "empty")["status"] == "empty_url"
    dup = one(lambda r: r["caption"] == "the same URL again", "duplicate")
    assert dup["status"] == "duplicate_url"
    latin = one(lambda r: (r["url"] or "").endswith("?v=2"), "latin-1 caption")
    assert latin["status"] == "caption_not_utf8"
    # Rows img2dataset could not download or decode.
    missing = one(lambda r: (r["url"] or "").endswith("/missing.jpg"), "404")
    assert missing["status"] == "failed_to_download" and "404" in missing["error"]
    for name in ("page.jpg", "wide.png"):
        r = one(lambda r, name=name: (r["url"] or "").endswith("/" + name), name)
        assert r["status"] in ("failed_to_resize", "failed_to_download"), r
        assert r["error"], r
    pixel = one(lambda r: (r["url"] or "").endswith("/pixel.png"), "1-pixel image")
    assert pixel["status"] == "ok" or pixel["error"], pixel
    for r in rows:
        assert (r["status"] == "ok") == (r["error"] is None), r

    # Every downloaded image: one entry per tiny model (a caption or the reason there is none),
    # and the released LLaVA caption of the list's longLLA_captions column.
    released = {r["url"]: r["longLLA_captions"] for r in url_rows}
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) >= N_IMAGES
    for r in ok:
        models = sorted(lc["model"] for lc in r["long_captions"])
        assert models == sorted(["instructblip", "llava-1.5", "sharegpt4v", *TINY]), r["key"]
        for lc in r["long_captions"]:
            assert lc["status"], (r["key"], lc)
            if lc["model"] == "llava-1.5" and released[r["url"]]:
                assert lc["status"] == "ok" and lc["text"] == released[r["url"]].strip()
        assert r["source"] == "urls", r
    tiny_ok = [lc for r in ok for lc in r["long_captions"] if lc["model"] in TINY]
    assert sum(lc["status"] == "ok" for lc in tiny_ok) >= len(tiny_ok) - 2

    stats = json.loads((out / "stats" / "stats.json").read_text())
    assert set(TINY) <= set(stats["by_model"])
    pngs = sorted(p.name for p in (out / "stats").glob("*.png"))
    assert pngs and all((out / "stats" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)

    # The same command again: nothing to do, nothing rewritten.
    before = _fingerprint(out)
    rc = _run_to_end(cfg, build_env, log)
    assert rc == 0, _tail(log)
    assert _fingerprint(out) == before
    _check_report(out)


@pytest.mark.slow
def test_build_with_the_local_executor(reference_build, url_list, tiny_models, build_env, tmp_path):
    """`python -m pipeline.build --executor local` (no Ray: recaption and assembly in the build's
    process; one vLLM model, the most a process holds) finishes the same list, conserving every
    row, and writes the same tiny-llava captions as the Ray reference build."""
    _, ref_out, ref_rc, _ = reference_build
    assert ref_rc == 0
    cfg = _write_config(tmp_path / "build.yaml", url_list, tmp_path / "out", tiny_models)
    data = yaml.safe_load(cfg.read_text())
    data["models"] = [m for m in data["models"] if m["name"] == "tiny-llava"]
    cfg.write_text(yaml.safe_dump(data))
    log = tmp_path / "build.log"
    cmd = [sys.executable, "-m", "pipeline.build", "--config", str(cfg), "--executor", "local"]
    with open(log, "wb") as f:
        run = subprocess.run(cmd, cwd=REPO, env=build_env, stdout=f, stderr=subprocess.STDOUT)
    rc = run.returncode
    assert rc == 0, _tail(log)
    report = _check_report(tmp_path / "out")
    assert report["stats"]["samples"] == len(_url_rows(url_list))
    assert "Started a local Ray instance" not in log.read_text()

    def captions(out: Path) -> dict[str, list[dict]]:
        folder = out / "recaption" / "captions" / "tiny-llava"
        cols = ["key", "status", "prompt", "text", "finish_reason", "generated_tokens"]
        # By key: img2dataset's order of a shard's images changes from one download to the next.
        return {
            p.stem: sorted(_rows_of(p, cols), key=lambda r: r["key"])
            for p in sorted(folder.glob("*.parquet"))
        }

    assert captions(tmp_path / "out") == captions(ref_out)


def _rows_of(path: Path, columns: list[str]) -> list[dict]:
    return pq.read_table(path, columns=columns).to_pylist()


def test_bad_build_config_names_the_field(tmp_path, capsys):
    import ray

    from pipeline.build import main

    ray_before = ray.is_initialized()

    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a\n")
    base = {
        "output": str(tmp_path / "out"),
        "ingest": {"url_list": str(urls), "number_sample_per_shard": 4},
        "models": [{"name": "m", "family": "llava-1.5", "path": "org/model"}],
    }
    cases = [
        ("ingest.url_list", lambda c: c["ingest"].pop("url_list")),
        ("ingest.threads", lambda c: c["ingest"].update(threads=0)),
        # shard_size is an option of `longcap shards`, not of a build (one shard per input shard)
        (
            "assemble: unknown field(s) ['shard_size']",
            lambda c: c.update(assemble={"shard_size": 3}),
        ),
        ("ingest.url_col 'nope'", lambda c: c["ingest"].update(url_col="nope")),
        # a recaptioned model must not silently replace the list's longLLA_captions
        ("models: name(s) ['llava-1.5']", lambda c: c["models"][0].update(name="llava-1.5")),
    ]
    for field, change in cases:
        cfg = json.loads(json.dumps(base))
        change(cfg)
        path = tmp_path / "build.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert main(["--config", str(path)]) == 2, field
        err = capsys.readouterr().err
        assert field in err, (field, err)
        assert "build: error:" in err
    # The URL list is checked before anything starts: no Ray, nothing written.
    assert ray.is_initialized() == ray_before
    assert not (tmp_path / "out" / "ingest" / "urls.parquet").exists()


@pytest.mark.slow
def test_chaos_kill_at_three_moments(reference_build, url_list, tiny_models, build_env, tmp_path):
    ref_cfg, ref_out, ref_rc, ref_log = reference_build
    assert ref_rc == 0, _tail(ref_log)
    out = tmp_path / "out_chaos"
    cfg = _write_config(tmp_path / "build.yaml", url_list, out, tiny_models)
    log = tmp_path / "chaos.log"

    def count(pattern: str) -> int:
        return len(list(out.glob(pattern)))

    # Each moment: (name, files whose first new one marks it, how many there are at the end).
    moments = [
        ("ingest", "ingest/shards/*_stats.json", N_SHARDS),
        ("recaption", "recaption/captions/*/*.parquet", N_SHARDS * len(TINY)),
        ("assembly", "shards/[0-9]*_stats.json", N_SHARDS),
    ]
    hit: dict[str, dict] = {}
    for name, pattern, total in moments:
        start = count(pattern)
        if start >= total:
            continue  # the stage finished in an earlier run: this moment cannot be hit now
        proc = _start(cfg, build_env, log)
        t0 = time.time()
        try:
            while proc.poll() is None and time.time() - t0 < RUN_TIMEOUT:
                n = count(pattern)
                if start < n < total:
                    os.killpg(proc.pid, signal.SIGKILL)
                    hit[name] = {"files": n, "of": total, "after_s": round(time.time() - t0, 1)}
                    break
                time.sleep(0.02)
        finally:
            lingering = _end_session(proc)
        assert not lingering, f"after the kill at {name}, processes lingered: {lingering}"
        if name not in hit:
            assert proc.returncode == 0, _tail(log)
    print(f"chaos moments hit: {hit}")
    assert "ingest" in hit, f"moments hit: {hit}"
    assert "recaption" in hit or "assembly" in hit, f"moments hit: {hit}"

    rc = _run_to_end(cfg, build_env, log)
    assert rc == 0, _tail(log)
    _check_report(out)
    got, want = _comparable(out), _comparable(ref_out)
    assert sorted(got) == sorted(want)
    for shard in want:
        assert got[shard] == want[shard], shard
    keys = [k for rows in got.values() for k, *_ in rows]
    assert len(keys) == len(set(keys)) == len(_url_rows(url_list))
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


@pytest.mark.slow
def test_build_as_a_ray_job(reference_build, url_list, tiny_models, ray_head, tmp_path):
    """`ray job submit ... -- python -m pipeline.build` against a head on 127.0.0.1 gives the
    same dataset as the local build."""
    _, ref_out, ref_rc, ref_log = reference_build
    assert ref_rc == 0, _tail(ref_log)
    out = tmp_path / "out_job"
    cfg = _write_config(tmp_path / "build.yaml", url_list, out, tiny_models)
    repo = Path(__file__).resolve().parents[2]
    cmd = [
        str(Path(sys.executable).parent / "ray"), "job", "submit",
        "--address", ray_head["dashboard"], "--working-dir", str(repo), "--",
        sys.executable, "-m", "pipeline.build", "--config", str(cfg),
    ]  # fmt: skip
    r = subprocess.run(cmd, env=ray_head["env"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "succeeded" in r.stdout.lower()
    _check_report(out)
    assert _comparable(out) == _comparable(ref_out)
