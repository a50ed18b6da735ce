"""The `transformers` engine: batched Hugging Face `generate`, for models vLLM cannot run.

InstructBLIP (Vicuna and FlanT5 releases) is not in vLLM's registry; this engine runs it, and any
model `AutoModelForImageTextToText` loads (llava-1.5, qwen2-vl, blip-2, ...), behind the same
unit contract as `recaption.engine.CaptionEngine`: `TransformersEngine(model_cfg)`,
`.load_seconds`, `.generate(keys, images)` -> one `Generation` per key, in order.

Where it runs: `gpus_per_replica` 0 on the CPU in float32 (bf16 matmuls are slow on CPUs without
AMX, and the CPU runs are tests and toys); above 0 on one GPU (`cuda`: Ray's CUDA_VISIBLE_DEVICES
picks which) in the config's `dtype` (bfloat16 by default). Each `generate` call is one padded
batch of the images it is given (`batch_size` per call from the actor): left padding for
decoder-only language models, right padding for encoder-decoder ones (T5's relative positions
would shift under left padding; LAVIS pads FlanT5 prompts on the right too).

Sampling follows the config alone, as the vLLM engine's explicit SamplingParams do: the
checkpoint's generation_config gives only token ids (eos, pad, decoder start), never its
sampling defaults. `engine_kwargs` are `from_pretrained` keyword arguments (e.g.
`attn_implementation: sdpa`), except `generate_kwargs`, extra keyword arguments of `generate`
(e.g. `repetition_penalty: 1.5`, `num_beams: 5` as LAVIS captions, or `min_new_tokens`).

Reproducibility: with `temperature: 0` decoding is greedy. With sampling, every key draws from
its own random stream, seeded by `key_seed(seed, key)` and used only for that key's tokens, so a
key's draws do not depend on its batch-mates or its position. What is reproducible: the same
unit in the same batches on the same machine and software gives the same text, greedy or
sampled. What is not: a key captioned in another batch (other batch size, other neighbours) has
other padding, which can change its logits by rounding and so, rarely on CPU float32 and more
often in bf16 on a GPU, a token where two candidates are nearly tied; and the streams are not
vLLM's, so the two engines never give the same sampled text.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from recaption.engine import Generation, _refuse_remote_code, choose_prompt, key_seed
from recaption.families import get_family
from recaption.prompts import prompt_renderer

# Model classes by family; any other family loads with AutoModelForImageTextToText.
_MODEL_CLASSES = {"instructblip": "InstructBlipForConditionalGeneration"}
# generate() arguments this engine sets from the model config: not from generate_kwargs.
_OWN_GENERATE_ARGS = {
    "max_new_tokens",
    "max_length",
    "do_sample",
    "temperature",
    "top_p",
    "stop_strings",
    "logits_processor",
    "generation_config",
    "tokenizer",
    "eos_token_id",
    "pad_token_id",
    "num_return_sequences",
}


def _torch_dtype(name: str):
    import torch

    if name == "auto":
        return "auto"
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype {name!r} is not a torch dtype (bfloat16, float16, float32, auto)")
    return dtype


class KeyedSampler:
    """A logits processor that samples each row from its own seeded stream (temperature, then
    top-p), and returns scores where only the drawn token is finite, so that greedy decoding
    takes it. Rows are keys: row i always draws from `seeds[i]`'s generator, one uniform number
    per step, whatever the other rows are."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float) -> None:
        import torch

        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids, scores):
        import torch

        if scores.shape[0] != len(self.generators):
            raise RuntimeError(
                f"{scores.shape[0]} rows of scores for {len(self.generators)} keys "
                "(beam search and sampling do not mix: set num_beams 1 or temperature 0)"
            )
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Top-p: keep the smallest head of the sorted tokens whose mass reaches top_p.
        sorted_p = sorted_p * ((sorted_p.cumsum(-1) - sorted_p) < self.top_p)
        cdf = sorted_p.cumsum(-1)
        # One draw per row from its own generator (on the CPU: device-independent streams).
        u = torch.cat([torch.rand(1, generator=g) for g in self.generators]).to(cdf.device)
        u = u * cdf[:, -1]  # the kept mass: the top-p head was not renormalised
        pos = (cdf < u[:, None]).sum(-1).clamp(max=cdf.shape[-1] - 1)
        choice = order.gather(1, pos[:, None])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, choice, 0.0)


