"""Checks for the exercise notebooks: a student's function against the kit's on random inputs.

Each `check_*` calls the student's function and the kit's on the same inputs, case by case, and
raises `CheckFailed` at the first disagreement with a message that says what is wrong: the type,
the shape, the values (largest difference, where, and both values there), a non-finite value, or
the gradient (none at all, or a different one, for each input). A stub's NotImplementedError is
not caught: it reaches the notebook as the task. `python -m ppllava.exercises` makes the notebooks.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ppllava.data.conversation import IGNORE, TEMPLATES, encode_conversation
from ppllava.data.tasks import vocabulary
from ppllava.data.tokenizer import build_world_tokenizer
from ppllava.ops import extend_clip_positions, prompt_guided_pool3d, prompt_relevance, window_geometry
from ppllava.train.losses import dpo_loss


class CheckFailed(AssertionError):
    """The student's function disagrees with the kit's; the message says how and on which input."""


@dataclass
class Case:
    about: str  # the input in words, for the message: "K=18 tokens of width 8, temperature 0.01"
    args: Dict[str, object]  # keyword arguments of the function under test
    grad: Sequence[str] = field(default_factory=tuple)  # the arguments whose gradient is compared


def _where(index: Sequence[int]) -> str:
    return f"[{', '.join(str(int(i)) for i in index)}]" if len(index) else "(the scalar)"


def tensor_problem(got, expected: torch.Tensor, what: str, atol: float, rtol: float) -> Optional[str]:
    """What is wrong with `got` as a stand-in for `expected` (type, shape, non-finite values, values), or None."""
    if not isinstance(got, torch.Tensor):
        return f"{what}: expected a torch.Tensor of shape {tuple(expected.shape)}, got {type(got).__name__}"
    if tuple(got.shape) != tuple(expected.shape):
        return f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    g, e = got.detach().double().cpu(), expected.detach().double().cpu()
    bad = ~torch.isfinite(g) & torch.isfinite(e)
    if bad.any():
        index = tuple(torch.nonzero(bad)[0].tolist())
        return (f"{what}: {int(bad.sum())} non-finite value(s) where the kit's are finite, the first "
                f"{float(g[index])} at {_where(index)} (expected {float(e[index]):.6g}); an exp that overflowed "
                "or a log of 0? (subtract the max before exp; torch.softmax, F.logsigmoid are stable)")
    diff = (g - e).abs().nan_to_num(nan=math.inf)
    wrong = diff > atol + rtol * e.abs()
    if not wrong.any():
        return None
    index = tuple(torch.nonzero(diff == diff.max())[0].tolist())
    return (f"{what}: values differ at {int(wrong.sum())} of {e.numel()} positions; the largest difference "
            f"{float(diff[index]):.3g} is at {_where(index)}: got {float(g[index]):.6g}, expected "
            f"{float(e[index]):.6g} (tolerance {atol:g} + {rtol:g} x |expected|)")


def _fresh(args: Dict[str, object], grad: Sequence[str]) -> Dict[str, object]:
    """A copy of the arguments for one call: tensors cloned, leaves with requires_grad where asked."""
    out = {}
    for k, v in args.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().clone().requires_grad_(k in grad)
        out[k] = v
    return out


def _as_outputs(value, names: Sequence[str], fn_name: str) -> List:
    if len(names) == 1:
        return [value]
    if not isinstance(value, (tuple, list)) or len(value) != len(names):
        raise CheckFailed(f"{fn_name} must return {len(names)} values ({', '.join(names)}), got {type(value).__name__}"
                          + (f" of length {len(value)}" if isinstance(value, (tuple, list)) else ""))
    return list(value)


def compare_tensors(student: Callable, reference: Callable, cases: Sequence[Case], *, name: str,
                    outputs: Sequence[str] = ("output",), atol: float = 1e-5, rtol: float = 1e-4) -> int:
    """Run `student` and `reference` on every case; compare each output's shape and values, then the
    gradient of sum(output * random weights) with respect to each argument in `case.grad`.
    Returns the number of cases checked; raises CheckFailed naming the case at the first problem."""
    for n, case in enumerate(cases, 1):
        where = f"{name} on case {n} of {len(cases)} ({case.about})"
        s_args, r_args = _fresh(case.args, case.grad), _fresh(case.args, case.grad)
        got = _as_outputs(student(**s_args), outputs, name)
        expected = _as_outputs(reference(**r_args), outputs, "the kit")
        for label, g, e in zip(outputs, got, expected):
            problem = tensor_problem(g, e, label, atol, rtol)
            if problem:
                raise CheckFailed(f"{where}:\n  {problem}")
        if not case.grad:
            continue
        weights = [torch.randn(e.shape, generator=torch.Generator().manual_seed(n), dtype=e.dtype) for e in expected]
        s_inputs, r_inputs = [s_args[k] for k in case.grad], [r_args[k] for k in case.grad]
        r_grads = torch.autograd.grad([(e * w).sum() for e, w in zip(expected, weights)], r_inputs, allow_unused=True)
        live = [(g * w.to(g.dtype)).sum() for g, w in zip(got, weights) if g.requires_grad]
        if not live:
            raise CheckFailed(f"{where}:\n  gradient: the output carries none (no grad_fn): was it computed under "
                              "torch.no_grad(), through .detach(), .item(), .tolist() or numpy?")
        s_grads = torch.autograd.grad(live, s_inputs, allow_unused=True)
        for arg, sg, rg in zip(case.grad, s_grads, r_grads):
            if sg is None and rg is not None:
                raise CheckFailed(f"{where}:\n  gradient: none reaches `{arg}`, though the output depends on it "
                                  "(a .detach(), .item(), argmax or a Python float on the way?)")
            if rg is not None:
                problem = tensor_problem(sg, rg, f"gradient with respect to `{arg}`", atol, rtol)
                if problem:
                    raise CheckFailed(f"{where}:\n  {problem}")
    return len(cases)


def _passed(name: str, count: int, what: str) -> None:
    print(f"{name}: right on all {count} cases ({what}).")


# --- window geometry, one axis -----------------------------------------------------------------

def _kit_axis_geometry(size: int, output_size=None, kernel=None, stride=None) -> Tuple[int, int, int]:
    """The kit's geometry on axis T of a (size, 1, 1) grid: the other two axes are trivially 1."""
    triple = lambda v: None if v is None else (v, 1, 1)  # noqa: E731
    o, k, d = window_geometry((size, 1, 1), triple(output_size), triple(kernel), triple(stride))
    return o[0], k[0], d[0]


