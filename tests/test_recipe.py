"""The tiny recipe end to end at smoke size, its cache of trained stages, and the scores it is judged by."""
import json

import pytest
import torch

from ppllava.evaluate import accuracy_by_length, accuracy_by_task
from ppllava.train.recipe import Recipe
from ppllava.train.recipe import main as recipe


def test_accuracy_by_task_is_exact_match():
    results = [{"task": "mc", "answer": "B", "predicted": " b "}, {"task": "mc", "answer": "B", "predicted": "C"},
               {"task": "colour", "answer": "red", "predicted": "red </s>"},
               {"task": "mc", "answer": "red , so B", "predicted": "red, so B"}]
    assert accuracy_by_task(results) == {"all": 3 / 4, "colour": 1.0, "mc": 2 / 3}


def test_accuracy_by_length_groups_by_the_records_frames():
    records = [{"id": "a", "frames": 16}, {"id": "b", "frames": 16}, {"id": "c", "frames": 64}]
    results = [{"id": "a", "answer": "red", "predicted": "red"}, {"id": "b", "answer": "red", "predicted": "blue"},
               {"id": "c", "answer": "red", "predicted": "red"}]
    assert accuracy_by_length(results, records) == {16: 0.5, 64: 1.0}


def test_pooling_variants_meet_at_prompt_poolings_budget():
    """Every row of notebook 03 on the tiny preset's 8-frame clips: 16 tokens but `none` and `spatial`, the
    zoo's trained rows (merge, dominant) included through the default video_token_budget."""
    from ppllava.config import PPLLaVAConfig
    from ppllava.model.token_layout import TokenLayout
    from ppllava.train.recipe import POOLING_VARIANTS

    tiny = PPLLaVAConfig.from_name("tiny")
    tokens = {mode: TokenLayout(PPLLaVAConfig.from_dict({**tiny.to_dict(), **fields})).video_token_count(tiny.num_frames)
              for mode, fields in POOLING_VARIANTS.items()}
    assert tokens == {"prompt": 16, "oracle": 16, "none": 128, "temporal_mean": 16, "spatial": 32, "adaptive": 16,
                      "merge": 16, "dominant": 16}
    with pytest.raises(ValueError, match="no pooling variant 'topk'"):  # applied to the `none` model, not trained
        Recipe("unused", smoke=True).pooling_variant("topk", "sft1")
    with pytest.raises(ValueError, match="margin is the 'invariant' weighting of prompt pooling; pooling variant 'adaptive'"):
        Recipe("unused", smoke=True).pooling_variant("adaptive", margin=4.0)
    with pytest.raises(ValueError, match="margin weighting is one of \\['invariant', 'peak'\\], got 'softmax'"):
        Recipe("unused", smoke=True).pooling_variant("prompt", margin=4.0, weighting="softmax")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe")
    return out, recipe(["--out", str(out), "--smoke"])


def test_recipe_runs_every_stage_and_scores_them(smoke_run):
    out, results = smoke_run
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["seconds"]) >= {"world", "clip", "clip_global", "lm", "sft1", "sft2", "dpo", "evaluation", "total"}
    assert 0 <= saved["pointing"]["clip"] <= 1 and "all" in saved["sft_accuracy"]
    for side in ("dpo_before", "dpo_after"):
        assert 0 <= results[side]["preference_accuracy"] <= 1
        assert 0 <= results[side]["hallucination_rate"] <= results[side]["error_rate"] <= 1  # a false answer is a wrong one
    assert (out / "results.md").read_text().startswith("| measure | value |")
    # Every layout's held-out split, whatever the stages trained on, as (right, asked) counts.
    assert set(saved["layouts"]) == {"quadrants", "shifted", "free"}
    for layout, scores in saved["layouts"].items():
        assert (out / "world" / f"test_{layout}.json").exists() and scores["sft"]["all"][1] == 16
        assert 0 <= scores["pointing"][0] <= scores["pointing"][1]
        assert scores["pointing_object"][1] == scores["pointing"][1] and 0 <= scores["pointing_object"][0]
        # Questions about scenes of at most four objects, counted apart: every video and image record of the
        # quadrant layouts, the free layout's that hold two to four objects.
        records = json.loads((out / "world" / f"test_{layout}.json").read_text())
        sizes = [len(r["scene"]["objects"]) for r in records if "scene" in r]
        few = scores["sft_few_objects"]
        assert few["all"][1] == sum(n <= 4 for n in sizes) and (layout == "free" or few["all"][1] == len(sizes))
        assert all(few[task][1] <= scores["sft"][task][1] for task in few)
    assert "| free layout: accuracy after SFT, all |" in (out / "results.md").read_text()
    assert "| quadrants layout, scenes of at most 4 objects: accuracy after SFT, " in (out / "results.md").read_text()


