"""Questions about a scene, with their answers and a plausible hallucination for DPO.

Every text is built from the templates below, so the world's vocabulary is closed and known
(`vocabulary()`), which the word-level tokenizer is built from.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence

import numpy as np

from ppllava.data.scenes import COLOURS, DIRECTIONS, NEEDLE_TASKS, SHAPES, Scene

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")  # the free layout holds up to six objects
LETTERS = ("A", "B", "C", "D")
TEXT_TASKS = ("lookup",)  # text-only records: the in-context option lookup a pretrained LLM brings
VIDEO_TASKS = ("caption", "colour", "shape", "mc", "count", "direction", "order")
IMAGE_TASKS = ("caption", "colour", "shape", "mc", "count")
TEMPLATES = (
    "describe the video .", "describe the image .", "what colour is the {shape} ?", "what shape is the {colour} object ?",
    "what colour is the {shape} ? options : A {colour} B {colour} C {colour} D {colour}",
    "how many objects are there ?", "which way does the {colour} {shape} move ?",
    "which appears first , the {colour} {shape} or the {colour} {shape} ?", "the {colour} {shape}",
    "{colour} , so {letter}", "which letter is {colour} ?",
    "a {colour} {shape} moves {direction}", "a {colour} {shape} stays still", "a {colour} {shape} appears later", "and",
    "which image shows the {colour} {shape} ? image {number}",
    "how many times does the {colour} {shape} appear ?",
)


@dataclass
class Question:
    task: str
    question: str
    answer: str
    hallucination: str  # a plausible wrong answer (wrong colour, shape, count, direction, ...)
    target: Optional[int] = None  # index of the object asked about
    options: Optional[List[str]] = None


def vocabulary() -> List[str]:
    """Every word the world's texts can contain."""
    words = set(NUMBERS) | set(LETTERS) | set(COLOURS) | set(SHAPES) | set(DIRECTIONS)
    for template in TEMPLATES:
        words |= {w for w in template.split() if not w.startswith("{")}
    return sorted(words)


def _other(rng: np.random.Generator, choices: Sequence[str], exclude: str) -> str:
    rest = [c for c in choices if c != exclude]
    return rest[int(rng.integers(len(rest)))]


def _describe(obj, media: str) -> str:
    if media == "image" or obj.direction is None:
        return f"a {obj.name}" + (" appears later" if media == "video" and obj.appear > 0 else " stays still" if media == "video" else "")
    return f"a {obj.name} moves {obj.direction}"


def _named_by(objects, key) -> List[int]:
    """Indices of the objects that `key` (an object -> attribute function) names alone in the scene."""
    values = [key(o) for o in objects]
    return [i for i, v in enumerate(values) if values.count(v) == 1]


def _unique_target(rng: np.random.Generator, objects, k: int, target: Optional[int], key, task: str, what: str) -> int:
    """`k` if its `what` names it alone, else (no fixed target) one drawn among those that do. When
    every object qualifies (the quadrant layouts: distinct colours and shapes) no draw is made, so
    those worlds repeat seed for seed."""
    named = _named_by(objects, key)
    if k in named:
        return k
    if target is not None or not named:
        raise ValueError(f"{task}: no object {'' if target is None else f'{target} '}is the only one of its {what} "
                         f"in the scene {[o.name for o in objects]}")
    return named[int(rng.integers(len(named)))]


