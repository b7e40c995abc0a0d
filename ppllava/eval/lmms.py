"""PPLLaVA as an lmms-eval model, registered as `ppllava` (an entry point: see `ppllava.eval`).

    python -m lmms_eval --model ppllava \\
        --model_args pretrained=runs/r/sft2/model,pooling=prompt,num_frames=8,device=cpu,dtype=float32 \\
        --tasks ppllava_world_test --include_path runs/lmms-tasks

Model args (lmms-eval's key=value list; a T x H x W shape is written 4x2x2, since commas split args):
  pretrained       a checkpoint directory: the kit's own (config.yaml, `load_pretrained`) or a
                   LLaVA-NeXT(-Video) / released PPLLaVA one (config.json, `from_llava_next`)
  clip, clip_model the CLIP side of a LLaVA-NeXT directory: a Hugging Face CLIP directory, or an
                   open_clip file with its config name (ViT-L-14-336); released PPLLaVA carries its own
  pooling          none | temporal_mean | adaptive | spatial | prompt, or a selection / merging mode
                   topk | random | merge | dominant, or fastv (pruning inside the LLM); default: the
                   checkpoint's
  video_token_budget  tokens a selection / merging mode keeps of a video, and fastv from its layer K on
                   (default: what prompt pooling makes of the same frames)
  fastv_layer      fastv's K, the LLM layer from which only the budget goes on (default 2)
  video_kernel, video_stride, video_output_size, pool_temperature: the pooling's geometry and sharpness
  weighting, pool_margin  prompt pooling's window weights: softmax | normalized | invariant | peak, and the
                   margin of "invariant" and "peak" (one rule for every video length; ppllava.ops.pooling)
  video_chunk_frames  frames the tower, relevance and pooling read at a time (long videos; default: all)
  num_frames       frames sampled per video, uniformly (default: the checkpoint's)
  reader           decord | pyav | frames (a folder of frame images per video); default: decord
  tokenizer        a tokenizer directory, or "world" (the kit's word-level one); default: the
                   checkpoint's own, or "world" for a kit checkpoint saved without one
  template         vicuna_v1 | chatml | plain | tokenizer (the tokenizer's chat template); default: the
                   saved processor's, else vicuna_v1
  device, dtype    cpu | cuda | cuda:N (default cuda when there is one); float32 | bfloat16 | float16
  max_new_tokens   when a task does not set it
`--batch_size N` batches N requests of one kind (video, image, text) and one generation setting.

Every input goes through `PPLLaVAProcessor`, as in the kit's own evaluation: a task's text gets one
`<video>` / `<image>` placeholder per visual in front when it has none (lmms-eval's tasks give the
question alone), the kit's conversation template, and the question as the CLIP prompt. Decoding is
greedy, as the kit's scores are; a task asking for sampling or beams is refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from ppllava.config import PPLLaVAConfig
from ppllava.data.tokenizer import build_world_tokenizer, load_tokenizer
from ppllava.model import from_llava_next, load_pretrained
from ppllava.model.loading import CONFIG
from ppllava.processor import PROCESSOR_CONFIG, PPLLaVAProcessor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHAPES = ("video_kernel", "video_stride", "video_output_size")


def parse_shape(name: str, value) -> Optional[Tuple[int, int, int]]:
    """A (T, H, W) model arg: "4x2x2" (or three ints) -> (4, 2, 2); None stays None."""
    if value is None:
        return None
    parts = value.split("x") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"model arg {name} must be T x H x W positive ints written like 4x2x2, got {value!r}")
    return shape


def _number(name: str, value, kind=float):
    """A model arg lmms-eval handed over as text or a number, as `kind`; a clear error naming it otherwise."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"model arg {name} must be {'a whole number' if kind is int else 'a number'}, "
                         f"got {value!r}") from None


