import math

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from ppllava.ops import prompt_relevance


def test_matches_the_formula_by_hand():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(2, 3, 2, 4, 16, generator=g)
    c = torch.randn(2, 16, generator=g)
    r, s = prompt_relevance(e, c, math.log(100.0))
    for b in range(2):
        cos = torch.stack([
            torch.dot(e[b, t, h, w], c[b]) / (e[b, t, h, w].norm() * c[b].norm())
            for t in range(3) for h in range(2) for w in range(4)
        ])
        torch.testing.assert_close(r[b].flatten(), cos)
        torch.testing.assert_close(s[b].flatten(), torch.softmax(100.0 * cos, 0))
    assert r.abs().max() <= 1 + 1e-6
    torch.testing.assert_close(s.flatten(1).sum(-1), torch.ones(2))


def test_float32_whatever_the_input_dtype():
    e = torch.randn(1, 2, 3, 3, 8).bfloat16()
    c = torch.randn(1, 8).bfloat16()
    r, s = prompt_relevance(e, c, torch.tensor(math.log(100.0)))
    assert r.dtype == s.dtype == torch.float32 and s.shape == (1, 2, 3, 3)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(1, 2, 3, 3, 8\).*\(1, 7\)"):
        prompt_relevance(torch.randn(1, 2, 3, 3, 8), torch.randn(1, 7), 0.0)
    with pytest.raises(ValueError, match="B, T, H, W, Dc"):
        prompt_relevance(torch.randn(2, 3, 3, 8), torch.randn(2, 8), 0.0)


def test_agrees_with_open_clip_logits():
    """With one 'patch' per image (its pooled embedding), tau * r is open_clip's own logit."""
    torch.manual_seed(0)
    model = CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=16, image_size=32),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
    ).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")  # bundled BPE, offline
    images = torch.randn(3, 3, 32, 32)
    text = tokenizer(["a red star", "a blue square", "a green circle"])
    with torch.no_grad():
        img, txt, scale = model(images, text)[:3]
        r, _ = prompt_relevance(model.encode_image(images)[:, None, None, None], model.encode_text(text), model.logit_scale)
    torch.testing.assert_close(scale * r.flatten(), (scale * img * txt).sum(-1))
