"""The openai engine against a fake OpenAI-compatible server on 127.0.0.1 (fast), and against a
real `vllm serve` (CPU build) with the tiny LLaVA, killed and restarted mid-job (slow)."""

from __future__ import annotations

import base64
import io

import pytest

from pipeline.recaption_config import ConfigError, ModelConfig, parse_config
from recaption.engine import choose_prompt, key_seed
from recaption.engine_openai import (
    EndpointError,
    OpenAIEngine,
    backoff_seconds,
    parse_retry_after,
)
from tests.recaption.fake_endpoint import FakeEndpoint, completion_text

PROMPTS = ["Describe the image in detail.", "What is in this picture?"]
KEYS = [f"0000{i}{i:04d}" for i in range(5)]


def _cfg(base_url: str, **kw) -> ModelConfig:
    fields = {
        "name": "remote",
        "family": "llava-1.5",
        "path": "llava-hf/llava-1.5-7b-hf",
        "prompts": list(PROMPTS),
        "max_tokens": 32,
        "seed": 3,
        "engine": "openai",
        "base_url": base_url,
        "retry_backoff_s": 0.01,
        "request_retries": 2,
        "request_timeout_s": 10.0,
    }
    return ModelConfig(**{**fields, **kw})


def _images(n: int = len(KEYS)):
    import numpy as np

    return [np.full((24, 32, 3), 40 * i % 256, dtype=np.uint8) for i in range(n)]


@pytest.fixture
def endpoint():
    servers = []

    def start(plan=None, hold_until: int = 0) -> FakeEndpoint:
        servers.append(FakeEndpoint(plan, hold_until))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _engine(cfg: ModelConfig, waits: list[float] | None = None) -> OpenAIEngine:
    """An engine whose retry waits are recorded (and not slept) when `waits` is given."""
    engine = OpenAIEngine(cfg)
    if waits is not None:
        engine._wait = lambda stop, seconds: bool(waits.append(seconds))
    return engine


