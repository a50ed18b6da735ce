"""The caps every reader of untrusted bytes applies: image pixels, aspect ratio, tar members.

One home for these rules. Assembly, the recaption decode tasks and the trainer's loader all open
images with `open_image`, which reads the header only (Pillow opens lazily) and refuses an image
over the caps before a single pixel is decoded; img2dataset gets the same caps through
`img2dataset_args`. Tar readers refuse members by `tar_member_refusal` before reading their data.
"""

from __future__ import annotations

import io
import tarfile
import warnings

# Pillow's own default bomb limit (89.5 Mpx, ~268 MB as RGB): what assembly refused before, now
# the cap of every loader. A 1:N strip whose short side the trainer resizes to S becomes S*S*N
# pixels, so the aspect ratio is capped too; 50 keeps real banners and panoramas (1:34 strips
# occur in web data) and refuses the degenerate 1-pixel lines.
MAX_IMAGE_PIXELS = 89_478_485
MAX_ASPECT_RATIO = 50.0
# No image or caption member of a shard comes near this; a declared size above it is refused
# unread (a 2 KB tar can declare a 16 GiB member).
MAX_MEMBER_BYTES = 128 << 20


class ImageLimitError(ValueError):
    """An image whose header declares more pixels, or a longer aspect ratio, than the caps."""


def check_image_size(width: int, height: int) -> None:
    """Raise ImageLimitError when a (width, height) exceeds the pixel or aspect-ratio cap."""
    if width < 1 or height < 1:
        raise ImageLimitError(f"image declares {width}x{height} pixels")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageLimitError(
            f"image declares {width}x{height} = {width * height:,} pixels, over the cap of "
            f"{MAX_IMAGE_PIXELS:,} (shards.limits.MAX_IMAGE_PIXELS)"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageLimitError(
            f"image is {width}x{height}, aspect ratio {ratio:.1f} over the cap of "
            f"{MAX_ASPECT_RATIO:g} (shards.limits.MAX_ASPECT_RATIO)"
        )


def open_image(data: bytes):
    """A lazily opened PIL image whose header passed the caps; decode it with `.load()` or
    `.convert()`. Raises ImageLimitError over the caps, Pillow's errors for bytes that are not
    an image."""
    from PIL import Image

    with warnings.catch_warnings():
        # Pillow warns from its own, equal limit; the check below is the one that decides.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageLimitError(f"{exc} (shards.limits.MAX_IMAGE_PIXELS)") from None
    try:
        check_image_size(*im.size)
    except ImageLimitError:
        im.close()
        raise
    return im


def img2dataset_args() -> list[str]:
    """The caps as img2dataset command-line options (it checks them after decoding)."""
    return [
        "--max_image_area",
        str(MAX_IMAGE_PIXELS),
        "--max_aspect_ratio",
        str(MAX_ASPECT_RATIO),
    ]


def tar_member_refusal(info: tarfile.TarInfo) -> str | None:
    """Why a tar member must not be read (sparse, a link, a device, over the size cap), or None
    for a regular member within the cap. Directories are not refused: callers skip them."""
    if info.issparse():
        return f"sparse member declaring {info.size:,} bytes"
    if info.islnk() or info.issym():
        return f"link member (to {info.linkname!r})"
    if info.ischr() or info.isblk() or info.isfifo():
        return "device or fifo member"
    if not (info.isfile() or info.isdir()):
        return f"member of unsupported type {info.type!r}"
    if info.size > MAX_MEMBER_BYTES:
        return (
            f"member declares {info.size:,} bytes, over the cap of {MAX_MEMBER_BYTES:,} "
            "(shards.limits.MAX_MEMBER_BYTES)"
        )
    return None
