"""Property tests (hypothesis) over what strangers write: URL lists and manifests with arbitrary
URLs, captions, keys, image paths and bytes that are not UTF-8 or not JSON. Whatever the input,
ingest and assembly do not crash, and every input row is one sample or one recorded failure.
Nothing here connects anywhere: the URL list is only checked, never downloaded."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.ingest import IngestConfig, prepare_url_list
from shards import schema as S
from shards.assemble import AssembleConfig, assemble
from tests.shards.helpers import jpeg_bytes

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# URL-shaped strings that reach every branch of the policy, and arbitrary text.
_schemes = st.sampled_from(
    ["http", "https", "HTTP", "file", "ftp", "gopher", "data", "", "javascript"]
)
_hosts = st.sampled_from(
    ["127.0.0.1:1", "127.0.0.2", "[::1]", "10.0.0.1", "example.com", "", "a b", "[zz", "x:99999"]
)
_urls = st.one_of(
    st.builds(lambda s, h, p: f"{s}://{h}/{p}", _schemes, _hosts, st.text(max_size=20)),
    st.text(max_size=40),
    st.just(""),
)
_text = st.one_of(st.none(), st.text(max_size=60))
_garbage = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" "))


def _jsonl_line(draw_row: dict | bytes) -> bytes:
    if isinstance(draw_row, bytes):
        return draw_row
    return json.dumps(draw_row).encode()


_rows = st.lists(
    st.one_of(
        st.fixed_dictionaries({"url": _urls, "caption": _text}, optional={"truth": _text}),
        st.fixed_dictionaries({"url": st.integers() | st.lists(_urls, max_size=2)}),
        _garbage,
        # a line whose bytes are not UTF-8 inside an otherwise good object
        st.builds(
            lambda u, b: b'{"url": "' + u.encode() + b + b'", "caption": "x"}',
            st.sampled_from(["http://127.0.0.1:1/", "http://example.com/"]),
            st.binary(min_size=1, max_size=4).map(lambda b: bytes(c | 0x80 for c in b)),
        ),
    ),
    max_size=25,
)


def _check_conservation(work: Path, summary: dict, n_rows: int) -> None:
    accepted = pq.read_table(work / "urls.parquet").column("longcap_row").to_pylist()
    rejected = pq.read_table(work / "rejected.parquet").to_pylist()
    assert summary["rows"] == n_rows
    assert summary["accepted"] + sum(summary["rejected"].values()) == n_rows
    indices = [int(i) for i in accepted] + [int(r["longcap_row"]) for r in rejected]
    assert sorted(indices) == list(range(n_rows))
    for r in rejected:  # stored text is valid UTF-8 and says why
        assert r["reason"] and r["detail"]
        for value in (r["url"], r["caption"]):
            if value is not None:
                value.encode("utf-8")  # raises on lone surrogates


@SETTINGS
@given(_rows)
def test_any_jsonl_url_list_is_conserved(rows):
    with tempfile.TemporaryDirectory() as tmp:
        # A first good row names the URL column (a list with none is refused as a whole).
        lines = [b'{"url": "http://127.0.0.1:1/0.jpg"}'] + [_jsonl_line(r) for r in rows]
        path = Path(tmp) / "urls.jsonl"
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        cfg = IngestConfig(url_list=str(path), allowed_networks=["127.0.0.1/32"])
        summary = prepare_url_list(cfg, Path(tmp) / "work")
        _check_conservation(Path(tmp) / "work", summary, sum(1 for x in lines if x.strip()))


# A bare carriage return ends a CSV line (old Mac files); Python's writer does not quote it, so
# a cell holding one would be two lines on purpose, not a parsing fault.
_cell = st.text(alphabet=st.characters(blacklist_characters="\r"), max_size=40)


@SETTINGS
@given(
    # URLs too: a bare CR in a URL cell is a line end, as in `_cell` (found by this test).
    st.lists(st.tuples(_urls.map(lambda u: u.replace("\r", " ")), _cell, _cell), max_size=20),
    st.lists(_garbage, max_size=3),
    st.booleans(),
)
def test_any_csv_url_list_is_conserved(cells, garbage, latin1):
    """Rows written by a CSV writer (quotes, commas, newlines inside fields), a few raw lines
    (too many fields, stray quotes), and cells that may not be UTF-8."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["url", "caption", "key"])
    writer.writerows(cells)
    raw = buf.getvalue().encode("utf-8", "surrogatepass")
    if latin1:
        raw = raw.replace("é".encode(), b"\xe9")
    raw += b"".join(g + b"\n" for g in garbage)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "urls.csv"
        path.write_bytes(raw)
        cfg = IngestConfig(url_list=str(path), allowed_networks=["127.0.0.1/32"])
        summary = prepare_url_list(cfg, Path(tmp) / "work")
        # The CSV's own row count depends on how its stray quotes parse: conservation is
        # checked against what was read, which must include every well-formed row.
        _check_conservation(Path(tmp) / "work", summary, summary["rows"])
        if not garbage:
            assert summary["rows"] == len(cells)


_paths = st.one_of(
    st.sampled_from(
        ["img.jpg", "./img.jpg", "../img.jpg", "/dev/zero", "/etc/passwd", "sub/../img.jpg", ""]
    ),
    st.text(max_size=30),
)
_keys = st.one_of(st.none(), st.text(max_size=120), st.sampled_from(["a", "a", "../x", "a/b"]))
_manifest_rows = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"image_path": _paths, "caption": _text},
            optional={
                "key": _keys,
                "long_captions": st.one_of(
                    st.none(), st.text(max_size=10), st.dictionaries(st.text(max_size=8), _text)
                ),
                "url": _urls,
            },
        ),
        _garbage,
    ),
    min_size=1,
    max_size=15,
)


@SETTINGS
@given(_manifest_rows)
def test_any_manifest_assembles_with_every_row_accounted_for(rows):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        (root / "img.jpg").write_bytes(jpeg_bytes())
        (root / "sub").mkdir()
        head = json.dumps({"image_path": "img.jpg", "caption": "first row."}).encode()
        lines = [head] + [_jsonl_line(r) for r in rows]
        manifest = root / "m.jsonl"
        manifest.write_bytes(b"".join(line + b"\n" for line in lines))
        out = Path(tmp) / "out"
        res = assemble(manifest, out, AssembleConfig(formats=["parquet"], batch_size=4))
        table = [r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
        n = sum(1 for x in lines if x.strip())
        assert res.samples_in == n == len(table)
        for r in table:
            assert (r["status"] == S.STATUS_OK) == (r["error"] is None), r
            if r["status"] == S.STATUS_OK:
                assert r["image"] == (root / "img.jpg").read_bytes()
