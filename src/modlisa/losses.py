"""LISA's training losses (docs/LISA.md §4): text cross-entropy plus mask BCE and Dice.

Total = ce·CE(text) + bce·BCE(mask) + dice·Dice(mask) [+ focal·Focal(mask)], with LISA's weights
1.0 / 2.0 / 0.5 by default. Mask terms are per mask (mean over its pixels), then averaged over all
masks of the batch, in fp32, on the ORIGINAL-resolution logit maps. In training, ignore pixels
(255) count as background.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label value excluded from the text loss


def _check_mask_pair(logits: torch.Tensor, targets: torch.Tensor, name: str) -> None:
    if logits.dim() != 3 or tuple(logits.shape) != tuple(targets.shape):
        raise ValueError(
            f"{name}: logits and targets must both be (N, H, W) of the same shape, "
            f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )


def per_mask_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, H, W) logits and {0,1} targets -> (N,) mean BCE over each mask's pixels (fp32)."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return loss.flatten(1).mean(1)


def per_mask_dice(
    logits: torch.Tensor, targets: torch.Tensor, scale: float = 1000.0, eps: float = 1e-6
) -> torch.Tensor:
    """(N, H, W) -> (N,) LISA Dice: 1 - (2·Σs·y/scale + eps) / (Σs/scale + Σy/scale + eps), fp32."""
    s = logits.float().sigmoid().flatten(1)
    y = targets.float().flatten(1)
    numerator = 2.0 * (s / scale * y).sum(1)
    denominator = (s / scale).sum(1) + (y / scale).sum(1)
    return 1.0 - (numerator + eps) / (denominator + eps)


def _per_mask_focal(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """(N, H, W) -> (N,) mean RetinaNet focal loss over each mask's pixels (alpha < 0 disables alpha)."""
    x = logits.float()
    y = targets.float()
    p = x.sigmoid()
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1.0 - p) * (1.0 - y)
    loss = ce * (1.0 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * y + (1.0 - alpha) * (1.0 - y)) * loss
    return loss.flatten(1).mean(1)


def sigmoid_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy: mean over pixels per mask, then mean over masks.

    logits: (N, H, W) float; targets: (N, H, W) in {0, 1}. Returns a scalar fp32 tensor.
    """
    _check_mask_pair(logits, targets, "sigmoid_bce_loss")
    return per_mask_bce(logits, targets).mean()


def dice_loss(
    logits: torch.Tensor, targets: torch.Tensor, scale: float = 1000.0, eps: float = 1e-6
) -> torch.Tensor:
    """LISA's Dice loss per mask, mean over masks. logits/targets (N, H, W); returns a scalar fp32."""
    _check_mask_pair(logits, targets, "dice_loss")
    return per_mask_dice(logits, targets, scale, eps).mean()


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """RetinaNet focal loss per pixel, mean over pixels then masks. (N, H, W) -> scalar fp32."""
    _check_mask_pair(logits, targets, "sigmoid_focal_loss")
    return _per_mask_focal(logits, targets, alpha, gamma).mean()


def text_ce_loss(lm_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Causal-LM cross-entropy: logits[:, :-1] predict labels[:, 1:], -100 ignored, fp32.

    lm_logits: (Q, L, V); labels: (Q, L) int64. Mean over the counted tokens; 0.0 (graph-connected)
    when no token is counted. Only the counted positions are upcast, so no full fp32 copy of the
    (Q, L, V) logits is made.
    """
    if lm_logits.dim() != 3 or tuple(lm_logits.shape[:2]) != tuple(labels.shape):
        raise ValueError(
            f"text_ce_loss: lm_logits must be (Q, L, V) and labels (Q, L), "
            f"got {tuple(lm_logits.shape)} and {tuple(labels.shape)}"
        )
    targets = labels[:, 1:]
    counted = targets != IGNORE_INDEX
    selected = lm_logits[:, :-1][counted]  # (n_counted, V)
    if selected.shape[0] == 0:
        return lm_logits.sum().float() * 0.0
    return F.cross_entropy(selected.float(), targets[counted])


@dataclass
class LossWeights:
    """Weights of the loss terms (LISA: ce 1.0, bce 2.0, dice 0.5; focal off)."""

    ce: float = 1.0
    bce: float = 2.0
    dice: float = 0.5
    focal: float = 0.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    def __post_init__(self) -> None:
        for name in ("ce", "bce", "dice", "focal", "focal_gamma"):
            if getattr(self, name) < 0:
                raise ValueError(f"LossWeights.{name} must be >= 0, got {getattr(self, name)}")


def _mask_terms(
    pred_masks: list[torch.Tensor], gt_masks: list[torch.Tensor], weights: LossWeights
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Per-mask BCE, Dice, focal over all images, each (M,) fp32; None when there is no mask."""
    if len(pred_masks) != len(gt_masks):
        raise ValueError(f"compute_losses: {len(pred_masks)} predicted mask sets but {len(gt_masks)} ground truths")
    bce, dice, focal = [], [], []
    for b, (pred, gt) in enumerate(zip(pred_masks, gt_masks)):
        _check_mask_pair(pred, gt, f"compute_losses (image {b})")
        if pred.shape[0] == 0:
            continue
        y = (gt == 1).to(pred.device)  # ignore (255) counts as background in training
        bce.append(per_mask_bce(pred, y))
        dice.append(per_mask_dice(pred, y))
        focal.append(_per_mask_focal(pred, y, weights.focal_alpha, weights.focal_gamma))
    if not bce:
        return None
    return torch.cat(bce), torch.cat(dice), torch.cat(focal)


def compute_losses(
    lm_logits: torch.Tensor,
    labels: torch.Tensor,
    pred_masks: list[torch.Tensor],
    gt_masks: list[torch.Tensor],
    weights: LossWeights | None = None,
) -> dict[str, torch.Tensor]:
    """LISA's combined loss and its named terms.

    lm_logits: (R, T, V); labels: (R, T) with -100 outside the answers: one row per query (R = Q), or per image
                when the queries were packed (``LISAOutput``; the same loss either way).
    pred_masks: B tensors (n_b, H_b, W_b) of float logits at the original resolution.
    gt_masks:   B tensors (n_b, H_b, W_b) uint8 in {0, 1, 255}.
    Returns scalar tensors ``loss``, ``ce``, ``mask_bce``, ``mask_dice``, ``mask_focal`` (unweighted
    terms; ``loss`` is the weighted total, focal included only when its weight is > 0). Mask terms
    average over all masks of the batch; with no mask they are 0 and still part of the graph.
    """
    weights = weights or LossWeights()
    ce = text_ce_loss(lm_logits, labels)
    terms = _mask_terms(pred_masks, gt_masks, weights)
    if terms is None:
        anchor = pred_masks if pred_masks else [lm_logits]
        zero = sum((p.float().sum() * 0.0 for p in anchor), torch.zeros((), device=lm_logits.device))
        bce = dice = focal = zero
    else:
        bce, dice, focal = (t.mean() for t in terms)
    total = weights.ce * ce + weights.bce * bce + weights.dice * dice
    if weights.focal > 0:
        total = total + weights.focal * focal
    return {"loss": total, "ce": ce, "mask_bce": bce, "mask_dice": dice, "mask_focal": focal}
