"""The tiny recipe from scratch, end to end on a CPU: write the world, CLIP post-pretraining (and
the global-loss ablation), SFT stage 1 and 2, DPO; then the held-out scores.

    python -m ppllava.train.recipe --out runs/tiny-recipe            # configs/tiny/*.yaml
    python -m ppllava.train.recipe --out /tmp/r --smoke              # minutes -> seconds

Writes results.json and results.md (the table in docs/recipe.md) in --out. Every stage's model is cached in
--out/<stage>/model: a stage that is already there is reused, not retrained, which is how the
notebooks share one set of trained artifacts (`Recipe(out).model("sft2")`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

from torch.utils.data import DataLoader

from ppllava.config import PPLLaVAConfig
from ppllava.data.clip_pairs import ClipPairCollator, ClipPairDataset
from ppllava.data.dataset import LLaVADataset
from ppllava.data.preference import PreferenceDataset
from ppllava.data.scenes import OBJECT_LIMITS
from ppllava.data.tokenizer import build_world_tokenizer
from ppllava.data.video_features import VideoFeatureStore
from ppllava.data.world import LAYOUTS, WorldSpec, WorldWriter, write_world
from ppllava.evaluate import (accuracy_by_task, counts_by_task, generate_answers, pointing, pointing_by_rule,
                              preference_scores, wilson_interval)
from ppllava.model import PPLLaVA, load_pretrained
from ppllava.train.at_once import Job, default_jobs, train_jobs
from ppllava.train.config import TrainConfig
from ppllava.train.run import run
from ppllava.validation import count_type

CONFIGS = Path(__file__).resolve().parent.parent.parent / "configs"
STAGES = ("clip", "clip_global", "lm", "sft1", "sft2", "dpo")
AT_ONCE_PREFIX = "at once: "  # Recipe.seconds key of an at_once block's wall time
STARTS_FROM = {"lm": "clip", "sft1": "lm", "sft2": "sft1", "dpo": "sft2"}
# The pooling rows of notebook 03 (notebook 07 starts from the stage-2 ones): stage 2 trained
# VARIANT_STEPS steps in each mode, `prompt` and `oracle` included, from stage 1 (an equal start) or
# from the recipe's stage 2 (a head start for prompt). The recipe's own mode is prompt, kernel
# (2, 2, 2) -> (4, 2, 2): 16 tokens for 8 frames.
POOLING_VARIANTS: Dict[str, Dict[str, object]] = {
    "prompt": {},
    "oracle": {},  # prompt pooling by the world's object masks, in training too (TrainConfig.relevance)
    "none": {"pooling": "none"},  # 128 tokens
    "temporal_mean": {"pooling": "temporal_mean"},  # (1, 4, 4): 16
    "spatial": {"pooling": "spatial"},  # (8, 2, 2): 32
    "adaptive": {"pooling": "adaptive", "video_output_size": [4, 2, 2]},  # 16
    # The compression zoo's trained rows (issue #16): merging makes averages of tokens, which a `none` model
    # never reads, so these train too. Selection (topk, random, fastv) keeps original tokens and is applied
    # to the `none` model at inference only. video_token_budget None: prompt pooling's count, 16.
    "merge": {"pooling": "merge"},  # ToMe / FrameFusion: 16 averages, neighbouring frames first
    "dominant": {"pooling": "dominant"},  # VisionZip: 14 tokens kept by [CLS] attention + 2 contextual averages
}
# The length-free weightings a pooling variant's margin sets, and the tag that names its runs ("-inv4").
MARGIN_WEIGHTINGS = {"invariant": "inv", "peak": "peak"}


def margin_tag(weighting: str, margin: float) -> str:
    """The part of a run's name that says its window rule and margin: ("invariant", 4.0) -> "inv4"."""
    return f"{MARGIN_WEIGHTINGS[weighting]}{margin:g}"
VARIANT_STEPS = 1000  # 1,000 x 16 records: two epochs of the world's 7,500
VARIANT_CACHE_MB = 1024  # TrainConfig.vision_cache_mb of the pooling rows: every image and crop of the tiny world fits
TASK_WEIGHTS = {"mc": 2.0}  # twice the multiple choice: its option lookup needs the most examples
# DPO's pairs come from videos of their own, none in an SFT split: on the SFT videos, which it has
# memorised, the model's answers are nearly all right and its mistakes are not the ones it makes on
# new videos. 1,000 test pairs: the hallucination rate within about 1.4 points (one standard error).
DPO_VIDEOS = {"train": 3000, "val": 300, "test": 1000}
FEW_OBJECTS = OBJECT_LIMITS["quadrants"][1]  # layout scores also count scenes of at most this many objects apart


