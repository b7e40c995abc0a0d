"""`pool_shared_tokens` (pooling from the distinct rows of tokens that repeat) against
`prompt_guided_pool3d` on the tokens made whole: values and gradients, every weighting and geometry."""
import pytest
import torch

from ppllava.ops import pool_shared_tokens, prompt_guided_pool3d


def repeated(B=2, T=12, H=4, W=4, D=5, runs=(3, 1, 4, 2, 2), seed=0):
    """Distinct rows and, per video, frames that repeat in runs (each video's frames its own rows)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(B * len(runs) * H * W, D, generator=g, dtype=torch.float64)
    frame = torch.repeat_interleave(torch.arange(len(runs)), torch.tensor(runs))  # (T,) distinct frame of each
    assert frame.numel() == T
    index = torch.stack([(b * len(runs) + frame).view(T, 1, 1) * (H * W) + torch.arange(H * W).view(1, H, W)
                         for b in range(B)])  # (B, T, H, W)
    relevance = torch.softmax(3 * torch.randn(B, T * H * W, generator=g, dtype=torch.float64), -1).view(B, T, H, W)
    return rows, index, relevance


GEOMETRIES = [dict(output_size=(4, 2, 2)), dict(kernel=(3, 2, 2)), dict(kernel=(4, 3, 3), stride=(2, 1, 1)),
              dict(kernel=(12, 1, 1)), dict(kernel=(5, 3, 3), remainder="drop")]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("weighting", ["softmax", "normalized", "invariant", "peak", None])
def test_equals_pooling_the_whole_tokens_values_and_gradients(geometry, weighting):
    rows, index, relevance = repeated()
    rows.requires_grad_(True)
    relevance.requires_grad_(True)
    map_ = None if weighting is None else relevance
    kwargs = dict(weighting=weighting or "softmax", margin=4.0, temperature=0.003, **geometry)
    whole = rows[index.flatten(1)]  # (B, N, D), made whole
    expected, out = prompt_guided_pool3d(whole, map_, tuple(index.shape[1:]), **kwargs)
    got, got_out = pool_shared_tokens(rows, index, map_, **kwargs)
    assert got_out == out and got.shape == expected.shape and got.dtype == rows.dtype
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    probe = torch.randn(expected.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((expected * probe).sum(), [rows] + ([relevance] if map_ is not None else []))
    got_grads = torch.autograd.grad((got * probe).sum(), [rows] + ([relevance] if map_ is not None else []))
    for a, b in zip(got_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_float32_and_rows_shared_across_videos():
    """Two videos that share rows (a frame equal across the batch boundary) pool as the whole tokens do."""
    rows, index, relevance = repeated()
    index[1, :3] = index[0, -1:]  # video 1 opens on video 0's last frame
    rows, relevance = rows.float(), relevance.float()
    expected = prompt_guided_pool3d(rows[index.flatten(1)], relevance, (12, 4, 4), output_size=(4, 2, 2),
                                    weighting="peak", margin=4.0)[0]
    got = pool_shared_tokens(rows, index, relevance, output_size=(4, 2, 2), weighting="peak", margin=4.0)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_refused_by_name():
    rows, index, relevance = repeated()
    with pytest.raises(ValueError, match=r"rows must have shape \(R, D\)"):
        pool_shared_tokens(rows[None], index, relevance, output_size=(4, 2, 2))
    with pytest.raises(ValueError, match="index must be a non-empty int64"):
        pool_shared_tokens(rows, index.int(), relevance, output_size=(4, 2, 2))
    with pytest.raises(ValueError, match=r"index must lie in \[0, 160\)"):
        pool_shared_tokens(rows, index + 1, relevance, output_size=(4, 2, 2))
    with pytest.raises(ValueError, match=r"relevance must have shape \(B, T, H, W\) = \(2, 12, 4, 4\)"):
        pool_shared_tokens(rows, index, relevance[:, :6], output_size=(4, 2, 2))
    with pytest.raises(ValueError, match="needs output_size or kernel"):
        pool_shared_tokens(rows, index, relevance)
    with pytest.raises(ValueError, match="weighting must be one of"):
        pool_shared_tokens(rows, index, relevance, output_size=(4, 2, 2), weighting="sharp")
    rows[3, 0] = float("nan")
    with pytest.raises(ValueError, match="rows"):
        pool_shared_tokens(rows, index, relevance, output_size=(4, 2, 2))
