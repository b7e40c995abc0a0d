"""Issue #16: the compression zoo's one contract, each method against a plain loop, a case worked
by hand per method, and bad inputs refused by name."""
import math
import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ppllava.ops import (dominant_merge, fastv_select, first_inputs, frames, random_select, sources, tome_merge,
                         topk_select)
from tests.reference_compression import keep_top_by_loop, tome_by_loop, visionzip_by_loop

GRID = (4, 2, 3)  # L = 24
L = math.prod(GRID)
BUDGETS = [1, 2, 3, 5, 12, 13, 23, 24]


def tokens(B=2, grid=GRID, D=6, dtype=torch.float64, seed=0):
    return torch.randn(B, math.prod(grid), D, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def scores(B=2, n=L, seed=1, ties=False):
    """Per-token scores; with `ties`, drawn from few values so that ties are common."""
    g = torch.Generator().manual_seed(seed)
    if ties:
        return torch.randint(0, 4, (B, n), generator=g).double() / 4
    return torch.softmax(torch.randn(B, n, generator=g, dtype=torch.float64), -1)


METHODS = {
    "topk": lambda x, n: topk_select(x, scores(ties=True).view(2, *GRID), n),
    "random": lambda x, n: random_select(x, n, torch.Generator().manual_seed(0)),
    "fastv": lambda x, n: fastv_select(x, scores(seed=2), n),
    "tome": lambda x, n: tome_merge(x, GRID, n),
    "tome keys": lambda x, n: tome_merge(x, GRID, n, keys=tokens(D=3, seed=5)),
    "dominant": lambda x, n: dominant_merge(x, scores(seed=3), n, n // 2),
    "dominant keys": lambda x, n: dominant_merge(x, scores(seed=4), n, n - 1, keys=tokens(D=3, seed=6)),
}


# --- the contract ------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_keeps_the_contract(method, budget):
    """Exactly `budget` outputs, tokens = members @ x, rows sum to 1, each input in at most one
    output, outputs in first-input (temporal) order, gradients reach x through the members."""
    x = tokens().requires_grad_()
    c = METHODS[method](x, budget)
    assert c.tokens.shape == (2, budget, 6) and c.members.shape == (2, budget, L)
    assert c.tokens.dtype == torch.float64 and c.members.dtype == torch.float64
    torch.testing.assert_close(c.tokens, c.members @ x)
    torch.testing.assert_close(c.members.sum(-1), torch.ones(2, budget, dtype=torch.float64))
    assert bool(((c.members != 0).sum(1) <= 1).all()) and bool((c.members >= 0).all())
    first = first_inputs(c)
    assert bool((first[:, 1:] > first[:, :-1]).all())
    assert [[s[0] for s in sample] for sample in sources(c)] == first.tolist()
    torch.testing.assert_close(frames(c, GRID), first // (GRID[1] * GRID[2]))
    c.tokens.sum().backward()  # d(sum of tokens)/dx[b, l, d] = sum_n members[b, n, l]
    torch.testing.assert_close(x.grad, c.members.sum(1)[..., None].expand_as(x))


@pytest.mark.parametrize("method", list(METHODS))
def test_low_precision_tokens_keep_their_dtype_and_members_are_float32(method):
    x = tokens(dtype=torch.bfloat16)
    c = METHODS[method](x, 7)
    assert c.tokens.dtype == torch.bfloat16 and c.members.dtype == torch.float32
    torch.testing.assert_close(c.tokens, (c.members @ x.float()).bfloat16())


# --- against plain loops -----------------------------------------------------------------------
def assert_matches(c, reference, b):
    assert sources(c)[b] == [src for src, _ in reference]
    torch.testing.assert_close(c.tokens[b], torch.stack([token for _, token in reference]))


@pytest.mark.parametrize("budget", BUDGETS)
def test_topk_and_fastv_keep_the_highest_scores_with_ties_to_the_lower_index(budget):
    x, s, a = tokens(), scores(ties=True), scores(seed=2, ties=True)
    for b in range(2):
        assert_matches(topk_select(x, s.view(2, *GRID), budget), keep_top_by_loop(x[b], s[b], budget), b)
        assert_matches(fastv_select(x, a, budget), keep_top_by_loop(x[b], a[b], budget), b)


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("grid", [GRID, (3, 2, 2), (5, 1, 3), (1, 3, 4), (8, 1, 2), (1, 1, 7), (3, 1, 3)])
@pytest.mark.parametrize("with_keys", [False, True])
def test_tome_equals_the_loop(grid, budget, with_keys):
    budget = min(budget, math.prod(grid))
    x = tokens(grid=grid)
    keys = tokens(grid=grid, D=3, seed=7) if with_keys else None
    c = tome_merge(x, grid, budget, keys=keys)
    for b in range(2):
        assert_matches(c, tome_by_loop(x[b], (x if keys is None else keys)[b], grid, budget), b)


@pytest.mark.parametrize("budget", [12, 18, 23])
def test_tome_merges_only_within_neighbouring_frame_pairs_while_those_merges_suffice(budget):
    """Round one (frames 0-1, 2-3) can merge up to 12 of the 24 tokens: every output stays in one pair."""
    c = tome_merge(tokens(), GRID, budget)
    for sample in sources(c):
        for src in sample:
            assert len({l // 6 // 2 for l in src}) == 1, src


@pytest.mark.parametrize("budget,contextual", [(1, 0), (1, 1), (5, 2), (12, 1), (12, 12), (23, 3), (24, 0), (24, 5)])
@pytest.mark.parametrize("with_keys", [False, True])
def test_dominant_merge_equals_the_loop(budget, contextual, with_keys):
    x, attention = tokens(), scores(seed=3, ties=True)
    keys = tokens(D=3, seed=8) if with_keys else None
    c = dominant_merge(x, attention, budget, contextual, keys=keys)
    for b in range(2):
        reference = visionzip_by_loop(x[b], attention[b], (x if keys is None else keys)[b], budget, contextual)
        assert_matches(c, reference, b)


def test_random_select_is_reproducible_and_uniform():
    x = tokens()
    draw = lambda seed: sources(random_select(x, 6, torch.Generator().manual_seed(seed)))  # noqa: E731
    assert draw(3) == draw(3) and draw(3) != draw(4)
    counts = torch.zeros(L)
    for seed in range(1000):
        for sample in draw(seed):
            counts[[s[0] for s in sample]] += 1
    expected = 2 * 1000 * 6 / L  # 500 per token; binomial sd about 19
    assert bool(((counts - expected).abs() < 100).all()), counts


# --- worked by hand ----------------------------------------------------------------------------
def test_topk_by_hand_a_tie_goes_to_the_lower_index():
    """s = [0.3, 0.1, 0.3, 0.3] on grid (1, 2, 2), budget 2: three tokens tie at 0.3; the two lowest
    indices, 0 and 2, are kept, in that order; budget 3 adds 3."""
    x = tokens(B=1, grid=(1, 2, 2))
    s = torch.tensor([0.3, 0.1, 0.3, 0.3]).view(1, 1, 2, 2)
    assert sources(topk_select(x, s, 2)) == [[[0], [2]]]
    assert sources(topk_select(x, s, 3)) == [[[0], [2], [3]]]
    assert torch.equal(topk_select(x, s, 2).tokens, x[:, [0, 2]])


def test_fastv_by_hand_outputs_in_time_order_not_rank_order():
    """Attention [0.1, 0.3, 0.2, 0.4], budget 2: ranks pick 3 then 1; the outputs read 1, 3."""
    x = tokens(B=1, grid=(1, 1, 4))
    c = fastv_select(x, torch.tensor([[0.1, 0.3, 0.2, 0.4]]), 2)
    assert sources(c) == [[[1], [3]]] and torch.equal(c.tokens, x[:, [1, 3]])


def test_tome_by_hand_merges_the_identical_pair_across_frames():
    """Grid (2, 1, 2): frame 0 holds x0 = (1, 0), x1 = (0, 1); frame 1 holds x2 = (0, 1), x3 = (1, 1).
    A = frame 0, B = frame 1: x0's best is x3 (cos 0.71), x1's is x2 (cos 1). Budget 3 merges the
    best edge only, the identical pair: (x0), (x1 + x2) / 2, (x3). Budget 2 merges both:
    (x0 + x3) / 2 = (1, 0.5) first (it starts at input 0), then (0, 1)."""
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]]])
    c = tome_merge(x, (2, 1, 2), 3)
    assert sources(c) == [[[0], [1, 2], [3]]]
    torch.testing.assert_close(c.tokens, torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]))
    c = tome_merge(x, (2, 1, 2), 2)
    assert sources(c) == [[[0, 3], [1, 2]]]
    torch.testing.assert_close(c.tokens, torch.tensor([[[1.0, 0.5], [0.0, 1.0]]]))


