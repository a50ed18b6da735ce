"""Checkpoint files of a run folder: listing, RNG state as plain data, and the one safe loader.

A checkpoint may come from a stranger (a released run folder, a shared `.pt`), and a pickle can
run any code while it loads. Every checkpoint longcap reads therefore goes through
`load_checkpoint_file`, which calls `torch.load(..., weights_only=True)`: only tensors and plain
Python values (dict, list, tuple, str, int, float, bool, None) come back, and a file that needs
anything else is refused with `UnsafeCheckpointError`, naming the file. For that to hold for our
own checkpoints, the RNG states are saved as tensors and plain values (`rng_state`), never as the
NumPy arrays and tuples the libraries hand out.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

STEP_GLOB = "step_*.pt"


class UnsafeCheckpointError(ValueError):
    """A checkpoint that does not load as tensors and plain values (or does not load at all)."""


def checkpoint_dir(run: str | Path) -> Path:
    return Path(run) / "checkpoints"


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
    p = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_rng_globals()):
            ck = torch.load(p, map_location=device, weights_only=True)
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
