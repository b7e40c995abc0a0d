"""The tiny recipe end to end at smoke size, and the scores it is judged by."""
import json

import torch

from ppllava.evaluate import _prompt_only, accuracy_by_task
from ppllava.train.recipe import main as recipe


def test_accuracy_by_task_is_exact_match():
    results = [{"task": "mc", "answer": "B", "predicted": " b "}, {"task": "mc", "answer": "B", "predicted": "C"},
               {"task": "colour", "answer": "red", "predicted": "red </s>"}]
    assert accuracy_by_task(results) == {"all": 2 / 3, "colour": 1.0, "mc": 0.5}


def test_prompt_only_cuts_at_the_answer():
    from ppllava.data.dataset import Sample

    sample = Sample("x", "video", [1, 7, 8, 9, 2], [-100, -100, -100, 9, 2], "q", torch.zeros(1))
    assert _prompt_only(sample).input_ids == [1, 7, 8]


def test_recipe_runs_every_stage_and_scores_them(tmp_path):
    results = recipe(["--out", str(tmp_path), "--smoke"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["seconds"]) >= {"world", "clip", "clip_global", "sft1", "sft2", "dpo", "total"}
    assert 0 <= saved["pointing"]["clip"] <= 1 and "all" in saved["sft_accuracy"]
    for side in ("dpo_before", "dpo_after"):
        assert 0 <= results[side]["preference_accuracy"] <= 1 and 0 <= results[side]["hallucination_rate"] <= 1
    assert (tmp_path / "results.md").read_text().startswith("| measure | value |")