def test_tome_by_hand_prefers_a_neighbouring_frame_to_an_identical_token_in_the_same_frame():
    """x0 = x1 = (1, 0) in frame 0, x2 = (0, 1), x3 = (1, 1) in frame 1; budget 3. The identical
    pair shares a frame, so the first round cannot merge it: x0 and x1 both match x3 (cos 0.71), the
    tie goes to x0. Outputs (x0 + x3) / 2, x1, x2."""
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    c = tome_merge(x, (2, 1, 2), 3)
    assert sources(c) == [[[0, 3], [1], [2]]]
    torch.testing.assert_close(c.tokens[0, 0], torch.tensor([1.0, 0.5]))


def test_tome_by_hand_size_weights_a_merged_token():
    """Grid (3, 1, 1), budget 1: round one merges frame 0 into frame 1 (frame 2 waits): size 2;
    round two merges that into x2 by size-weighted average, (2 * (x0 + x1) / 2 + x2) / 3, the plain
    mean of the three: (1, 1) for x = (3, 0), (0, 3), (0, 0) (a pairwise mean would give (0.75, 0.75))."""
    x = torch.tensor([[[3.0, 0.0], [0.0, 3.0], [0.0, 0.0]]])
    c = tome_merge(x, (3, 1, 1), 1)
    torch.testing.assert_close(c.tokens, torch.tensor([[[1.0, 1.0]]]))
    torch.testing.assert_close(c.members, torch.full((1, 1, 3), 1 / 3))


