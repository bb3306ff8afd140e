"""LISA losses against naive per-pixel formulas (docs/LISA.md §4)."""

from __future__ import annotations

import math

import pytest
import torch

from modlisa.losses import (
    LossWeights,
    compute_losses,
    dice_loss,
    sigmoid_bce_loss,
    sigmoid_focal_loss,
    text_ce_loss,
)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def naive_mask_losses(logits: torch.Tensor, targets: torch.Tensor) -> list[tuple[float, float, float]]:
    """Per mask (BCE, Dice, focal) with pixel loops; targets in {0, 1}."""
    out = []
    for x_map, y_map in zip(logits.double().tolist(), targets.double().tolist()):
        pixels = [(x, y) for xr, yr in zip(x_map, y_map) for x, y in zip(xr, yr)]
        bce = focal = s_sum = y_sum = sy_sum = 0.0
        for x, y in pixels:
            s = sig(x)
            ce = -(y * math.log(s) + (1 - y) * math.log(1 - s))
            p_t = s * y + (1 - s) * (1 - y)
            alpha_t = 0.25 * y + 0.75 * (1 - y)
            bce += ce
            focal += alpha_t * ce * (1 - p_t) ** 2
            s_sum, y_sum, sy_sum = s_sum + s, y_sum + y, sy_sum + s * y
        dice = 1 - (2 * sy_sum / 1000 + 1e-6) / (s_sum / 1000 + y_sum / 1000 + 1e-6)
        out.append((bce / len(pixels), dice, focal / len(pixels)))
    return out


def naive_text_ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    total, count = 0.0, 0
    for q in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            target = int(labels[q, t])
            if target == -100:
                continue
            row = logits[q, t - 1].double().tolist()
            log_z = math.log(sum(math.exp(v) for v in row))
            total += log_z - row[target]
            count += 1
    return total / count


def random_batch(gen: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Two images of different sizes with 2 and 1 masks; gt contains ignore pixels."""
    preds, gts = [], []
    for n, h, w in [(2, 5, 6), (1, 3, 4)]:
        preds.append(torch.randn(n, h, w, generator=gen) * 3)
        gt = (torch.rand(n, h, w, generator=gen) < 0.4).to(torch.uint8)
        gt[torch.rand(n, h, w, generator=gen) < 0.2] = 255
        gts.append(gt)
    return preds, gts


def test_single_losses_match_naive() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, generator=gen) * 2
    targets = (torch.rand(3, 4, 5, generator=gen) < 0.5).float()
    ref = naive_mask_losses(logits, targets)
    assert sigmoid_bce_loss(logits, targets).item() == pytest.approx(sum(r[0] for r in ref) / 3, rel=1e-5)
    assert dice_loss(logits, targets).item() == pytest.approx(sum(r[1] for r in ref) / 3, rel=1e-5)
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx(sum(r[2] for r in ref) / 3, rel=1e-5)


def test_text_ce_shift_and_ignore() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 7, generator=gen)
    labels = torch.full((2, 6), -100)
    labels[0, 3:5] = torch.tensor([2, 5])
    labels[1, 1] = 4
    labels[1, 0] = 3  # position 0 is never predicted (shift by one)
    assert text_ce_loss(logits, labels).item() == pytest.approx(naive_text_ce(logits, labels), rel=1e-5)
    none_counted = text_ce_loss(logits.requires_grad_(), torch.full((2, 6), -100))
    assert none_counted.item() == 0.0 and none_counted.requires_grad


def test_compute_losses_matches_naive_with_ignore_as_background() -> None:
    gen = torch.Generator().manual_seed(2)
    preds, gts = random_batch(gen)
    lm_logits = torch.randn(3, 5, 9, generator=gen)
    labels = torch.full((3, 5), -100)
    labels[:, 3:] = torch.randint(0, 9, (3, 2), generator=gen)

    out = compute_losses(lm_logits, labels, preds, gts, LossWeights())
    per_mask = [r for p, g in zip(preds, gts) for r in naive_mask_losses(p, (g == 1).double())]
    bce, dice, focal = (sum(r[k] for r in per_mask) / len(per_mask) for k in range(3))  # over ALL 3 masks
    ce = naive_text_ce(lm_logits, labels)
    assert out["mask_bce"].item() == pytest.approx(bce, rel=1e-5)
    assert out["mask_dice"].item() == pytest.approx(dice, rel=1e-5)
    assert out["mask_focal"].item() == pytest.approx(focal, rel=1e-5)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out["loss"].item() == pytest.approx(ce + 2.0 * bce + 0.5 * dice, rel=1e-5)

    weighted = compute_losses(lm_logits, labels, preds, gts, LossWeights(ce=0.5, bce=1.0, dice=3.0, focal=4.0))
    assert weighted["loss"].item() == pytest.approx(0.5 * ce + bce + 3.0 * dice + 4.0 * focal, rel=1e-5)


def test_autograd_reaches_text_and_mask_logits() -> None:
    gen = torch.Generator().manual_seed(3)
    preds, gts = random_batch(gen)
    preds = [p.requires_grad_() for p in preds]
    lm_logits = torch.randn(3, 4, 6, generator=gen, requires_grad=True)
    labels = torch.tensor([[-100, -100, 1, 2]] * 3)
    compute_losses(lm_logits, labels, preds, gts)["loss"].backward()
    assert lm_logits.grad is not None and lm_logits.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in preds)


def test_bf16_inputs_give_fp32_terms() -> None:
    gen = torch.Generator().manual_seed(4)
    preds, gts = random_batch(gen)
    lm_logits = torch.randn(3, 4, 6, generator=gen)
    labels = torch.tensor([[-100, 0, 1, 2]] * 3)
    out32 = compute_losses(lm_logits, labels, preds, gts)
    out16 = compute_losses(lm_logits.bfloat16(), labels, [p.bfloat16() for p in preds], gts)
    for key, value in out16.items():
        assert value.dtype == torch.float32, key
        assert value.item() == pytest.approx(out32[key].item(), rel=3e-2), key


def test_zero_masks_give_zero_graph_connected_terms() -> None:
    lm_logits = torch.randn(1, 4, 6, requires_grad=True)
    labels = torch.tensor([[-100, 0, 1, 2]])
    pred = torch.zeros(0, 5, 5, requires_grad=True)
    out = compute_losses(lm_logits, labels, [pred], [torch.zeros(0, 5, 5, dtype=torch.uint8)])
    assert out["mask_bce"].item() == 0.0 and out["mask_dice"].item() == 0.0
    assert out["mask_bce"].requires_grad
    assert out["loss"].item() == pytest.approx(out["ce"].item())
    out["loss"].backward()
    assert pred.grad is not None


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="image 0"):
        compute_losses(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), [torch.zeros(1, 2, 2)],
                       [torch.zeros(1, 3, 3, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="ground truths"):
        compute_losses(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), [], [torch.zeros(1, 3, 3)])
    with pytest.raises(ValueError, match="labels"):
        text_ce_loss(torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="bce"):
        LossWeights(bce=-1.0)
