"""`longcap convert-sharegpt4v`: a tiny checkpoint in ShareGPT4V's released layout, converted.

Checked: every released tensor lands where the llava-hf layout keeps it (values, not shapes),
the errors for a missing tower, a leftover key, a missing key and a wrong shape, the config and
processor mapping, a Hugging Face forward of the converted model against a forward assembled
by hand from the released tensors, and (slow) a `longcap recaption` run on vLLM's CPU build.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from recaption.convert_sharegpt4v import (  # noqa: E402
    SHAREGPT4V_SYSTEM,
    ConversionError,
    convert_sharegpt4v,
    load_checkpoint,
    map_state_dicts,
)
from recaption.families import get_family  # noqa: E402

PROMPT = "Describe the image in detail."


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    from toyworld.tiny_models import make_sharegpt4v_released

    root = tmp_path_factory.mktemp("sg4v")
    src = make_sharegpt4v_released(root / "ShareGPT4V-7B", seed=3)
    return {"src": src, "tower": root / "ShareGPT4V-7B-vision-tower", "root": root}


@pytest.fixture(scope="module")
def converted(released):
    dst = released["root"] / "converted"
    report = convert_sharegpt4v(released["src"], dst)
    return {"dst": dst, "report": report}


def _released_tensors(released) -> tuple[dict, dict]:
    """The released tensors, read here without the converter's reader."""
    llm = {}
    index = json.loads((released["src"] / "pytorch_model.bin.index.json").read_text())
    for name in sorted(set(index["weight_map"].values())):
        llm.update(torch.load(released["src"] / name, weights_only=True))
    tower = torch.load(released["tower"] / "pytorch_model.bin", weights_only=True)
    return llm, tower


def _copy_released(released, tmp_path: Path) -> tuple[Path, Path]:
    src, tower = tmp_path / "src", tmp_path / "tower"
    shutil.copytree(released["src"], src)
    shutil.copytree(released["tower"], tower)
    return src, tower


# Where each released name belongs in the llava-hf layout, written out independently of the
# converter: (pattern on the released name, replacement).
LLM_RULES = [
    (r"^model\.mm_projector\.0\.", "multi_modal_projector.linear_1."),
    (r"^model\.mm_projector\.2\.", "multi_modal_projector.linear_2."),
    (r"^lm_head\.", "language_model.lm_head."),
    (r"^model\.", "language_model.model."),
]


def _dest(name: str) -> str:
    for pat, rep in LLM_RULES:
        if re.match(pat, name):
            return re.sub(pat, rep, name)
    raise AssertionError(name)


def test_every_released_tensor_lands_where_it_belongs(released, converted):
    from safetensors.torch import load_file

    llm, tower = _released_tensors(released)
    out = load_file(converted["dst"] / "model.safetensors")
    expected = set()
    vocab = llm["model.embed_tokens.weight"].shape[0]
    for name, t in llm.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue  # derived from rope_theta; checked by the converter, not copied
        dest = _dest(name)
        expected.add(dest)
        got = out[dest]
        assert got.dtype == t.dtype, name
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(got[:vocab], t), name
            # The added <image> row: the mean of the released rows.
            assert torch.allclose(got[vocab:].float(), t.float().mean(0, keepdim=True), atol=1e-2)
        else:
            assert torch.equal(got, t), name
    for name, t in tower.items():
        dest = "vision_tower." + name
        expected.add(dest)
        assert out[dest].dtype == t.dtype and torch.equal(out[dest], t), name
    assert set(out) == expected  # nothing written that was not released
    rep = converted["report"]
    assert rep.llm_tensors == len(llm) and rep.tower_tensors == len(tower)
    assert rep.written_tensors == len(out)
    assert rep.verified_not_copied == sum(k.endswith("inv_freq") for k in llm) == 2