def geometry_cases(count: int = 40, seed: int = 0) -> List[Dict[str, int]]:
    """The paper's and the notebook's cases, then random ones the kit accepts (every position covered)."""
    cases = [dict(size=24, kernel=3), dict(size=32, kernel=2), dict(size=24, output_size=8),
             dict(size=7, output_size=1), dict(size=10, output_size=4, stride=2), dict(size=10, output_size=4, kernel=4),
             dict(size=9, kernel=3, stride=2), dict(size=10, output_size=2, kernel=8)]  # the last overlaps: d = 2
    rng = random.Random(seed)
    while len(cases) < count:
        size = rng.randint(1, 40)
        given = rng.choice([("output_size",), ("kernel",), ("kernel", "stride"), ("output_size", "stride"),
                            ("output_size", "kernel")])
        case = {"size": size, **{k: rng.randint(1, size) for k in given}}
        try:
            _kit_axis_geometry(**case)
        except ValueError:  # a combination the kit refuses (uncovered positions): not asked of the student
            continue
        cases.append(case)
    return cases


def check_axis_geometry(axis_geometry: Callable) -> None:
    """`axis_geometry(size, output_size=None, kernel=None, stride=None) -> (O, k, d)` against `window_geometry`."""
    cases = geometry_cases()
    for case in cases:
        got, expected = axis_geometry(**case), _kit_axis_geometry(**case)
        call = f"axis_geometry({', '.join(f'{k}={v}' for k, v in case.items())})"
        if not isinstance(got, tuple) or len(got) != 3:
            raise CheckFailed(f"{call} returned {got!r}; expected a tuple (O, k, d) = {expected}")
        for label, value in zip(("O", "k", "d"), got):
            if isinstance(value, bool) or not isinstance(value, int):
                raise CheckFailed(f"{call} returned {label} = {value!r} ({type(value).__name__}); every value "
                                  "must be an int (// is floor division, / gives a float)")
        if got != expected:
            wrong = [label for label, g, e in zip(("output size O", "kernel k", "stride d"), got, expected) if g != e]
            raise CheckFailed(f"{call} returned (O, k, d) = {got}; the kit gives {expected}: wrong {' and '.join(wrong)}")
    _passed("axis_geometry", len(cases), "output size, kernel and stride")