def test_dominant_merge_by_hand_two_dominant_tokens_and_one_contextual_group():
    """Grid (1, 2, 3), [CLS] attention [0.1, 0.5, 0.05, 0.3, 0.03, 0.02], budget 3, contextual 1:
    dominant 1 and 3; the rest [0, 2, 4, 5] has one target, rest[0] = 0, which every other joins:
    (x0 + (x2 + x4 + x5) / 3) / 2, weights [1/2, 0, 1/6, 0, 1/6, 1/6]. It starts at input 0, so it
    comes first, then x1, x3."""
    x = tokens(B=1, grid=(1, 2, 3))
    attention = torch.tensor([[0.1, 0.5, 0.05, 0.3, 0.03, 0.02]])
    c = dominant_merge(x, attention, 3, 1)
    assert sources(c) == [[[0, 2, 4, 5], [1], [3]]]
    torch.testing.assert_close(c.members[0, 0], torch.tensor([1 / 2, 0, 1 / 6, 0, 1 / 6, 1 / 6], dtype=torch.float64))
    torch.testing.assert_close(c.tokens[0, 1:], x[0, [1, 3]])


def test_dominant_merge_by_hand_two_contextual_groups_by_similarity():
    """Same attention, budget 4, contextual 2: rest [0, 2, 4, 5], step 2, targets 0 and 4; x2 = (0, 1)
    is nearer x4 = (0, 2), x5 = (2, 0.1) nearer x0 = (1, 0). Outputs (x0 + x5) / 2, x1, (x4 + x2) / 2, x3."""
    x = torch.tensor([[[1.0, 0.0], [5.0, 5.0], [0.0, 1.0], [-5.0, 5.0], [0.0, 2.0], [2.0, 0.1]]])
    c = dominant_merge(x, torch.tensor([[0.1, 0.5, 0.05, 0.3, 0.03, 0.02]]), 4, 2)
    assert sources(c) == [[[0, 5], [1], [2, 4], [3]]]
    torch.testing.assert_close(c.tokens[0, [0, 2]], torch.tensor([[1.5, 0.05], [0.0, 1.5]]))