@dataclass
class Recipe:
    """One recipe run directory: its world and its stages, each trained once and then reused."""

    out: Path
    preset: str = "tiny"
    smoke: bool = False  # 48 training records, 3 steps per stage: proves the path in seconds
    train: int = 7500  # 1 in 5 text-only: 6,000 media records, as before the lookups were added
    eval: int = 300
    task_weights: Dict[str, float] = field(default_factory=lambda: dict(TASK_WEIGHTS))
    dpo_videos: Dict[str, int] = field(default_factory=lambda: dict(DPO_VIDEOS))
    layout: str = "quadrants"  # the world the stages train on (WorldSpec.layout); every layout is also tested
    # Records in each layout's diagnostic split: 1,000 hold about 30 temporal-order, 50 direction and 60-210
    # questions of each other task (300 held 4-69, too few to compare layouts task by task; issue #14).
    diagnostic: int = 1000

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.smoke:
            self.train, self.eval, self.diagnostic = 48, 16, 16
            self.dpo_videos = {"train": 16, "val": 8, "test": 8}
        self.seconds: Dict[str, float] = {}
        self._overlapped: set = set()  # names whose seconds overlap others' (trained in an at_once block)
        self._queue: Optional[Dict[str, TrainConfig]] = None  # set inside an `at_once` block

    @property
    def world(self) -> Path:
        """The world's directory, written on first use."""
        world = self.out / "world"
        marker = self.out / "recipe.json"
        wanted = {"preset": self.preset, "smoke": self.smoke, "train": self.train, "eval": self.eval,
                  "task_weights": self.task_weights, "dpo_videos": self.dpo_videos, "layout": self.layout,
                  "diagnostic": self.diagnostic}
        if marker.exists():
            # Runs from before layouts trained on quadrants; runs from before `diagnostic` stay readable
            # (layout_split checks the size of a split they wrote).
            found = {"layout": "quadrants", "diagnostic": self.diagnostic, **json.loads(marker.read_text())}
            if found != wanted:
                raise ValueError(f"{marker} holds a recipe run with {found}, not {wanted}: "
                                 "use another --out (or delete it) instead of mixing the two")
        if not (world / "world.json").exists():
            start = time.perf_counter()
            write_world(world, WorldSpec(task_weights=self.task_weights, layout=self.layout), train=self.train, val=self.eval,
                        test=self.eval, long_per_length=0, dpo_videos=self.dpo_videos)
            self.seconds["world"] = time.perf_counter() - start
            self.out.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps(wanted, indent=2))
        return world

    def config(self, name: str) -> TrainConfig:
        """The stage's TrainConfig: configs/<preset>/<stage>.yaml pointed at this run directory."""
        if name not in STAGES:
            raise ValueError(f"unknown recipe stage {name!r}; stages are {STAGES}")
        stage = "clip" if name == "clip_global" else name
        cfg = TrainConfig.from_yaml(CONFIGS / self.preset / f"{stage}.yaml")
        fields = dict(data=str(self.world), run_dir=str(self.out / name))
        if name == "clip_global":
            fields["clip_loss"] = "global"
        if name in STARTS_FROM:
            fields["init_from"] = str(self.out / STARTS_FROM[name] / "model")
        if self.smoke:
            fields.update(max_steps=3, max_epochs=1, batch_size=min(cfg.batch_size, 8))
        return TrainConfig(**{**cfg.__dict__, **fields})

    def model_dir(self, name: str) -> Path:
        """out/<name>/model, training the stage (and the ones it starts from) when it is missing."""
        if name in STARTS_FROM:
            self.model_dir(STARTS_FROM[name])
        return self._train_once(name, self.config(name))

    def variant(self, name: str, stage: str = "sft2", *, data: Optional[Path] = None,
                model: Optional[Dict[str, object]] = None, **train: object) -> Path:
        """out/<name>/model: `stage` retrained with PPLLaVAConfig overrides `model` (e.g. another
        pooling mode), TrainConfig overrides `train`, and optionally another world `data`; it starts
        from the same model the stage starts from. Trained once, then reused like the stages."""
        if name in STAGES:
            raise ValueError(f"variant name {name!r} is one of the recipe's stages {STAGES}")
        if stage in STARTS_FROM:
            self.model_dir(STARTS_FROM[stage])
        base = self.config(stage)
        plain = {k: list(v) if isinstance(v, tuple) else v for k, v in (model or {}).items()}  # YAML has no tuples
        fields = {**base.__dict__, "run_dir": str(self.out / name), "model": {**base.model, **plain}, **train}
        if data is not None:
            fields["data"] = str(data)
        return self._train_once(name, TrainConfig(**fields))

    @contextlib.contextmanager
    def at_once(self, jobs: Optional[int] = None) -> Iterator["Recipe"]:
        """Inside the block, every stage or variant asked for that is not trained yet is queued instead
        (the path it will have is returned at once); leaving it trains the queue `jobs` at a time
        (default `ppllava.train.at_once.default_jobs`: 2 on a CPU; 1 in a smoke run, whose 3-step stages
        take less than a process's start), each in a process of its own with a share of the cores, a job
        starting when the model it starts from is there. One queued run, or jobs=1, trains here as
        outside the block. Nothing trains if the block raises.

            with recipe.at_once():
                paths = [recipe.pooling_variant(mode, "sft1") for mode in modes]
        """
        if self._queue is not None:
            raise ValueError("Recipe.at_once blocks do not nest")
        jobs = (1 if self.smoke else default_jobs()) if jobs is None else jobs
        if jobs < 1:
            raise ValueError(f"Recipe.at_once needs jobs >= 1, got {jobs}")
        self._queue = {}
        try:
            yield self
            queued = self._queue
        finally:
            self._queue = None
        if jobs == 1 or len(queued) == 1:
            for name, cfg in queued.items():
                self.seconds[name] = float(run(cfg)["wall_seconds"])
        elif queued:
            start = time.perf_counter()
            each = train_jobs([Job(name, cfg) for name, cfg in queued.items()], at_once=jobs)
            self.seconds.update(each)
            # The jobs overlap, so their seconds do not add up to the time taken: the block's own wall time
            # is kept beside them, and `total` counts it instead of them.
            self.seconds[AT_ONCE_PREFIX + " + ".join(each)] = time.perf_counter() - start
            self._overlapped.update(each)

    def clip_stages(self) -> Tuple[Path, Path]:
        """out/clip/model and out/clip_global/model (the global-loss ablation), the two trained side by side
        when missing: they start from nothing and take about as long as each other."""
        with self.at_once():
            return self.model_dir("clip"), self.model_dir("clip_global")

    def total_seconds(self) -> float:
        """Wall time of what this Recipe did: the seconds of everything it ran, an at_once block counted by
        its own wall time rather than by its overlapping jobs'."""
        return sum(v for k, v in self.seconds.items() if k not in self._overlapped)

    def pooling_variant(self, mode: str, start: str = "sft2", margin: Optional[float] = None,
                        weighting: str = "invariant") -> Path:
        """Stage 2 in pooling `mode` (a key of POOLING_VARIANTS), VARIANT_STEPS steps from `start`:
        "sft2" (out/sft2-<mode>: the recipe's stage 2, itself trained with prompt pooling, a head start
        for that row) or "sft1" (out/sft1-<mode>: stage 1, where no LLM has yet read pooled tokens, so
        every mode starts equal). "oracle" pools by the world's ground truth instead of CLIP's map, in
        training too: a model trained on one map does not read tokens pooled by another. `margin` (prompt
        and oracle only): weight the windows with the length-free rule `weighting`, "invariant" or "peak"
        (`ppllava.ops.pooling.window_weights`), at that margin instead of the released softmax
        (out/<start>-<mode>-inv<margin>, -peak<margin>); an LLM reads best the tokens of the rule it was
        trained on, so a row pooled by that rule starts here."""
        if mode not in POOLING_VARIANTS:
            raise ValueError(f"no pooling variant {mode!r}; modes are {list(POOLING_VARIANTS)}")
        if start not in ("sft1", "sft2"):
            raise ValueError(f"pooling variants start from 'sft1' or 'sft2', got {start!r}")
        overrides, name = dict(POOLING_VARIANTS[mode]), f"{start}-{mode}"
        if weighting not in MARGIN_WEIGHTINGS:
            raise ValueError(f"a pooling variant's margin weighting is one of {list(MARGIN_WEIGHTINGS)}, got {weighting!r}")
        if margin is not None:
            if mode not in ("prompt", "oracle"):
                raise ValueError(f"margin is the {weighting!r} weighting of prompt pooling; pooling variant {mode!r} has "
                                 "no window weights")
            overrides = {**overrides, "weighting": weighting, "pool_margin": float(margin)}
            name = f"{name}-{margin_tag(weighting, margin)}"
        # The tower is frozen here: its features are read, not recomputed (the same weights come out; neither
        # field is a training field, so rows trained before keep their place). Videos from the world's feature
        # store, shared by every row; images from memory after their first sight. 'dominant' reads the tower's
        # [CLS] attention, which the store does not keep (VideoFeatureStore.refusal): its videos go through the
        # in-memory cache too.
        store = VideoFeatureStore.refusal(overrides.get("pooling", PPLLaVAConfig.pooling)) is None
        frozen = dict(video_feature_store=store, vision_cache_mb=VARIANT_CACHE_MB)
        return self.variant(name, "sft2", model=overrides, init_from=str(self.model_dir(start)),
                            max_steps=3 if self.smoke else VARIANT_STEPS,
                            relevance="oracle" if mode == "oracle" else "model", **frozen)

    def _train_once(self, name: str, cfg: TrainConfig) -> Path:
        path = self.out / name / "model"
        saved = self.out / name / "train_config.yaml"
        if (path / "config.yaml").exists():
            if saved.exists():
                before = TrainConfig.from_yaml(saved)
                if _training_fields(before) != _training_fields(cfg):
                    raise ValueError(f"{path} was trained with another config ({saved}) than the one asked for now; "
                                     "delete the directory to retrain it, or use another name")
                if _start(before) != _start(cfg):
                    raise ValueError(f"{path} was trained from {_start(before)}, not from {_start(cfg)} as asked now; "
                                     "delete the directory to retrain it, or use another name")
            return path
        if self._queue is not None:  # inside at_once: trained when the block ends
            queued = self._queue.get(name)
            if queued is not None and (_training_fields(queued) != _training_fields(cfg) or _start(queued) != _start(cfg)):
                raise ValueError(f"{name!r} was asked for twice in one Recipe.at_once block, with different configs")
            self._queue[name] = cfg
            return path
        self.seconds[name] = float(run(cfg)["wall_seconds"])
        return path

    def model(self, name: str, **overrides) -> PPLLaVA:
        """The trained model of a stage (trained now if missing) or of a variant trained before, in
        eval mode; `overrides` change config fields at load (pooling, temperature, ...)."""
        if name in STAGES:
            return load_pretrained(self.model_dir(name), **overrides).eval()
        path = self.out / name / "model"
        if not (path / "config.yaml").exists():
            raise FileNotFoundError(f"{path}: no variant {name!r} trained here; train it with Recipe.variant first")
        return load_pretrained(path, **overrides).eval()

    def results(self) -> Dict[str, object]:
        """Train what is missing, then the held-out scores of the table in docs/recipe.md."""
        self.clip_stages()
        for name in STAGES:
            self.model_dir(name)
        start = time.perf_counter()
        world, tokenizer = self.world, build_world_tokenizer()
        results: Dict[str, object] = {"pointing": {}}
        clip = self.model("clip")
        # One set of test pairs for every pointing score: both towers share the preset's frame and
        # patch size, and the dataset keeps what it decoded.
        pairs = ClipPairDataset(world / "test.json", clip.config.image_size, clip.config.patch_size)
        results["pointing_object"] = {}
        for name in ("clip", "clip_global"):
            model = self.model(name)
            loader = DataLoader(pairs, batch_size=64, collate_fn=ClipPairCollator(model.config.text_context_length))
            scores = pointing_by_rule(model, loader, ("patches", "object"))
            results["pointing"][name], results["pointing_object"][name] = scores["patches"], scores["object"]
        # The fine-grained CLIP by how the prompt names the object; "question": the record's own
        # question where it names the object alone ("what colour is the star ?"), the CLIP prompt of SFT.
        collators = {**{form: ClipPairCollator(clip.config.text_context_length, form=form) for form in ClipPairCollator.FORMS},
                     "question": ClipPairCollator(clip.config.text_context_length, questions=1.0)}
        results["pointing_by_prompt"] = {form: pointing(clip, DataLoader(pairs, batch_size=64, collate_fn=collate))
                                         for form, collate in collators.items()}
        sft, dpo = self.model("sft2"), self.model("dpo")
        test = LLaVADataset(world / "test.json", sft.config, tokenizer)
        results["sft_accuracy"] = accuracy_by_task(generate_answers(sft, test))
        pairs = PreferenceDataset(world / "test_dpo.jsonl", sft.config, tokenizer)
        results["dpo_before"] = preference_scores(sft, pairs)
        results["dpo_after"] = preference_scores(dpo, pairs)
        results["dpo_accuracy"] = accuracy_by_task(generate_answers(dpo, test))
        results["layouts"] = {layout: self.layout_scores(layout, clip, sft, tokenizer) for layout in LAYOUTS}
        self.seconds["evaluation"] = time.perf_counter() - start
        results["seconds"] = dict(self.seconds, total=self.total_seconds())
        results["recipe"] = {k: v for k, v in asdict(self).items() if k != "out"}
        return results


    def layout_split(self, layout: str) -> Path:
        """world/test_<layout>.json, `diagnostic` held-out records of `layout`'s world whatever the stages
        trained on, written on first use from seeds no other split draws (so adding it to an older run
        directory changes nothing that was trained)."""
        path = self.world / f"test_{layout}.json"
        if not path.exists():
            WorldWriter(self.world, WorldSpec(task_weights=self.task_weights, layout=self.layout)).write_diagnostic_split(
                layout, self.diagnostic, progress=False)
        written = len(json.loads(path.read_text()))
        if written != self.diagnostic:
            raise ValueError(f"{path} holds {written} records, not the {self.diagnostic} asked for (Recipe.diagnostic): "
                             f"pass diagnostic={written}, or delete the file to write it again")
        return path

    def layout_scores(self, layout: str, clip: PPLLaVA, sft: PPLLaVA, tokenizer) -> Dict[str, object]:
        """Pointing (full names) and SFT accuracy by task on `layout`'s held-out split, each as
        (right, asked): a model that learned the quadrant lattice scores apart on the three layouts."""
        path = self.layout_split(layout)
        pairs = ClipPairDataset(path, clip.config.image_size, clip.config.patch_size)
        loader = DataLoader(pairs, batch_size=64, collate_fn=ClipPairCollator(clip.config.text_context_length))
        scores = pointing_by_rule(clip, loader, ("patches", "object"))
        data = LLaVADataset(path, sft.config, tokenizer)
        answers = generate_answers(sft, data)
        # The free layout draws up to six objects, the quadrant ones at most four: the same count of
        # questions about scenes (a video or an image) that any layout can draw compares like with like.
        few = {r["id"] for r in data.records if "scene" in r and len(r["scene"]["objects"]) <= FEW_OBJECTS}
        return {"pointing": [round(scores["patches"] * len(pairs)), len(pairs)],
                "pointing_object": [round(scores["object"] * len(pairs)), len(pairs)],
                "sft": {task: list(c) for task, c in counts_by_task(answers).items()},
                "sft_few_objects": {task: list(c) for task, c in counts_by_task(
                    [a for a in answers if a["id"] in few]).items()}}