def test_config_and_processor_follow_the_released_config(released, converted):
    from transformers import AutoProcessor, AutoTokenizer

    cfg = json.loads((converted["dst"] / "config.json").read_text())
    rel = json.loads((released["src"] / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(converted["dst"])
    assert cfg["architectures"] == ["LlavaForConditionalGeneration"]
    assert cfg["vision_feature_layer"] == rel["mm_vision_select_layer"] == -2
    assert cfg["vision_feature_select_strategy"] == "default"  # select_feature: patch
    assert cfg["image_token_index"] == tok.convert_tokens_to_ids("<image>") == rel["vocab_size"]
    assert cfg["text_config"]["vocab_size"] == len(tok) == rel["vocab_size"] + 1
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "rms_norm_eps"):
        assert cfg["text_config"][k] == rel[k], k
    tower_cfg = json.loads((released["tower"] / "config.json").read_text())
    for k in ("hidden_size", "num_hidden_layers", "image_size", "patch_size", "hidden_act"):
        assert cfg["vision_config"][k] == tower_cfg[k], k
    assert cfg["image_seq_length"] == (56 // 14) ** 2
    proc = AutoProcessor.from_pretrained(converted["dst"])
    assert type(proc.image_processor).__name__ == "LlavaImageProcessor"
    assert proc.image_processor.do_pad  # image_aspect_ratio: pad
    assert proc.image_processor.crop_size["height"] == 56


def test_chat_template_renders_sharegpt4v_training_format(converted):
    from transformers import AutoProcessor, AutoTokenizer

    # conv_vicuna_v1 (share4v/conversation.py:253-263) with one space after <image>: see
    # test_prompt_token_ids_match_sharegpt4v_chunked_tokenization.
    expected = (
        "A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions. USER: <image> \n"
        f"{PROMPT} ASSISTANT:"
    )
    assert get_family("sharegpt4v").format_prompt(PROMPT) == expected
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    proc = AutoProcessor.from_pretrained(converted["dst"])
    assert proc.apply_chat_template(messages, add_generation_prompt=True) == expected
    tok = AutoTokenizer.from_pretrained(converted["dst"])
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == expected
    # A second turn: SeparatorStyle.TWO closes an answer with </s> and no space.
    turns = messages + [
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "text", "text": "More?"}]},
    ]
    two = proc.apply_chat_template(turns, add_generation_prompt=True)
    assert two == f"{expected} A cat.</s>USER: More? ASSISTANT:"
    assert two.startswith(SHAREGPT4V_SYSTEM + " USER:")


def test_prompt_token_ids_match_sharegpt4v_chunked_tokenization(released, converted):
    """ShareGPT4V tokenizes the conversation string `...USER: <image>\\n{prompt} ASSISTANT:`
    in chunks split at <image>, keeping the first chunk's BOS only (share4v/mm_utils.py:46-66);
    the family prompt, tokenized in one piece as vLLM does, must give the same ids."""
    from transformers import AutoTokenizer

    released_tok = AutoTokenizer.from_pretrained(released["src"])
    official = get_family("sharegpt4v").format_prompt(PROMPT).replace("<image> \n", "<image>\n")
    assert official.count("<image>\n") == 1
    chunks = [released_tok(c).input_ids for c in official.split("<image>")]
    image_id = AutoTokenizer.from_pretrained(converted["dst"]).convert_tokens_to_ids("<image>")
    reference = chunks[0] + [image_id] + chunks[1][1:]  # the later chunk's BOS dropped
    ours = AutoTokenizer.from_pretrained(converted["dst"])(
        get_family("sharegpt4v").format_prompt(PROMPT)
    ).input_ids
    assert ours == reference
    # The lone "▁" that starts the chunk after the image is what the extra space reproduces.
    after = reference[reference.index(image_id) + 1]
    assert released_tok.convert_ids_to_tokens(after) == "\u2581"


