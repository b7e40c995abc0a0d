"""On-policy preference pairs: the rejected answer is the model's own mistake.

The world's pairs reject a random wrong answer, which the SFT model rarely says, so DPO on them
barely moves its greedy answers. Here the SFT model answers every pair's prompt first; where it
is wrong (judged against the world's truth, the pair's `chosen`: computed, no model as judge), its
answer becomes the rejected one. Where it is right, or says nothing, the world's rejected answer
stays, and `rejected_source` records which it is.

correct=True chooses, against a caption that states something false, that same caption with the
false clauses struck out (where any true one is left): the correction-style pairs of hallucination
DPO (RLHF-V, HA-DPO), which differ from the rejected answer only in what is false, so preferring
them teaches "leave out what you cannot see" rather than "say this other caption".
`chosen_source` records "truth" or "corrected".
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional, Union

import xxhash

from ppllava.data.dataset import read_records
from ppllava.data.preference import PreferenceDataset
from ppllava.data.video_features import update_with_state
from ppllava.evaluate import answer_correct, caption_clauses, caption_parts, generate_answers, hallucinates


def corrected_answer(said: str, truth: str, task: str) -> Optional[str]:
    """`said` with its false statements struck out, or None where that leaves nothing (or it states
    nothing false, an omission: the full truth is the better choice there). Only a caption has parts
    to strike; any other answer is one statement."""
    if task != "caption" or not hallucinates(said, truth, task):
        return None
    true = set(caption_clauses(truth))
    return " and ".join(c for c in caption_parts(said) if c in true) or None


def answers_digest(model, pairs: Path, batch_size: int) -> str:
    """What a model's greedy answers to a pairs file depend on: its weights and config, the file's bytes
    and the batch size (the padding of a batch moves rounding)."""
    digest = xxhash.xxh3_128()
    digest.update(json.dumps({"config": model.config.to_dict(), "batch_size": batch_size}, sort_keys=True,
                             default=str).encode())
    update_with_state(digest, model.state_dict())
    digest.update(pairs.read_bytes())
    return digest.hexdigest()[:20]


def model_answers(model, pairs: Path, tokenizer, *, batch_size: int = 16, cache: Optional[Path] = None,
                  progress: bool = False) -> Dict[str, str]:
    """The model's greedy answer to each pair's prompt, by record id. With `cache` (a directory), they are
    kept there as <answers_digest>.json: the DPO stage and its controls start from one model on one
    file, and generate once."""
    path = None if cache is None else Path(cache) / f"{answers_digest(model, pairs, batch_size)}.json"
    if path is not None and path.exists():
        return dict(json.loads(path.read_text()))  # [id, answer] pairs: ids keep their JSON type
    dataset = PreferenceDataset(pairs, model.config, tokenizer).base
    answers = [(a["id"], a["predicted"]) for a in generate_answers(model, dataset, batch_size=batch_size, progress=progress)]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(answers))
        partial.replace(path)  # whole or absent: two runs at once may write it side by side
    return dict(answers)


def on_policy_pairs(model, pairs: Union[str, Path], tokenizer, out: Union[str, Path], *, batch_size: int = 16,
                    correct: bool = False, progress: bool = False, cache: Optional[Path] = None) -> Dict[str, int]:
    """Write `out` (JSONL, the layout of `pairs` plus `rejected_source`: "model" or "world", and
    `chosen_source`: "truth" or "corrected") and return how many of each there are. Media paths stay
    relative to the directory of `pairs` (pass it as `media_root` when reading `out`). `cache`: where the
    model's answers are kept (`model_answers`)."""
    pairs, out = Path(pairs), Path(out)
    records = read_records(pairs)
    ids = [r.get("id") for r in records]
    if len(set(ids)) != len(ids) or None in ids:
        raise ValueError(f"{pairs}: every preference record needs a unique 'id' to be matched with its answer")
    answers = model_answers(model, pairs, tokenizer, batch_size=batch_size, cache=cache, progress=progress)
    counts = {"model": 0, "world": 0, "corrected": 0}
    lines = []
    for record in records:
        said, task = " ".join(answers[record["id"]].split()), record.get("task", "?")
        own_mistake = bool(said) and not answer_correct(said, record["chosen"], task)
        corrected = corrected_answer(said, record["chosen"], task) if correct and own_mistake else None
        source = "model" if own_mistake else "world"
        counts[source] += 1
        counts["corrected"] += corrected is not None
        lines.append(json.dumps({**record, "chosen": corrected or record["chosen"],
                                 "rejected": said if own_mistake else record["rejected"], "rejected_source": source,
                                 "chosen_source": "corrected" if corrected else "truth"}) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + f".{os.getpid()}.tmp")
    partial.write_text("".join(lines))
    partial.replace(out)  # whole or absent: a run stopped mid-write leaves no half file behind
    return counts
