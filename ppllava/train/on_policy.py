"""On-policy preference pairs: the rejected answer is the model's own mistake.

The world's pairs reject a random wrong answer, which the SFT model rarely says, so DPO on them
barely moves its greedy answers. Here the SFT model answers every pair's prompt first; where it
is wrong (judged against the world's truth, the pair's `chosen`: computed, no model as judge), its
answer becomes the rejected one. Where it is right, or says nothing, the world's rejected answer
stays, and `rejected_source` records which it is.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Union

from ppllava.data.dataset import read_records
from ppllava.data.preference import PreferenceDataset
from ppllava.evaluate import answer_correct, generate_answers


def on_policy_pairs(model, pairs: Union[str, Path], tokenizer, out: Union[str, Path], *, batch_size: int = 16,
                    progress: bool = False) -> Dict[str, int]:
    """Write `out` (JSONL, the layout of `pairs` plus `rejected_source`: "model" or "world") and
    return how many rejected answers came from each source. Media paths stay relative to the
    directory of `pairs` (pass it as `media_root` when reading `out`)."""
    pairs, out = Path(pairs), Path(out)
    records = read_records(pairs)
    ids = [r.get("id") for r in records]
    if len(set(ids)) != len(ids) or None in ids:
        raise ValueError(f"{pairs}: every preference record needs a unique 'id' to be matched with its answer")
    dataset = PreferenceDataset(pairs, model.config, tokenizer).base
    answers = {a["id"]: a["predicted"] for a in generate_answers(model, dataset, batch_size=batch_size, progress=progress)}
    counts = {"model": 0, "world": 0}
    lines = []
    for record in records:
        said = " ".join(answers[record["id"]].split())
        own_mistake = bool(said) and not answer_correct(said, record["chosen"], record.get("task", "?"))
        source = "model" if own_mistake else "world"
        counts[source] += 1
        lines.append(json.dumps({**record, "rejected": said if own_mistake else record["rejected"],
                                 "rejected_source": source}) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + f".{os.getpid()}.tmp")
    partial.write_text("".join(lines))
    partial.replace(out)  # whole or absent: a run stopped mid-write leaves no half file behind
    return counts
