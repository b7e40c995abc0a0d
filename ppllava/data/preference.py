"""DPO preference pairs in the LLaVA-Hound JSONL layout:
{"id", "video" (or "image"), "prompt", "chosen", "rejected"} -> the same media with two answers."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Sequence, Union

from torch.utils.data import Dataset

from ppllava.data.dataset import Collator, LLaVADataset, RecordError, Sample

PAIR_KEYS = ("prompt", "chosen", "rejected")


def pair_record(pair: dict) -> dict:
    """A preference pair as a LLaVA record: the chosen answer as its conversation, the rejected one as
    `rejected_conversations` (so the two stay paired when skip_bad drops records), every other key kept
    (an unknown media key among them is then refused like any record's)."""
    for key in PAIR_KEYS:
        value = pair.get(key)
        if not isinstance(value, str) or not value.strip():
            raise RecordError(f"a preference pair needs a non-empty {key!r} string, got {value!r}",
                              reason="no_question" if key == "prompt" else "no_answer", field=key)
    token = "<video>" if "video" in pair else "<image>"
    question = {"from": "human", "value": f"{token}\n{pair['prompt']}"}
    record = {k: v for k, v in pair.items() if k not in PAIR_KEYS}
    record["conversations"] = [question, {"from": "gpt", "value": pair["chosen"]}]
    record["rejected_conversations"] = [question, {"from": "gpt", "value": pair["rejected"]}]
    return record


class PreferenceDataset(Dataset):
    """Each item: {"chosen": Sample, "rejected": Sample}, decoding the media once. Faults are the base
    LLaVADataset's RecordErrors, naming the pairs file and line."""

    def __init__(self, annotations: Union[str, Path], config, tokenizer, **dataset_kwargs):
        self.source = str(annotations)
        self.base = LLaVADataset(annotations, config, tokenizer, convert=pair_record, **dataset_kwargs)

    def __len__(self) -> int:
        return len(self.base)

    @property
    def invalid(self) -> List[RecordError]:
        return self.base.invalid

    def skipped_at_build(self) -> Dict[str, int]:
        return self.base.skipped_at_build()

    def __getitem__(self, index: int):
        return self.base.serve(index, self._pair)

    def _pair(self, index: int) -> Dict[str, Sample]:
        chosen = self.base.load(index)
        ids, labels = self.base.encode(index, chosen.record["rejected_conversations"], chosen.kind, chosen.frames,
                                       chosen.image_sizes, chosen.image_crops, field="rejected")
        rejected = replace(chosen, input_ids=ids, labels=labels)
        return {"chosen": chosen, "rejected": rejected}


class PreferenceCollator:
    """{"chosen": batch, "rejected": batch}, each as `Collator` makes it; skips counted once."""

    def __init__(self, collator: Collator):
        self.collator = collator

    def __call__(self, items: Sequence) -> Dict[str, object]:
        pairs = [item for item in items if "chosen" in item]
        skips = [item for item in items if "skipped" in item]
        chosen = self.collator([p["chosen"] for p in pairs])
        rejected = self.collator([p["rejected"] for p in pairs])
        return {"chosen": chosen, "rejected": rejected, "skipped": [s["skipped"] for s in skips],
                "skip_reasons": [s["reason"] for s in skips]}