def _start(cfg: TrainConfig) -> Optional[str]:
    """The model a run starts from, as a path relative to the recipe directory when it lies inside it
    (so a moved recipe directory keeps its runs), else as given."""
    if not cfg.init_from:
        return None
    try:
        return str(Path(cfg.init_from).relative_to(Path(cfg.run_dir).parent))
    except ValueError:
        return str(cfg.init_from)


def _training_fields(cfg: TrainConfig) -> Dict[str, object]:
    """What decides the trained weights: not the paths that move with the run directory (the world
    itself is pinned by recipe.json), nor how media are loaded."""
    return {k: v for k, v in cfg.__dict__.items() if k not in ("run_dir", "data", "init_from", "num_workers", "media_cache_mb",
                                                          "vision_cache_mb", "video_feature_store")}


def main(argv=None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--train", type=count_type(1), default=7500)
    parser.add_argument("--eval", type=count_type(1), default=300)
    parser.add_argument("--diagnostic", type=count_type(1), default=1000,
                        help="records in each layout's held-out diagnostic split (test_<layout>.json)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--layout", choices=LAYOUTS, default="quadrants",
                        help="the world the stages train on; the scores cover every layout's held-out split")
    args = parser.parse_args(argv)
    # Every stage's config is read before the world is written: a bad one is a usage error, not a crash hours in.
    for stage in dict.fromkeys("clip" if name == "clip_global" else name for name in STAGES):
        path = CONFIGS / args.preset / f"{stage}.yaml"
        if not path.exists():
            have = sorted(p.name for p in CONFIGS.iterdir() if (p / f"{stage}.yaml").exists())
            parser.error(f"--preset {args.preset}: no {path} (presets with a {stage} config: {have})")
        try:
            TrainConfig.from_yaml(path)
        except ValueError as err:
            parser.error(str(err))
    recipe = Recipe(args.out, preset=args.preset, smoke=args.smoke, train=args.train, eval=args.eval, layout=args.layout,
                    diagnostic=args.diagnostic)
    results = recipe.results()
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "results.md").write_text(table(results))
    print(table(results))
    return results


