"""Captioning through an OpenAI-compatible chat-completions endpoint (`engine: openai`).

For users who already run a server: `vllm serve`, SGLang, or a hosted endpoint. One request per
image: the user prompt (`choose_prompt`, as every engine draws it) and the image as a JPEG data
URL in one user message; the server applies the model's chat template. Each request carries the
key's seed (`key_seed`), so a server that honours `seed` gives a rerun the same text.

Requests run `concurrency` at a time. A request that fails with 408, 429, a 5xx status, a
connection error, a timeout or a body that is not a chat completion is sent again, at most
`request_retries` times, after an exponential backoff (`retry_backoff_s`, doubled each time,
jittered) or the server's `Retry-After`, whichever is longer. When a request has used its retries,
or the server refuses it outright (another 4xx: a bad key, an unknown model), `generate` raises
`EndpointError`: the unit fails and a rerun captions it again; no partial unit is written.

The API key is read from the environment variable that `api_key_env` names, in the process that
runs the engine (the Ray actor), never from the config file (docs/SECURITY.md).
"""

from __future__ import annotations

import base64
import io
import logging
import os
import random
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from email.utils import parsedate_to_datetime
from typing import Any

from recaption.engine import Generation, choose_prompt, key_seed
from recaption.families import get_family

log = logging.getLogger(__name__)

# Statuses worth sending again: the server is busy, overloaded or restarting.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# A longer Retry-After is cut to this: one request must not hold its unit for an hour.
MAX_RETRY_WAIT_S = 300.0
JPEG_QUALITY = 95


class EndpointError(RuntimeError):
    """The endpoint could not caption an image: retries used up, or a request refused."""


