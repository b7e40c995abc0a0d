"""Weighting "invariant" (issue #15): one rule for every video length, parameters chosen once.

The rule's claims, each tested: the formula on a window worked by hand; independence of the
softmax's normaliser Z (the video's length), of CLIP's scale tau and of a shift of r; one patch
standing out gets exactly sigmoid(margin) of its window at every window size; on a synthetic
needle the window focus at 16 and 2,048 frames agrees within 0.05, where the released softmax at
0.01 and the paper's normalized weights do not."""
import math

import pytest
import torch

from ppllava.evaluate import window_focus
from ppllava.ops import prompt_guided_pool3d, window_geometry
from ppllava.ops.pooling import window_weights
from tests.reference import pool_by_loop


def weights_of(s, margin=3.0):
    """The weights of one window holding all of `s` (K,) -> (K,)."""
    k = s.numel()
    return window_weights(s.view(1, k, 1, 1), (1, 1, 1), (k, 1, 1), (k, 1, 1), weighting="invariant",
                          margin=margin).flatten()


def test_a_window_worked_by_hand():
    # l = log s = [2, 0, 0, -1] - log Z. Best 2; the rest's mean -1/3; gap 7/3; sharpness (m + log 3) / gap.
    z = math.exp(2) + 1 + 1 + math.exp(-1)
    s = torch.tensor([math.exp(2), 1.0, 1.0, math.exp(-1)], dtype=torch.float64) / z
    sharp = (3.0 + math.log(3)) / (7 / 3)
    logits = [0.0, -2 * sharp, -2 * sharp, -3 * sharp]
    expected = torch.tensor([math.exp(v) for v in logits], dtype=torch.float64)
    torch.testing.assert_close(weights_of(s), expected / expected.sum())


