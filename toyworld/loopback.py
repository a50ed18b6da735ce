"""A URL list served from 127.0.0.1: what `make demo` and the build tests download from.

`serve(folder)` runs a threaded HTTP server on a free loopback port (a context manager that
stops it). `make_url_list(...)` generates images with `toyworld.sample_data` (or, with
`scenes=True`, toyworld scenes with their truth), and a CSV that points at them, with the awkward
rows a real list has when `bad_rows` is set: a 404, a duplicate URL, an empty URL, an HTML page
served as .jpg, a 1-pixel image, a 30,000-pixel-wide image, and a caption that is not UTF-8.
The ingest URL policy refuses loopback addresses: a build from this server lists 127.0.0.1/32 in
`ingest.allowed_networks` (docs/SECURITY.md).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(folder: str | Path) -> Iterator[str]:
    """Serve `folder` on http://127.0.0.1:PORT; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


# The long-caption columns of DreamLIP's/LoTLIP's released lists (LLaVA-1.5, InstructBLIP,
# ShareGPT4V), read as models by shards.inputs.RELEASED_LONG_COLUMNS. make_sample writes the
# first in its LLaVA style, the others as numbered lists.
LIST_LONG_COLUMNS = ("longLLA_captions", "longIB_captions", "longSV_captions")


def make_url_list(
    folder: str | Path,
    base_url: str,
    n: int = 40,
    bad_rows: bool = True,
    scenes: bool = False,
    seed: int = 0,
) -> Path:
    """Images under folder/www, and folder/urls.csv of them, shaped like DreamLIP's released lists:
    url, caption, and three long captions per image (LIST_LONG_COLUMNS).

    With `scenes`, the images are toyworld scenes (`toyworld.samples`, drawn from `seed`) and the
    columns are url, caption (the alt-text) and truth (the scene as JSON text); no long
    captions, since recaptioning writes them."""
    from PIL import Image

    folder = Path(folder)
    www = folder / "www"
    if scenes:
        from toyworld.samples import make_scene_samples

        manifest = make_scene_samples(www, n=n, seed=seed)
        extra_columns: tuple[str, ...] = ("truth",)
    else:
        from toyworld.sample_data import make_sample

        manifest = make_sample(www, n=n, size=96, bad_rows=False, models=LIST_LONG_COLUMNS)
        extra_columns = LIST_LONG_COLUMNS
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    lines = [",".join(["url", "caption", *extra_columns])]

    def esc(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'

    for r in rows:
        if scenes:
            extras = [esc(json.dumps(r["truth"], sort_keys=True))]
        else:
            extras = [esc(r["long_captions"][c]) for c in LIST_LONG_COLUMNS]
        lines.append(",".join([f"{base_url}/{r['image_path']}", esc(r["caption"]), *extras]))
    raw = "\n".join(lines).encode() + b"\n"
    if bad_rows:
        (www / "page.jpg").write_text("<html><body>not an image</body></html>")
        Image.new("RGB", (1, 1), (255, 0, 0)).save(www / "pixel.png")
        # 30,000 px wide but a few KB: a PNG of one colour compresses to almost nothing.
        Image.new("L", (30000, 2), 128).save(www / "wide.png")
        empty = "," * len(extra_columns)
        bad = [
            f"{base_url}/missing.jpg,a file that is not there{empty}",
            f"{base_url}/{rows[0]['image_path']},the same URL again{empty}",
            f",a row without a URL{empty}",
            f"{base_url}/page.jpg,an html page{empty}",
            f"{base_url}/pixel.png,one pixel{empty}",
            f"{base_url}/wide.png,a very wide image{empty}",
        ]
        raw += "\n".join(bad).encode() + b"\n"
        raw += (
            f"{base_url}/{rows[0]['image_path']}?v=2,caf\xe9 in latin-1{empty}\n".encode().replace(
                "caf\xe9".encode(), b"caf\xe9"
            )
        )
    path = folder / "urls.csv"
    path.write_bytes(raw)
    return path
