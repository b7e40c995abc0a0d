"""The lmms-eval route (the eval extra; `bash env/eval.sh` runs these): the kit's model registered in
lmms-eval as `ppllava`, the world's held-out splits as tasks on local files, and lmms-eval's accuracy
equal to the kit's own `evaluate` on the same records, answer by answer."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmms_eval")
pytestmark = pytest.mark.eval

from lmms_eval.api.instance import Instance  # noqa: E402

from ppllava.data.dataset import Collator, LLaVADataset, model_inputs  # noqa: E402
from ppllava.data.records import read_records  # noqa: E402
from ppllava.data.tokenizer import build_world_tokenizer  # noqa: E402
from ppllava.data.world import WorldSpec, write_world  # noqa: E402
from ppllava.eval.lmms import PPLLaVALMMS, parse_shape  # noqa: E402
from ppllava.eval.world_tasks import doc_to_visual, export_world_tasks, video_docs  # noqa: E402
from ppllava.evaluate import accuracy_by_length, accuracy_by_task, generate_answers  # noqa: E402
from ppllava.model import load_pretrained  # noqa: E402
from ppllava.train.recipe import Recipe  # noqa: E402

ARGS = "pooling=prompt,num_frames=8,device=cpu,dtype=float32"
# The smoke recipe's stage 2 (3 steps) answers nothing at all: 150 more steps on its 48 records make a
# model whose answers differ from record to record (a few right), so equal scores mean equal answers.
STEPS = 150


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    recipe = Recipe(root / "recipe", smoke=True)
    model_dir = recipe.variant("sft2-longer", "sft2", init_from=str(recipe.model_dir("sft2")), max_steps=STEPS)
    world = root / "world"
    write_world(world, WorldSpec(long_frames=(16, 32)), train=0, val=0, test=60, long_per_length=3, progress=False)
    counts = export_world_tasks(world, root / "tasks")
    return root, model_dir, world, counts


def kit_answers(model, path: Path, world: Path):
    """The kit's own evaluation of an annotation file's video records: (records, answers)."""
    records = [r for r in read_records(path) if "video" in r]
    dataset = LLaVADataset(records, model.config, build_world_tokenizer(), media_root=world)
    return records, generate_answers(model, dataset)


def test_lmms_eval_cli_scores_equal_the_kits(setup):
    root, model_dir, world, counts = setup
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(root / "hf")}  # datasets' cache of the JSON tasks stays in the test's directory
    out = root / "lmms-out"
    # --verbosity DEBUG: lmms-eval otherwise logs an evaluation error and still exits 0.
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "ppllava", "--model_args", f"pretrained={model_dir},{ARGS}",
           "--tasks", "ppllava_world_test,ppllava_world_test_mc,ppllava_world_needle", "--include_path",
           str(root / "tasks"), "--output_path", str(out), "--log_samples", "--verbosity", "DEBUG"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=600)
    found = sorted(out.rglob("*_results.json"))
    assert run.returncode == 0 and found, run.stdout[-3000:] + run.stderr[-3000:]
    scores = {task: r["accuracy,none"] for task, r in json.loads(found[0].read_text())["results"].items()
              if "accuracy,none" in r}
    samples = {task: [json.loads(line) for line in path.read_text().splitlines()]
               for task in counts for path in out.rglob(f"*_samples_{task}.jsonl")}

    model = load_pretrained(model_dir).eval()
    records, answers = kit_answers(model, world / "test.json", world)
    assert counts["ppllava_world_test"] == len(records) == len(samples["ppllava_world_test"])
    kit = accuracy_by_task(answers)
    assert scores["ppllava_world_test"] == kit["all"]
    assert scores["ppllava_world_test_mc"] == kit["mc"]
    # Answer by answer: lmms-eval logs its docs in the order of the exported file.
    docs = video_docs(world / "test.json")
    lmms_said = {d["id"]: s["filtered_resps"] for d, s in zip(docs, sorted(samples["ppllava_world_test"],
                                                                              key=lambda s: s["doc_id"]))}
    kit_said = {a["id"]: a["predicted"] for a in answers}
    assert {k: [v] if isinstance(v, str) else v for k, v in lmms_said.items()} == {k: [v] for k, v in kit_said.items()}
    assert len(set(kit_said.values())) > 1, f"the model says the same to every question: {set(kit_said.values())}"

    long_records, long_answers = kit_answers(model, world / "long.json", world)
    by_length = accuracy_by_length(long_answers, long_records)
    assert sorted(by_length) == [16, 32]
    assert {n: scores[f"ppllava_world_needle_{n}"] for n in by_length} == by_length


def test_registered_by_entry_point():
    from lmms_eval.models import get_model

    assert get_model("ppllava") is PPLLaVALMMS


def _instances(kind: str, arguments):
    return [Instance(request_type=kind, arguments=(*args, doc_to_visual, i, "world", "test"), idx=0,
                     metadata={"task": "world", "doc_id": i, "repeats": 1}) for i, args in enumerate(arguments)]


def test_loglikelihood_is_the_kits_forward_and_greedy_matches_generation(setup):
    _, model_dir, world, _ = setup
    lm = PPLLaVALMMS(str(model_dir), device="cpu")
    docs = video_docs(world / "test.json")[:4]
    lm.task_dict = {"world": {"test": docs}}
    greedy = lm.generate_until(_instances("generate_until", [(d["question"], {"until": []}) for d in docs]))
    # The answer a record holds, scored by lmms-eval's route and by the kit's dataset and forward.
    scored = lm.loglikelihood(_instances("loglikelihood", [(d["question"], " " + d["answer"]) for d in docs]))
    records = [r for r in read_records(world / "test.json") if "video" in r][:4]
    dataset = LLaVADataset(records, lm.model.config, lm.tokenizer, media_root=world)
    collate = Collator(lm.model.config, lm.tokenizer.pad_token_id)
    for i, (logp, is_greedy) in enumerate(scored):
        batch = collate([dataset[i]])
        with torch.no_grad():
            logits = lm.model(**{k: v for k, v in model_inputs(batch).items() if k != "labels"}).logits[0, :-1]
        labels = batch["labels"][0, 1:]
        keep = labels != -100
        per_token = logits[keep].log_softmax(-1).gather(1, labels[keep][:, None])[:, 0]
        assert logp == pytest.approx(float(per_token[:-1].sum()), rel=1e-5, abs=1e-5)  # [:-1]: not the EOS
        said = lm.tokenizer(greedy[i], add_special_tokens=False)["input_ids"]
        answer = lm.tokenizer(docs[i]["answer"], add_special_tokens=False)["input_ids"]
        assert is_greedy == (said[: len(answer)] == answer)
    # The model's own greedy answers are greedy by definition.
    own = lm.loglikelihood(_instances("loglikelihood", [(d["question"], " " + g) for d, g in zip(docs, greedy)
                                                              if g.strip()]))
    assert own and all(is_greedy for _, is_greedy in own)


def test_generation_honours_until_and_max_new_tokens(setup):
    _, model_dir, world, _ = setup
    lm = PPLLaVALMMS(str(model_dir), device="cpu", batch_size=3)
    docs = video_docs(world / "test.json")[:3]
    lm.task_dict = {"world": {"test": docs}}
    full = lm.generate_until(_instances("generate_until", [(d["question"], {}) for d in docs]))
    first = [lm.tokenizer.decode(lm.tokenizer(t, add_special_tokens=False)["input_ids"][:1]) for t in full]
    one = [(d["question"], {"max_new_tokens": 1}) for d in docs]
    short = lm.generate_until(_instances("generate_until", one))
    assert short == first
    word = full[0].split()[0]
    cut = lm.generate_until(_instances("generate_until", [(d["question"], {"until": [word]}) for d in docs]))
    assert cut == [t.split(word, 1)[0] for t in full]


def test_bad_model_args_are_named(setup, tmp_path):
    _, model_dir, world, _ = setup
    with pytest.raises(ValueError, match="video_kernel .* 4x2x2"):
        parse_shape("video_kernel", "4x2")
    assert parse_shape("video_output_size", "4x2x2") == (4, 2, 2)
    with pytest.raises(FileNotFoundError, match="neither a kit checkpoint"):
        PPLLaVALMMS(str(tmp_path), device="cpu")
    with pytest.raises(ValueError, match="video reader must be one of .* got 'ffmpeg'"):
        PPLLaVALMMS(str(model_dir), device="cpu", reader="ffmpeg")
    with pytest.raises(ValueError, match="dtype"):
        PPLLaVALMMS(str(model_dir), device="cpu", dtype="fp8")
    with pytest.raises(ValueError, match="video_output_size is required"):
        PPLLaVALMMS(str(model_dir), device="cpu", pooling="adaptive")
    lm = PPLLaVALMMS(str(model_dir), device="cpu", pooling="adaptive", video_output_size="4x2x2")
    assert lm.model.config.video_output_size == (4, 2, 2)
    with pytest.raises(ValueError, match="video_token_budget 999 exceeds"):
        PPLLaVALMMS(str(model_dir), device="cpu", pooling="topk", video_token_budget=999)
    pruned = PPLLaVALMMS(str(model_dir), device="cpu", pooling="fastv", video_token_budget=8, fastv_layer=1)
    assert (pruned.model.config.fastv_layer, pruned.model.pruned_video_token_count(8)) == (1, 8)
    invariant = PPLLaVALMMS(str(model_dir), device="cpu", weighting="invariant", pool_margin="2.5", video_chunk_frames=4)
    assert (invariant.model.config.weighting, invariant.model.config.pool_margin) == ("invariant", 2.5)
    assert invariant.model.config.video_chunk_frames == 4
    with pytest.raises(ValueError, match="weighting must be one of"):
        PPLLaVALMMS(str(model_dir), device="cpu", weighting="max")
    with pytest.raises(ValueError, match="model arg pool_margin must be a number, got 'wide'"):
        PPLLaVALMMS(str(model_dir), device="cpu", weighting="invariant", pool_margin="wide")
    with pytest.raises(ValueError, match="model arg max_new_tokens must be a whole number, got 'many'"):
        PPLLaVALMMS(str(model_dir), device="cpu", max_new_tokens="many")
    docs = video_docs(world / "test.json")[:1]
    lm.task_dict = {"world": {"test": docs}}
    with pytest.raises(ValueError, match="greedily"):
        lm.generate_until(_instances("generate_until", [(docs[0]["question"], {"do_sample": True})]))


@pytest.mark.parametrize("layout", ["llava_next_video", "released_ppllava"])
def test_runs_real_checkpoint_layouts(setup, tmp_path, layout):
    """A Hugging Face directory (tiny, in the real formats) with its own tokenizer and chat template
    answers through lmms-eval's route as through the kit's loader and processor."""
    from ppllava.data.tokenizer import load_tokenizer
    from ppllava.model import from_llava_next
    from ppllava.model import tiny_checkpoints as tiny
    from ppllava.processor import PPLLaVAProcessor

    _, _, world, _ = setup
    clip = tiny.clip_dir(tmp_path / "clip")
    if layout == "llava_next_video":
        path, clip_arg = tiny.llava_next_video_dir(tmp_path / "llava"), str(clip)
    else:
        path, clip_arg = tiny.released_ppllava_dir(tmp_path / "llava", clip), None  # its CLIP side inside
    tiny.tokenizer_dir(path)
    lm = PPLLaVALMMS(str(path), clip=clip_arg, pooling="prompt", num_frames=8, template="tokenizer", device="cpu")
    docs = video_docs(world / "test.json")[:3]
    lm.task_dict = {"world": {"test": docs}}
    said = lm.generate_until(_instances("generate_until", [(d["question"], {"max_new_tokens": 6}) for d in docs]))

    model = from_llava_next(path, clip_arg, pooling="prompt", num_frames=8).eval()
    processor = PPLLaVAProcessor(load_tokenizer(path), model.config, template="tokenizer")
    for doc, answer in zip(docs, said):
        prompt = processor.apply_chat_template([{"role": "user", "content": [
            {"type": "video"}, {"type": "text", "text": doc["question"]}]}])
        assert prompt.startswith("USER: <video>\n")  # the checkpoint's own template, not the kit's
        new = model.generate(**processor(prompt, videos=doc["video"]), max_new_tokens=6, do_sample=False,
                             eos_token_id=processor.tokenizer.eos_token_id)
        assert answer == processor.tokenizer.decode(new[0], skip_special_tokens=True)
    assert any(said), "the tiny checkpoint said nothing at all: the comparison would prove little"