@pytest.mark.parametrize("k", [2, 4, 64, 4096])
def test_one_patch_standing_out_gets_sigmoid_margin_at_every_window_size(k):
    for margin, gap in ((3.0, 0.5), (1.0, 4.0), (-1.0, 0.05)):
        l = torch.zeros(k, dtype=torch.float64)
        l[k // 3] = gap
        w = weights_of(torch.softmax(l, 0), margin)
        assert float(w[k // 3]) == pytest.approx(1 / (1 + math.exp(-margin)), abs=1e-9)
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("weighting", ["invariant", "peak"])
def test_the_weights_ignore_z_and_a_shift_of_r_and_invariant_ignores_tau(weighting):
    g = torch.Generator().manual_seed(0)
    r = torch.rand(2, 6, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    geometry = ((3, 2, 2), (2, 2, 2), (2, 2, 2))

    def weights(tau, shift=0.0, scale=1.0):
        s = torch.softmax(tau * (r + shift).flatten(1), -1).view_as(r) * scale
        return window_weights(s, *geometry, weighting=weighting, margin=2.0)

    ref = weights(15.0)
    torch.testing.assert_close(weights(15.0, scale=1e-3), ref)  # Z grows (a longer video) -> s shrinks
    torch.testing.assert_close(weights(15.0, shift=0.3), ref)
    if weighting == "invariant":  # "peak" reads tau through s / max s = exp(tau (r - max r)), by design
        torch.testing.assert_close(weights(100.0), ref)  # OpenAI CLIP's tau instead of the tiny CLIP's
    assert weights(15.0).shape == (2, 3, 2, 2, 8)
    torch.testing.assert_close(ref.sum(-1), torch.ones(2, 3, 2, 2, dtype=torch.float64))


@pytest.mark.parametrize("weighting", ["invariant", "peak"])  # the two length-free rules (peak: test_peak_weighting.py)
@pytest.mark.parametrize("margin", [-2.0, 0.0, 5.0])
def test_equals_the_plain_loop_at_any_margin(margin, weighting):
    grid = (4, 3, 4)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 48, 5, generator=g)
    s = torch.softmax(8 * torch.randn(2, 48, generator=g), -1).view(2, *grid)
    for geometry in (dict(kernel=(2, 3, 2)), dict(kernel=(3, 2, 2), stride=(1, 1, 2))):
        pooled, out = prompt_guided_pool3d(x, s, grid, **geometry, weighting=weighting, margin=margin)
        _, kernel, stride = window_geometry(grid, **geometry)
        ref = pool_by_loop(x, s, grid, out, kernel, stride, weighting=weighting, margin=margin)
        torch.testing.assert_close(pooled.double(), ref, rtol=1e-5, atol=1e-5)


def test_zeros_flat_windows_and_single_patches():
    # A window of equal relevance: the plain mean, however small s is.
    torch.testing.assert_close(weights_of(torch.full((8,), 1e-30)), torch.full((8,), 1 / 8))
    # Patches with s = 0 (an oracle's background, an underflow) take no weight and do not count:
    # the rest are weighted as a window of their own.
    with_zeros = weights_of(torch.tensor([0.5, 0.0, 0.25, 0.0, 0.125]))
    alone = weights_of(torch.tensor([0.5, 0.25, 0.125]))
    torch.testing.assert_close(with_zeros[[0, 2, 4]], alone)
    assert float(with_zeros[1]) == float(with_zeros[3]) == 0.0
    # An oracle map: the object's patches share the window, the background gets nothing.
    torch.testing.assert_close(weights_of(torch.tensor([0.0, 0.5, 0.5, 0.0])), torch.tensor([0.0, 0.5, 0.5, 0.0]))
    # One patch with relevance keeps it whole; a window of zeros is the plain mean.
    torch.testing.assert_close(weights_of(torch.tensor([0.0, 0.3, 0.0])), torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(weights_of(torch.zeros(4)), torch.full((4,), 0.25))
    torch.testing.assert_close(weights_of(torch.tensor([0.3])), torch.ones(1))


def test_gradients_are_finite_with_zeros_in_the_map():
    for values in ([0.5, 0.0, 0.25, 0.1], [0.0, 0.0, 0.0, 0.0], [0.0, 0.2, 0.0, 0.0]):
        s = torch.tensor(values, dtype=torch.float64, requires_grad=True)
        (weights_of(s) * torch.randn(4, dtype=torch.float64)).sum().backward()
        assert torch.isfinite(s.grad).all(), values


@pytest.mark.parametrize("weighting", ["invariant", "peak"])
def test_bad_inputs_are_named(weighting):
    grid = (2, 2, 2)
    x = torch.randn(1, 8, 3)
    with pytest.raises(ValueError, match=f"{weighting}.*non-negative"):
        prompt_guided_pool3d(x, -torch.ones(1, *grid), grid, kernel=2, weighting=weighting)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="margin must be finite"):
            prompt_guided_pool3d(x, torch.rand(1, *grid), grid, kernel=2, weighting=weighting, margin=bad)


def needle(frames, seed=0):
    """A synthetic needle: (frames, 2, 2) patches, the asked-about object in 2 patches of frame
    frames // 3; relevance r 0.6 there, 0.45 +- 0.01 elsewhere; s = softmax(15 r) over all positions."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, frames, 2, 2, dtype=torch.bool)
    mask[0, frames // 3, 0] = True
    r = torch.where(mask, 0.6, 0.45 + 0.01 * torch.randn(1, frames, 2, 2, generator=g))
    return torch.softmax(15 * r.flatten(1), -1).view_as(r), mask


def test_window_focus_on_a_synthetic_needle_is_the_same_at_16_and_2048_frames():
    focus = {}
    for frames in (16, 2048):
        s, mask = needle(frames)
        focus[frames] = {
            "invariant": float(window_focus(s, mask, (4, 2, 2), weighting="invariant", margin=3.0)),
            "softmax": float(window_focus(s, mask, (4, 2, 2), weighting="softmax", temperature=0.01)),
            "normalized": float(window_focus(s, mask, (4, 2, 2), weighting="normalized")),
        }
    assert abs(focus[16]["invariant"] - focus[2048]["invariant"]) <= 0.05
    assert focus[2048]["invariant"] >= 0.9
    # The control: both earlier rules lose the needle at 2,048 frames (a window of 512 patches).
    assert focus[16]["softmax"] - focus[2048]["softmax"] > 0.5
    assert focus[16]["normalized"] - focus[2048]["normalized"] > 0.5
