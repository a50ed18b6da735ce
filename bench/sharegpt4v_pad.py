"""Measure: ShareGPT4V's pad-to-square preprocessing against what longcap feeds vLLM instead.

ShareGPT4V (`image_aspect_ratio: pad`) pads the full-resolution image to a square of the CLIP
mean colour, then resizes to 336 and centre-crops (share4v/mm_utils.py:29-43). longcap first
shrinks the longer side to the family's image_size (recaption/units.py `decode_image`: JPEG
draft decoding + bicubic thumbnail, on CPU workers), then the converted checkpoint's
LlavaImageProcessor pads to the same mean colour and resizes/crops. This script compares the
pixel tensors the vision tower receives, on one photograph (matplotlib's grace_hopper.jpg) cut
and scaled to several aspect ratios and sizes, and also the no-padding path (the plain CLIP
processor: shortest edge to 336, centre crop) to show what padding keeps. Run from the repo root:
  .venv/bin/python bench/sharegpt4v_pad.py
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

# Run as a script, bench/ is first on sys.path and its recaption.py would shadow the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _expand2square(img, color):
    from PIL import Image

    w, h = img.size
    side = max(w, h)
    out = Image.new(img.mode, (side, side), color)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def main() -> None:
    import matplotlib
    import numpy as np
    from PIL import Image
    from transformers import CLIPImageProcessor, LlavaImageProcessor

    from recaption.units import decode_image

    photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    photo = photo.convert("RGB")  # 512 x 600
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    common = dict(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_mean=mean,
        image_std=std,
        resample=3,
    )
    clip = CLIPImageProcessor(**common)
    llava = LlavaImageProcessor(do_pad=True, **common)
    colour = tuple(int(x * 255) for x in mean)
    std255 = np.array(std)[:, None, None] * 255
    print("image (w x h)   |orig - longcap| mean / p99 / max (0-255 levels)   kept without pad")
    for w, h, scale in [(512, 384, 1), (512, 288, 1), (300, 600, 1), (512, 384, 4), (512, 512, 2)]:
        left, top = (512 - w) // 2, (600 - h) // 2
        img = photo.crop((left, top, left + w, top + h)).resize((w * scale, h * scale), 3)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=95)
        data = buf.getvalue()
        full = Image.open(io.BytesIO(data)).convert("RGB")
        orig = clip(images=_expand2square(full, colour), return_tensors="np")["pixel_values"][0]
        ours_in = Image.fromarray(decode_image(data, 336))
        ours = llava(images=ours_in, return_tensors="np")["pixel_values"][0]
        diff = np.abs(orig - ours) * std255  # back to 0-255 levels per channel
        kept = min(w, h) / max(w, h)  # the centre crop keeps the short side's share
        print(
            f"{w * scale:5d} x {h * scale:<5d}    {diff.mean():6.2f} / "
            f"{np.percentile(diff, 99):6.1f} / {diff.max():6.1f}"
            f"                      {kept:5.0%} of the long side"
        )


if __name__ == "__main__":
    main()