def _expand2square(img, color):
    """ShareGPT4V's pad-to-square (share4v/mm_utils.py:15-26), written out here."""
    from PIL import Image

    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), color)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def test_hf_forward_matches_a_reference_built_from_the_released_tensors(released, converted):
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image
    from transformers import (
        AutoProcessor,
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
        LlavaForConditionalGeneration,
    )

    llm, tower = _released_tensors(released)
    rel = json.loads((released["src"] / "config.json").read_text())
    # Reference: the released model as share4v_arch.py runs it (tower -> hidden_states[-2]
    # without CLS -> mm_projector Linear-GELU-Linear -> spliced at <image> into the LLaMA).
    llama_cfg = LlamaConfig(**{k: v for k, v in rel.items() if not k.startswith("mm_")})
    llama = LlamaForCausalLM(llama_cfg).float().eval()
    text_sd = {
        k: v.float()
        for k, v in llm.items()
        if not k.startswith("model.mm_projector") and not k.endswith("inv_freq")
    }
    llama.load_state_dict(text_sd, strict=True)
    clip = CLIPVisionModel(CLIPVisionConfig.from_pretrained(released["tower"])).float().eval()
    clip.load_state_dict({k.removeprefix("vision_model."): v.float() for k, v in tower.items()})

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))  # not square
    clip_proc = CLIPImageProcessor.from_pretrained(released["tower"])
    mean_colour = tuple(int(x * 255) for x in clip_proc.image_mean)
    ref_pixels = clip_proc(images=_expand2square(img, mean_colour), return_tensors="pt")
    ref_pixels = ref_pixels["pixel_values"].float()

    proc = AutoProcessor.from_pretrained(converted["dst"])
    inputs = proc(
        images=img, text=get_family("sharegpt4v").format_prompt(PROMPT), return_tensors="pt"
    )
    assert torch.allclose(inputs["pixel_values"].float(), ref_pixels, atol=1e-4)

    model, info = LlavaForConditionalGeneration.from_pretrained(
        converted["dst"], dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.eval()
    ids = inputs["input_ids"][0]
    image_id = model.config.image_token_index
    where = (ids == image_id).nonzero().flatten()
    assert len(where) == 16 and int(where[-1] - where[0]) == 15  # one run of 4x4 patches
    with torch.no_grad():
        got = model(
            input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"].float()
        ).logits[0, :, : rel["vocab_size"]]
        feats = clip(ref_pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        p0w, p0b = llm["model.mm_projector.0.weight"], llm["model.mm_projector.0.bias"]
        p2w, p2b = llm["model.mm_projector.2.weight"], llm["model.mm_projector.2.bias"]
        h = F.gelu(F.linear(feats, p0w.float(), p0b.float()))
        feats = F.linear(h, p2w.float(), p2b.float())[0]
        embed = llama.model.embed_tokens
        before, after = ids[: int(where[0])], ids[int(where[-1]) + 1 :]
        embeds = torch.cat([embed(before), feats, embed(after)])[None]
        want = llama(inputs_embeds=embeds).logits[0]
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


# --- errors ----------------------------------------------------------------------------------


def test_missing_tower_names_the_config_field_and_the_flag(released, tmp_path):
    src, _ = _copy_released(released, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["mm_vision_tower"] = "Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12"  # as released
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError) as info:
        convert_sharegpt4v(src, tmp_path / "out")
    msg = str(info.value)
    assert "mm_vision_tower: Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12" in msg
    assert "--vision-tower" in msg and str(src / "config.json") in msg
    assert not (tmp_path / "out").exists()
    # With the flag, the same folder converts.
    rep = convert_sharegpt4v(src, tmp_path / "out", vision_tower=released["tower"])
    assert rep.vision_tower == str(released["tower"])


def _with_llm_shard_edit(released, tmp_path, edit) -> Path:
    src, _ = _copy_released(released, tmp_path)
    shard = src / "pytorch_model-00002-of-00002.bin"
    sd = torch.load(shard, weights_only=True)
    edit(sd)
    torch.save(sd, shard)
    index_path = src / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard.name}
    index["weight_map"].update(dict.fromkeys(sd, shard.name))
    index_path.write_text(json.dumps(index))
    return src


def test_leftover_tensor_is_an_error_naming_key_and_file(released, tmp_path):
    src = _with_llm_shard_edit(
        released, tmp_path, lambda sd: sd.__setitem__("model.extra_adapter.weight", torch.ones(2))
    )
    with pytest.raises(ConversionError) as info:
        convert_sharegpt4v(src, tmp_path / "out", vision_tower=released["tower"])
    msg = str(info.value)
    assert "model.extra_adapter.weight" in msg and "pytorch_model-00002-of-00002.bin" in msg
    assert "no place in the llava-hf layout" in msg
    assert not (tmp_path / "out").exists()


def test_missing_tensor_is_an_error_naming_it(released, tmp_path):
    src = _with_llm_shard_edit(released, tmp_path, lambda sd: sd.pop("model.norm.weight"))
    with pytest.raises(ConversionError, match=r"missing tensor model\.norm\.weight"):
        convert_sharegpt4v(src, tmp_path / "out", vision_tower=released["tower"])


def test_shape_mismatch_names_key_shapes_and_file(released, tmp_path):
    def edit(sd):
        sd["model.mm_projector.2.weight"] = torch.zeros(128, 64, dtype=torch.bfloat16)

    src = _with_llm_shard_edit(released, tmp_path, edit)
    with pytest.raises(ConversionError) as info:
        convert_sharegpt4v(src, tmp_path / "out", vision_tower=released["tower"])
    msg = str(info.value)
    assert "model.mm_projector.2.weight has shape (128, 64)" in msg
    assert "the config says (128, 128)" in msg and "pytorch_model-00002-of-00002.bin" in msg


def test_safetensors_shards_convert_to_the_same_checkpoint(released, converted, tmp_path):
    """The safetensors copy of the release (its index beside the .bin one) is read instead of
    the pickles and gives the same tensors; a shard its index names but lacks is an error."""
    from safetensors.torch import load_file, save_file

    src, tower = _copy_released(released, tmp_path)
    index = json.loads((src / "pytorch_model.bin.index.json").read_text())
    weight_map = {}
    for name in sorted(set(index["weight_map"].values())):
        sd = torch.load(src / name, weights_only=True)
        st_name = name.replace("pytorch_model", "model").replace(".bin", ".safetensors")
        save_file(sd, src / st_name)
        weight_map.update(dict.fromkeys(sd, st_name))
    st_index = {"metadata": index["metadata"], "weight_map": weight_map}
    (src / "model.safetensors.index.json").write_text(json.dumps(st_index))
    for name in set(index["weight_map"].values()):
        (src / name).write_bytes(b"not a pickle: must not be read")
    convert_sharegpt4v(src, tmp_path / "out", vision_tower=tower)
    got = load_file(tmp_path / "out" / "model.safetensors")
    want = load_file(converted["dst"] / "model.safetensors")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    (src / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConversionError, match="model-00002-of-00002.safetensors: listed in"):
        convert_sharegpt4v(src, tmp_path / "out2", vision_tower=tower)


def test_tower_errors(released):
    llm, _ = load_checkpoint(released["src"], "LLM")
    tower, _ = load_checkpoint(released["tower"], "vision tower")
    cfg = json.loads((released["src"] / "config.json").read_text())
    vcfg = json.loads((released["tower"] / "config.json").read_text())
    # A tower of another width: refused before any tensor is compared.
    with pytest.raises(ConversionError, match="mm_hidden_size 64, the vision tower's config"):
        map_state_dicts(llm, tower, cfg, {**vcfg, "hidden_size": 32})
    # A tower tensor missing; a tower with one more layer than its config.
    partial = {k: v for k, v in tower.items() if "post_layernorm.bias" not in k}
    with pytest.raises(ConversionError, match=r"vision_model\.post_layernorm\.bias"):
        map_state_dicts(llm, partial, cfg, vcfg)
    with pytest.raises(ConversionError, match="encoder.layers.2"):
        map_state_dicts(llm, tower, cfg, {**vcfg, "num_hidden_layers": 2})
    # Tower weights embedded in the LLM checkpoint: ambiguous, said so.
    extra = {**llm, "model.vision_tower.vision_tower.vision_model.post_layernorm.bias": 0}
    with pytest.raises(ConversionError, match="embeds vision tower weights"):
        map_state_dicts(extra, tower, cfg, vcfg)


def test_rope_buffer_that_disagrees_with_the_config_is_refused(released):
    llm, _ = load_checkpoint(released["src"], "LLM")
    tower, _ = load_checkpoint(released["tower"], "vision tower")
    cfg = json.loads((released["src"] / "config.json").read_text())
    vcfg = json.loads((released["tower"] / "config.json").read_text())
    with pytest.raises(ConversionError, match=r"rotary_emb\.inv_freq does not match rope_theta"):
        map_state_dicts(llm, tower, {**cfg, "rope_theta": 500000.0}, vcfg)


def test_unsupported_config_fields_and_existing_output(released, converted, tmp_path):
    with pytest.raises(ConversionError, match="exists and is not empty"):
        convert_sharegpt4v(released["src"], converted["dst"])
    src, tower = _copy_released(released, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "mm_use_im_start_end": True}))
    with pytest.raises(ConversionError, match="mm_use_im_start_end"):
        convert_sharegpt4v(src, tmp_path / "out", vision_tower=tower)
    (src / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ConversionError, match="not ShareGPT4V's released layout"):
        convert_sharegpt4v(src, tmp_path / "out", vision_tower=tower)