def ask(rng: np.random.Generator, scene: Scene, task: str, media: str = "video", target: Optional[int] = None,
        max_count: int = 4) -> Question:
    """A question of `task` about `scene` ("video" or "image"). A question names its object by an
    attribute no other object of the scene shares, so it has one answer. Raises ValueError when the
    scene cannot support the task (e.g. direction with nothing moving, or no shape unique for a
    colour question), so callers pick another. `max_count`: the most objects the world puts in a
    scene, the range wrong counts are drawn from."""
    objects = scene.objects
    if len({o.name for o in objects}) < len(objects):
        raise ValueError(f"scene objects {[o.name for o in objects]} share a name: a question could have two answers")
    k = int(rng.integers(len(objects))) if target is None else target
    if task in ("colour", "mc"):  # "what colour is the {shape} ?"
        k = _unique_target(rng, objects, k, target, lambda o: o.shape, task, "shape")
    elif task == "shape":  # "what shape is the {colour} object ?"
        k = _unique_target(rng, objects, k, target, lambda o: o.colour, task, "colour")
    obj = objects[k]
    if task == "caption":
        answer = " and ".join(_describe(o, media) for o in objects)
        wrong = _other(rng, list(COLOURS), obj.colour)
        return Question(task, f"describe the {media} .", answer, answer.replace(obj.colour, wrong, 1), None)
    if task == "colour":
        return Question(task, f"what colour is the {obj.shape} ?", obj.colour, _other(rng, list(COLOURS), obj.colour), k)
    if task == "shape":
        return Question(task, f"what shape is the {obj.colour} object ?", obj.shape, _other(rng, SHAPES, obj.shape), k)
    if task == "mc":
        distractors = [c for c in COLOURS if c != obj.colour]
        options = [obj.colour] + [distractors[i] for i in rng.permutation(len(distractors))[:3]]
        options = [options[i] for i in rng.permutation(4)]
        letter = LETTERS[options.index(obj.colour)]
        listed = " ".join(f"{l} {o}" for l, o in zip(LETTERS, options))
        # The answer names the option before its letter: a 2-layer LLM finds the letter of a colour
        # already in its context with one induction-style lookup, but cannot resolve the colour
        # and look it up in the same step (letter-only answers stayed at 0.27 on the tiny recipe).
        wrong = _other(rng, options, obj.colour)
        return Question(task, f"what colour is the {obj.shape} ? options : {listed}",
                        f"{obj.colour} , so {letter}", f"{wrong} , so {LETTERS[options.index(wrong)]}", k, options)
    if task == "count":
        n = len(objects)
        counts = NUMBERS[1:max(max_count, n) + 1]
        return Question(task, "how many objects are there ?", NUMBERS[n], _other(rng, counts, NUMBERS[n]), None)
    if task == "direction":
        movers = [i for i, o in enumerate(objects) if o.direction is not None]
        if target is None and movers:
            k = movers[int(rng.integers(len(movers)))]
        obj = objects[k]
        if obj.direction is None:
            raise ValueError("direction: the object does not move")
        return Question(task, f"which way does the {obj.name} move ?", obj.direction,
                        _other(rng, list(DIRECTIONS), obj.direction), k)
    if task == "order":
        late = [i for i, o in enumerate(objects) if o.appear > 0]
        early = [i for i, o in enumerate(objects) if o.appear == 0]
        if not late or not early:
            raise ValueError("order: every object appears at the same time")
        first, second = early[int(rng.integers(len(early)))], late[int(rng.integers(len(late)))]
        pair = [first, second] if rng.random() < 0.5 else [second, first]
        a, b = objects[pair[0]], objects[pair[1]]
        return Question(task, f"which appears first , the {a.name} or the {b.name} ?", f"the {objects[first].name}",
                        f"the {objects[second].name}", first)
    raise ValueError(f"unknown task {task!r}; tasks are {VIDEO_TASKS}")


def ask_lookup(rng: np.random.Generator) -> Question:
    """A text-only question: which letter stands before a word in a list of four options. Real
    LLMs arrive pretrained with this in-context lookup; the tiny LLM learns it from these records
    (LLaVA's SFT mixes hold text-only conversations for the same reason)."""
    pool = list(COLOURS) if rng.random() < 0.5 else list(SHAPES)
    options = [pool[i] for i in rng.permutation(len(pool))[:4]]
    k = int(rng.integers(4))
    listed = " ".join(f"{l} {o}" for l, o in zip(LETTERS, options))
    wrong = (k + 1 + int(rng.integers(3))) % 4
    return Question("lookup", f"which letter is {options[k]} ? options : {listed}", f"{options[k]} , so {LETTERS[k]}",
                    f"{options[wrong]} , so {LETTERS[wrong]}", None, options)


def ask_needle(rng: np.random.Generator, scene: Scene, task: str) -> Question:
    """A needle question about a scene whose first objects are brief (`scenes.random_scene`'s `spans`, in
    time order, or its `needle`): "recall" the colour of the one brief object; the "order" of the first
    two ("which appears first , the red star or the blue circle ?"); "count" the times the first object
    is seen (`repeat_first`: "how many times does the green square appear ?", 1-3). The target is the
    first object, the earliest seen. Tasks as records name them: "needle", "needle_order", "needle_count"."""
    if task == "recall":
        return replace(ask(rng, scene, "colour", "video", target=0), task="needle")
    objects = scene.objects
    if task == "order":
        first, second = objects[0], objects[1]
        if first.name == second.name or not first.vanish <= second.appear:
            raise ValueError(f"order needle: objects {first.name} {first.appear, first.vanish} and {second.name} "
                             f"{second.appear, second.vanish} are not two objects seen one after the other")
        a, b = (first, second) if rng.random() < 0.5 else (second, first)
        return Question("needle_order", f"which appears first , the {a.name} or the {b.name} ?", f"the {first.name}",
                        f"the {second.name}", 0)
    if task == "count":
        n = sum(o.name == objects[0].name for o in objects)
        if not 1 <= n <= 3:
            raise ValueError(f"count needle: the {objects[0].name} is seen {n} times; the task asks 1 to 3")
        return Question("needle_count", f"how many times does the {objects[0].name} appear ?", NUMBERS[n],
                        _other(rng, NUMBERS[1:4], NUMBERS[n]), 0)
    raise ValueError(f"unknown needle task {task!r}; needle tasks are {NEEDLE_TASKS}")
