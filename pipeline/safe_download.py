"""img2dataset with its fetch replaced by `pipeline.url_policy.fetch` (run as a child process).

img2dataset 1.47 downloads each URL with `urllib.request.urlopen` in
`img2dataset.downloader.download_image`: every scheme urllib knows (file:, ftp:, data:), any
address, redirects followed without a check, the whole body read, and `--timeout` per socket
operation only. `python -m pipeline.safe_download -- <img2dataset arguments>`, with the build's
`UrlPolicy` as JSON in `LONGCAP_URL_POLICY`, runs img2dataset's own command line with that
function swapped for one that keeps to the policy; everything else (sharding, resizing, writers,
stats, resume) is img2dataset's.

img2dataset downloads in `spawn`ed worker processes, which import img2dataset afresh. The swap
reaches them because img2dataset pickles its `Downloader` to each worker and the class it pickles
is `PolicyDownloader`, defined here: unpickling imports this module, which swaps the function
in that worker too. The policy travels in the environment (`LONGCAP_URL_POLICY`).
"""

from __future__ import annotations

import importlib
import io
import json
import os
import sys

from pipeline.url_policy import POLICY_ENV, UrlPolicy, fetch

# By module, not attribute: the package's `main` attribute is the function of that name.
_dl = importlib.import_module("img2dataset.downloader")
_main = importlib.import_module("img2dataset.main")

_USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"


def _policy() -> UrlPolicy:
    raw = os.environ.get(POLICY_ENV)
    if not raw:
        # Never fall back to no policy: a worker without one must not download anything.
        raise RuntimeError(f"{POLICY_ENV} is not set; run img2dataset through longcap build")
    return UrlPolicy.from_json(json.loads(raw))


_POLICY = _policy()


def download_image(row, timeout, user_agent_token, disallowed_header_directives):
    """img2dataset's `download_image` contract: (key, BytesIO or None, error text or None)."""
    key, url = row
    agent = _USER_AGENT
    if user_agent_token:
        agent += f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"

    def accept(headers) -> str | None:
        if disallowed_header_directives and _dl.is_disallowed(
            headers, user_agent_token, disallowed_header_directives
        ):
            return "Use of image disallowed by X-Robots-Tag directive"
        return None

    try:
        data = fetch(str(url), _POLICY, headers={"User-Agent": agent}, accept=accept)
    except Exception as err:  # noqa: BLE001 - img2dataset records any failure as the row's error
        return key, None, str(err) or type(err).__name__
    return key, io.BytesIO(data), None


class PolicyDownloader(_dl.Downloader):
    """img2dataset's Downloader; only its class name (pickled to workers) is new."""


_dl.download_image = download_image  # download_image_with_retry looks it up at call time
_main.Downloader = PolicyDownloader


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "--":
        print("usage: python -m pipeline.safe_download -- <img2dataset arguments>", file=sys.stderr)
        return 2
    sys.argv = ["img2dataset", *argv[1:]]
    _main.main()
    return 0


if __name__ == "__main__":
    # Run from the module's own name, so that workers unpickle pipeline.safe_download's class.
    from pipeline.safe_download import main as _run

    sys.exit(_run(sys.argv[1:]))
