"""Evaluation helpers that need no trained model."""
import math

import pytest
import torch

from ppllava.evaluate import window_focus


def test_window_focus_is_the_weight_a_window_puts_on_the_object():
    mask = torch.zeros(1, 8, 2, 2, dtype=torch.bool)
    mask[0, 3, 0, 1] = True  # one patch of one frame
    # A plain mean over (4, 1, 1) windows: the object is a quarter of its window.
    assert torch.allclose(window_focus(None, mask, (2, 2, 2)), torch.tensor([0.25]))
    oracle = mask.float() / mask.sum()
    assert torch.allclose(window_focus(oracle, mask, (2, 2, 2), weighting="normalized"), torch.tensor([1.0]))
    # The released weighting divides s, a softmax over all T*H*W positions, by a fixed temperature:
    # as the video grows, s flattens and so do the window weights; the paper's normalized weights
    # are softmax_w(tau * r), the same at every length.
    focus = {}
    for T in (16, 1024):
        m = torch.zeros(1, T, 2, 2, dtype=torch.bool)
        m[0, 0, 0, 0] = True
        s = torch.softmax(15 * torch.where(m, 0.6, 0.45).flatten(1), -1).view(1, T, 2, 2)
        focus[T] = {w: float(window_focus(s, m, (T // 4, 2, 2), weighting=w)) for w in ("softmax", "normalized")}
    ratio = math.exp(15 * 0.15)
    assert focus[16]["normalized"] == pytest.approx(ratio / (ratio + 3), abs=1e-5) == focus[1024]["normalized"]
    assert focus[16]["softmax"] > 0.99 and focus[1024]["softmax"] < 0.35
    with pytest.raises(ValueError, match="mask"):
        window_focus(None, mask[0], (2, 2, 2))


def test_a_caption_is_right_in_any_order_and_hallucinates_only_what_is_false():
    from ppllava.evaluate import answer_correct, hallucinates

    truth = "a red circle moves left and a blue star stays still"
    assert answer_correct("a blue star stays still and a red circle moves left", truth, "caption")
    assert not answer_correct("a red circle moves left", truth, "caption")  # left one out: wrong ...
    assert not hallucinates("a red circle moves left", truth, "caption")  # ... but nothing false said
    assert hallucinates("a red circle moves left and a green star stays still", truth, "caption")
    assert hallucinates("a red circle moves right", truth, "caption")
    assert hallucinates("", truth, "caption")
    # Other tasks: exact match after normalisation, and a wrong answer is a false one.
    assert answer_correct("red, so B", "red , so B", "mc") and not hallucinates("red, so B", "red , so B", "mc")
    assert hallucinates("blue", "red", "colour") and not answer_correct("a red circle", "a circle and a red", "colour")


def test_caption_recall_counts_the_true_clauses_stated():
    from ppllava.evaluate import caption_recall

    truth = "a red circle moves left and a blue star stays still"
    results = [{"task": "caption", "answer": truth, "predicted": "a blue star stays still and a red circle moves left"},
               {"task": "caption", "answer": truth, "predicted": "a red circle moves right"},  # 0 of 2, 1 said
               {"task": "caption", "answer": "a green square appears later", "predicted": "a green square appears later"},
               {"task": "colour", "answer": "red", "predicted": "blue"}]  # not a caption: not counted
    assert caption_recall(results) == {"caption_recall": (1 + 0 + 1) / 3, "caption_clauses": (2 + 1 + 1) / 3}
    assert math.isnan(caption_recall(results[3:])["caption_recall"])


def test_wilson_interval_matches_the_formula_and_stays_in_range():
    from ppllava.evaluate import wilson_interval

    # statsmodels' proportion_confint(95, 100, method="wilson"): (0.88825, 0.97846)
    assert wilson_interval(95, 100) == pytest.approx((0.888250, 0.978456), abs=1e-6)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="hits=3, n=2"):
        wilson_interval(3, 2)


def test_counts_by_depth_bins_the_needles_first_frame():
    from ppllava.evaluate import counts_by_depth

    records = [{"id": "a", "frames": 100, "needle_frames": [0, 1]}, {"id": "b", "frames": 100, "needle_frames": [19]},
               {"id": "c", "frames": 100, "needle_frames": [20]}, {"id": "d", "frames": 100, "needle_frames": [99]}]
    results = [{"id": k, "answer": "red", "predicted": p, "task": "needle"}
               for k, p in (("a", "red"), ("b", "blue"), ("c", "red"), ("d", "red"))]
    assert counts_by_depth(results, records) == [(1, 2), (1, 1), (0, 0), (0, 0), (1, 1)]
    with pytest.raises(ValueError, match="record 'x' has no needle_frames"):
        counts_by_depth(results, [{"id": "x", "frames": 8}])