def test_cli_converts_and_reports_errors_with_exit_2(released, tmp_path, capsys):
    from pipeline.cli import main

    dst = tmp_path / "cli-out"
    assert main(["convert-sharegpt4v", str(released["src"]), str(dst)]) == 0
    out = capsys.readouterr().out
    assert "family: sharegpt4v" in out and str(dst) in out
    assert (dst / "model.safetensors").is_file()
    assert main(["convert-sharegpt4v", str(released["src"]), str(dst)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_recaption_config_refuses_the_released_layout(released, converted, tmp_path):
    import yaml

    from pipeline.config_loader import ConfigError
    from pipeline.recaption_config import load_config

    def cfg_with(path: str) -> Path:
        p = tmp_path / "run.yaml"
        model = {"name": "s", "family": "sharegpt4v", "path": path}
        p.write_text(yaml.safe_dump({"input": "in", "output": "out", "models": [model]}))
        return p

    for path in (str(released["src"]), "Lin-Chen/ShareGPT4V-7B"):
        with pytest.raises(ConfigError) as info:
            load_config(cfg_with(path))
        msg = str(info.value)
        assert "models[0].path" in msg and "longcap convert-sharegpt4v" in msg, msg
    assert load_config(cfg_with(str(converted["dst"]))).models[0].family == "sharegpt4v"
    # The original LLaVA class (ShareGPT4V's mirrors, LLaVA-1.5's own originals): both ways out.
    original = tmp_path / "llava-original"
    original.mkdir()
    (original / "config.json").write_text(json.dumps({"architectures": ["LlavaLlamaForCausalLM"]}))
    with pytest.raises(ConfigError) as info:
        load_config(cfg_with(str(original)))
    assert "llava-hf/llava-1.5-7b-hf" in str(info.value)
    assert "longcap convert-sharegpt4v" in str(info.value)


# --- vLLM -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_converted_tiny_model_recaptions_every_key_once_in_vllm(tiny_models, tmp_path, monkeypatch):
    """`longcap recaption` itself (its own local Ray on LONGCAP_RAY_NODE_IP, vLLM's CPU build)
    on the converted tiny model. A Ray temp folder of its own: a cluster of another run on this
    machine, named in the default one, must not be joined."""
    import tempfile

    import pyarrow.parquet as pq
    import ray

    from pipeline.cli import main
    from tests.recaption.conftest import make_input_shards, write_config

    dst = tmp_path / "sharegpt4v-hf"
    convert_sharegpt4v(tiny_models["sharegpt4v"], dst)
    make_input_shards(tmp_path / "in", shards=2)
    cfg = write_config(
        tmp_path / "run.yaml",
        tmp_path / "in",
        tmp_path / "out",
        {"sg4v": ("sharegpt4v", dst)},
        progress=False,
    )
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths are capped
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    try:
        assert main(["recaption", "--config", str(cfg)]) == 0
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    rows = [
        r
        for p in sorted((tmp_path / "out" / "captions" / "sg4v").glob("*.parquet"))
        for r in pq.read_table(p).to_pylist()
    ]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 2 * 6 + 1  # shard 00001 also has a failed download
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 2 * 6 - 1  # and one corrupt image
    assert all(r["generated_tokens"] > 0 and r["finish_reason"] for r in ok)
    report = json.loads((tmp_path / "out" / "recaption_report.json").read_text())
    assert report["complete"] and report["models"]["sg4v"]["units_done"] == 2