# --- prompt-guided pooling of one window ---------------------------------------------------------

def _kit_pool_window(x: torch.Tensor, s: torch.Tensor, temperature: float) -> torch.Tensor:
    """The kit's pooling of a (K, 1, 1) grid by one (K, 1, 1) window: exactly one window's mix."""
    k = x.shape[0]
    pooled, _ = prompt_guided_pool3d(x[None], s.reshape(1, k, 1, 1), (k, 1, 1), kernel=(k, 1, 1), temperature=temperature)
    return pooled[0, 0]


def pool_window_cases(seed: int = 0) -> List[Case]:
    g = torch.Generator().manual_seed(seed)
    cases = []
    for k, d, temperature, peak in [(18, 8, 0.01, False), (4, 16, 0.01, False), (8, 3, 0.1, False), (18, 8, 1.0, False),
                                    (18, 8, 0.01, True)]:
        # A window's slice of a softmax over 64 patches (small values), or one patch holding most of
        # the window's mass: then s / 0.01 nears 100 and a plain float32 exp overflows.
        logits = torch.randn(k if peak else 64, generator=g)
        s = torch.softmax(8.0 * logits, 0) if peak else torch.softmax(logits, 0)[:k]
        about = f"K={k} tokens of width {d}, temperature {temperature}" + (", one dominant patch" if peak else "")
        cases.append(Case(about, dict(x=torch.randn(k, d, generator=g), s=s, temperature=temperature), grad=("x", "s")))
    return cases


def check_pool_window(pool_window: Callable) -> None:
    """`pool_window(x (K, D), s (K,), temperature) -> (D,)` against `prompt_guided_pool3d` on one window."""
    count = compare_tensors(pool_window, _kit_pool_window, pool_window_cases(), name="pool_window")
    _passed("pool_window", count, "pooled token and its gradients with respect to x and s")


# --- the relevance map ---------------------------------------------------------------------------

def relevance_cases(seed: int = 0) -> List[Case]:
    g = torch.Generator().manual_seed(seed)
    cases = []
    for (b, t, h, w, dc), tau in [((1, 2, 3, 3, 8), 100.0), ((2, 4, 2, 3, 16), 100.0), ((2, 1, 4, 4, 8), 1.0),
                                  ((3, 2, 2, 2, 4), 20.0)]:
        # Not unit vectors: the function must normalise them itself.
        args = dict(patch_embeds=3 * torch.randn(b, t, h, w, dc, generator=g), text_embeds=2 * torch.randn(b, dc, generator=g),
                    logit_scale=torch.tensor(math.log(tau)))
        cases.append(Case(f"B={b}, (T, H, W)=({t}, {h}, {w}), Dc={dc}, tau={tau:g}", args,
                          grad=("patch_embeds", "text_embeds", "logit_scale")))
    return cases


def check_relevance_map(relevance_map: Callable) -> None:
    """`relevance_map(patch_embeds, text_embeds, logit_scale) -> (r, s)` against `prompt_relevance`."""
    kit = lambda patch_embeds, text_embeds, logit_scale: prompt_relevance(patch_embeds, text_embeds, logit_scale)  # noqa: E731
    count = compare_tensors(relevance_map, kit, relevance_cases(), name="relevance_map", outputs=("r", "s"),
                            atol=1e-6, rtol=1e-4)
    _passed("relevance_map", count, "r, s and their gradients with respect to the embeddings and logit_scale")


# --- CLIP position extension, 77 -> 248 -----------------------------------------------------------

def extension_cases(seed: int = 0) -> List[Case]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(77, 8, 20, 4), (77, 3, 20, 4), (30, 5, 5, 2), (10, 4, 3, 3)]  # (L, D, keep, factor)
    return [Case(f"table ({n}, {d}), keep {keep}, factor {factor}",
                 dict(table=torch.randn(n, d, generator=g), keep=keep, factor=factor), grad=("table",))
            for n, d, keep, factor in shapes]


