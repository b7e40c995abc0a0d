import pytest
import torch
import torch.nn.functional as F

from ppllava.ops import POOLING_MODES, WEIGHTINGS, pool_visual_tokens, prompt_guided_pool3d, window_geometry
from tests.reference import pool_by_loop


def tokens(B, grid, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    T, H, W = grid
    return torch.randn(B, T * H * W, D, generator=g, dtype=dtype)


def relevance_map(B, grid, seed=1, peaked=True):
    """A softmax map like the model's `s`: positive, sums to 1, sharply peaked when tau = 100."""
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(B, *grid, generator=g) * 2 - 1
    tau = 100.0 if peaked else 1.0
    return torch.softmax(tau * r.flatten(1), -1).view_as(r)


def channel_major(x, grid):
    return x.reshape(x.shape[0], *grid, x.shape[-1]).permute(0, 4, 1, 2, 3)


@pytest.mark.parametrize(
    "grid,kernel", [((4, 6, 6), (2, 3, 3)), ((5, 7, 6), (2, 3, 2)), ((3, 5, 4), (1, 2, 4)), ((8, 4, 4), (8, 1, 1))]
)
def test_uniform_tiling_windows_equal_avg_pool3d(grid, kernel):
    x = tokens(2, grid, 16)
    pooled, out = prompt_guided_pool3d(x, None, grid, kernel=kernel, remainder="drop")
    ref = F.avg_pool3d(channel_major(x, grid), kernel)  # floor mode drops the same remainder
    assert out == tuple(ref.shape[2:])
    torch.testing.assert_close(pooled, ref.permute(0, 2, 3, 4, 1).reshape(2, -1, 16))


def test_uniform_relevance_map_equals_avg_pool3d_for_every_weighting():
    grid = (4, 6, 6)
    x = tokens(2, grid, 8)
    flat = torch.full((2, *grid), 1.0 / 144)
    ref = F.avg_pool3d(channel_major(x, grid), (2, 3, 3)).permute(0, 2, 3, 4, 1).reshape(2, -1, 8)
    for weighting in WEIGHTINGS:
        pooled, _ = prompt_guided_pool3d(x, flat, grid, kernel=(2, 3, 3), weighting=weighting)
        torch.testing.assert_close(pooled, ref)


def test_uniform_overlapping_windows_equal_window_mean():
    grid = (5, 6, 7)
    x = tokens(1, grid, 8)
    out, kernel, stride = window_geometry(grid, kernel=(3, 3, 4), stride=(1, 2, 1), remainder="drop")  # H: 5 of 6
    pooled, _ = prompt_guided_pool3d(x, None, grid, kernel=kernel, stride=stride, remainder="drop")
    torch.testing.assert_close(pooled.double(), pool_by_loop(x, None, grid, out, kernel, stride))


CASES = [
    # grid, geometry kwargs: non-square grids, overlapping windows, output axes of size one
    ((4, 6, 6), dict(kernel=(2, 3, 3))),
    ((5, 7, 3), dict(kernel=(2, 3, 2), stride=(1, 2, 1))),
    ((6, 5, 8), dict(output_size=(1, 2, 3))),
    ((3, 4, 9), dict(output_size=(3, 1, 4), stride=(1, 1, 2))),
    ((7, 6, 5), dict(output_size=(2, 3, 1), kernel=(5, 2, 5))),
]


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("grid,geometry", CASES)
def test_every_weighting_equals_a_plain_loop_over_windows(grid, geometry, weighting):
    x = tokens(2, grid, 12)
    s = relevance_map(2, grid, peaked=False)
    out, kernel, stride = window_geometry(grid, **geometry)
    for temperature in (0.01, 0.5):
        pooled, out_grid = prompt_guided_pool3d(x, s, grid, **geometry, temperature=temperature, weighting=weighting)
        assert out_grid == out
        ref = pool_by_loop(x, s, grid, out, kernel, stride, temperature, weighting)
        torch.testing.assert_close(pooled.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("geometry", [dict(kernel=(2, 2, 2), remainder="drop"), dict(kernel=(2, 3, 2), stride=(1, 1, 2))])
def test_gradients_reach_tokens_and_relevance(weighting, geometry):
    grid = (3, 4, 4)
    x = tokens(1, grid, 3, dtype=torch.float64).requires_grad_()
    s = (relevance_map(1, grid, peaked=False).double() + 0.01).requires_grad_()

    def f(x, s):
        return prompt_guided_pool3d(x, s, grid, **geometry, temperature=0.05, weighting=weighting)[0]

    assert torch.autograd.gradcheck(f, (x, s))


def test_bf16_tokens_stay_finite_and_close_to_fp32():
    grid = (8, 6, 6)
    x = tokens(2, grid, 64)
    s = relevance_map(2, grid)  # peaked map: s / 0.01 spans ~0..100, the overflow-prone case
    full, _ = prompt_guided_pool3d(x, s, grid, kernel=(2, 3, 3), temperature=0.01)
    half, _ = prompt_guided_pool3d(x.bfloat16(), s, grid, kernel=(2, 3, 3), temperature=0.01)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), full, rtol=2e-2, atol=2e-2)


def test_concentrated_relevance_pulls_the_window_to_that_token():
    grid = (2, 3, 3)
    x = tokens(1, grid, 8)
    s = torch.zeros(1, *grid)
    s[0, 1, 2, 0] = 1.0  # one object token
    pooled, _ = prompt_guided_pool3d(x, s, grid, kernel=grid)
    target = x.reshape(1, *grid, 8)[0, 1, 2, 0]
    mean = x.mean(1)[0]
    torch.testing.assert_close(pooled[0, 0], target, rtol=1e-4, atol=1e-4)
    assert (pooled[0, 0] - target).norm() < 1e-3 * (mean - target).norm()