# --- bad inputs, by class ------------------------------------------------------------------------
CALLS = {  # name: call(x, budget, **overrides)
    "topk_select": lambda x, n, s=None: topk_select(x, scores().view(2, *GRID) if s is None else s, n),
    "random_select": lambda x, n: random_select(x, n),
    "fastv_select": lambda x, n, a=None: fastv_select(x, scores() if a is None else a, n),
    "tome_merge": lambda x, n, grid=GRID, keys=None: tome_merge(x, grid, n, keys=keys),
    "dominant_merge": lambda x, n, a=None, keys=None, contextual=0: dominant_merge(
        x, scores() if a is None else a, n, contextual, keys=keys),
}


@pytest.mark.parametrize("budget", [0, -1, L + 1, 2.0, True])
@pytest.mark.parametrize("method", list(CALLS))
def test_a_budget_outside_one_to_L_is_refused_naming_it(method, budget):
    with pytest.raises(ValueError, match=r"budget must be (in \[1, L = 24\]|an int)"):
        CALLS[method](tokens(), budget)


@pytest.mark.parametrize("method", list(CALLS))
def test_tokens_that_are_not_B_L_D_are_refused(method):
    with pytest.raises(ValueError, match=r"x must have shape \(B, L, D\), got \(24, 6\)"):
        CALLS[method](tokens()[0], 3)


@pytest.mark.parametrize("grid", [(4, 2, 2), (2, 2, 3), (1, 1, 1)])
def test_a_grid_that_does_not_hold_L_tokens_is_refused_naming_both(grid):
    with pytest.raises(ValueError, match=re.escape(f"24 tokens but grid {tuple(grid)}")):
        tome_merge(tokens(), grid, 3)
    with pytest.raises(ValueError, match="grid .* L = 24"):
        frames(tome_merge(tokens(), GRID, 3), grid)


WRONG_SHAPES = {  # case: (call on x, what the message must say)
    "s, wrong batch": (lambda x: CALLS["topk_select"](x, 3, s=scores(B=1).view(1, *GRID)),
                       r"s must have shape.*\(1, 4, 2, 3\)"),
    "s, wrong grid": (lambda x: CALLS["topk_select"](x, 3, s=scores(n=18).view(2, 3, 2, 3)),
                      r"T\*H\*W = L = 24.*\(2, 3, 2, 3\)"),
    "s, flat": (lambda x: CALLS["topk_select"](x, 3, s=scores()), r"s must have shape \(B, T, H, W\).*\(2, 24\)"),
    "text_attention": (lambda x: CALLS["fastv_select"](x, 3, a=scores(n=23)),
                       r"text_attention must have shape \(B, L\) = \(2, 24\), got \(2, 23\)"),
    "cls_attention": (lambda x: CALLS["dominant_merge"](x, 3, a=scores()[:, None]),
                      r"cls_attention must have shape .*\(2, 1, 24\)"),
    "tome keys": (lambda x: CALLS["tome_merge"](x, 3, keys=tokens(grid=(2, 2, 3))), r"keys must have shape .*\(2, 12, 6\)"),
    "dominant keys": (lambda x: CALLS["dominant_merge"](x, 3, keys=tokens()[0]), r"keys must have shape .*\(24, 6\)"),
    "contextual > budget": (lambda x: CALLS["dominant_merge"](x, 3, contextual=4), r"contextual must be in \[0, budget = 3\], got 4"),
    "contextual < 0": (lambda x: CALLS["dominant_merge"](x, 3, contextual=-1), r"contextual must be in \[0, budget = 3\], got -1"),
}


@pytest.mark.parametrize("case", list(WRONG_SHAPES))
def test_side_inputs_of_the_wrong_shape_are_refused_naming_them(case):
    call, match = WRONG_SHAPES[case]
    with pytest.raises(ValueError, match=match):
        call(tokens())


