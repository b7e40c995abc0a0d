import math

import pytest
import torch
import torch.nn.functional as F

from ppllava.train.losses import (
    contrastive_loss,
    dpo_loss,
    fine_grained_logits,
    global_logits,
    pointing_accuracy,
    sequence_logprobs,
    token_accuracy,
)


def test_dpo_loss_matches_a_hand_computation():
    pc, pr, rc, rr = (torch.tensor(v) for v in ([-1.0, -2.0], [-3.0, -1.5], [-1.5, -2.0], [-2.5, -1.0]))
    beta = 0.1
    # h = (pc - rc) - (pr - rr) = [0.5 - (-0.5), 0.0 - (-0.5)] = [1.0, 0.5]
    h = [1.0, 0.5]
    out = dpo_loss(pc, pr, rc, rr, beta=beta)
    expected = sum(-math.log(1 / (1 + math.exp(-beta * x))) for x in h) / 2
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert out["reward_chosen"].item() == pytest.approx(beta * (0.5 + 0.0) / 2)
    assert out["reward_rejected"].item() == pytest.approx(beta * (-0.5 - 0.5) / 2)
    assert out["reward_accuracy"].item() == 1.0
    assert out["reward_margin"].item() == pytest.approx(beta * (1.0 + 0.5) / 2)
    hinge = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="hinge")["loss"].item()
    assert hinge == pytest.approx(sum(max(0.0, 1 - beta * x) for x in h) / 2)
    ipo = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo")["loss"].item()
    assert ipo == pytest.approx(sum((x - 1 / (2 * beta)) ** 2 for x in h) / 2)
    mixed = dpo_loss(pc, pr, rc, rr, beta=beta, alpha=0.5, gamma=2.0, sft_chosen=torch.tensor(3.0))["loss"].item()
    assert mixed == pytest.approx(0.5 * expected + 6.0, rel=1e-6)
    with pytest.raises(ValueError, match="sft_chosen"):
        dpo_loss(pc, pr, rc, rr, gamma=1.0)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(pc, pr, rc, rr, loss_type="kto")


def test_sequence_logprobs_sum_answer_tokens_only():
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, -100, -100, 2]])
    logp = torch.log_softmax(logits, -1)
    expected = torch.stack([logp[0, 1, 3] + logp[0, 2, 4], logp[1, 0, 1] + logp[1, 3, 2]])
    torch.testing.assert_close(sequence_logprobs(logits, labels), expected)
    assert token_accuracy(torch.nn.functional.one_hot(torch.tensor([[3, 4, 9 % 7, 1, 0]]), 7).float() * 5,
                          torch.tensor([[-100, 3, 4, -100, -100]])).item() == 1.0


def test_fine_grained_logits_formula():
    torch.manual_seed(0)
    e, c, scale = torch.randn(2, 6, 4), torch.randn(3, 4), torch.tensor(math.log(10.0))
    logits = fine_grained_logits(e, c, scale)
    for i in range(2):
        for j in range(3):
            r = F.cosine_similarity(e[i], c[j][None], dim=-1)
            expected = 10.0 * (r * torch.softmax(10.0 * r, 0)).sum()
            assert logits[i, j].item() == pytest.approx(expected.item(), rel=1e-5)
    g = global_logits(e.mean(1), c, scale)
    assert g.shape == (2, 3) and g.abs().max() <= 10.0 + 1e-5


def test_contrastive_loss_single_and_multi_positive():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    single = contrastive_loss(logits)
    expected = F.cross_entropy(logits, torch.arange(2))
    assert single.item() == pytest.approx(expected.item())
    positives = torch.tensor([[True, True], [False, True]])
    multi = contrastive_loss(logits, positives)
    rows = -(0.5 * F.log_softmax(logits, 1)[0].sum() + F.log_softmax(logits, 1)[1, 1]) / 2
    cols = -(F.log_softmax(logits, 0)[0, 0] + 0.5 * F.log_softmax(logits, 0)[:, 1].sum()) / 2
    assert multi.item() == pytest.approx(((rows + cols) / 2).item(), rel=1e-6)
    with pytest.raises(ValueError, match="positive"):
        contrastive_loss(logits, torch.tensor([[True, False], [False, False]]))


def test_pointing_accuracy():
    relevance = torch.zeros(2, 4, 4)
    relevance[0, 1, 2] = 1.0
    relevance[1, 3, 3] = 1.0
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 1, 2] = masks[1, 0, 0] = True
    assert pointing_accuracy(relevance, masks).item() == 0.5