class PPLLaVALMMS(lmms):
    """lmms-eval's `ppllava` model: `generate_until` (greedy) and `loglikelihood` on PPLLaVA."""

    is_simple = True  # lmms-eval's "simple" protocol: tasks hand over text, a visuals function and gen kwargs

    def __init__(self, pretrained: str, pooling: Optional[str] = None, video_kernel=None, video_stride=None,
                 video_output_size=None, pool_temperature: Optional[float] = None, weighting: Optional[str] = None,
                 pool_margin: Optional[float] = None, video_chunk_frames: Optional[int] = None,
                 num_frames: Optional[int] = None,
                 video_token_budget: Optional[int] = None, fastv_layer: Optional[int] = None,
                 reader: Optional[str] = None, clip: Optional[str] = None, clip_model: Optional[str] = None,
                 tokenizer: Optional[str] = None, template: Optional[str] = None, device: Optional[str] = None,
                 dtype: str = "float32", batch_size=1, max_new_tokens: int = 32) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"model arg dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
        self.batch_size = None if str(batch_size).startswith("auto") else _number("--batch_size", batch_size, int)
        if self.batch_size is None or self.batch_size < 1:
            raise ValueError(f"--batch_size must be a count >= 1 (no 'auto' for ppllava), got {batch_size!r}")
        self.max_new_tokens = _number("max_new_tokens", max_new_tokens, int)
        if self.max_new_tokens < 1:
            raise ValueError(f"model arg max_new_tokens must be >= 1, got {max_new_tokens!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        overrides = {"pooling": pooling, "pool_temperature": pool_temperature, "weighting": weighting,
                     "pool_margin": None if pool_margin is None else _number("pool_margin", pool_margin, float),
                     "video_chunk_frames": video_chunk_frames, "num_frames": num_frames,
                     "video_token_budget": video_token_budget, "fastv_layer": fastv_layer,
                     **{name: parse_shape(name, value) for name, value in
                        zip(SHAPES, (video_kernel, video_stride, video_output_size))}}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        directory = Path(pretrained)
        if (directory / CONFIG).is_file():  # the kit's own format
            if clip is not None or clip_model is not None:
                raise ValueError(f"{directory} is a kit checkpoint with its CLIP side inside; "
                                 "model args clip / clip_model are for LLaVA-NeXT directories")
            model = load_pretrained(directory, **overrides)
        elif (directory / "config.json").is_file():  # Hugging Face LLaVA-NeXT(-Video) or released PPLLaVA
            model = from_llava_next(directory, clip, clip_model=clip_model, dtype=DTYPES[dtype], **overrides)
        else:
            raise FileNotFoundError(f"model arg pretrained={pretrained}: neither a kit checkpoint ({CONFIG}) nor a "
                                    "Hugging Face LLaVA-NeXT directory (config.json)")
        self.model = model.to(device=self.device, dtype=DTYPES[dtype]).eval()
        chosen = {k: v for k, v in (("template", template), ("reader", reader)) if v is not None}
        self.processor = self._processor(directory, self.model.config, tokenizer, chosen)
        self.tokenizer = self.processor.tokenizer

    @staticmethod
    def _processor(directory: Path, config: PPLLaVAConfig, tokenizer: Optional[str],
                   chosen: Dict[str, str]) -> PPLLaVAProcessor:
        """The checkpoint's saved processor, else one on the tokenizer named (or found) here; `chosen`:
        the template and reader the model args set."""
        if (directory / PROCESSOR_CONFIG).is_file():
            if tokenizer is not None:
                raise ValueError(f"{directory} holds its own processor ({PROCESSOR_CONFIG}) and tokenizer; "
                                 "model arg tokenizer is for checkpoints without one")
            # The frames follow the model's config, which the num_frames model arg has already set.
            return PPLLaVAProcessor.from_pretrained(directory, config, num_frames=config.num_frames, **chosen)
        if tokenizer == "world" or (tokenizer is None and (directory / CONFIG).is_file()
                                    and not (directory / "tokenizer_config.json").is_file()):
            # The kit's recipe trains on the world's word-level tokenizer and saves only the model.
            tok = build_world_tokenizer()
            if len(tok) > config.llm_vocab_size:
                raise ValueError(f"the world tokenizer has {len(tok)} tokens but {directory} an LLM vocabulary of "
                                 f"{config.llm_vocab_size}: pass model arg tokenizer=<its tokenizer directory>")
        else:
            source = Path(tokenizer) if tokenizer is not None else directory
            if not (source / "tokenizer_config.json").is_file():
                raise FileNotFoundError(f"{source}: no tokenizer_config.json; pass model arg tokenizer=<directory> "
                                        "or tokenizer=world")
            tok = load_tokenizer(source)
        return PPLLaVAProcessor(tok, config, **{"template": "vicuna_v1", **chosen})

    # --- requests -------------------------------------------------------------------------------
    def _visuals(self, doc_to_visual, doc_id: int, task: str, split: str) -> Tuple[str, list]:
        """(kind, visuals) of one doc: lmms-eval gives video paths as strings and images as PIL images."""
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        visuals = [v for v in (visuals or []) if v is not None]
        if not visuals:
            return "text", []
        kinds = {"video" if isinstance(v, (str, Path)) else "image" if hasattr(v, "convert") else type(v).__name__
                 for v in visuals}
        if len(kinds) > 1 or not kinds <= {"video", "image"}:
            raise ValueError(f"task {task}, doc {doc_id}: visuals must be all video paths or all PIL images, got "
                             f"{sorted(kinds)}")
        return kinds.pop(), visuals

    def _prompt(self, context: str, kind: str, count: int) -> str:
        """The chat-template prompt of a task's text, with a placeholder per visual in front when it has none."""
        content = context
        if kind != "text" and "<video>" not in context and "<image>" not in context:
            # As message parts: a kit template writes "<video>\n" + text, a tokenizer's template its own layout.
            content = [{"type": kind}] * count + [{"type": "text", "text": context}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}])

    def _inputs(self, items: Sequence[Tuple[str, str, list]]) -> Dict[str, object]:
        """(context, kind, visuals) of one kind -> the model's inputs on its device, padded left."""
        kind = items[0][1]
        media = {f"{kind}s": [visuals for _, _, visuals in items]} if kind != "text" else {}
        inputs = self.processor([self._prompt(c, k, len(v)) for c, k, v in items], padding_side="left", **media)
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}

    def _generation(self, gen_kwargs: dict, task: str) -> Tuple[int, Tuple[str, ...]]:
        """(max_new_tokens, until) of a task's generation kwargs; sampling and beams refused."""
        kwargs = dict(gen_kwargs or {})
        if kwargs.get("do_sample") or int(kwargs.get("num_beams", 1) or 1) > 1:
            raise ValueError(f"task {task} asks for do_sample={kwargs.get('do_sample')}, num_beams="
                             f"{kwargs.get('num_beams')}; the ppllava model decodes greedily (the kit's scores "
                             "are greedy)")
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        if not all(isinstance(u, str) for u in until):
            raise ValueError(f"task {task}: generation kwarg until must be strings, got {until!r}")
        return int(kwargs.get("max_new_tokens", self.max_new_tokens)), tuple(u for u in until if u)

    def generate_until(self, requests: List[Instance]) -> List[str]:
        """Greedy answers, cut at the first `until` string, in the order of the requests."""
        groups: Dict[tuple, list] = {}
        for i, request in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            kind, visuals = self._visuals(doc_to_visual, doc_id, task, split)
            groups.setdefault((kind, self._generation(gen_kwargs, task)), []).append((i, (context, kind, visuals)))
        answers: List[Optional[str]] = [None] * len(requests)
        chunks = [(key, items[s: s + self.batch_size]) for key, items in groups.items()
                  for s in range(0, len(items), self.batch_size)]
        for (_, (max_new_tokens, until)), chunk in tqdm(chunks, desc="ppllava answers", disable=self.rank != 0):
            with torch.no_grad():
                new = self.model.generate(**self._inputs([item for _, item in chunk]), max_new_tokens=max_new_tokens,
                                          do_sample=False, eos_token_id=self.tokenizer.eos_token_id)
            for (i, _), tokens in zip(chunk, new):
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                for stop in until:
                    text = text.split(stop, 1)[0]
                answers[i] = text
        return answers

    @torch.no_grad()
    def loglikelihood(self, requests: List[Instance]) -> List[Tuple[float, bool]]:
        """(log P(continuation | context), whether greedy decoding would produce it) per request."""
        out = []
        for request in tqdm(requests, desc="ppllava loglikelihood", disable=self.rank != 0):
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            kind, visuals = self._visuals(doc_to_visual, doc_id, task, split)
            target = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            if not target:
                raise ValueError(f"task {task}, doc {doc_id}: the continuation {continuation!r} has no tokens")
            inputs = self._inputs([(context, kind, visuals)])
            target = torch.tensor([target], device=self.device)
            inputs["input_ids"] = torch.cat([inputs["input_ids"], target], 1)
            inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(target)], 1)
            # Position p's logits predict token p + 1: the continuation's are the n before the last.
            logits = self.model(**inputs).logits[0, -target.shape[1] - 1: -1].float()  # (n, V)
            logp = logits.log_softmax(-1).gather(1, target[0, :, None]).sum()
            out.append((float(logp), bool((logits.argmax(-1) == target[0]).all())))
        return out

    def generate_until_multi_round(self, requests) -> List[str]:
        raise NotImplementedError("the ppllava model answers single-round tasks (generate_until, loglikelihood); "
                                  "generate_until_multi_round is not implemented")
