"""Checkpoint files of a run folder: listing, RNG state as plain data, and the one safe loader.

A checkpoint may come from a stranger (a released run folder, a shared `.pt`), and a pickle can
run any code while it loads. Every checkpoint longcap reads therefore goes through
`load_checkpoint_file`, which calls `torch.load(..., weights_only=True)`: only tensors and plain
Python values (dict, list, tuple, str, int, float, bool, None) come back, and a file that needs
anything else is refused with `UnsafeCheckpointError`, naming the file. For that to hold for our
own checkpoints, the RNG states are saved as tensors and plain values (`rng_state`), never as the
NumPy arrays and tuples the libraries hand out.

A run folder may be an object-store URI (`--out s3://bucket/runs/r1`). Object stores take no
appends or renames, so the run works in a local mirror (`mirror_folder`): `pull_run` fills it
from the bucket (on --resume) and `push_run` uploads after every checkpoint, the checkpoint
first (one whole object, so it is never partial), then config.json, log.jsonl and the key logs.
A checkpoint is read straight from the bucket (`load_checkpoint_file`, still weights_only).
"""

from __future__ import annotations

import io
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shards import storage

STEP_GLOB = "step_*.pt"


class UnsafeCheckpointError(ValueError):
    """A checkpoint that does not load as tensors and plain values (or does not load at all)."""


def checkpoint_dir(run: str | Path) -> storage.AnyPath:
    return storage.as_path(run) / "checkpoints"


def list_checkpoints(run: str | Path) -> list[Path]:
    """A run folder's checkpoints, oldest first (the step is zero-padded in the name)."""
    return sorted(checkpoint_dir(run).glob(STEP_GLOB))


def latest_checkpoint(run: str | Path) -> Path | None:
    """The newest checkpoint of a run folder, or None."""
    found = list_checkpoints(run)
    return found[-1] if found else None


def _numpy_rng_globals() -> list[Any]:
    """What a NumPy RNG state array needs to unpickle: longcap before the hardening saved
    `np.random.get_state()` as it comes. Building an array of numbers runs no user code, so
    these (and only these) are allowed, and such a run folder still resumes."""
    from numpy._core.multiarray import _reconstruct  # numpy >= 2

    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint_file(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """`torch.load(path, weights_only=True)`; raises UnsafeCheckpointError naming the file when
    it holds anything but tensors and plain values, or is not a readable checkpoint."""
    p = storage.as_path(path)
    try:
        # An object is read whole into memory; torch.load needs a seekable file.
        source = p if isinstance(p, Path) else io.BytesIO(p.read_bytes())
        with torch.serialization.safe_globals(_numpy_rng_globals()):
            ck = torch.load(source, map_location=device, weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError (truncated zip), EOFError
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "Unsupported global" in ln), first[0] if first else "")
        # Not torch's hint to allowlist the global: that is exactly what must not be done.
        detail = detail.split(". Please use")[0].replace("WeightsUnpickler error: ", "").strip()
        raise UnsafeCheckpointError(
            f"{p}: refused: not a checkpoint of tensors and plain values "
            f"({type(exc).__name__}: {detail[:300]}). longcap loads checkpoints with "
            "torch.load(weights_only=True) because a pickle can run code; a file that needs "
            "more may be planted or damaged. Use a checkpoint written by `longcap train` (see "
            "docs/SECURITY.md, Checkpoints and model folders)"
        ) from None
    if not isinstance(ck, dict) or "model" not in ck or "model_config" not in ck:
        raise UnsafeCheckpointError(f"{p}: not a longcap checkpoint (no model / model_config)")
    return ck


