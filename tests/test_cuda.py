"""The CUDA paths against the CPU (skipped without a GPU; run on one with `pytest tests/test_cuda.py`):
pooling's CUDA formulation in every weighting, the tiny model's logits in every pooling and compression
mode, long videos streamed from frames decoded on the CPU, and bf16 generation. TF32 is off so that
fp32 on the GPU is compared with fp32 on the CPU, not with a 10-bit mantissa."""
import dataclasses
import math

import pytest
import torch

from ppllava.config import PPLLaVAConfig
from ppllava.model import PPLLaVA
from ppllava.model.chunked_video import TensorFrames
from ppllava.ops import COMPRESSION_MODES, POOLING_MODES, WEIGHTINGS, prompt_guided_pool3d

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("grid,kernel,stride", [((6, 6, 6), (2, 3, 3), None),  # tiling: CUDA's matrix product
                                                ((7, 6, 6), (3, 2, 2), (2, 2, 2))])  # overlapping windows
def test_pooling_on_cuda_equals_the_cpu(weighting, grid, kernel, stride):
    g = torch.Generator().manual_seed(0)
    n, D = grid[0] * grid[1] * grid[2], 32
    x = torch.randn(2, n, D, generator=g)
    s = torch.softmax(torch.randn(2, n, generator=g) * 3, -1).reshape(2, *grid)
    results = []
    # CUDA first: its .to() makes new leaves; the CPU's returns x and s themselves, which then require grad
    for device in ("cuda", "cpu"):
        x_, s_ = x.to(device).requires_grad_(), s.to(device).requires_grad_()
        y, _ = prompt_guided_pool3d(x_, s_, grid, kernel=kernel, stride=stride, temperature=0.05, weighting=weighting)
        (y * torch.linspace(-1, 1, y.numel(), device=device).view_as(y)).sum().backward()
        results.append([t.detach().cpu() for t in (y, x_.grad, s_.grad)])
    for cuda, cpu, name in zip(*results, ("pooled", "grad x", "grad s")):
        torch.testing.assert_close(cuda, cpu, rtol=1e-4, atol=1e-5, msg=lambda m: f"{weighting} {name}: {m}")


def _tiny(**fields):
    torch.manual_seed(0)
    return PPLLaVA(PPLLaVAConfig.from_name("tiny", **fields)).eval()


def _inputs(model, n=2, frames=8):
    g = torch.Generator().manual_seed(0)
    videos = torch.randn(n, frames, 3, 64, 64, generator=g)
    ids = torch.tensor([[1, 10, *([model.config.video_token_id] * model.video_token_count(frames)), 12]] * n)
    clip = torch.tensor([[49406, 320 + i, 1125, 49407] for i in range(n)])
    return dict(input_ids=ids, pixel_values_videos=videos, clip_input_ids=clip)


@pytest.mark.parametrize("mode", [*POOLING_MODES, *COMPRESSION_MODES, "fastv"])
def test_tiny_model_logits_on_cuda_equal_the_cpu(mode):
    model = _tiny()
    grid = {"video_output_size": (4, 2, 2)} if mode == "adaptive" else {}
    model.config = dataclasses.replace(model.config, pooling=mode, **grid)
    batch = _inputs(model)
    with torch.no_grad():
        cpu = model(**batch).logits
        model.cuda()
        cuda = model(**{k: v.cuda() for k, v in batch.items()}).logits.cpu()
    torch.testing.assert_close(cuda, cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["prompt", "adaptive"])
def test_a_long_video_streams_from_cpu_frames_to_a_cuda_model(mode):
    model = _tiny(num_frames=32, pooling=mode, video_output_size=(4, 2, 2), weighting="invariant").cuda()
    pixels = torch.randn(1, 32, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    clip = torch.tensor([[49406, 320, 1125, 49407]])
    with torch.no_grad():
        streamed = model.long_video_tokens(TensorFrames(pixels), clip.cuda(), chunk_frames=5)  # frames stay on the CPU
        whole = model.video_tokens(pixels.cuda(), model.encode_prompts(clip.cuda()) if mode == "prompt" else None)
    assert streamed.device.type == "cuda"
    torch.testing.assert_close(streamed, whole, rtol=1e-4, atol=1e-5)


def test_bf16_generation_on_cuda_is_finite_and_answers():
    model = _tiny(pooling="prompt").cuda().to(torch.bfloat16)
    batch = {k: v.cuda() for k, v in _inputs(model).items()}
    with torch.no_grad():
        logits = model(**batch).logits
        new = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    assert new.shape == (2, 3)


def test_a_training_stage_runs_on_cuda_in_bf16_mixed_with_gradient_clipping(tmp_path):
    """The Trainer's GPU defaults (bf16-mixed, gradient_clip_val 1.0) with the kit's optimizer."""
    from ppllava.data.world import WorldSpec, write_world
    from ppllava.train.config import TrainConfig
    from ppllava.train.run import run

    write_world(tmp_path / "world", WorldSpec(), train=16, val=8, test=0, long_per_length=0, progress=False)
    cfg = TrainConfig(stage="sft2", preset="tiny", data=str(tmp_path / "world"), run_dir=str(tmp_path / "sft2"),
                      batch_size=8, lr=1e-3, max_epochs=1, max_steps=2, limit_val_batches=1)
    assert cfg.gradient_clip_val > 0
    metrics = run(cfg)
    assert metrics["steps"] == 2 and all(math.isfinite(v) for v in metrics.values()), metrics
