"""Public benchmarks: miniature copies in each release's layout, texts checked sample by sample
against LoTLIP's rule (re-stated here from its loaders and tokenizer), token ids checked against
LoTLIP's tokenizer pipeline, the any-of-5-captions rule, layout errors, and `longcap eval
--benchmark` end to end on a randomly initialised tiny checkpoint."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from pipeline.cli_train import add_train_commands
from train_hooks.benchmarks import LONG8, LayoutError, load_benchmark
from train_hooks.benchmarks.imagenet import imagenet_classnames, imagenet_wnids, openai_templates
from train_hooks.benchmarks.text import clean_text
from train_hooks.evaluate import recall_at

# Captions with the cases LoTLIP's split treats specially: newlines, </s>, decimals, "Mr.",
# empty parts, a trailing period.
CAPTIONS = [
    "A red car parks on a street. Two people walk by.\nThe sky is grey.",
    "A 3.5 m boat</s>It floats on a lake..  Mr. Smith rows it",
    "One sentence without a final period",
    "Trees line the road. A sign reads STOP. ",
    "A cat sleeps.\n\nA dog watches it. The room is warm.",
]


def lotlip_text(caption: str) -> list[str]:
    """LoTLIP's long text, as its loader then its tokenizer build it (dci_retrieval.py:40-53,
    tokenizer.py:468): split, strip, drop empties, '. '-join, then cut at '. ' into [SEP] pieces."""
    parts = [p.strip() for p in re.split(r"\n|</s>|[.]", caption) if p.strip()]
    return [clean_text(p) for p in ". ".join(parts).split(". ")]


def write_image(path: Path, shade: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 9), (shade * 40 % 256, 80, 255 - shade * 30 % 256)).save(path)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_dci(root: Path) -> list[str]:
    """densely_captioned_images/{splits.json, annotations/, photos/} as dci.tar.gz unpacks."""
    base = root / "densely_captioned_images"
    splits = {
        "train": ["sa_10.json", "sa_11.json"],
        "valid": ["sa_12.json"],
        "test": ["sa_13.json"],
    }
    (base / "annotations").mkdir(parents=True)
    (base / "splits.json").write_text(json.dumps(splits))
    expected = []
    for i, f in enumerate(f for v in splits.values() for f in v):
        short, extra = f"Short caption {i}.", CAPTIONS[i]
        anno = {"image": f"sa_{10 + i}.jpg", "short_caption": short, "extra_caption": extra}
        anno["mask_data"] = {}
        (base / "annotations" / f).write_text(json.dumps(anno))
        write_image(base / "photos" / f"sa_{10 + i}.jpg", i)
        expected.append(f"{short}\n{extra}")
    return expected


def make_iiw(root: Path) -> list[str]:
    """google/imageinwords datasets/<subset>/data.jsonl, images where LoTLIP's
    data_preprocess.py copies them (docci/, docci_aar/, dci/)."""
    docci = [{"image": "test_00731", "DOCCI": "not used", "IIW": CAPTIONS[0]}]
    docci.append({"image": "test_00732", "DOCCI": "not used", "IIW": CAPTIONS[1]})
    aar = [{"image/key": "aar_test_04600", "IIW": CAPTIONS[2], "IIW-P5B": "not used"}]
    dci = [{"image": "sa_1545038.jpg", "IIW": CAPTIONS[3], "ex_id": "113029-data.json"}]
    write_jsonl(root / "DOCCI_Test" / "data.jsonl", docci)
    write_jsonl(root / "IIW-400" / "data.jsonl", aar)
    write_jsonl(root / "DCI_Test" / "data.jsonl", dci)
    write_image(root / "docci" / "test_00731.jpg", 1)
    write_image(root / "docci" / "train_00732.jpg", 2)  # named as in DOCCI's own download
    write_image(root / "docci_aar" / "aar_test_04600.jpg", 3)
    write_image(root / "dci" / "sa_1545038.jpg", 4)
    return [CAPTIONS[0], CAPTIONS[1], CAPTIONS[2], CAPTIONS[3]]


def make_sharegpt4v(root: Path, with_images: int = 5) -> list[str]:
    """LoTLIP's share4v_sam_10k.json (10,000 ShareGPT4V entries) in the SA-1B folder; only the
    first `with_images` images exist, so runs use --max-samples."""
    rows = []
    for i in range(10000):
        cap = CAPTIONS[i % len(CAPTIONS)]
        conv = [{"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": cap}]
        rows.append({"id": f"sa_{i}", "image": f"sam/images/sa_{i}.jpg", "conversations": conv})
    root.mkdir(parents=True, exist_ok=True)
    (root / "share4v_sam_10k.json").write_text(json.dumps(rows))
    for i in range(with_images):
        write_image(root / "sam" / "images" / f"sa_{i}.jpg", i)
    return [r["conversations"][1]["value"] for r in rows]


def make_urban1k(root: Path) -> list[str]:
    for i, cap in enumerate(CAPTIONS[:4], 1):
        (root / "caption").mkdir(parents=True, exist_ok=True)
        (root / "caption" / f"{i}.txt").write_text(cap.replace("\n", " ") + "\nsecond line\n")
        write_image(root / "image" / f"{i}.jpg", i)
    return [c.replace("\n", " ") for c in CAPTIONS[:4]]


def make_docci(root: Path) -> list[str]:
    rows = []
    for i, cap in enumerate(CAPTIONS):
        split = "train" if i == 1 else "test"
        rows.append({"example_id": f"{split}_{i:05d}", "split": split,
                     "image_file": f"{split}_{i:05d}.jpg", "description": cap})  # fmt: skip
        write_image(root / "images" / f"{split}_{i:05d}.jpg", i)
    write_jsonl(root / "docci_descriptions.jsonlines", rows)
    return [r["description"] for r in rows if r["split"] == "test"]


SHORT = ["A man rides a horse.", "a dog on a beach", "Two cats. One sleeps.", "A bus. ", "Cars"]


def make_karpathy(root: Path, name: str) -> list[list[str]]:
    """Karpathy's dataset_<name>.json with two test images (six captions on the first) and one
    train image; images in the official folders."""
    images = []
    for i, split in enumerate(["test", "train", "test"]):
        fname = f"COCO_val2014_{i:012d}.jpg" if name == "coco" else f"{1000092795 + i}.jpg"
        n = 6 if i == 0 else 5
        sents = [{"raw": SHORT[(i + j) % 5], "tokens": [], "imgid": i, "sentid": 5 * i + j}
                 for j in range(n)]  # fmt: skip
        row = {"filename": fname, "split": split, "sentences": sents, "imgid": i}
        if name == "coco":
            row |= {"filepath": "val2014", "cocoid": i}
            write_image(root / "val2014" / fname, i)
        else:
            write_image(root / "flickr30k-images" / fname, i)
        images.append(row)
    root.mkdir(parents=True, exist_ok=True)
    (root / f"dataset_{name}.json").write_text(json.dumps({"images": images, "dataset": name}))
    return [[s["raw"] for s in r["sentences"][:5]] for r in images if r["split"] == "test"]


def make_imagenet(root: Path) -> list[int]:
    labels = []
    for c in (0, 1, 999):
        wnid = imagenet_wnids()[c]
        for j in range(2):
            write_image(root / "val" / wnid / f"ILSVRC2012_val_{c * 10 + j:08d}.JPEG", c + j)
            labels.append(c)
    return labels


MAKERS = {"dci": make_dci, "iiw": make_iiw, "urban1k": make_urban1k, "docci": make_docci}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_long_text_loaders_build_lotlips_texts(tmp_path, name):
    captions = MAKERS[name](tmp_path)
    rs = load_benchmark(name, tmp_path)
    assert len(rs.images) == len(captions) == len(rs.texts)
    assert rs.text_image == list(range(len(captions)))
    for text, cap in zip(rs.texts, captions, strict=True):
        assert text == lotlip_text(cap)
    assert all(p.is_file() for p in rs.images)


def test_texts_of_the_lotlip_rule_by_hand(tmp_path):
    """The rule written out for one DCI caption, so the reference above cannot drift."""
    make_dci(tmp_path)
    rs = load_benchmark("dci", tmp_path)
    assert rs.texts[0] == [
        "Short caption 0", "A red car parks on a street", "Two people walk by", "The sky is grey"
    ]  # fmt: skip
    assert rs.texts[1] == [
        "Short caption 1", "A 3", "5 m boat", "It floats on a lake", "Mr", "Smith rows it"
    ]  # fmt: skip


def test_dci_order_and_images(tmp_path):
    make_dci(tmp_path)
    rs = load_benchmark("dci", tmp_path)
    assert [p.name for p in rs.images] == ["sa_10.jpg", "sa_11.jpg", "sa_12.jpg", "sa_13.jpg"]


def test_iiw_pools_three_subsets_in_lotlips_order(tmp_path):
    make_iiw(tmp_path)
    rs = load_benchmark("iiw", tmp_path)
    got = [p.relative_to(tmp_path).as_posix() for p in rs.images]
    assert got == [
        "docci/test_00731.jpg",
        "docci/train_00732.jpg",  # LoTLIP's data_preprocess.py test -> train fallback
        "docci_aar/aar_test_04600.jpg",
        "dci/sa_1545038.jpg",
    ]


def test_sharegpt4v_first_n_entries(tmp_path):
    captions = make_sharegpt4v(tmp_path)
    for name in ("sharegpt4v-1k", "sharegpt4v-10k"):
        rs = load_benchmark(name, tmp_path, max_samples=5)
        assert [p.name for p in rs.images] == [f"sa_{i}.jpg" for i in range(5)]
        assert rs.texts == [lotlip_text(c) for c in captions[:5]]
    with pytest.raises(LayoutError, match="sam/images/sa_5.jpg"):
        load_benchmark("sharegpt4v-1k", tmp_path)  # 1,000 entries, only 5 images on disk


def test_karpathy_five_captions_per_test_image(tmp_path):
    for name in ("coco", "flickr30k"):
        root = tmp_path / name
        expected = make_karpathy(root, name)
        rs = load_benchmark(name, root)
        assert len(rs.images) == 2 and len(rs.texts) == 10
        assert rs.text_image == [0] * 5 + [1] * 5
        flat = [c for caps in expected for c in caps]
        # LoTLIP's tokenizer cuts every text at '. ' (tokenizer.py:468), short ones included.
        assert rs.texts == [[clean_text(p) for p in c.split(". ")] for c in flat]
        assert rs.texts[2] == ["Two cats", "One sleeps."] and rs.texts[3] == ["A bus", ""]
    coco = load_benchmark("coco", tmp_path / "coco")
    assert coco.images[1].relative_to(tmp_path).as_posix() == (
        "coco/val2014/COCO_val2014_000000000002.jpg"
    )


def test_imagenet_class_folders_and_data_files(tmp_path):
    labels = make_imagenet(tmp_path)
    cs = load_benchmark("imagenet", tmp_path)
    assert cs.labels == labels and len(cs.classnames) == 1000 and len(cs.templates) == 80
    assert cs.classnames[0] == "tench" and cs.classnames[999] == "toilet paper"
    assert imagenet_wnids()[0] == "n01440764" and list(imagenet_wnids()) == sorted(imagenet_wnids())
    assert openai_templates()[0] == "a bad photo of a {}."
    assert all(t.count("{}") == 1 for t in openai_templates())
    # OpenAI's names repeat two (e.g. "missile"), as in CLIP's notebook; indices stay distinct.
    assert len(imagenet_classnames()) == 1000 and len(set(imagenet_classnames())) == 998
    # The val folder itself works as root too; a stray folder is refused with its name.
    assert load_benchmark("imagenet", tmp_path / "val").labels == labels
    (tmp_path / "val" / "not_a_class").mkdir()
    with pytest.raises(LayoutError, match="not_a_class"):
        load_benchmark("imagenet", tmp_path)


def test_missing_files_name_the_path(tmp_path):
    make_dci(tmp_path)
    (tmp_path / "densely_captioned_images" / "photos" / "sa_12.jpg").unlink()
    with pytest.raises(LayoutError, match=r"photos/sa_12\.jpg"):
        load_benchmark("dci", tmp_path)
    with pytest.raises(LayoutError, match="give its parent"):
        load_benchmark("dci", tmp_path / "densely_captioned_images")
    with pytest.raises(LayoutError, match="densely_captioned_images: no such folder"):
        load_benchmark("dci", tmp_path / "densely_captioned_images" / "photos")
    with pytest.raises(LayoutError, match=r"IIW-400/data\.jsonl|DOCCI_Test/data\.jsonl"):
        load_benchmark("iiw", tmp_path)
    with pytest.raises(LayoutError, match="dataset_coco.json"):
        load_benchmark("coco", tmp_path)
    with pytest.raises(LayoutError, match="caption"):
        load_benchmark("urban1k", tmp_path)


def test_max_samples_caps_reads(tmp_path):
    make_dci(tmp_path)
    assert len(load_benchmark("dci", tmp_path, max_samples=2).images) == 2
    make_karpathy(tmp_path / "k", "coco")
    rs = load_benchmark("coco", tmp_path / "k", max_samples=1)
    assert len(rs.images) == 1 and rs.text_image == [0] * 5


def test_token_ids_equal_lotlips_tokenizer(tmp_path):
    """CornerTokenizer on the piece lists == LoTLIP's HFTokenizer pipeline on '. '-joined text
    (sep.join(text.split('. ')), corners prepended, BERT [CLS] ... [SEP], truncation)."""
    transformers = pytest.importorskip("transformers")
    from shards.tokens import default_vocab_path
    from train_hooks.tokenizer import CornerTokenizer

    hf = transformers.BertTokenizerFast(str(default_vocab_path()), do_lower_case=True)
    hf.add_tokens(["[Corner0]", "[Corner1]"], special_tokens=True)
    ours = CornerTokenizer(None, num_corner=2, context_length=24)
    for cap in CAPTIONS + SHORT:
        parts = [p.strip() for p in re.split(r"\n|</s>|[.]", cap) if p.strip()]
        for text, pieces in ((". ".join(parts), lotlip_text(cap)), (cap, cap.split(". "))):
            lotlip = "[Corner0] [Corner1]" + "[SEP]".join(text.split(". "))
            lotlip = " ".join(lotlip.split())
            want = hf(lotlip, max_length=24, padding="max_length", truncation=True).input_ids
            got = ours([pieces])[0][0].tolist()
            assert got == want, (cap, pieces)


def test_clean_text_matches_lotlips_basic_clean():
    assert (
        clean_text("it\u2019s \u201cfine\u201d &amp;amp; \ufb01ne\n ok") == 'it\'s "fine" & fine ok'
    )


def test_recall_any_of_five_captions_hits():
    """Two images with five captions each: image 0's best text is its own 5th caption (a hit at
    R@1); image 1's best is image 0's first caption, its own 3rd caption comes second."""
    sim = torch.full((2, 10), 0.0)
    sim[0, 4] = 0.9
    sim[1, 0], sim[1, 7] = 0.9, 0.8
    owner = torch.tensor([0] * 5 + [1] * 5)
    r = recall_at(sim, owner, ks=(1, 5))
    assert r["i2t_R@1"] == 50.0 and r["i2t_R@5"] == 100.0
    # text-to-image: text 0 (image 0's) ranks image 1 first; every other text ranks its own
    # image first or ties at 0 (topk takes the lower index on ties, image 0).
    t2i_hits_at_1 = [(sim[:, t].argmax().item() == owner[t].item()) for t in range(10)]
    assert r["t2i_R@1"] == pytest.approx(100.0 * sum(t2i_hits_at_1) / 10)
    assert r["t2i_R@5"] == 100.0


# ---------------------------------------------------------------- CLI on a tiny checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from train_hooks.model import LoTLIP, preset
    from train_hooks.tokenizer import CornerTokenizer

    torch.manual_seed(0)
    mcfg = preset("tiny", num_corner=2)
    tok = CornerTokenizer(None, 2, 64)
    path = tmp_path_factory.mktemp("ck") / "step_0000000.pt"
    obj = {"model_config": mcfg.to_dict(), "model": LoTLIP(mcfg).state_dict()}
    torch.save(obj | {"tokenizer": tok.describe(), "step": 0}, path)
    return path


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="longcap")
    add_train_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def eval_json(checkpoint, tmp_path, *extra: str) -> dict:
    out = tmp_path / "res.json"
    argv = ["eval", "--checkpoint", str(checkpoint), "--device", "cpu", "--json", str(out)]
    assert run_cli(argv + list(extra)) == 0
    return json.loads(out.read_text())


def check_recalls(figs: dict) -> None:
    for d in ("i2t", "t2i"):
        for k in (1, 5, 10):
            assert 0.0 <= figs[f"{d}_R@{k}"] <= 100.0


@pytest.mark.parametrize("name", ["coco", "urban1k"])
def test_cli_one_benchmark(checkpoint, tmp_path, capsys, name):
    root = tmp_path / name
    (make_karpathy(root, name) if name == "coco" else make_urban1k(root))
    res = eval_json(checkpoint, tmp_path, "--benchmark", name, "--root", str(root))
    assert res["step"] == 0 and res["context_length"] == 64 and "text_clean" in res
    figs = res["benchmarks"][name]
    check_recalls(figs)
    assert figs["images"] == (2 if name == "coco" else 4)
    assert figs["texts"] == (10 if name == "coco" else 4)
    assert f"| {name} |" in capsys.readouterr().out


def test_cli_long8_table(checkpoint, tmp_path, capsys):
    make_dci(tmp_path / "dci")
    make_iiw(tmp_path / "iiw")
    make_sharegpt4v(tmp_path / "sharegpt4v")
    res = eval_json(
        checkpoint, tmp_path, "--benchmark", "long8", "--root", str(tmp_path), "--max-samples", "3"
    )
    assert sorted(res["benchmarks"]) == sorted(LONG8)
    for figs in res["benchmarks"].values():
        check_recalls(figs)
        assert figs["images"] == 3
    cols = res["long8"]
    assert list(cols) == [
        "DCI I2T", "DCI T2I", "IIW I2T", "IIW T2I",
        "SV-1k I2T", "SV-1k T2I", "SV-10k I2T", "SV-10k T2I", "Avg",
    ]  # fmt: skip
    assert cols["Avg"] == pytest.approx(sum(list(cols.values())[:8]) / 8)
    assert cols["DCI I2T"] == res["benchmarks"]["dci"]["i2t_R@1"]
    out = capsys.readouterr().out
    assert "| Model | DCI I2T | DCI T2I |" in out and "| Avg |" in out


def test_image_files_embedded_once(checkpoint, tmp_path, monkeypatch):
    """ShareGPT4V-10k after -1k embeds only the images -1k did not; results are unchanged."""
    from train_hooks.benchmarks import run
    from train_hooks.evaluate import load_checkpoint

    model, _, _ = load_checkpoint(checkpoint)
    make_sharegpt4v(tmp_path)
    paths = load_benchmark("sharegpt4v-10k", tmp_path, max_samples=5).images
    seen = []
    real = run.embed_images
    monkeypatch.setattr(run, "embed_images", lambda m, p, *a: seen.append(len(p)) or real(m, p, *a))
    cache: dict = {}
    first = run.embed_image_files(model, paths[:3], cache=cache)
    both = run.embed_image_files(model, paths + paths[:1], cache=cache)
    assert seen == [3, 2]
    assert torch.equal(both[:3], first) and torch.equal(both[5], both[0])
    assert torch.allclose(both, real(model, paths + paths[:1]), atol=1e-6)


def test_cli_bench_root_overrides(checkpoint, tmp_path):
    make_dci(tmp_path / "elsewhere")
    res = eval_json(
        checkpoint, tmp_path, "--benchmark", "dci", "--bench-root", f"dci={tmp_path / 'elsewhere'}"
    )
    assert res["benchmarks"]["dci"]["images"] == 4


def test_score_classification_on_a_few_classes(checkpoint, tmp_path):
    """The scoring path with 3 classes x 2 templates: accuracy equals an argmax by hand."""
    from train_hooks.benchmarks.base import ClassificationSet
    from train_hooks.benchmarks.run import score_classification
    from train_hooks.evaluate import class_embeddings, embed_images, load_checkpoint

    model, tok, _ = load_checkpoint(checkpoint)
    make_imagenet(tmp_path)
    full = load_benchmark("imagenet", tmp_path)
    names, temps = ["tench", "goldfish", "toilet paper"], ["a photo of a {}.", "a {}."]
    labels = [{0: 0, 1: 1, 999: 2}[c] for c in full.labels]
    cs = ClassificationSet("mini", full.images, labels, names, temps)
    res = score_classification(model, tok, cs)
    logits = embed_images(model, full.images) @ class_embeddings(model, tok, names, temps).t()
    want = 100.0 * (logits.argmax(1) == torch.tensor(labels)).float().mean().item()
    assert res["top1"] == pytest.approx(want) and res["top5"] == 100.0  # 3 classes < 5
    assert res["classes"] == 3 and res["templates"] == 2 and res["images"] == 6


@pytest.mark.slow  # 80,000 prompts: about a minute on two CPU cores
def test_cli_imagenet_zero_shot(checkpoint, tmp_path):
    make_imagenet(tmp_path)
    res = eval_json(checkpoint, tmp_path, "--benchmark", "imagenet", "--root", str(tmp_path))
    figs = res["benchmarks"]["imagenet"]
    assert figs["classes"] == 1000 and figs["templates"] == 80 and figs["images"] == 6
    assert 0.0 <= figs["top1"] <= figs["top5"] <= 100.0
