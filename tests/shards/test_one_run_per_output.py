"""One run per output, durable completion marks, fingerprints and tar-only resume (issue 10,
findings 5, 9 and 10), met as a user meets them: through `longcap`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from shards import assemble as A
from shards import readers
from shards.runlock import LOCK_NAME, lock_output, unlock_output

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of a folder, as a running `longcap` run does; yields a
    function folder -> that process."""
    procs = []

    def hold(folder: Path) -> subprocess.Popen:
        code = (
            "import sys; from shards.runlock import lock_output; "
            f"lock_output({str(folder)!r}, 'longcap shards'); print('locked', flush=True); "
            "sys.stdin.read()"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield hold
    for proc in procs:
        proc.stdin.close()  # the holder exits, and the kernel drops its lock
        proc.wait(timeout=30)


def _shard_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)


# --- one run per output --------------------------------------------------------------------


def test_second_shards_run_exits_2_naming_the_holder(tmp_path, sample_manifest, holder, capsys):
    out = tmp_path / "out"
    proc = holder(out)
    assert main(["shards", "--input", str(sample_manifest), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"pid {proc.pid}" in err and "in use by another run" in err
    assert _shard_files(out) == []  # nothing written, nothing deleted
    proc.stdin.close()
    proc.wait(timeout=30)
    # The holder is gone: its lock went with it.
    assert main(["shards", "--input", str(sample_manifest), "--out", str(out)]) == 0


def test_second_build_exits_2_before_img2dataset(tmp_path, holder, monkeypatch, capsys):
    import pipeline.build as B

    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a\n")
    (tmp_path / "model").mkdir()
    out = tmp_path / "out"
    cfg = {
        "output": str(out),
        "ingest": {"url_list": str(urls)},
        "models": [{"name": "m", "family": "llava-1.5", "path": str(tmp_path / "model")}],
    }
    (tmp_path / "build.yaml").write_text(yaml.safe_dump(cfg))

    def no_second_img2dataset(*a, **k):
        raise AssertionError("a second build started img2dataset")

    monkeypatch.setattr(B, "start_ingest", no_second_img2dataset)
    proc = holder(out)
    assert main(["build", "--config", str(tmp_path / "build.yaml")]) == 2
    assert f"pid {proc.pid}" in capsys.readouterr().err
    assert not (out / "ingest").exists()


def test_second_recaption_exits_2(tmp_path, holder, capsys):
    from tests.recaption.conftest import make_input_shards

    inp = make_input_shards(tmp_path / "in", shards=1, per_shard=2)
    (tmp_path / "model").mkdir()
    out = tmp_path / "rc"
    cfg = {
        "input": str(inp),
        "output": str(out),
        "models": [{"name": "m", "family": "llava-1.5", "path": str(tmp_path / "model")}],
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    proc = holder(out)
    assert main(["recaption", "--config", str(tmp_path / "run.yaml")]) == 2
    assert f"pid {proc.pid}" in capsys.readouterr().err
    assert not (out / "captions").exists()


def test_second_train_into_a_held_run_folder_exits_2(tmp_path, built_shards, holder, capsys):
    run = tmp_path / "run"
    proc = holder(run)
    args = ["train", "--shards", str(built_shards), "--out", str(run), "--steps", "1"]
    assert main(args) == 2
    assert f"pid {proc.pid}" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]


def test_the_lock_is_reentrant_in_one_process_and_released(tmp_path):
    lock_output(tmp_path, "a build")
    lock_output(tmp_path, "its recaption stage")  # the same process: no conflict
    unlock_output(tmp_path)
    probe = [
        sys.executable,
        "-c",
        f"from shards.runlock import lock_output; lock_output({str(tmp_path)!r}, 'probe')",
    ]
    assert subprocess.run(probe, cwd=REPO, capture_output=True).returncode != 0  # still held
    unlock_output(tmp_path)
    assert subprocess.run(probe, cwd=REPO, capture_output=True).returncode == 0


def test_a_run_removes_only_its_own_and_dead_runs_temps(tmp_path, sample_manifest, holder):
    out = tmp_path / "out"
    out.mkdir()
    live = holder(tmp_path / "elsewhere")  # a live process, writing its temps here
    dead_tmp = out / "00000.parquet.999999999-deadbeef.tmp"  # pid beyond pid_max: gone
    live_tmp = out / f"00001.tar.{live.pid}-0123abcd.tmp"
    foreign = out / "notes.tmp"  # not a longcap temp: not ours to judge
    for p in (dead_tmp, live_tmp, foreign):
        p.write_bytes(b"partial")
    assert main(["shards", "--input", str(sample_manifest), "--out", str(out)]) == 0
    assert not dead_tmp.exists() and live_tmp.exists() and foreign.exists()
    assert not [p for p in out.glob("*.tmp") if p not in (live_tmp, foreign)]


# --- durability --------------------------------------------------------------------------------


def test_data_and_folder_are_fsynced_before_the_completion_mark(tmp_path, monkeypatch):
    from shards import schema as S
    from shards import writer as W
    from tests.shards.helpers import jpeg_bytes

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(W.os, "fsync", fsync)
    monkeypatch.setattr(W.os, "replace", replace)
    with W.ShardWriter(tmp_path) as w:
        w.write(S.Sample(key="a", status="ok", caption="c", image=jpeg_bytes()))
    names = [(kind, Path(p).name if kind == "fsync" else p) for kind, p in events]
    mark = names.index(("rename", "00000_stats.json"))
    for data in ("00000.parquet", "00000.tar"):
        renamed = names.index(("rename", data))
        assert any(k == "fsync" and n.startswith(data + ".") for k, n in names[:renamed])
    # the folder itself, after the data renames and before the mark's rename
    last_data = max(names.index(("rename", d)) for d in ("00000.parquet", "00000.tar"))
    assert ("fsync", tmp_path.name) in names[last_data:mark]
    assert names[-1] == ("fsync", tmp_path.name)  # and after the mark


# --- fingerprints ------------------------------------------------------------------------------


def test_rerun_with_another_config_stops_and_force_rebuild_redoes(
    tmp_path, sample_manifest, capsys
):
    out = tmp_path / "out"
    base = ["shards", "--input", str(sample_manifest), "--out", str(out), "--shard-size", "10"]
    assert main(base) == 0
    first = json.loads((out / "00000_stats.json").read_text())
    assert first["made_from"]["config"]["split_engine"] == "rules" and first["fingerprint"]
    capsys.readouterr()
    assert main(base) == 0  # same config, same input: every shard reused
    assert "3 shards were already complete" in capsys.readouterr().out

    assert main([*base, "--split-engine", "regex"]) == 2
    err = capsys.readouterr().err
    assert "config.split_engine: was 'rules', now 'regex'" in err and "--force-rebuild" in err
    assert json.loads((out / "00000_stats.json").read_text()) == first  # left as it was

    assert main([*base, "--split-engine", "regex", "--force-rebuild"]) == 0
    redone = json.loads((out / "00000_stats.json").read_text())
    assert redone["made_from"]["config"]["split_engine"] == "regex"
    assert redone["fingerprint"] != first["fingerprint"]
    assert main([*base, "--split-engine", "regex"]) == 0  # and now it resumes under the new one


def test_rerun_after_the_input_changed_stops(tmp_path, sample_manifest, capsys):
    out = tmp_path / "out"
    args = ["shards", "--input", str(sample_manifest), "--out", str(out)]
    assert main(args) == 0
    rows = sample_manifest.read_text().splitlines()
    sample_manifest.write_text("\n".join(rows[:-1]) + "\n")  # the caption file was re-released
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "input.size: was" in err and "made from another config or input" in err


def test_build_unit_checks_its_fingerprint(tmp_path):
    from tests.recaption.conftest import make_input_shards

    inp = make_input_shards(tmp_path / "in", shards=1, per_shard=3)
    out = tmp_path / "out"
    first = A.assemble_shard(inp, "00000", out)
    assert A.assemble_shard(inp, "00000", out) == first  # reused
    with pytest.raises(A.FingerprintMismatch, match="config.verify_images: was True, now False"):
        A.assemble_shard(inp, "00000", out, A.AssembleConfig(verify_images=False))
    redone = A.assemble_shard(inp, "00000", out, A.AssembleConfig(verify_images=False), True)
    assert redone["made_from"]["config"]["verify_images"] is False


# --- tar-only outputs resume -------------------------------------------------------------------


def _with_duplicate_of_a_failed_key(manifest: Path) -> Path:
    """Row 2 (a missing image) fails; row 12 has its key and a good image: a duplicate, refused
    in an uninterrupted run, which a resumed run must refuse too."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[2] = {**rows[2], "key": "twice", "image_path": "images/nope.jpg"}
    rows[12] = {**rows[12], "key": "twice"}
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def test_tar_only_output_resumes_after_a_kill(tmp_path, sample_manifest, monkeypatch, capsys):
    manifest = _with_duplicate_of_a_failed_key(sample_manifest)
    args = ["--input", str(manifest), "--shard-size", "5", "--formats", "tar"]
    ref = tmp_path / "ref"
    assert main(["shards", *args, "--out", str(ref)]) == 0

    real = readers.read_input

    def dying(path, *args, **kwargs):
        for i, s in enumerate(real(path, *args, **kwargs)):
            if i == 13:
                raise KeyboardInterrupt("SIGINT in the middle of shard 00002")
            yield s

    out = tmp_path / "out"
    monkeypatch.setattr(A, "read_input", dying)
    # Small batches, so that two shards are written before the kill (batch_size is not part of
    # the fingerprint: the CLI's rerun below resumes this run).
    cfg = A.AssembleConfig(shard_size=5, formats=["tar"], batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        A.assemble(manifest, out, cfg)
    assert _shard_files(out) == [f"0000{i}{e}" for i in range(2) for e in (".tar", "_stats.json")]
    monkeypatch.setattr(A, "read_input", real)
    capsys.readouterr()
    assert main(["shards", *args, "--out", str(out)]) == 0
    assert "resumed: 2 shards were already complete" in capsys.readouterr().out
    assert _shard_files(out) == _shard_files(ref)
    for name in _shard_files(ref):
        if name.endswith(".tar"):
            assert (out / name).read_bytes() == (ref / name).read_bytes(), name
        else:
            assert json.loads((out / name).read_text()) == json.loads((ref / name).read_text())
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    assert sum(s["failures"].get("duplicate_key", 0) for s in stats) == 1
    with tarfile.open(out / "00002.tar") as tar:
        assert not any(n.startswith("twice") for n in tar.getnames())


def test_recaption_unit_checks_its_fingerprint(tmp_path):
    """A caption unit records the model config and input shard it was made from; a rerun with
    another max_tokens, or after the input shard changed, stops unless told to rebuild."""
    from pipeline.recaption_config import ModelConfig
    from recaption.units import unit_done, unit_path, unit_record, write_unit
    from shards.fingerprint import FingerprintMismatch
    from shards.fingerprint import shard_files_identity as input_files
    from tests.recaption.conftest import make_input_shards

    inp = make_input_shards(tmp_path / "in", shards=1, per_shard=2)
    model = ModelConfig(name="m", family="llava-1.5", path="/models/m", max_tokens=64)
    path = unit_path(tmp_path / "rc", "m", "00000")
    record = unit_record(model, input_files(inp, "00000"))
    assert not unit_done(path, record)
    write_unit(path, [{"key": "a", "status": "ok", "model": "m", "text": "x"}], record)
    assert unit_done(path, record)
    # Scheduling fields are not part of it: more replicas reuse the unit.
    more = ModelConfig(name="m", family="llava-1.5", path="/models/m", max_tokens=64, replicas=4)
    assert unit_done(path, unit_record(more, input_files(inp, "00000")))
    longer = ModelConfig(name="m", family="llava-1.5", path="/models/m", max_tokens=256)
    changed = unit_record(longer, input_files(inp, "00000"))
    with pytest.raises(FingerprintMismatch, match="config.max_tokens: was 64, now 256"):
        unit_done(path, changed)
    tar = inp / "00000.tar"
    os.utime(tar, ns=(tar.stat().st_atime_ns, tar.stat().st_mtime_ns + 10**9))
    with pytest.raises(FingerprintMismatch, match="input.00000.tar.mtime_ns"):
        unit_done(path, unit_record(model, input_files(inp, "00000")))
    assert not unit_done(path, changed, force_rebuild=True) and not path.exists()


def test_build_with_another_assemble_config_stops_before_img2dataset(tmp_path, monkeypatch, capsys):
    import pipeline.build as B
    from tests.recaption.conftest import make_input_shards

    out = tmp_path.resolve() / "out"
    make_input_shards(out / "ingest" / "shards", shards=1, per_shard=2)
    (out / "recaption" / "captions" / "m").mkdir(parents=True)
    earlier = A.AssembleConfig(captions=str(out / "recaption"))  # as a build with defaults
    A.assemble_shard(out / "ingest" / "shards", "00000", out / "shards", earlier)
    urls = tmp_path / "urls.csv"
    # Two URLs, one per shard: shard 00001 is not downloaded yet, so the build would start
    # img2dataset (replaced below by a function that stops the test there).
    urls.write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a\nhttp://127.0.0.1:9/b.jpg,b\n")
    (tmp_path / "model").mkdir()
    cfg = {
        "output": str(out),
        # Listed, or the URL policy refuses both rows before img2dataset could start.
        "ingest": {
            "url_list": str(urls),
            "number_sample_per_shard": 1,
            "allowed_networks": ["127.0.0.1/32"],
        },
        "models": [{"name": "m", "family": "llava-1.5", "path": str(tmp_path / "model")}],
        "assemble": {"split_engine": "regex"},
    }
    (tmp_path / "build.yaml").write_text(yaml.safe_dump(cfg))

    class Started(Exception):
        pass

    def start_ingest(*a, **k):
        raise Started

    monkeypatch.setattr(B, "start_ingest", start_ingest)
    build = ["build", "--config", str(tmp_path / "build.yaml")]
    assert main(build) == 2
    assert "config.split_engine: was 'rules', now 'regex'" in capsys.readouterr().err
    assert (out / "shards" / "00000_stats.json").exists()
    # --force-rebuild: the stale shard goes and the build goes on, up to img2dataset's start
    # (the stand-in raises; the build reports that as a crash, exit 3).
    assert main([*build, "--force-rebuild"]) == 3
    assert "Started" in capsys.readouterr().err
    assert not (out / "shards" / "00000_stats.json").exists()


def test_shards_made_before_fingerprints_are_reused_with_a_warning(
    tmp_path, sample_manifest, capsys, caplog
):
    out = tmp_path / "out"
    args = ["shards", "--input", str(sample_manifest), "--out", str(out), "--shard-size", "10"]
    assert main(args) == 0
    for mark in out.glob("*_stats.json"):  # as the previous version wrote them
        stats = json.loads(mark.read_text())
        del stats["made_from"], stats["fingerprint"]
        mark.write_text(json.dumps(stats))
    capsys.readouterr()
    assert main(args) == 0
    assert "3 shards were already complete" in capsys.readouterr().out
    assert "made before fingerprints were recorded" in caplog.text