def table(r: Dict[str, object]) -> str:
    s, acc = r["seconds"], r["sft_accuracy"]
    rows = [
        "| measure | value |", "| --- | --- |",
        *(f"| wall time, {k} | {v:.0f} s |" for k, v in s.items()),
        f"| pointing accuracy, fine-grained CLIP | {r['pointing']['clip']:.3f} |",
        f"| pointing accuracy, global CLIP (ablation) | {r['pointing']['clip_global']:.3f} |",
        *(f"| object pointing (top patch shows the named object more than any other), {k} | {v:.3f} |"
          for k, v in r.get("pointing_object", {}).items()),
        *(f"| pointing accuracy, fine-grained CLIP, prompt form: {k} | {v:.3f} |"
          for k, v in r.get("pointing_by_prompt", {}).items()),
        *(f"| held-out accuracy after SFT, {k} | {v:.3f} |" for k, v in acc.items()),
        f"| DPO preference accuracy, before / after | {r['dpo_before']['preference_accuracy']:.3f} / "
        f"{r['dpo_after']['preference_accuracy']:.3f} |",
        f"| hallucination rate (answers that state something false, {r['dpo_before']['pairs']:.0f} DPO test questions), before / after | "
        f"{r['dpo_before']['hallucination_rate']:.3f} / {r['dpo_after']['hallucination_rate']:.3f} |",
        f"| error rate (answers that are not right, DPO test questions), before / after | "
        f"{r['dpo_before']['error_rate']:.3f} / {r['dpo_after']['error_rate']:.3f} |",
        f"| caption recall (share of the true clauses stated), before / after | "
        f"{r['dpo_before']['caption_recall']:.3f} / {r['dpo_after']['caption_recall']:.3f} |",
        f"| clauses per caption, before / after | "
        f"{r['dpo_before']['caption_clauses']:.2f} / {r['dpo_after']['caption_clauses']:.2f} |",
        *_layout_rows(r.get("layouts", {})),
    ]
    return "\n".join(rows) + "\n"


def _rate(right: int, asked: int) -> str:
    lo, hi = wilson_interval(right, asked)
    return f"{right / asked:.3f} [{lo:.2f}, {hi:.2f}] (n={asked})"


def _layout_rows(layouts: Dict[str, Dict[str, object]]) -> list:
    """Pointing and SFT accuracy per task on each layout's held-out split, with 95 % Wilson intervals."""
    rows = []
    for layout, scores in layouts.items():
        rows.append(f"| {layout} layout: pointing accuracy, full names | {_rate(*scores['pointing'])} |")
        if "pointing_object" in scores:  # runs from before object pointing have none
            rows.append(f"| {layout} layout: object pointing, full names | {_rate(*scores['pointing_object'])} |")
        rows += [f"| {layout} layout: accuracy after SFT, {task} | {_rate(*c)} |" for task, c in scores["sft"].items()]
        rows += [f"| {layout} layout, scenes of at most {FEW_OBJECTS} objects: accuracy after SFT, {task} | {_rate(*c)} |"
                 for task, c in scores.get("sft_few_objects", {}).items() if task in ("colour", "shape")]
    return rows


if __name__ == "__main__":
    main()
