"""Computed scores, no model-as-judge: answer accuracy by task (multiple choice among them),
pointing accuracy of the CLIP relevance, DPO preference accuracy, hallucination rate and caption recall.

A caption lists the scene's objects ("a red circle moves left and a blue star stays still") in an
order the video does not show, so it is right when it states the same clauses in any order, and it
hallucinates when it states a clause that is not true of the video (CHAIR-style: a left-out object
is an omission, not a hallucination). Every other answer is right when it matches, wrong otherwise.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from ppllava.data.datamodules import MediaBatchSampler
from ppllava.data.dataset import Collator, LLaVADataset, model_inputs, oracle_batch
from ppllava.ops import prompt_guided_pool3d, prompt_relevance
from ppllava.train.losses import pointing_accuracy, sequence_logprobs


def normalise_answer(text: str) -> str:
    """Lower case, single spaces, punctuation spaced alike ("red, so B" == "red , so B")."""
    text = re.sub(r"\s*([,.?!:;])\s*", r" \1 ", text.replace("</s>", " "))
    return " ".join(text.split()).lower()


def caption_parts(text: str) -> List[str]:
    """A caption's clauses, normalised, in the order stated: "a star and a red circle" -> ["a star", "a red circle"]."""
    return [c.strip() for c in normalise_answer(text).split(" and ") if c.strip()]


def caption_clauses(text: str) -> List[str]:
    """A caption's clauses, normalised and sorted: "a star and a red circle" -> ["a red circle", "a star"]."""
    return sorted(caption_parts(text))


def answer_correct(predicted: str, answer: str, task: str) -> bool:
    """Exact match after normalisation; for captions, the same clauses in any order."""
    if task == "caption":
        return caption_clauses(predicted) == caption_clauses(answer)
    return normalise_answer(predicted) == normalise_answer(answer)


def hallucinates(predicted: str, answer: str, task: str) -> bool:
    """Does the answer state something false of the video? For captions: any clause that is not one
    of the true caption's (an empty caption states nothing true either); otherwise: a wrong answer."""
    if task == "caption":
        said, true = caption_clauses(predicted), set(caption_clauses(answer))
        return not said or any(c not in true for c in said)
    return not answer_correct(predicted, answer, task)


@torch.no_grad()
def generate_answers(model, dataset: LLaVADataset, *, batch_size: int = 16, max_new_tokens: int = 32,
                     indices: Optional[Iterable[int]] = None, relevance: str = "model",
                     progress: bool = False) -> List[Dict[str, str]]:
    """Greedy answers to each record's question: [{"id", "kind", "task", "answer", "predicted"}].

    relevance: "model" (the CLIP towers score the prompt, as at inference) or "oracle" (videos are
    pooled by `ppllava.data.oracle.oracle_relevance` of their record: what perfect alignment gives).
    max_new_tokens: the world's longest answer, a four-object caption, is 23 words (12 cut every
    caption of three or more objects short)."""
    if relevance not in ("model", "oracle"):
        raise ValueError(f"relevance must be 'model' or 'oracle', got {relevance!r}")
    if getattr(dataset, "video_features", None) is not None:
        raise ValueError("generate_answers reads each video's pixels through the processor: give it a dataset "
                         "without a VideoFeatureStore")
    model.eval()
    tokenizer, processor = dataset.tokenizer, dataset.processor
    chosen = list(range(len(dataset))) if indices is None else sorted(set(indices))
    results = []
    batches = list(MediaBatchSampler([dataset.kinds[i] for i in chosen], batch_size, shuffle=False))
    for positions in tqdm(batches, desc="answers", disable=not progress):
        # load, not []: a bad record is a RecordError naming it, never a silent gap in the answers.
        samples = [dataset.load(chosen[p]) for p in positions]
        # The question (all turns before the answer) through the processor, with the media the dataset
        # decoded (and cached) and its CLIP prompt.
        texts = [processor.apply_chat_template(s.record["conversations"][:-1]) for s in samples]
        inputs = processor(texts, images=[s.images() for s in samples], videos=[s.videos() for s in samples],
                           clip_text=[s.clip_text for s in samples], padding_side="left")
        if relevance == "oracle" and "pixel_values_videos" in inputs:
            inputs["video_relevance"] = oracle_batch(samples, dataset.config)
        new = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id)
        for s, tokens in zip(samples, new):
            results.append({"id": s.id, "kind": s.kind, "task": s.record.get("task", "?"),
                            "answer": s.record["conversations"][-1]["value"],
                            "predicted": tokenizer.decode(tokens, skip_special_tokens=True)})
    return results