def test_one_request_per_image_in_order_with_usage(endpoint, monkeypatch):
    from PIL import Image

    server = endpoint()
    monkeypatch.setenv("LONGCAP_TEST_KEY", "secret-123")
    cfg = _cfg(server.base_url, served_model="llava-served", api_key_env="LONGCAP_TEST_KEY")
    gens = _engine(cfg).generate(KEYS, _images())
    assert [g.key for g in gens] == KEYS
    assert len(server.requests) == len(KEYS)  # no retries on a healthy server
    by_seed = {r["body"]["seed"]: r for r in server.requests}
    for i, (key, g) in enumerate(zip(KEYS, gens, strict=True)):
        seed = key_seed(3, key)
        req = by_seed[seed]  # each image carries its key's seed
        assert g.prompt == choose_prompt(PROMPTS, 3, key)
        assert g.raw_text == completion_text(seed) and g.finish_reason == "stop"
        assert (g.prompt_tokens, g.generated_tokens) == (100 + seed % 7, 10 + seed % 5)
        assert req["path"] == "/v1/chat/completions"
        assert req["headers"]["Authorization"] == "Bearer secret-123"
        body = req["body"]
        assert body["model"] == "llava-served"
        assert (body["max_tokens"], body["temperature"], body["top_p"]) == (32, 0.2, 1.0)
        assert body["stop"] == ["</s>", "USER:"]  # the family's stop strings
        (message,) = body["messages"]
        assert message["role"] == "user"
        image_part, text_part = message["content"]
        assert text_part == {"type": "text", "text": g.prompt}  # no template: the server's
        url = image_part["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert img.format == "JPEG" and img.size == (32, 24)
        assert abs(img.convert("L").getpixel((5, 5)) - 40 * i) <= 2


def test_served_model_defaults_to_path_and_no_key_no_header(endpoint):
    server = endpoint()
    _engine(_cfg(server.base_url)).generate(KEYS[:1], _images(1))
    (req,) = server.requests
    assert req["body"]["model"] == "llava-hf/llava-1.5-7b-hf"
    assert "Authorization" not in req["headers"]


def test_engine_kwargs_are_extra_request_fields(endpoint):
    server = endpoint()
    cfg = _cfg(server.base_url, engine_kwargs={"top_k": 5, "repetition_penalty": 1.1})
    _engine(cfg).generate(KEYS[:1], _images(1))
    body = server.requests[0]["body"]
    assert (body["top_k"], body["repetition_penalty"]) == (5, 1.1)


def test_missing_api_key_variable_is_a_clear_error(endpoint, monkeypatch):
    server = endpoint()
    monkeypatch.delenv("LONGCAP_NO_SUCH_KEY", raising=False)
    with pytest.raises(EndpointError, match="LONGCAP_NO_SUCH_KEY.*not set"):
        OpenAIEngine(_cfg(server.base_url, api_key_env="LONGCAP_NO_SUCH_KEY"))
    monkeypatch.setenv("LONGCAP_NO_SUCH_KEY", "")
    with pytest.raises(EndpointError, match="LONGCAP_NO_SUCH_KEY"):
        OpenAIEngine(_cfg(server.base_url, api_key_env="LONGCAP_NO_SUCH_KEY"))
    assert server.requests == []


@pytest.mark.parametrize("status", [429, 500, 503])
def test_retries_with_exponential_backoff(endpoint, status):
    # Every image fails twice, then succeeds: two retries each, waits doubling.
    server = endpoint(lambda seed, attempt: ("status", status, {}) if attempt <= 2 else None)
    waits: list[float] = []
    cfg = _cfg(server.base_url, request_retries=2, retry_backoff_s=0.5, concurrency=1)
    engine = _engine(cfg, waits)
    gens = engine.generate(KEYS[:2], _images(2))
    assert [g.key for g in gens] == KEYS[:2]
    assert [g.raw_text for g in gens] == [completion_text(key_seed(3, k)) for k in KEYS[:2]]
    assert len(server.requests) == 6 and engine.retries_done == 4
    expected = [backoff_seconds(0.5, a, k) for k in KEYS[:2] for a in (1, 2)]
    assert waits == expected
    for w1, w2 in zip(waits[::2], waits[1::2], strict=True):
        assert 0.25 <= w1 < 0.75 and 0.5 <= w2 < 1.5  # 0.5 * 2**(n-1), jitter [0.5, 1.5)


def test_retry_after_is_honoured_when_longer(endpoint):
    plan = {
        1: ("status", 429, {"Retry-After": "7"}),
        2: ("status", 503, {"Retry-After": "0"}),
    }
    server = endpoint(lambda seed, attempt: plan.get(attempt))
    waits: list[float] = []
    engine = _engine(_cfg(server.base_url, retry_backoff_s=0.01), waits)
    (gen,) = engine.generate(KEYS[:1], _images(1))
    assert gen.finish_reason == "stop" and len(server.requests) == 3
    # 7 s asked for (longer than the backoff); then 0 s asked for: the backoff wins.
    assert waits == [7.0, backoff_seconds(0.01, 2, KEYS[0])]


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    date = "Sun, 29 Nov 2026 01:00:30 GMT"
    now = 1795914000.0  # 2026-11-29 01:00:00 UTC
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)
    assert parse_retry_after(date, now=now + 60) == 0.0


def test_backoff_is_exponential_deterministic_and_capped():
    for a in range(1, 6):
        w = backoff_seconds(1.0, a, "k")
        assert w == backoff_seconds(1.0, a, "k")
        assert 0.5 * 2 ** (a - 1) <= w < 1.5 * 2 ** (a - 1)
    assert backoff_seconds(1.0, 30, "k") == 300.0
    assert backoff_seconds(0.0, 3, "k") == 0.0


def test_retries_used_up_raise_naming_key_and_attempts(endpoint):
    server = endpoint(lambda seed, attempt: ("status", 500, {}))
    waits: list[float] = []
    engine = _engine(_cfg(server.base_url, request_retries=3), waits)
    with pytest.raises(EndpointError) as info:
        engine.generate(KEYS[:1], _images(1))
    msg = str(info.value)
    assert KEYS[0] in msg and "4 times (3 retries)" in msg and "HTTP 500" in msg
    assert len(server.requests) == 4 and len(waits) == 3