def load_latest_loadable(run: str | Path, device: str | torch.device = "cpu"):
    """(path, checkpoint) of the newest checkpoint of `run` that loads, newest first; a newer one
    that is refused (torn by a crash mid-write, or planted) is skipped with a warning. (None,
    None) when the folder has none; UnsafeCheckpointError when none of them loads."""
    found = list_checkpoints(run)
    errors = []
    for path in reversed(found):
        try:
            ck = load_checkpoint_file(path, device)
        except UnsafeCheckpointError as exc:
            errors.append(str(exc))
            print(f"resume: warning: {exc}; trying the previous checkpoint", file=sys.stderr)
            continue
        return path, ck
    if errors:
        raise UnsafeCheckpointError(
            f"{checkpoint_dir(run)}: no checkpoint loads safely:\n  " + "\n  ".join(errors)
        )
    return None, None


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values (loadable with weights_only)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved (or the tuples and arrays older checkpoints hold)."""
    torch.set_rng_state(state["torch"].cpu())
    py = state["python"]
    if isinstance(py, dict):
        py = (py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"])
    random.setstate(py)
    nps = state["numpy"]
    if isinstance(nps, dict):
        keys = nps["keys"].numpy().astype(np.uint32)
        nps = (nps["name"], keys, nps["pos"], nps["has_gauss"], nps["cached_gaussian"])
    np.random.set_state(nps)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class RemoteRunError(ValueError):
    """A run URI that holds another run's files, without --resume or --overwrite."""


# What a run folder holds (train.RUN_FILES), as object names under the run's prefix.
_RUN_OBJECTS = ("config.json", "log.jsonl", "keys_rank*.jsonl", "checkpoints/step_*.pt")


def mirror_folder(remote: str) -> Path:
    """The local working copy of a run whose folder is a URI (under LONGCAP_STAGING_DIR, else the
    system temp folder; one per URI, so that a resumed run on this machine finds it)."""
    return storage.mirror_dir(remote, "run")


def _run_objects(remote: str) -> dict[str, storage.ObjectPath]:
    """{name relative to the run prefix: object} of everything under it but dot objects (the
    lock)."""
    root = storage.as_path(remote)
    found = {}
    for p in storage.list_files(root, recursive=True):
        rel = p.path[len(root.path) + 1 :]
        if not rel.startswith("."):
            found[rel] = p
    return found


def pull_run(remote: str, resume: bool, overwrite: bool) -> Path:
    """Prepare the local mirror of run URI `remote` and return it: emptied, then on `resume`
    filled with the run's files from the bucket. A prefix that holds files refuses a fresh run
    unless `overwrite`, which deletes the earlier run's objects (others are refused)."""
    import fnmatch

    if resume and overwrite:
        raise RemoteRunError("--resume and --overwrite exclude each other: choose one")
    objects = _run_objects(remote)
    ours = {r for r in objects if any(fnmatch.fnmatch(r, g) for g in _RUN_OBJECTS)}
    if objects and not resume:
        others = sorted(set(objects) - ours)
        if not overwrite or others:
            raise RemoteRunError(
                f"{remote} is not empty ({', '.join(sorted(objects)[:5])}): "
                + (
                    f"it holds objects that are not a longcap run's ({', '.join(others[:5])}); "
                    "choose a new --out prefix"
                    if overwrite
                    else "add --resume to continue that run, --overwrite to replace it, or "
                    "choose a new --out prefix"
                )
            )
        for rel in sorted(ours, key=lambda r: not r.startswith("checkpoints/")):
            objects[rel].unlink(missing_ok=True)
        print(f"--overwrite: removed {len(ours)} objects of the run in {remote}")
    local = mirror_folder(remote)
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    if resume:
        for rel in sorted(ours):
            storage.download(objects[rel], local / rel)
    return local


def push_run(local: str | Path, remote: str) -> None:
    """Upload a run's new checkpoints (each a whole object), then its config, log and key logs,
    then delete the checkpoints the local folder no longer keeps (keep_checkpoints)."""
    local = Path(local)
    root = storage.as_path(remote)
    have = {p.name for p in storage.list_files(root / "checkpoints", STEP_GLOB)}
    kept = sorted((local / "checkpoints").glob(STEP_GLOB))
    for ck in kept:
        if ck.name not in have:
            storage.upload(ck, root / "checkpoints" / ck.name)
    for f in [local / "config.json", local / "log.jsonl", *sorted(local.glob("keys_rank*.jsonl"))]:
        if f.is_file():
            storage.upload(f, root / f.name)
    for name in sorted(have - {ck.name for ck in kept}):
        (root / "checkpoints" / name).unlink(missing_ok=True)