def spoil(t, value):
    t = t.clone()
    t.view(-1)[5] = value
    return t


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("case,call,name", [
    *[(f"{m} x", lambda x, v, m=m: CALLS[m](spoil(x, v), 3), r"x \(visual tokens\)") for m in CALLS],
    ("topk s", lambda x, v: CALLS["topk_select"](x, 3, s=spoil(scores(), v).view(2, *GRID)), r"s \(relevance\)"),
    ("fastv attention", lambda x, v: CALLS["fastv_select"](x, 3, a=spoil(scores(), v)), "text_attention"),
    ("dominant attention", lambda x, v: CALLS["dominant_merge"](x, 3, a=spoil(scores(), v)), "cls_attention"),
    ("dominant keys", lambda x, v: CALLS["dominant_merge"](x, 3, keys=spoil(tokens(), v)), "keys"),
    ("tome keys", lambda x, v: CALLS["tome_merge"](x, 3, keys=spoil(tokens(), v)), "keys"),
])
def test_non_finite_inputs_are_refused_naming_them(case, call, name, value):
    with pytest.raises(ValueError, match=rf"{name} holds"):
        call(tokens(), value)


def test_the_finite_check_can_be_switched_off():
    x = spoil(tokens(), float("nan"))
    c = topk_select(x, scores().view(2, *GRID), 3, check_finite=False)
    assert c.tokens.shape == (2, 3, 6)