@pytest.mark.parametrize("status", [400, 401, 404])
def test_refused_requests_are_not_retried(endpoint, status):
    server = endpoint(lambda seed, attempt: ("status", status, {}))
    with pytest.raises(EndpointError, match=f"refused the request \\(HTTP {status}"):
        _engine(_cfg(server.base_url, concurrency=1)).generate(KEYS[:3], _images(3))
    assert len(server.requests) == 1  # the first refusal ends the batch


def test_timeout_is_retried_then_fails(endpoint):
    # The first answer of each image comes after the deadline; the second in time.
    server = endpoint(lambda seed, attempt: ("sleep", 3.0) if attempt == 1 else None)
    engine = _engine(_cfg(server.base_url, request_timeout_s=0.5, request_retries=1), [])
    (gen,) = engine.generate(KEYS[:1], _images(1))
    assert gen.raw_text and len(server.requests) == 2
    slow = endpoint(lambda seed, attempt: ("sleep", 3.0))
    engine = _engine(_cfg(slow.base_url, request_timeout_s=0.5, request_retries=1), [])
    with pytest.raises(EndpointError, match="no answer within request_timeout_s=0.5s"):
        engine.generate(KEYS[:1], _images(1))


def test_bad_json_is_retried_then_fails(endpoint):
    server = endpoint(lambda seed, attempt: ("bad_json",) if attempt == 1 else None)
    (gen,) = _engine(_cfg(server.base_url), []).generate(KEYS[:1], _images(1))
    assert gen.raw_text == completion_text(key_seed(3, KEYS[0]))
    bad = endpoint(lambda seed, attempt: ("bad_json",))
    with pytest.raises(EndpointError, match="not a chat completion.*upstream says hello"):
        _engine(_cfg(bad.base_url, request_retries=1), []).generate(KEYS[:1], _images(1))


def test_dropped_connections_and_a_dead_port_are_retried(endpoint):
    server = endpoint(lambda seed, attempt: ("drop",) if attempt <= 2 else None)
    (gen,) = _engine(_cfg(server.base_url), []).generate(KEYS[:1], _images(1))
    assert gen.finish_reason == "stop" and len(server.requests) == 3
    dead = endpoint()
    dead.close()  # nothing listens on its port any more
    waits: list[float] = []
    with pytest.raises(EndpointError, match="3 times.*connection error"):
        _engine(_cfg(dead.base_url), waits).generate(KEYS[:1], _images(1))
    assert len(waits) == 2


def test_concurrency_bounds_requests_in_flight(endpoint):
    # The server holds each request until 3 are in flight: exactly `concurrency` at once.
    server = endpoint(hold_until=3)
    keys = [f"k{i}" for i in range(9)]
    gens = _engine(_cfg(server.base_url, concurrency=3)).generate(keys, _images(9))
    assert [g.key for g in gens] == keys
    assert server.max_in_flight == 3
    one = endpoint()
    _engine(_cfg(one.base_url, concurrency=1)).generate(keys, _images(9))
    assert one.max_in_flight == 1


def test_worker_writes_the_unit_and_sums_usage(endpoint, tmp_path):
    from recaption.actor import EngineWorker
    from recaption.families import get_family
    from recaption.units import decode_shard, read_unit, unit_path
    from tests.recaption.conftest import make_input_shards

    root = make_input_shards(tmp_path / "in", shards=2, per_shard=4)
    decoded = decode_shard(str(root), "00001", get_family("llava-1.5").image_size)
    server = endpoint()
    worker = EngineWorker(_cfg(server.base_url, batch_size=2))
    summary = worker.caption_unit(decoded, str(tmp_path / "out"))
    rows = read_unit(unit_path(tmp_path / "out", "remote", "00001")).to_pylist()
    assert [r["key"] for r in rows] == decoded.order  # every key once, input order
    ok = [r for r in rows if r["status"] == "ok"]
    assert [r["key"] for r in ok] == decoded.keys and len(ok) == 3
    seeds = [key_seed(3, k) for k in decoded.keys]
    assert summary["prompt_tokens"] == sum(100 + s % 7 for s in seeds)
    assert summary["generated_tokens"] == sum(10 + s % 5 for s in seeds)
    assert [r["generated_tokens"] for r in ok] == [10 + s % 5 for s in seeds]

    # An endpoint that fails: the unit raises and no unit file (not even a partial one) exists.
    down = endpoint(lambda seed, attempt: ("status", 503, {}))
    worker = EngineWorker(_cfg(down.base_url, batch_size=2, request_retries=0))
    with pytest.raises(EndpointError):
        worker.caption_unit(decoded, str(tmp_path / "out2"))
    assert not (tmp_path / "out2" / "captions" / "remote").exists() or not any(
        (tmp_path / "out2" / "captions" / "remote").iterdir()
    )


