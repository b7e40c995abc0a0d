"""The world's held-out splits exported as lmms-eval tasks (ppllava.eval.world_tasks): what the docs
hold, how they are scored, and what the export refuses. No lmms-eval needed: the export writes plain
files; tests/test_lmms_eval.py runs them through lmms-eval."""
import json
import subprocess
import sys

import pytest
import yaml

from ppllava.data.records import RecordError, read_records
from ppllava.data.world import WorldSpec, write_world
from ppllava.eval.world_tasks import MANIFEST, export_world_tasks, process_results


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    write_world(root, WorldSpec(long_frames=(16,)), train=0, val=6, test=30, long_per_length=2, progress=False)
    return root


def _yaml(path):
    loader = type("Loader", (yaml.SafeLoader,), {})
    loader.add_constructor("!function", lambda _, node: f"!function {node.value}")
    return yaml.load(path.read_text(), Loader=loader)


def test_export_writes_the_video_records_as_docs(world, tmp_path):
    counts = export_world_tasks(world, tmp_path / "tasks", ["val", "test"])
    videos = [r for r in read_records(world / "test.json") if "video" in r]
    mc = [r for r in videos if r["task"] == "mc"]
    assert counts["ppllava_world_test"] == len(videos) and counts["ppllava_world_needle_16"] == 2
    assert counts.get("ppllava_world_test_mc", 0) == len(mc)  # a split without mc gets no mc task
    docs = [json.loads(line) for line in (tmp_path / "tasks/data/ppllava_world_test.jsonl").read_text().splitlines()]
    assert [d["id"] for d in docs] == [r["id"] for r in videos]
    for doc, record in zip(docs, videos):
        assert f"<video>\n{doc['question']}" == record["conversations"][0]["value"]
        assert doc["answer"] == record["conversations"][1]["value"] and doc["task"] == record["task"]
        assert doc["video"] == str((world / record["video"]).resolve())
    task = _yaml(tmp_path / "tasks/ppllava_world_test.yaml")
    assert task["dataset_path"] == "json" and task["test_split"] == "test"
    assert task["dataset_kwargs"]["data_files"]["test"] == str((tmp_path / "tasks/data/ppllava_world_test.jsonl"))
    assert task["process_results"] == "!function utils.process_results"
    assert _yaml(tmp_path / "tasks/ppllava_world_needle.yaml") == {"group": "ppllava_world_needle",
                                                                  "task": ["ppllava_world_needle_16"]}


def test_scoring_is_the_kits_exact_match():
    caption = {"answer": "a red circle moves left and a blue star stays still", "task": "caption"}
    assert process_results(caption, ["a blue star stays still and a red circle moves left"]) == {"accuracy": 1.0}
    assert process_results(caption, ["a blue star stays still"]) == {"accuracy": 0.0}
    mc = {"answer": "red , so B", "task": "mc"}
    assert process_results(mc, ["Red, so B"]) == {"accuracy": 1.0}
    assert process_results(mc, ["red"]) == {"accuracy": 0.0}


def test_export_again_replaces_its_own_files_only(world, tmp_path):
    out = tmp_path / "tasks"
    export_world_tasks(world, out, ["val", "test"])
    export_world_tasks(world, out, ["test"])  # the val tasks of the first export go
    assert not list(out.glob("ppllava_world_val*")) and (out / "ppllava_world_test.yaml").is_file()
    assert json.loads((out / MANIFEST).read_text())["world"] == str(world.resolve())
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds files no earlier export wrote"):
        export_world_tasks(world, out)


def test_export_refuses_bad_input_by_name(world, tmp_path):
    with pytest.raises(FileNotFoundError, match="no world.json"):
        export_world_tasks(tmp_path, tmp_path / "tasks")
    with pytest.raises(ValueError, match=r"held-out splits among \('val', 'test'\), got \['train'\]"):
        export_world_tasks(world, tmp_path / "tasks", ["train"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "world.json").write_text("{}")
    records = json.loads((world / "test.json").read_text())
    first = next(i for i, r in enumerate(records) if "video" in r)
    turns = records[first]["conversations"]
    records[first]["conversations"] = turns + [{"from": "human", "value": "and ?"}, turns[1]]
    for record in records:  # the videos stay where they are
        for key in ("video", "image"):
            if key in record:
                record[key] = str(world / record[key])
    (bad / "test.json").write_text(json.dumps(records))
    with pytest.raises(RecordError, match=rf"test.json.*{records[first]['id']}.*4 turns"):
        export_world_tasks(bad, tmp_path / "tasks")


def test_cli_exits_2_naming_the_problem(tmp_path):
    run = subprocess.run([sys.executable, "-m", "ppllava.eval.world_tasks", "--world", str(tmp_path), "--out",
                          str(tmp_path / "tasks")], capture_output=True, text=True)
    assert run.returncode == 2 and f"--world {tmp_path}: no world.json" in run.stderr
    assert not (tmp_path / "tasks").exists()