class TransformersEngine:
    """A Hugging Face model for one model config (`pipeline.recaption_config.ModelConfig`)."""

    def __init__(self, model_cfg: Any, loaded: tuple[Any, Any] | None = None) -> None:
        """Load the model config's checkpoint; or, with `loaded` (model, processor), use those
        as they are (placed and typed by the caller), e.g. a model built in code."""
        import torch
        import transformers

        self.cfg = model_cfg
        self.family = get_family(model_cfg.family)
        # The checkpoint's chat template if it ships one, else the family's (recaption/prompts.py).
        self.render_prompt = prompt_renderer(model_cfg)
        # Never from a family default: only the model's own config may turn it on.
        trust = bool(getattr(model_cfg, "trust_remote_code", False))
        if self.family.remote_code_architectures and not trust and loaded is None:
            _refuse_remote_code(model_cfg, self.family.remote_code_architectures)
        kwargs = dict(model_cfg.engine_kwargs)
        self.generate_kwargs = dict(kwargs.pop("generate_kwargs", None) or {})
        clash = sorted(set(self.generate_kwargs) & _OWN_GENERATE_ARGS)
        if clash:
            raise ValueError(
                f"model {model_cfg.name!r}: engine_kwargs.generate_kwargs sets {clash}, which "
                "come from the model config (max_tokens, temperature, top_p, the family's stops)"
            )
        if self.generate_kwargs.get("num_beams", 1) > 1 and model_cfg.temperature > 0:
            raise ValueError(
                f"model {model_cfg.name!r}: num_beams > 1 is beam search; set temperature: 0"
            )
        on_gpu = model_cfg.gpus_per_replica > 0
        t0 = time.perf_counter()
        if loaded is None:
            dtype = _torch_dtype(model_cfg.dtype) if on_gpu else torch.float32
            cls_name = _MODEL_CLASSES.get(model_cfg.family, "AutoModelForImageTextToText")
            processor = transformers.AutoProcessor.from_pretrained(
                model_cfg.path, trust_remote_code=trust
            )
            model = getattr(transformers, cls_name).from_pretrained(
                model_cfg.path, dtype=dtype, trust_remote_code=trust, **kwargs
            )
            model = model.to(torch.device("cuda" if on_gpu else "cpu"))
        else:
            model, processor = loaded
        self.processor = processor
        self.model = model.eval()
        self.device, self.dtype = self.model.device, self.model.dtype
        self.load_seconds = time.perf_counter() - t0
        self._setup_tokens(transformers.GenerationConfig)

    def _setup_tokens(self, generation_config_cls) -> None:
        """Padding side, eos and pad ids, and the generation config of token ids only."""
        config = self.model.config
        text_config = config.get_text_config()
        self.encoder_decoder = bool(
            getattr(text_config, "is_encoder_decoder", False) or config.is_encoder_decoder
        )
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "right" if self.encoder_decoder else "left"
        gen_cfg = self.model.generation_config
        eos = gen_cfg.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_ids = eos
        pad = gen_cfg.pad_token_id
        if pad is None:
            pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (eos[0] if eos else 0)
        # Token ids only: the checkpoint's sampling defaults (Qwen2-VL ships top_k 1 and a
        # repetition penalty) would make this engine differ from the config and from vLLM.
        ids = {"decoder_start_token_id": gen_cfg.decoder_start_token_id}
        if gen_cfg.bos_token_id is not None:
            ids["bos_token_id"] = gen_cfg.bos_token_id
        self.generation_config = generation_config_cls(
            eos_token_id=self.eos_ids or None,
            pad_token_id=self.pad_id,
            **{k: v for k, v in ids.items() if v is not None},
        )

    def generate(self, keys: list[str], images: list[Any]) -> list[Generation]:
        """Caption images (PIL images or HxWx3 uint8 arrays) of the given keys, in order, in
        one padded batch."""
        import torch
        from PIL import Image

        cfg = self.cfg
        if len(keys) != len(images):
            raise ValueError(f"{len(keys)} keys for {len(images)} images")
        if not keys:
            return []
        prompts = [choose_prompt(cfg.prompts, cfg.seed, k) for k in keys]
        pil = [
            (img if isinstance(img, Image.Image) else Image.fromarray(img)).convert("RGB")
            for img in images
        ]
        inputs = self.processor(
            images=pil,
            text=[self.render_prompt(p) for p in prompts],
            padding=True,
            return_tensors="pt",
        ).to(self.device, dtype=self.dtype)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        gen_cfg = copy.deepcopy(self.generation_config)
        # do_sample False: sampling, if any, is KeyedSampler's. What update() does not know
        # as a generation setting goes to generate() as it is.
        kwargs = gen_cfg.update(
            max_new_tokens=cfg.max_tokens, do_sample=False, **self.generate_kwargs
        )
        if self.family.stop:
            gen_cfg.stop_strings = list(self.family.stop)
            kwargs["tokenizer"] = self.tokenizer
        if cfg.temperature > 0:
            seeds = [key_seed(cfg.seed, k) for k in keys]
            kwargs["logits_processor"] = [KeyedSampler(seeds, cfg.temperature, cfg.top_p)]
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=gen_cfg, **kwargs)
        new = self._new_tokens(out, inputs.get("input_ids"))
        result = []
        for key, prompt, row, n_prompt in zip(keys, prompts, new, prompt_tokens, strict=True):
            text, finish, n = self._finish(row)
            result.append(Generation(key, prompt, text, finish, n, int(n_prompt)))
        return result

    def _new_tokens(self, out, input_ids) -> list[list[int]]:
        """The generated ids of each row: without the prompt (decoder-only models return it
        first) or the decoder's start token (encoder-decoder)."""
        if self.encoder_decoder:
            return out[:, 1:].tolist()
        n = input_ids.shape[1] if input_ids is not None else 0
        if n and out.shape[1] >= n and bool((out[:, :n] == input_ids).all()):
            return out[:, n:].tolist()
        return out.tolist()

    def _finish(self, ids: list[int]) -> tuple[str, str, int]:
        """(text, finish_reason, generated tokens) of one row, as vLLM reports them: the text
        ends before the eos token or the first stop string; tokens count up to the token that
        completed the stop string, without eos and the padding after it; "length" when the
        row ran to max_tokens without either."""
        finish = "length"
        for i, t in enumerate(ids):
            if t in self.eos_ids:
                ids, finish = ids[:i], "stop"
                break
        decode = self.tokenizer.decode
        # Stops are looked for with special tokens kept: a stop may be one (`<|im_end|>`).
        raw = decode(ids, skip_special_tokens=False)
        hits = [(raw.find(s), s) for s in self.family.stop if s and s in raw]
        if hits:
            stop = min(hits)[1]
            # The shortest prefix that holds the stop: generate padded the row after it.
            lo, hi = 1, len(ids)
            while lo < hi:
                mid = (lo + hi) // 2
                if stop in decode(ids[:mid], skip_special_tokens=False):
                    hi = mid
                else:
                    lo = mid + 1
            ids, finish = ids[:lo], "stop"
        text = decode(ids, skip_special_tokens=True)
        if hits and stop in text:
            text = text[: text.find(stop)]
        if finish == "length" and len(ids) < self.cfg.max_tokens:
            # Ended early with no eos or stop: only a generate_kwargs stopping rule does that.
            finish = "stop"
        return text, finish, len(ids)