# --- config ----------------------------------------------------------------------------------


def _model(**kw):
    return {"name": "m", "family": "llava-1.5", "path": "org/model", **kw}


def _parse(**kw):
    return parse_config({"input": "in", "output": "out", "models": [_model(**kw)]}, "run.yaml")


def test_config_openai_fields():
    m = _parse(engine="openai", base_url="https://example.test/v1", api_key_env="MY_KEY").models[0]
    assert (m.base_url, m.api_key_env, m.served_model) == (
        "https://example.test/v1",
        "MY_KEY",
        None,
    )
    assert m.concurrency >= 1 and m.request_timeout_s > 0 and m.request_retries >= 0


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"engine": "openai"}, "base_url"),
        ({"engine": "openai", "base_url": "ftp://host/v1"}, "base_url"),
        ({"engine": "openai", "base_url": "127.0.0.1:8000/v1"}, "base_url"),
        (
            {"engine": "openai", "base_url": "http://h/v1", "api_key_env": "sk-abc123"},
            "api_key_env",
        ),
        ({"engine": "openai", "base_url": "http://h/v1", "concurrency": 0}, "concurrency"),
        (
            {"engine": "openai", "base_url": "http://h/v1", "request_timeout_s": 0},
            "request_timeout_s",
        ),
        ({"engine": "openai", "base_url": "http://h/v1", "request_retries": -1}, "request_retries"),
        ({"engine": "openai", "base_url": "http://h/v1", "served_model": ""}, "served_model"),
        ({"base_url": "http://h/v1"}, "base_url"),  # read only by engine openai
        ({"engine": "vllm", "api_key_env": "K"}, "api_key_env"),
    ],
)
def test_config_openai_errors_name_the_field(fields, field):
    with pytest.raises(ConfigError, match=rf"run.yaml: models\[0\]\.{field}"):
        _parse(**fields)


def test_openai_path_is_a_name_not_a_folder(tmp_path):
    import yaml

    from pipeline.recaption_config import load_config

    # Not a folder, not a hub id, and no architecture to check: the endpoint holds the model.
    cfg_path = tmp_path / "run.yaml"
    model = _model(engine="openai", base_url="http://127.0.0.1:1/v1", path="gpt-4o-mini")
    cfg_path.write_text(yaml.safe_dump({"input": "in", "output": "out", "models": [model]}))
    assert load_config(cfg_path).models[0].path == "gpt-4o-mini"


def test_endpoint_fields_do_not_change_the_unit_fingerprint():
    from recaption.units import unit_record

    a = _cfg("http://127.0.0.1:1/v1")
    b = _cfg("http://10.0.0.1:8000/v1", concurrency=64, request_retries=9, api_key_env="K")
    assert unit_record(a, {}) == unit_record(b, {})
    assert unit_record(a, {}) != unit_record(_cfg(a.base_url, served_model="other"), {})
    # A vllm model's record holds none of the endpoint fields: units written before they
    # existed keep their fingerprint.
    plain = ModelConfig(name="m", family="llava-1.5", path="/models/llava")
    endpoint_fields = {"base_url", "served_model", "api_key_env", "concurrency"}
    endpoint_fields |= {"request_timeout_s", "request_retries", "retry_backoff_s"}
    assert not endpoint_fields & set(unit_record(plain, {})["config"])


# --- a real `vllm serve`, killed mid-job and restarted (slow) ---------------------------------


def _keys_of(output, model: str, shards: list[str]) -> list[str]:
    from recaption.units import read_unit, unit_path

    return [r["key"] for s in shards for r in read_unit(unit_path(output, model, s)).to_pylist()]


