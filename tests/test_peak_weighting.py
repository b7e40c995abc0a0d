"""Weighting "peak" (issue #15): "invariant"'s length-free sharpening, applied to a window only as far as
its best patch comes near the video's peak relevance.

Each claim of `window_weights`' docstring, tested: the formula on a window worked by hand; a patch at
the peak among patches of no relevance gets sigmoid(margin) of its window at every window size; a window
of nothing relevant stays at its mean where "invariant" sharpens it; on a synthetic needle the window
focus at 16 and 2,048 frames agrees within 0.05. The plain loop, independence of Z and a shift of r, and bad inputs:
tests/test_invariant_weighting.py, for both rules."""
import math

import pytest
import torch

from ppllava.evaluate import window_focus
from ppllava.ops.pooling import window_weights
from tests.test_invariant_weighting import needle


def test_a_window_worked_by_hand():
    # One window of four patches, the video's peak s = 0.4 outside it: shares 0.5, 0.25, 0, 0.125.
    s = torch.tensor([[0.2, 0.1, 0.0, 0.05], [0.4, 0.0, 0.0, 0.0]], dtype=torch.float64).view(1, 8, 1, 1)
    w = window_weights(s, (2, 1, 1), (4, 1, 1), (4, 1, 1), weighting="peak", margin=2.0)
    gain = 2.0 + math.log(3)
    e = torch.tensor([math.exp(gain * q) for q in (0.5, 0.25, 0.0, 0.125)], dtype=torch.float64)
    torch.testing.assert_close(w[0, 0, 0, 0], e / e.sum())
    first = torch.tensor([math.exp(gain), 1.0, 1.0, 1.0], dtype=torch.float64)  # the peak's own window
    torch.testing.assert_close(w[0, 1, 0, 0], first / first.sum())


@pytest.mark.parametrize("k", [2, 4, 64, 4096])
def test_the_peak_among_irrelevant_patches_gets_sigmoid_margin_at_every_window_size(k):
    for margin in (3.0, 1.0, -1.0):
        s = torch.zeros(1, k, 1, 1, dtype=torch.float64)
        s[0, k // 3] = 0.7
        w = window_weights(s, (1, 1, 1), (k, 1, 1), (k, 1, 1), weighting="peak", margin=margin).flatten()
        assert float(w[k // 3]) == pytest.approx(1 / (1 + math.exp(-margin)), abs=1e-9)
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)


def test_a_window_of_nothing_relevant_stays_near_its_mean_where_invariant_sharpens_it():
    # Frame 0 holds the object (r 0.6); frame 1 only distractors, one a little less unlike the prompt (0.3
    # against 0.2). "invariant" makes frame 1's token that distractor; "peak" keeps frame 1 near its mean.
    r = torch.tensor([[0.6, 0.2, 0.2, 0.2], [0.3, 0.2, 0.2, 0.2]], dtype=torch.float64).view(1, 2, 2, 2)
    s = torch.softmax(15 * r.flatten(1), -1).view_as(r)
    geometry = ((2, 1, 1), (1, 2, 2), (1, 2, 2))
    peak = window_weights(s, *geometry, weighting="peak", margin=3.0)[0, :, 0, 0]
    invariant = window_weights(s, *geometry, weighting="invariant", margin=3.0)[0, :, 0, 0]
    assert float(peak[0, 0]) > 0.9 and float(invariant[0, 0]) > 0.9  # both keep the object
    assert float(invariant[1, 0]) > 0.9  # the distractor, sharpened
    assert float(peak[1].max() - peak[1].min()) < 0.25  # near the mean (0.25 each)


def test_zeros_an_oracle_map_and_gradients():
    grid = (1, 2, 2)
    zeros = window_weights(torch.zeros(1, *grid), (1, 1, 1), grid, grid, weighting="peak")
    torch.testing.assert_close(zeros.flatten(), torch.full((4,), 0.25))  # a map of zeros: the plain mean
    oracle = torch.tensor([0.0, 1.0, 0.5, 0.0]).view(1, *grid)  # an object covering one patch and half another
    w = window_weights(oracle, (1, 1, 1), grid, grid, weighting="peak", margin=4.0).flatten()
    assert float(w[1]) > float(w[2]) > float(w[0]) == pytest.approx(float(w[3]))
    s = torch.tensor([0.5, 0.0, 0.25, 0.1], dtype=torch.float64, requires_grad=True)
    (window_weights(s.view(1, 4, 1, 1), (1, 1, 1), (4, 1, 1), (4, 1, 1), weighting="peak")
     * torch.randn(4, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(s.grad).all()


def test_window_focus_on_a_synthetic_needle_is_the_same_at_16_and_2048_frames():
    focus = {frames: float(window_focus(*needle(frames), (4, 2, 2), weighting="peak", margin=3.0)) for frames in (16, 2048)}
    assert abs(focus[16] - focus[2048]) <= 0.05
    # Less than "invariant"'s >= 0.9: the distractors' share of the peak is exp(15 (0.45 - 0.6)) = 0.105, not 0,
    # so in a window of K = 512 the two object patches hold about 2 e^g / (2 e^g + 510 e^(0.105 g)), g = 3 + log 511.
    g = 3 + math.log(511)
    assert focus[2048] == pytest.approx(2 * math.exp(g) / (2 * math.exp(g) + 510 * math.exp(0.105 * g)), abs=0.08)
    assert focus[2048] >= 0.85
