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


def test_pointing_accuracy_refuses_masks_of_another_patch_grid():
    # Masks drawn at 16 px patches (4 x 4) for a map of 8 px patches (8 x 8) once indexed out of range, or
    # worse, in range on the wrong patches, when a notebook hard-coded the tiny preset's grid.
    with pytest.raises(ValueError, match=r"relevance \(2, 8, 8\) and masks \(2, 4, 4\)"):
        pointing_accuracy(torch.zeros(2, 8, 8), torch.zeros(2, 4, 4, dtype=torch.bool))


# --- DPO conventions: summed (DPO paper) or per-token (TRL's IPO) log-probs, conservative DPO ------------

def _toy_pairs():
    """Policy and reference logits for a chosen (3 answer tokens) and a rejected (1 answer token)
    answer per pair: lengths differ, so summing and averaging disagree."""
    torch.manual_seed(0)
    labels_c = torch.tensor([[-100, -100, 3, 4, 5, -100], [-100, 1, 2, 6, -100, -100]])
    labels_r = torch.tensor([[-100, -100, 6, -100, -100, -100], [-100, -100, -100, -100, 0, -100]])
    logits = {k: torch.randn(2, 6, 7) for k in ("pc", "pr", "rc", "rr")}
    return logits, {"pc": labels_c, "rc": labels_c, "pr": labels_r, "rr": labels_r}


def _hand_logp(logits, labels, average):
    """One float per row, token by token with math: log softmax of the label at the previous position."""
    rows = []
    for b in range(labels.shape[0]):
        terms = []
        for t in range(1, labels.shape[1]):
            if labels[b, t] != -100:
                row = logits[b, t - 1].tolist()
                top = max(row)
                terms.append(row[int(labels[b, t])] - top - math.log(sum(math.exp(x - top) for x in row)))
        rows.append(sum(terms) / len(terms) if average else sum(terms))
    return rows


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logprobs_sum_or_mean_per_answer_token(average):
    logits, labels = _toy_pairs()
    got = sequence_logprobs(logits["pc"], labels["pc"], average=average)
    assert got.tolist() == pytest.approx(_hand_logp(logits["pc"], labels["pc"], average), rel=1e-5)


def test_ipo_with_mean_logps_matches_trl_by_hand():
    """TRL's IPO: logps averaged over the completion's tokens, h = (pi_c - pi_r) - (ref_c - ref_r),
    loss = mean((h - 1 / (2 beta))^2); computed here with floats, not with the kit's functions."""
    logits, labels = _toy_pairs()
    beta = 0.1
    hand = {k: _hand_logp(logits[k], labels[k], average=True) for k in logits}
    h = [(hand["pc"][b] - hand["pr"][b]) - (hand["rc"][b] - hand["rr"][b]) for b in range(2)]
    expected = sum((x - 1 / (2 * beta)) ** 2 for x in h) / 2
    mean = {k: sequence_logprobs(logits[k], labels[k], average=True) for k in logits}
    got = dpo_loss(mean["pc"], mean["pr"], mean["rc"], mean["rr"], beta=beta, loss_type="ipo")["loss"].item()
    assert got == pytest.approx(expected, rel=1e-5)
    summed = {k: sequence_logprobs(logits[k], labels[k]) for k in logits}
    other = dpo_loss(summed["pc"], summed["pr"], summed["rc"], summed["rr"], beta=beta, loss_type="ipo")["loss"].item()
    assert other != pytest.approx(expected, rel=1e-3)  # the convention matters on answers of unequal length


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_conservative_dpo_matches_trl_sigmoid_by_hand(eps):
    """TRL's sigmoid loss: -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h); eps 0 is plain DPO."""
    pc, pr, rc, rr = (torch.tensor(v) for v in ([-1.0, -2.0, -0.5], [-3.0, -1.5, -0.5], [-1.5, -2.0, -1.0],
                                                [-2.5, -1.0, -0.2]))
    beta = 0.5
    h = [(a - c) - (b - d) for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())]
    logsig = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
    expected = sum(-(1 - eps) * logsig(beta * x) - eps * logsig(-beta * x) for x in h) / len(h)
    assert dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)["loss"].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(label_smoothing=0.5), r"label_smoothing must be in \[0, 0.5\), got 0.5"),
    (dict(label_smoothing=-0.1), r"label_smoothing must be in \[0, 0.5\), got -0.1"),
    (dict(label_smoothing=0.1, loss_type="ipo"), "label_smoothing 0.1 applies to loss_type 'sigmoid' only, got 'ipo'"),
    (dict(label_smoothing=0.1, loss_type="hinge"), "got 'hinge'"),
    (dict(beta=0.0), "beta must be > 0, got 0.0"),
])
def test_dpo_loss_refuses_bad_options(kwargs, match):
    x = torch.zeros(2)
    with pytest.raises(ValueError, match=match):
        dpo_loss(x, x, x, x, **kwargs)


def test_dpo_loss_refuses_log_probs_of_unequal_shapes():
    with pytest.raises(ValueError, match=r"must all be \(B,\), got \[\(2,\), \(3,\)"):
        dpo_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\(2, 1\)"):
        dpo_loss(*(torch.zeros(2, 1) for _ in range(4)))


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logprobs_names_rows_without_an_answer(average):
    labels = torch.tensor([[-100, 2, 3], [-100, -100, -100], [5, -100, -100]])  # row 2's only label is at t = 0
    with pytest.raises(ValueError, match=r"rows \[1, 2\] have no labelled token"):
        sequence_logprobs(torch.randn(3, 3, 7), labels, average=average)
    with pytest.raises(ValueError, match=r"logits \(B, L\) = \(3, 4\) and labels \(3, 3\)"):
        sequence_logprobs(torch.randn(3, 4, 7), labels, average=average)


def test_dpo_module_passes_the_config_conventions_on(monkeypatch):
    """TrainConfig.dpo_logps picks sum or mean in the DPO step, and label_smoothing reaches dpo_loss."""
    from types import SimpleNamespace

    import ppllava.train.modules as modules
    from ppllava.config import PPLLaVAConfig
    from ppllava.model import PPLLaVA
    from ppllava.train.config import TrainConfig

    logits, labels = _toy_pairs()
    batch = {"input_ids": torch.zeros(2, 6, dtype=torch.long), "labels": labels["pc"]}
    fake = lambda **kw: SimpleNamespace(logits=logits["pc"], loss=torch.tensor(0.0))  # noqa: E731
    model = PPLLaVA(PPLLaVAConfig.from_name("tiny"))
    for mode, average in (("sum", False), ("mean", True)):
        module = modules.DPOModule(model, TrainConfig(stage="dpo", init_from="x", dpo_logps=mode, label_smoothing=0.2))
        expected = _hand_logp(logits["pc"], labels["pc"], average)
        assert module._logps(fake, batch)["logp"].tolist() == pytest.approx(expected, rel=1e-5)
    seen = {}
    monkeypatch.setattr(modules, "dpo_loss", lambda *a, **kw: seen.update(kw) or dpo_loss(*a, **kw))
    monkeypatch.setattr(module, "_logps", lambda m, b: {"logp": torch.tensor([-1.0, -2.0]), "loss": torch.tensor(0.5)})
    monkeypatch.setattr(module, "_reference", lambda b: torch.tensor([-1.5, -1.5]))
    module._step({"chosen": batch, "rejected": batch}, "train")
    assert seen["label_smoothing"] == 0.2 and seen["loss_type"] == "sigmoid"