@pytest.mark.slow
def test_vllm_serve_job_kill_and_rerun(tiny_models, tmp_path, monkeypatch):
    """One recaption job through `engine: openai` against `vllm serve`: every key once. Then
    a second job whose server is killed after its first unit: the requests are retried, the
    units fail, nothing partial is written; the server restarts (on another port: base_url is
    not part of a unit's fingerprint) and a rerun completes them, every key once."""
    import ray

    from pipeline.recaption import run
    from pipeline.recaption_config import load_config
    from shards.readers import shard_names
    from tests.recaption.conftest import make_input_shards, write_config
    from toyworld.vllm_server import VLLMServer

    inp = make_input_shards(tmp_path / "in", shards=4, per_shard=5)
    names = shard_names(inp)
    expected = {s: sorted(_expected_keys(inp, s)) for s in names}  # captioned or failed
    monkeypatch.setenv("LONGCAP_TEST_OPENAI_KEY", "test-key-123")
    log = tmp_path / "vllm_serve.log"
    server = VLLMServer(tiny_models["llava-1.5"], log, served_model="tiny-llava",
                        api_key="test-key-123")  # fmt: skip
    restarted = None
    try:
        server.wait_ready()

        def job(out: str, url: str):
            path = write_config(
                tmp_path / f"{out}.yaml", inp, tmp_path / out,
                {"remote": ("llava-1.5", "tiny-llava")}, progress=False,
            )  # fmt: skip
            import yaml

            cfg = yaml.safe_load(path.read_text())
            cfg["models"][0].update(
                engine="openai", base_url=url, api_key_env="LONGCAP_TEST_OPENAI_KEY",
                max_tokens=8, concurrency=4, request_retries=2, retry_backoff_s=0.2,
                request_timeout_s=60,
            )  # fmt: skip
            path.write_text(yaml.safe_dump(cfg))
            return load_config(path)

        # 1. The whole job: every key once, in every unit; the endpoint's usage in the report.
        report = run(job("out1", server.base_url))
        m = report["models"]["remote"]
        assert report["complete"] and m["units_done"] == len(names)
        for s in names:
            assert sorted(_keys_of(tmp_path / "out1", "remote", [s])) == expected[s]
        assert m["captioned"] == sum(len(v) for v in expected.values()) - 2  # 2 bad rows
        assert m["prompt_tokens"] > 0 and m["generated_tokens"] > 0

        # 2. The server dies after the first unit of a new job: retries, then failed units.
        cfg2 = job("out2", server.base_url)
        first: list[str] = []

        def kill_after_first(model: str, shard: str) -> None:
            if not first:
                first.append(shard)
                server.kill()

        report = run(cfg2, on_unit=kill_after_first)
        m = report["models"]["remote"]
        assert not report["complete"] and m["units_done"] >= 1 and m["units_failed"]
        assert m["units_done"] + len(m["units_failed"]) == len(names)
        for failed in m["units_failed"]:
            assert "3 times (2 retries)" in failed["error"], failed
            assert "connection error" in failed["error"], failed
        unit_dir = tmp_path / "out2" / "captions" / "remote"
        written = sorted(p.stem for p in unit_dir.glob("*.parquet"))
        assert len(written) == m["units_done"]  # no partial unit of a failed one
        assert not [p for p in unit_dir.iterdir() if not p.name.endswith(".parquet")]

        # 3. A new server (another port) and a rerun: the failed units only, every key once.
        restarted = VLLMServer(tiny_models["llava-1.5"], log, served_model="tiny-llava",
                               api_key="test-key-123")  # fmt: skip
        restarted.wait_ready()
        report = run(job("out2", restarted.base_url))
        m = report["models"]["remote"]
        assert report["complete"]
        assert m["units_skipped"] == len(written) and m["units_done"] == len(names) - len(written)
        for s in names:
            keys = _keys_of(tmp_path / "out2", "remote", [s])
            assert sorted(keys) == expected[s] and len(keys) == len(set(keys))
    finally:
        ray.shutdown()
        server.stop()
        if restarted is not None:
            restarted.stop()


def _expected_keys(inp, shard: str) -> list[str]:
    """Every key of an input shard (its sidecar lists the failed downloads too)."""
    import pyarrow.parquet as pq

    return pq.read_table(inp / f"{shard}.parquet", columns=["key"]).column("key").to_pylist()