def test_normalized_weighting_rules():
    grid = (2, 2, 2)
    x = tokens(1, grid, 4)
    with pytest.raises(ValueError, match="non-negative"):
        prompt_guided_pool3d(x, -torch.ones(1, *grid), grid, kernel=2, weighting="normalized")
    # A window whose relevance sums to zero has no defined weights: documented to give the mean.
    pooled, _ = prompt_guided_pool3d(x, torch.zeros(1, *grid), grid, kernel=2, weighting="normalized")
    torch.testing.assert_close(pooled[:, 0], x.mean(1))


def test_bad_inputs_raise_with_the_numbers():
    grid = (4, 6, 6)
    x = tokens(1, grid, 8)
    with pytest.raises(ValueError, match="143 tokens but grid"):
        prompt_guided_pool3d(x[:, :143], None, grid, kernel=2)
    with pytest.raises(ValueError, match=r"relevance must have shape .*\(1, 4, 6, 6\)"):
        prompt_guided_pool3d(x, torch.rand(1, 4, 6, 5), grid, kernel=2)
    with pytest.raises(ValueError, match="axis T"):
        prompt_guided_pool3d(x, None, grid, kernel=(5, 3, 3))
    with pytest.raises(ValueError, match="weighting"):
        prompt_guided_pool3d(x, None, grid, kernel=2, weighting="max")
    with pytest.raises(ValueError, match="temperature"):
        prompt_guided_pool3d(x, None, grid, kernel=2, temperature=0.0)


def test_every_mode_keeps_the_return_contract():
    grid = (4, 6, 6)
    x = tokens(2, grid, 8)
    s = relevance_map(2, grid)
    expected = {
        "none": (4, 6, 6), "temporal_mean": (1, 6, 6), "spatial": (4, 3, 3),
        "adaptive": (2, 2, 2), "prompt": (2, 2, 2),
    }
    geometry = {"adaptive": dict(output_size=(2, 2, 2)), "prompt": dict(output_size=(2, 2, 2))}
    for mode in POOLING_MODES:
        pooled, out = pool_visual_tokens(x, grid, mode, relevance=s, **geometry.get(mode, {}))
        assert out == expected[mode], mode
        assert pooled.shape == (2, out[0] * out[1] * out[2], 8), mode


def test_baselines_match_their_definitions():
    grid = (4, 6, 6)
    x = tokens(2, grid, 8)
    x5 = x.reshape(2, *grid, 8)
    mean_t, _ = pool_visual_tokens(x, grid, "temporal_mean")
    torch.testing.assert_close(mean_t, x5.mean(1).reshape(2, -1, 8))
    # LLaVA-NeXT-Video: avg_pool2d with kernel = stride = 2 on each frame.
    spatial, _ = pool_visual_tokens(x, grid, "spatial")
    frames = x5.reshape(8, 6, 6, 8).permute(0, 3, 1, 2)
    ref = F.avg_pool2d(frames, 2).permute(0, 2, 3, 1).reshape(2, -1, 8)
    torch.testing.assert_close(spatial, ref)
    # With a uniform map and divisible sizes, prompt pooling is exactly PLLaVA's adaptive pooling.
    adaptive, _ = pool_visual_tokens(x, grid, "adaptive", output_size=(2, 3, 2))
    uniform = torch.full((2, *grid), 1 / 144)
    prompt, _ = pool_visual_tokens(x, grid, "prompt", relevance=uniform, output_size=(2, 3, 2))
    torch.testing.assert_close(prompt, adaptive)


def test_mode_arguments_are_checked_not_ignored():
    grid = (2, 4, 4)
    x = tokens(1, grid, 4)
    with pytest.raises(ValueError, match="fixed geometry"):
        pool_visual_tokens(x, grid, "spatial", kernel=2)
    with pytest.raises(ValueError, match="needs a relevance"):
        pool_visual_tokens(x, grid, "prompt", kernel=2)
    with pytest.raises(ValueError, match="output_size only"):
        pool_visual_tokens(x, grid, "adaptive", kernel=2)
    with pytest.raises(ValueError, match="must be one of"):
        pool_visual_tokens(x, grid, "max")


@pytest.mark.parametrize("grid,kernel", [((4, 6, 6), (2, 3, 3)), ((5, 7, 6), (2, 3, 2))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_tiled_formulation_equals_the_offset_loop(grid, kernel, dtype):
    """CUDA takes `_tiled_weighted_sum` for tiling windows; it must agree with the CPU's loop,
    values and gradients (run here on the CPU, where both formulations work)."""
    from ppllava.ops.geometry import window_geometry as geo
    from ppllava.ops.pooling import _tiled_weighted_sum, _WindowWeightedSum, window_weights

    out, ker, st = geo(grid, kernel=kernel, remainder="drop")
    x = tokens(2, grid, 16).to(dtype).reshape(2, *grid, 16)
    s = relevance_map(2, grid, peaked=False)
    grads = []
    for fn in (lambda x5, w: _tiled_weighted_sum(x5, w, out, ker), lambda x5, w: _WindowWeightedSum.apply(x5, w, out, ker, st)):
        x5 = x.clone().requires_grad_()
        s_ = s.clone().requires_grad_()
        w = window_weights(s_, out, ker, st, temperature=0.1)
        y = fn(x5, w)
        (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads.append((y.detach().float(), x5.grad.float(), s_.grad))
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **tol)
    uniform = torch.full((1, 1, 1, 1, ker[0] * ker[1] * ker[2]), 1.0 / (ker[0] * ker[1] * ker[2]))
    torch.testing.assert_close(_tiled_weighted_sum(x, uniform, out, ker).float(),
                               _WindowWeightedSum.apply(x, uniform, out, ker, st).float(), **tol)
