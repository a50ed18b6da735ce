"""`longcap submit`: run a longcap command on a Ray cluster as a Ray job, with this checkout's
interpreter.

`ray job submit ... -- python -m pipeline.recaption --config run.yaml` runs `python` as the
head's shell finds it: the system interpreter unless the virtual environment is activated, and
that one lacks the project's packages (`No module named 'pyarrow'`). `longcap submit` builds
the same submission with the interpreter that runs it (the project's `.venv/bin/python`, or
`--python`) named in the job's entrypoint, the `ray` next to it, and the working folder
uploaded as the job's working_dir, so that

    .venv/bin/longcap submit --address http://HEAD:8265 -- recaption --config run.yaml

works from a fresh clone after `make setup`, activated or not. The entrypoint is
`<python> -m pipeline.cli <command...>`: any longcap command runs as a job (recaption, build,
stats, ...). It waits for the job and streams its log as `ray job submit` does (exit 1 when the
job failed); `--no-wait` returns once the job is accepted.

The interpreter path must exist on the head node (the job's driver runs there); Ray's workers
run with the interpreter their node's `ray start` used. On a real cluster every node has the
checkout and its .venv at the same path (or an image with the packages) and is started with
`.venv/bin/ray start`: docs/SCALING.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def submit_command(
    command: list[str],
    address: str,
    working_dir: str = ".",
    python: str | None = None,
    no_wait: bool = False,
    env_vars: dict[str, str] | None = None,
) -> list[str]:
    """The `ray job submit` command line that runs `longcap <command...>` on the cluster at
    `address` (the dashboard, http://HEAD:8265)."""
    python = python or sys.executable
    ray_bin = Path(sys.executable).parent / "ray"
    # The checkout's own environment and history never travel (Ray uploads at most 500 MiB).
    runtime_env: dict = {"working_dir": working_dir, "excludes": [".venv", ".git"]}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    return [
        str(ray_bin), "job", "submit", "--address", address,
        "--runtime-env-json", json.dumps(runtime_env),
        *(["--no-wait"] if no_wait else []),
        "--", python, "-m", "pipeline.cli", *command,
    ]  # fmt: skip


def _cmd_submit(args: argparse.Namespace) -> int:
    command = list(args.job)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print(
            "longcap submit: error: name the longcap command after --, e.g. "
            "longcap submit --address http://HEAD:8265 -- recaption --config run.yaml",
            file=sys.stderr,
        )
        return 2
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        print(
            "longcap submit: error: --address http://HEAD:8265 (the head's dashboard) or "
            "RAY_ADDRESS is required",
            file=sys.stderr,
        )
        return 2
    if not Path(args.working_dir).is_dir():
        print(
            f"longcap submit: error: --working-dir {args.working_dir}: no such folder",
            file=sys.stderr,
        )
        return 2
    env = dict(kv.split("=", 1) for kv in args.env) if args.env else None
    cmd = submit_command(command, address, args.working_dir, args.python, args.no_wait, env)
    print("longcap submit:", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def add_submit_command(sub) -> None:
    """`longcap submit` on the CLI's subcommands."""
    p = sub.add_parser(
        "submit",
        help="run a longcap command on a Ray cluster as a job, with this checkout's interpreter",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--address", default=None, help="the head's dashboard, http://HEAD:8265 (or RAY_ADDRESS)"
    )
    p.add_argument(
        "--working-dir",
        default=".",
        help="folder uploaded as the job's working directory (default: here; .gitignore'd "
        "files are left out)",
    )
    p.add_argument(
        "--python",
        default=None,
        help="the interpreter on the head node (default: the one running longcap)",
    )
    p.add_argument("--env", action="append", metavar="NAME=VALUE", help="job environment")
    p.add_argument("--no-wait", action="store_true", help="return once the job is accepted")
    p.add_argument("job", nargs=argparse.REMAINDER, help="-- longcap command and its arguments")
    p.set_defaults(func=_cmd_submit)