def test_recipe_reuses_what_it_trained_and_refuses_to_mix_runs(smoke_run):
    out, _ = smoke_run
    again = Recipe(out, smoke=True)
    assert again.model_dir("dpo") == out / "dpo" / "model" and again.seconds == {}  # nothing retrained
    with pytest.raises(ValueError, match="recipe.json"):
        Recipe(out, smoke=False).world
    path = again.variant("sft2-adaptive", "sft2", model={"pooling": "adaptive", "video_output_size": (4, 2, 2)})
    assert "sft2-adaptive" in again.seconds and again.model("sft2-adaptive").config.pooling == "adaptive"
    assert again.variant("sft2-adaptive", "sft2", model={"pooling": "adaptive", "video_output_size": (4, 2, 2)}) == path
    with pytest.raises(ValueError, match="another config"):
        again.variant("sft2-adaptive", "sft2", model={"pooling": "adaptive", "video_output_size": (2, 2, 2)})
    with pytest.raises(ValueError, match="one of the recipe's stages"):
        again.variant("sft2", "sft2")
    # The same fields from another start: not the run asked for (a needle row from another short-clip stage).
    with pytest.raises(ValueError, match=r"was trained from sft1/model, not from sft2/model"):
        again.variant("sft2-adaptive", "sft2", model={"pooling": "adaptive", "video_output_size": (4, 2, 2)},
                      init_from=str(out / "sft2" / "model"))


def test_a_moved_recipe_directory_is_still_reused(smoke_run, tmp_path):
    import shutil

    out, _ = smoke_run
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    again = Recipe(moved, smoke=True)
    assert again.model_dir("dpo") == moved / "dpo" / "model" and again.seconds == {}


def test_training_logs_read_back(smoke_run):
    from ppllava.train.run import read_logs

    out, _ = smoke_run
    rows = read_logs(out / "sft2")
    assert [r["step"] for r in rows if "train/loss" in r] == [0, 1, 2]
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        read_logs(out / "nowhere")


def test_video_chat_answers_with_the_relevance_of_its_question(smoke_run):
    """The trained world model in a two-turn chat, the second turn streamed; its first answer is the
    evaluation's answer to the record. (Caching, streaming, real checkpoints: tests/test_chat.py.)"""
    from ppllava.chat import VideoChat
    from ppllava.data.dataset import LLaVADataset, read_records
    from ppllava.evaluate import generate_answers

    out, _ = smoke_run
    record = next(r for r in read_records(out / "world" / "test.json") if "video" in r)
    model = Recipe(out, smoke=True).model("sft2")
    chat = VideoChat(model, out / "world" / record["video"])
    question = record["conversations"][0]["value"].replace("<video>", "").strip()
    turn = chat.ask(question)
    evaluated = generate_answers(model, LLaVADataset([record], model.config, chat.processor.tokenizer,
                                                     media_root=out / "world"), batch_size=1)
    assert turn.answer == evaluated[0]["predicted"].strip()
    pieces = list(chat.stream("what colour is the circle ?"))
    other = chat.history[-1]
    assert "".join(pieces).strip() == other.answer and other.question == "what colour is the circle ?"
    assert turn.relevance.shape == (8, 4, 4) and float(turn.relevance.sum()) == pytest.approx(1, abs=1e-5)
    assert not torch.allclose(turn.relevance, other.relevance)  # each question pools by its own map
    assert turn.visual_tokens == 16 and len(chat.history) == 2 and isinstance(turn.answer, str)
    with pytest.raises(ValueError, match="zebra"):
        chat.ask("what colour is the zebra ?")
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        VideoChat(chat.model, out / "nowhere.mp4")


def test_two_runs_of_one_config_and_seed_are_bit_identical(smoke_run, tmp_path):
    """Every stage's weights and metrics.json, every world file and the held-out scores: the same bytes
    from a second run (only timing.json and the results' seconds may differ)."""
    out, results = smoke_run
    again = tmp_path / "again"
    second = recipe(["--out", str(again), "--smoke"])
    compared = 0
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out)
        if rel.parts[0] in ("clip", "clip_global", "lm", "sft1", "sft2", "dpo") and rel.parts[1] not in ("model", "metrics.json"):
            continue  # logs, checkpoints (their callback state holds times), paths in train_config.yaml
        if rel.name in ("results.json", "results.md", "timing.json") or rel.parts[0].startswith("sft2-"):
            continue  # wall times; variants trained by other tests of this module
        if rel.parts[:2] == ("world", "features") and not (again / rel).exists():
            continue  # the feature store holds what the runs read: other tests of this module read more videos
        assert (again / rel).read_bytes() == path.read_bytes(), f"{rel} differs between two runs of one config"
        compared += 1
    assert compared > 100 and all((again / s / "model" / "model.safetensors").exists() for s in ("clip", "sft2", "dpo"))
    drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert drop(second) == drop(results)


def test_a_run_from_before_diagnostic_stays_readable_but_its_split_size_is_checked(smoke_run, tmp_path):
    import shutil

    out, _ = smoke_run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    marker = json.loads((old / "recipe.json").read_text())
    del marker["diagnostic"]  # as the recipe wrote it before diagnostic splits had a size of their own
    (old / "recipe.json").write_text(json.dumps(marker))
    recipe = Recipe(old, smoke=True)
    assert recipe.layout_split("free") == old / "world" / "test_free.json"  # 16 records, as asked
    recipe.diagnostic = 20
    with pytest.raises(ValueError, match=r"test_free.json holds 16 records, not the 20 asked for"):
        recipe.layout_split("free")