def accuracy_by_length(results: List[Dict[str, str]], records: Sequence[dict]) -> Dict[int, float]:
    """Exact-match accuracy per video length (the records' "frames"), e.g. of needle questions."""
    frames = {str(r["id"]): int(r["frames"]) for r in records}
    hits: Dict[int, List[bool]] = defaultdict(list)
    for r in results:
        hits[frames[r["id"]]].append(answer_correct(r["predicted"], r["answer"], r.get("task", "?")))
    return {length: sum(v) / len(v) for length, v in sorted(hits.items())}


def counts_by_depth(results: List[Dict[str, str]], records: Sequence[dict], bins: int = 5) -> List[Tuple[int, int]]:
    """(right, asked) per needle depth bin: where in its video the asked-about object first appears,
    first needle frame / frames, in `bins` equal bins (0-20 %, ..., 80-100 % for 5; V-NIAH's depth axis).
    A record without `needle_frames` is a ValueError naming its id."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    depth = {}
    for r in records:
        if not r.get("needle_frames"):
            raise ValueError(f"record {r.get('id')!r} has no needle_frames: counts_by_depth reads needle videos")
        depth[str(r["id"])] = min(bins - 1, int(bins * r["needle_frames"][0] / int(r["frames"])))
    counts = [[0, 0] for _ in range(bins)]
    for r in results:
        b = depth[str(r["id"])]
        counts[b][0] += answer_correct(r["predicted"], r["answer"], r.get("task", "?"))
        counts[b][1] += 1
    return [tuple(c) for c in counts]


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> Tuple[float, float]:
    """The Wilson score interval of a proportion hits / n (95 % by default): unlike the normal
    approximation it stays inside [0, 1] and is sensible at 0 or n hits."""
    if n < 1 or not 0 <= hits <= n:
        raise ValueError(f"wilson_interval needs 0 <= hits <= n and n >= 1, got hits={hits}, n={n}")
    p, z2 = hits / n, z * z
    centre, half = (p + z2 / (2 * n)) / (1 + z2 / n), z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def counts_by_task(results: List[Dict[str, str]]) -> Dict[str, Tuple[int, int]]:
    """(right, asked) per task and overall ("all"), for accuracies with intervals."""
    hits: Dict[str, List[bool]] = defaultdict(list)
    for r in results:
        ok = answer_correct(r["predicted"], r["answer"], r["task"])
        hits[r["task"]].append(ok)
        hits["all"].append(ok)
    return {task: (sum(v), len(v)) for task, v in sorted(hits.items())}


def accuracy_by_task(results: List[Dict[str, str]]) -> Dict[str, float]:
    """Accuracy per task and overall ("all"): `answer_correct` of each result."""
    return {task: right / asked for task, (right, asked) in counts_by_task(results).items()}


@torch.no_grad()
def preference_scores(model, pairs, *, batch_size: int = 8) -> Dict[str, float]:
    """On preference pairs (a PreferenceDataset): how often the model scores the chosen answer
    above the hallucinated one, how often its own greedy answer states something false of the video
    (hallucination rate, `hallucinates`) and how often it is not right (error rate, `answer_correct`)."""
    model.eval()
    collate = Collator(pairs.base.config, pairs.base.tokenizer.pad_token_id)
    prefer = []
    for start in range(0, len(pairs), batch_size):
        chunk = [pairs[i] for i in range(start, min(start + batch_size, len(pairs)))]
        logps = []
        for side in ("chosen", "rejected"):
            batch = collate([c[side] for c in chunk])
            logps.append(sequence_logprobs(model(**model_inputs(batch)).logits, batch["labels"]))
        prefer += (logps[0] > logps[1]).tolist()
    answers = generate_answers(model, pairs.base, batch_size=batch_size)
    false = [hallucinates(a["predicted"], a["answer"], a["task"]) for a in answers]
    wrong = [not answer_correct(a["predicted"], a["answer"], a["task"]) for a in answers]
    return {"preference_accuracy": sum(prefer) / len(prefer), "hallucination_rate": sum(false) / len(false),
            "error_rate": sum(wrong) / len(wrong), **caption_recall(answers), "pairs": float(len(prefer))}


def caption_recall(results: List[Dict[str, str]]) -> Dict[str, float]:
    """What captions leave out, the other side of their hallucination rate (a caption that says less
    states less that is false): the share of the true clauses they state, and how many they state
    per caption. NaN without captions."""
    captions = [(set(caption_clauses(r["predicted"])), set(caption_clauses(r["answer"])))
                for r in results if r["task"] == "caption"]
    if not captions:
        return {"caption_recall": float("nan"), "caption_clauses": float("nan")}
    return {"caption_recall": sum(len(said & true) / len(true) for said, true in captions) / len(captions),
            "caption_clauses": sum(len(said) for said, _ in captions) / len(captions)}


POINTING_RULES = {"patches": "masks", "object": "object_masks"}


@torch.no_grad()
def batch_pointing(model, batch, rule: str = "patches") -> torch.Tensor:
    """Pointing accuracy on one CLIP-pairs batch: is the most relevant patch on the named object?

    rule "patches": a patch that holds the object (covered at least half as much as its best patch,
    `object_patches`); "object": a patch that shows the object more than any other object
    (`shown_patches`: the map points at this object, not at another, an edge patch included)."""
    return batch_pointing_by_rule(model, batch, (rule,))[rule]


@torch.no_grad()
def batch_pointing_by_rule(model, batch, rules: Sequence[str]) -> Dict[str, torch.Tensor]:
    """batch_pointing under each of `rules`, from one relevance map per item."""
    unknown = [rule for rule in rules if rule not in POINTING_RULES]
    if unknown:
        raise ValueError(f"pointing rule must be one of {sorted(POINTING_RULES)}, got {unknown[0]!r}")
    g = model.patch_grid
    patches = model._patch_embeds(model._patch_features(batch["pixel_values"]))
    r, _ = prompt_relevance(patches.view(len(patches), 1, g, g, -1), model.encode_prompts(batch["clip_input_ids"]),
                            model.logit_scale)
    return {rule: pointing_accuracy(r[:, 0], batch[POINTING_RULES[rule]]) for rule in rules}


@torch.no_grad()
def pointing(model, loader, rule: str = "patches") -> float:
    """Pointing accuracy over a whole CLIP-pairs loader, by `rule` (see batch_pointing)."""
    return pointing_by_rule(model, loader, (rule,))[rule]


@torch.no_grad()
def pointing_by_rule(model, loader, rules: Sequence[str]) -> Dict[str, float]:
    """pointing under each of `rules`, the loader read and the towers run once."""
    model.eval()
    hits, total = dict.fromkeys(rules, 0.0), 0
    for batch in loader:
        for rule, accuracy in batch_pointing_by_rule(model, batch, rules).items():
            hits[rule] += float(accuracy) * len(batch["names"])
        total += len(batch["names"])
    return {rule: h / total for rule, h in hits.items()}


def window_focus(relevance: Optional[torch.Tensor], mask: torch.Tensor, output_size, *, weighting: str = "softmax",
                 temperature: float = 0.01, margin: float = 3.0) -> torch.Tensor:
    """How much of one pooled token the asked-about object can be: the largest total weight any
    window of prompt-guided pooling puts on the object's patches. 1 means some output token is the
    object alone; a plain window mean (`relevance` None) gives the object's share of its window.

    relevance (`torch.FloatTensor` of shape `(B, T, H, W)`, the map `s`) or None; mask
    (`torch.BoolTensor` of shape `(B, T, H, W)`): the object's patches -> `(B,)` float32."""
    if mask.ndim != 4 or (relevance is not None and relevance.shape != mask.shape):
        raise ValueError(f"mask must be (B, T, H, W) and match relevance; got mask {tuple(mask.shape)}, "
                         f"relevance {None if relevance is None else tuple(relevance.shape)}")
    B, T, H, W = mask.shape
    # The pooled value of a 0/1 feature is exactly the weight its window puts on the object.
    pooled, _ = prompt_guided_pool3d(mask.float().reshape(B, T * H * W, 1), relevance, (T, H, W),
                                     output_size=output_size, temperature=temperature, weighting=weighting,
                                     margin=margin)
    return pooled[..., 0].amax(1)
