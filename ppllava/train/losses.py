"""The training objectives as pure functions (DESIGN.md §2), testable without Lightning."""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F

DPO_LOSSES = ("sigmoid", "hinge", "ipo")
DPO_LOGPS = ("sum", "mean")  # how an answer's token log-probs become one number: see sequence_logprobs


def fine_grained_logits(patch_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Video-text logits of the fine-grained CLIP post-pretraining: for every (video i, text j),
    tau * sum_p r_p * softmax_p(tau * r)_p over all patches p of video i, r_p = cos(e_ip, c_j).

    patch_embeds (`torch.FloatTensor` of shape `(B, N, Dc)`), text_embeds `(B', Dc)` -> `(B, B')`."""
    e = F.normalize(patch_embeds.float(), dim=-1)
    c = F.normalize(text_embeds.float(), dim=-1)
    tau = logit_scale.float().exp()
    r = torch.einsum("bnd,td->btn", e, c)  # (B, B', N)
    return tau * (r * torch.softmax(tau * r, dim=-1)).sum(-1)


def grounding_loss(patch_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                   masks: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """-mean_i log sum_{p in M_i} softmax_p(tau * r_ip): the share of pair i's relevance map
    (the fine-grained logit's softmax, text i over image i's patches) that falls on the named object's
    patches M_i. An option of the kit's CLIP stage, not of the paper: the world knows every object's
    patches, which a CLIP pretrained on captions never sees (docs/world.md, issue #15).

    patch_embeds `(B, N, Dc)`, text_embeds `(B, Dc)` (text i names image i's object), masks `(B, N)` bool,
    keep `(B,)` bool (the pairs to ground; None: all) -> scalar. Pairs whose mask is empty are skipped;
    at least one pair must remain."""
    if patch_embeds.dim() != 3 or text_embeds.shape != (patch_embeds.shape[0], patch_embeds.shape[2]):
        raise ValueError(f"grounding_loss: patch_embeds (B, N, Dc) and text_embeds (B, Dc) expected, got "
                         f"{tuple(patch_embeds.shape)} and {tuple(text_embeds.shape)}")
    if masks.shape != patch_embeds.shape[:2] or masks.dtype != torch.bool:
        raise ValueError(f"grounding_loss: masks must be bool of shape {tuple(patch_embeds.shape[:2])}, got "
                         f"{masks.dtype} {tuple(masks.shape)}")
    keep = masks.any(1) if keep is None else keep & masks.any(1)
    if not keep.any():
        raise ValueError("grounding_loss: no pair to ground (every pair's mask is empty or left out by keep)")
    e = F.normalize(patch_embeds.float(), dim=-1)
    c = F.normalize(text_embeds.float(), dim=-1)
    log_s = torch.log_softmax(logit_scale.float().exp() * torch.einsum("bnd,bd->bn", e, c), dim=-1)  # (B, N)
    on_object = torch.logsumexp(log_s.masked_fill(~masks, float("-inf")), dim=-1)  # (B,)
    return -on_object[keep].mean()


def global_logits(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Plain CLIP logits tau * cos(image, text): (B, Dc), (B', Dc) -> (B, B') (the ablation)."""
    return logit_scale.float().exp() * F.normalize(image_embeds.float(), dim=-1) @ F.normalize(text_embeds.float(), dim=-1).T


def contrastive_loss(logits: torch.Tensor, positives: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Symmetric InfoNCE over a (B, B) logit matrix. `positives` (B, B) bool marks every matching
    pair (several images can contain the named thing): each row's and column's target is then the
    uniform distribution over its positives. None means the diagonal."""
    if positives is None:
        positives = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    if not positives.any(1).all() or not positives.any(0).all():
        raise ValueError("every image and every text needs at least one positive")
    target = positives.float()
    rows = -(target / target.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    cols = -(target / target.sum(0, keepdim=True) * F.log_softmax(logits, 0)).sum(0).mean()
    return (rows + cols) / 2


def pointing_accuracy(relevance: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of maps whose most relevant patch lies inside the named object's patches.

    relevance `(B, ..., H, W)` and masks of the same shape (bool) -> scalar."""
    if relevance.shape != masks.shape:  # masks drawn for another patch grid would index the wrong patches
        raise ValueError(f"pointing_accuracy: relevance {tuple(relevance.shape)} and masks {tuple(masks.shape)} differ "
                         "in shape; draw the masks with the model's image_size and patch_size")
    flat = relevance.flatten(1)
    hit = masks.flatten(1).gather(1, flat.argmax(1, keepdim=True))
    return hit.float().mean()


def token_accuracy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Next-token accuracy on labelled positions: logits (B, L, V), labels (B, L) -> scalar."""
    predicted = logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    keep = target != ignore_index
    return (predicted[keep] == target[keep]).float().mean() if keep.any() else logits.new_tensor(float("nan"))


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, *,
                      average: bool = False) -> torch.Tensor:
    """Log-probability of each sequence's labelled (answer) tokens: their sum (the DPO paper's
    log pi(y|x), this kit's default), or with `average` their mean per answer token (TRL's
    convention for IPO, which divides each log-ratio by the completion's length).

    logits (`torch.FloatTensor` of shape `(B, L, V)`), labels `(B, L)` -> `(B,)`. A row with no
    labelled token has no answer to score: ValueError naming the row."""
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits (B, L) = {tuple(logits.shape[:2])} and labels {tuple(labels.shape)} differ")
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = labels[:, 1:]
    keep = target != ignore_index
    counts = keep.sum(-1)
    if not bool((counts > 0).all()):
        rows = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"sequence_logprobs: rows {rows} have no labelled token (labels all {ignore_index})")
    picked = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    total = (picked * keep).sum(-1)
    return total / counts if average else total


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, *, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0, sft_chosen: Optional[torch.Tensor] = None, alpha: float = 1.0,
             gamma: float = 0.0) -> Dict[str, torch.Tensor]:
    """Direct preference optimisation on per-answer log-probs, each `(B,)`, as `sequence_logprobs`
    gives them: summed over the answer's tokens (the DPO paper) or averaged per token (TRL's IPO).

    h = (pi_c - ref_c) - (pi_r - ref_r);
    sigmoid: -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)  (eps = label_smoothing:
             conservative DPO, TRL's form; eps = 0 is plain DPO);
    hinge: relu(1 - beta h);  ipo: (h - 1 / (2 beta))^2.  total = alpha * mean(loss) + gamma * sft_chosen.
    With summed log-probs ipo is the IPO paper's formula on whole sequences; TRL's IPO is this with
    `sequence_logprobs(..., average=True)`; the two differ wherever answers are longer than one token.
    Returns loss, dpo, rewards (beta * log-ratios) chosen / rejected, reward accuracy and margin."""
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"loss_type must be one of {DPO_LOSSES}, got {loss_type!r}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing {label_smoothing} applies to loss_type 'sigmoid' only, got {loss_type!r}")
    shapes = [tuple(t.shape) for t in (policy_chosen, policy_rejected, reference_chosen, reference_rejected)]
    if len(set(shapes)) != 1 or len(shapes[0]) != 1:
        raise ValueError(f"policy / reference, chosen / rejected log-probs must all be (B,), got {shapes}")
    chosen_ratio, rejected_ratio = policy_chosen - reference_chosen, policy_rejected - reference_rejected
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        per = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "hinge":
        per = torch.relu(1 - beta * h)
    else:
        per = (h - 1 / (2 * beta)) ** 2
    dpo = per.mean()
    total = alpha * dpo
    if gamma:
        if sft_chosen is None:
            raise ValueError("gamma > 0 needs sft_chosen (the chosen answers' SFT loss)")
        total = total + gamma * sft_chosen
    chosen_reward, rejected_reward = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    return {"loss": total, "dpo": dpo.detach(), "reward_chosen": chosen_reward.mean(),
            "reward_rejected": rejected_reward.mean(), "reward_accuracy": (chosen_reward > rejected_reward).float().mean(),
            "reward_margin": (chosen_reward - rejected_reward).mean()}