def check_extend_positions(extend_positions: Callable) -> None:
    """`extend_positions(table (L, D), keep=20, factor=4) -> (keep + factor * (L - keep), D)` against `extend_clip_positions`."""
    count = compare_tensors(extend_positions, extend_clip_positions, extension_cases(), name="extend_positions")
    _passed("extend_positions", count, "extended table and its gradient with respect to the table")


# --- DPO, sigmoid loss ----------------------------------------------------------------------------

def dpo_cases(seed: int = 0) -> List[Case]:
    g = torch.Generator().manual_seed(seed)
    cases = []
    for b, beta, scale in [(4, 0.1, 30.0), (1, 0.1, 5.0), (16, 0.5, 30.0), (8, 1.0, 400.0)]:
        # Summed answer log-probs are negative; at scale 400 with beta 1, beta * h reaches hundreds and a
        # plain log(sigmoid(...)) underflows to log(0).
        logps = [-scale * torch.rand(b, generator=g) - 0.5 for _ in range(4)]
        args = dict(zip(("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected"), logps), beta=beta)
        cases.append(Case(f"{b} pair(s), beta {beta}, log-probs down to -{scale:g}", args,
                          grad=("policy_chosen", "policy_rejected")))
    return cases


def check_dpo_sigmoid_loss(dpo_sigmoid_loss: Callable) -> None:
    """`dpo_sigmoid_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta) -> ()`
    against `dpo_loss(..., loss_type="sigmoid")["loss"]`."""
    kit = lambda beta, **logps: dpo_loss(**logps, beta=beta)["loss"]  # noqa: E731
    count = compare_tensors(dpo_sigmoid_loss, kit, dpo_cases(), name="dpo_sigmoid_loss")
    _passed("dpo_sigmoid_loss", count, "loss and its gradients with respect to the policy's log-probs")


# --- SFT: answer-only labels ----------------------------------------------------------------------

def conversation_cases(count: int = 12, seed: int = 0) -> List[Tuple[list, str]]:
    """Random conversations of the world's words (1 to 3 exchanges, media first) in every template."""
    rng, words = random.Random(seed), vocabulary()
    sentence = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    cases = []
    for i in range(count):
        turns = []
        for j in range(rng.randint(1, 3)):
            media = rng.choice(["<video>\n", "<image>\n"]) if j == 0 else ""
            turns += [{"from": "human", "value": media + sentence(rng.randint(2, 8)) + " ?"},
                      {"from": "gpt", "value": sentence(rng.randint(1, 6))}]
        cases.append((turns, list(TEMPLATES)[i % len(TEMPLATES)]))
    return cases


def check_answer_only_labels(answer_only_labels: Callable) -> None:
    """`answer_only_labels(turns, tokenizer, template) -> (ids, labels)` against `encode_conversation`."""
    tokenizer = build_world_tokenizer()
    cases = conversation_cases()
    for n, (turns, template) in enumerate(cases, 1):
        where = f"answer_only_labels on case {n} of {len(cases)} (template {template!r}, {len(turns) // 2} exchange(s))"
        got = answer_only_labels(turns, tokenizer, template)
        expected = encode_conversation(turns, tokenizer, template)
        if not isinstance(got, tuple) or len(got) != 2:
            raise CheckFailed(f"{where}: expected a tuple (ids, labels), got {type(got).__name__}")
        for label, g, e in zip(("ids", "labels"), got, expected):
            g = g.tolist() if isinstance(g, torch.Tensor) else list(g)
            if g == e:
                continue
            first = next((i for i, (a, b) in enumerate(zip(g, e)) if a != b), min(len(g), len(e)))
            token = tokenizer.convert_ids_to_tokens(expected[0][first]) if first < len(expected[0]) else "past the end"
            said = lambda v: f"{v} (IGNORE)" if v == IGNORE else f"{v} ({tokenizer.convert_ids_to_tokens(v)!r})"  # noqa: E731
            detail = (f"got {said(g[first])}, expected {said(e[first])}" if first < min(len(g), len(e))
                      else f"got {len(g)} {label}, expected {len(e)}")
            raise CheckFailed(f"{where}:\n  {label} differ first at position {first} (the token {token!r}): {detail}\n"
                              f"  the conversation: {turns}")
    _passed("answer_only_labels", len(cases), "token ids and labels, every template")