# --- tokens without members (members=False, what the model asks for) ------------------------------
def ops_on(x, grid, n, **kw):
    """Every method on x over `grid` with budget n, its side inputs drawn for that shape."""
    B, L = x.shape[0], math.prod(grid)
    return {
        "topk": lambda: topk_select(x, scores(B, L, ties=True).view(B, *grid), n, **kw),
        "random": lambda: random_select(x, n, torch.Generator().manual_seed(0), **kw),
        "fastv": lambda: fastv_select(x, scores(B, L, seed=2), n, **kw),
        "tome": lambda: tome_merge(x, grid, n, **kw),
        "tome keys": lambda: tome_merge(x, grid, n, keys=tokens(B, grid, D=3, seed=5), **kw),
        "dominant": lambda: dominant_merge(x, scores(B, L, seed=3, ties=True), n, n // 2, **kw),
        "dominant keys": lambda: dominant_merge(x, scores(B, L, seed=4), n, n - 1, keys=tokens(B, grid, D=3, seed=6),
                                                **kw),
    }


SHAPES = [(2, GRID, 6, 7), (1, (3, 2, 2), 5, 1), (3, (1, 3, 4), 4, 6), (2, (5, 1, 3), 8, 15), (2, (2, 2, 2), 3, 8)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("method", list(METHODS))
def test_tokens_without_members_are_the_same_bit_for_bit_and_so_are_their_gradients(method, shape, dtype):
    """Bitwise for every method, the merges included: both paths run the one scatter-add over the same
    (output, weight) pairs in the same order (CPU scatter_add is deterministic), members=True only builds
    the members beside it. (On CUDA, scatter_add's atomics could reorder a merge's sum between any two
    calls, with or without members.)"""
    B, grid, D, budget = shape
    x = tokens(B, grid, D, dtype=dtype).requires_grad_()
    full, lean = ops_on(x, grid, budget)[method](), ops_on(x, grid, budget, members=False)[method]()
    assert lean.members is None and full.members is not None
    assert lean.tokens.shape == (B, budget, D) and lean.tokens.dtype == dtype
    torch.testing.assert_close(lean.tokens, full.tokens, rtol=0, atol=0)
    upstream = torch.randn(full.tokens.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64).to(dtype)
    (grad_full,) = torch.autograd.grad(full.tokens, x, upstream)
    (grad_lean,) = torch.autograd.grad(lean.tokens, x, upstream)
    torch.testing.assert_close(grad_lean, grad_full, rtol=0, atol=0)
    # and the gradient is still the members' transpose applied to the upstream gradient
    acc = full.members.dtype
    torch.testing.assert_close(grad_lean.to(acc), (full.members.transpose(1, 2) @ upstream.to(acc)).to(dtype).to(acc))


@pytest.mark.parametrize("method", list(METHODS))
def test_the_helpers_refuse_a_compressed_without_members_naming_them(method):
    c = METHODS[method](tokens(), 5)
    lean = c._replace(members=None)
    assert first_inputs(c).shape == (2, 5)
    for helper, call in [("first_inputs", first_inputs), ("sources", sources), ("frames", lambda c: frames(c, GRID))]:
        with pytest.raises(ValueError, match=rf"{helper} reads Compressed.members, which is None here: .*members=True"):
            call(lean)
    lean = ops_on(tokens(), GRID, 5, members=False)[method]()  # what the method itself returns without them
    assert lean.members is None
    with pytest.raises(ValueError, match="frames reads Compressed.members"):
        frames(lean, GRID)


class LargestAllocation(TorchDispatchMode):
    """The most bytes any single op's output holds in its storage (a view or an expand counts its storage)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.bytes = max(self.bytes, t.untyped_storage().nbytes())
        return out


# L = 64 inputs on (4, 4, 4), N = 48 outputs, D = 4: one sample's members are 48 * 64 float32, 12,288 bytes.
# The largest other tensor an op makes is at most half that: VisionZip's similarities of its L - N joined
# tokens to its contextual targets, (1, 16, 47) float64 at contextual N - 1 (6,016 bytes); ToMe's 16 x 16 per
# frame pair; the float64 keys, 2 * 64 * 3. One sample's members, since the dispatch calls the seeded
# random_select one sample at a time.
LEAN_GRID, LEAN_BUDGET = (4, 4, 4), 48
MEMBERS_BYTES = LEAN_BUDGET * math.prod(LEAN_GRID) * 4


@pytest.mark.parametrize("method", list(METHODS))
def test_without_members_no_op_allocates_budget_by_inputs(method):
    x = tokens(B=1, grid=LEAN_GRID, D=4, dtype=torch.float32).requires_grad_()
    for members in (True, False):
        with LargestAllocation() as largest:
            c = ops_on(x, LEAN_GRID, LEAN_BUDGET, members=members)[method]()
        assert (largest.bytes >= MEMBERS_BYTES) == members, (members, largest.bytes)
        assert c.tokens.requires_grad


@pytest.mark.parametrize("mode", ["topk", "random", "random seeded", "merge", "dominant"])
def test_the_models_dispatch_asks_for_tokens_only_and_gets_the_ops_tokens(mode):
    """ppllava/model/compress_tokens.compress: the ops' tokens, bitwise, without a (n, budget, L) tensor."""
    from ppllava.model.compress_tokens import Guide, compress

    x, L = tokens(grid=LEAN_GRID, D=4, dtype=torch.float32), math.prod(LEAN_GRID)
    relevance, attention = scores(2, L).view(2, *LEAN_GRID), scores(2, L, seed=3)
    keys = tokens(grid=LEAN_GRID, D=3, seed=4)
    seeded = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    guide, want = {
        "topk": (Guide(relevance=relevance), lambda: topk_select(x, relevance, LEAN_BUDGET).tokens),
        "random": (Guide(), lambda: random_select(x, LEAN_BUDGET).tokens),
        "random seeded": (Guide(generators=seeded()), lambda: torch.cat(
            [random_select(x[i : i + 1], LEAN_BUDGET, g).tokens for i, g in enumerate(seeded())])),
        "merge": (Guide(metric=keys), lambda: tome_merge(x, LEAN_GRID, LEAN_BUDGET, keys=keys).tokens),
        "dominant": (Guide(cls_attention=attention, keys=keys),
                     lambda: dominant_merge(x, attention, LEAN_BUDGET, 5, keys=keys).tokens),
    }[mode]
    torch.manual_seed(0)
    with LargestAllocation() as largest:
        got = compress(x, LEAN_GRID, mode.split()[0], LEAN_BUDGET, guide, contextual=5)
    assert largest.bytes < MEMBERS_BYTES, largest.bytes
    torch.manual_seed(0)
    torch.testing.assert_close(got, want(), rtol=0, atol=0)