class _Abandoned(EndpointError):
    """A request given up because another one of its batch failed (the unit fails anyway)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key {key}: abandoned, another request of the batch failed")


class _Retryable(Exception):
    """One attempt failed in a way another attempt may not (status, connection, bad body)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def image_data_url(image: Any) -> str:
    """A PIL image or HxWx3 uint8 array as a `data:image/jpeg;base64,...` URL."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date), None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def backoff_seconds(base: float, attempt: int, key: str) -> float:
    """Wait before retry `attempt` (1, 2, ...): base * 2**(attempt-1), times a jitter in
    [0.5, 1.5) drawn from (key, attempt) so that requests failing together spread out."""
    jitter = 0.5 + random.Random(f"{key}:{attempt}").random()
    return min(base * 2 ** (attempt - 1) * jitter, MAX_RETRY_WAIT_S)


def api_key_from_env(model_cfg: Any) -> str | None:
    """The API key from the variable `api_key_env` names; None when no variable is named."""
    name = getattr(model_cfg, "api_key_env", None)
    if not name:
        return None
    key = os.environ.get(name, "")
    if not key:
        raise EndpointError(
            f"model {model_cfg.name!r}: api_key_env names the environment variable {name!r}, "
            "which is not set (or empty) where the engine runs; export it before starting the "
            "job (on a cluster: on every node, or in the job's runtime_env)"
        )
    return key


class OpenAIEngine:
    """An OpenAI-compatible endpoint for one model config (`ModelConfig`, `engine: openai`)."""

    def __init__(self, model_cfg: Any) -> None:
        try:
            import httpx
        except ImportError as exc:
            raise ImportError("engine openai needs httpx: `pip install longcap[openai]`") from exc

        t0 = time.perf_counter()
        self.cfg = model_cfg
        self.family = get_family(model_cfg.family)  # fixes the image size (decode_shard)
        if not getattr(model_cfg, "base_url", None):
            raise EndpointError(f"model {model_cfg.name!r}: engine openai needs `base_url`")
        self.url = model_cfg.base_url.rstrip("/") + "/chat/completions"
        self.model = model_cfg.served_model or model_cfg.path
        headers = {"Content-Type": "application/json"}
        key = api_key_from_env(model_cfg)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.concurrency = int(model_cfg.concurrency)
        self.client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(model_cfg.request_timeout_s),
            limits=httpx.Limits(
                max_connections=self.concurrency, max_keepalive_connections=self.concurrency
            ),
        )
        self.retries_done = 0  # retries since the engine started (all units)
        self._lock = threading.Lock()
        self.load_seconds = time.perf_counter() - t0

    def body(self, key: str, prompt: str, image: Any) -> dict[str, Any]:
        """The chat-completions request of one image."""
        cfg = self.cfg
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                        {"type": "text", "text": prompt},
                    ],
                }
            ],
            "max_tokens": cfg.max_tokens,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "seed": key_seed(cfg.seed, key),
            "n": 1,
        }
        if self.family.stop:
            body["stop"] = list(self.family.stop)
        # Extra request fields the endpoint understands (e.g. vLLM's top_k, repetition_penalty).
        body.update(cfg.engine_kwargs)
        return body

    def generate(self, keys: list[str], images: list[Any]) -> list[Generation]:
        """Caption images of the given keys, in order; raises EndpointError if any fails."""
        if len(keys) != len(images):
            raise ValueError(f"{len(keys)} keys but {len(images)} images")
        prompts = [choose_prompt(self.cfg.prompts, self.cfg.seed, k) for k in keys]
        stop = threading.Event()  # set on the first failure: the others stop retrying
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="longcap-openai") as pool:
            futures = [
                pool.submit(self._caption_or_stop, k, p, img, stop)
                for k, p, img in zip(keys, prompts, images, strict=True)
            ]
            wait(futures, return_when=FIRST_EXCEPTION)
            # The first real failure (not one abandoned because of it), in batch order.
            failed = [f for f in futures if f.done() and not f.cancelled() and f.exception()]
            failed.sort(key=lambda f: isinstance(f.exception(), _Abandoned))
            if failed:
                # The unit fails as a whole: the other requests of the batch stop now.
                pool.shutdown(wait=True, cancel_futures=True)
                raise failed[0].exception()
        return [f.result() for f in futures]

    def _caption_or_stop(self, key: str, prompt: str, image: Any, stop: threading.Event):
        try:
            return self._caption(key, prompt, image, stop)
        except BaseException:
            stop.set()  # at once, before this thread takes the next image of the batch
            raise

    def _caption(self, key: str, prompt: str, image: Any, stop: threading.Event) -> Generation:
        """One image, with retries; returns its Generation or raises EndpointError."""
        cfg = self.cfg
        body = self.body(key, prompt, image)
        attempts = cfg.request_retries + 1
        for attempt in range(1, attempts + 1):
            if stop.is_set():
                raise _Abandoned(key)
            try:
                return self._post(key, prompt, body)
            except _Retryable as exc:
                if attempt == attempts:
                    raise EndpointError(
                        f"model {cfg.name!r}, key {key}: {self.url} failed {attempts} times "
                        f"({cfg.request_retries} retries): {exc}"
                    ) from None
                wait_s = backoff_seconds(cfg.retry_backoff_s, attempt, key)
                if exc.retry_after is not None:
                    wait_s = max(wait_s, min(exc.retry_after, MAX_RETRY_WAIT_S))
                with self._lock:
                    self.retries_done += 1
                    done = self.retries_done
                if done & (done - 1) == 0:
                    # The 1st, 2nd, 4th, 8th... retry only: a server that is down fails every
                    # request of a batch, and one line each would drown the job's output.
                    log.warning(
                        "model %s: %d retries so far; latest: key %s: %s; retry %d/%d in %.2fs",
                        cfg.name, done, key, exc, attempt, cfg.request_retries, wait_s,
                    )  # fmt: skip
                if self._wait(stop, wait_s):
                    raise _Abandoned(key) from None
        raise AssertionError("unreachable")

    def _wait(self, stop: threading.Event, seconds: float) -> bool:
        """Sleep before a retry; True when the batch was abandoned meanwhile."""
        return stop.wait(seconds)

    def _post(self, key: str, prompt: str, body: dict[str, Any]) -> Generation:
        """One attempt: POST, check the status, read the completion and its usage."""
        import httpx

        try:
            resp = self.client.post(self.url, json=body)
        except httpx.TimeoutException as exc:
            raise _Retryable(
                f"no answer within request_timeout_s={self.cfg.request_timeout_s:g}s "
                f"({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection error: {type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            detail = resp.text[:300].replace("\n", " ")
            msg = f"HTTP {resp.status_code}: {detail}"
            if resp.status_code in RETRY_STATUSES:
                raise _Retryable(msg, parse_retry_after(resp.headers.get("retry-after")))
            raise EndpointError(
                f"model {self.cfg.name!r}, key {key}: {self.url} refused the request ({msg}); "
                "check base_url, served_model and the API key"
            )
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            finish = choice.get("finish_reason")
            usage = data.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise _Retryable(
                f"the answer is not a chat completion ({type(exc).__name__}: {exc}): "
                f"{resp.text[:200]!r}"
            ) from None
        return Generation(key, prompt, text, finish, completion_tokens, prompt_tokens)

    def close(self) -> None:
        self.client.close()
