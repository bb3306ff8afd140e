"""Probe whether a tiny ModifiedLISA learns to follow its query, and where the query signal dies.

Trains the tiny preset on a ReasonSeg-format folder with a plain loop (the model, dataset, collate and losses
of the package) and prints, every ``--diag_every`` steps, for 4 val images asked their own and another image's
query: the relative difference of the [SEG] hidden states and of the projected prompts, the largest mask-logit
difference, and the largest change when the decoder gets random prompts of the same norm (does it listen at
all?); every ``--eval_every`` steps val gIoU with own and with wrong queries. ``--oracle`` replaces the [SEG]
prompt by a learned embedding of the target's attributes read from the synthetic JSON (an upper bound for the
decoder side). Results of these runs: docs/TRAINING_GUIDE.md, "Does it follow the query?".

    python benchmarks/grounding_probe.py --data data/demo --steps 400 --decoder_lr 1e-4
"""

from __future__ import annotations

import argparse
import json
import random

import torch

from modlisa.config import TrainingConfig
from modlisa.data import prompts
from modlisa.data.collate import collate_samples
from modlisa.data.dataset import ReasonSegDataset
from modlisa.data.synthetic import COLOURS, KINDS
from modlisa.engine.grounding import WrongQueryDataset, wrong_query_partners
from modlisa.losses import LossWeights, compute_losses
from modlisa.metrics import IoUAccumulator
from modlisa.model import backbones
from modlisa.model.factory import build_model
from modlisa.model.seg import decode_masks


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/demo")
    p.add_argument("--size", type=int, default=128, help="img_size = sam_image_size")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3, help="LM, vision tower, projector, SAM encoder")
    p.add_argument("--fcs_lr", type=float, default=None, help="text_hidden_fcs (default --lr)")
    p.add_argument("--decoder_lr", type=float, default=None, help="SAM mask decoder (default --lr)")
    p.add_argument("--lm_init", type=float, default=None, help="initializer_range of the tiny LM (HF: 0.02)")
    p.add_argument("--no_system_prompt", action="store_true", help="drop LLaVA v1's system sentence")
    p.add_argument("--oracle", action="store_true", help="prompt = embedding of the target's attributes")
    p.add_argument("--batch_norm_seg", action="store_true",
                   help="BatchNorm1d on the [SEG] hidden state before text_hidden_fcs (removes its common mode)")
    p.add_argument("--ce", type=float, default=1.0)
    p.add_argument("--bce", type=float, default=0.5)
    p.add_argument("--dice", type=float, default=2.0)
    p.add_argument("--eval_every", type=int, default=100)
    p.add_argument("--diag_every", type=int, default=25)
    return p.parse_args()


class OraclePrompt(torch.nn.Module):
    """(colour, kind, size) of each query's target (from the JSON's "target") -> a learned (D,) prompt."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(len(COLOURS) * len(KINDS) * 2, dim)
        self.ids = torch.zeros(0, dtype=torch.long)

    def set_batch(self, batch) -> None:
        ids = []
        for b in range(batch.num_images):
            with open(batch.image_paths[b].rsplit(".", 1)[0] + ".json", encoding="utf-8") as f:
                t = json.load(f)["target"]
            code = (list(COLOURS).index(t["colour"]) * len(KINDS) + KINDS.index(t["kind"])) * 2 + (t["size"] == "large")
            ids += [code] * int(batch.offsets[b + 1] - batch.offsets[b])
        self.ids = torch.tensor(ids)

    def forward(self, _hidden: torch.Tensor) -> torch.Tensor:
        return self.table(self.ids) * 3.0


def val_giou(model, dataset, tokenizer, oracle) -> float:
    model.eval()
    acc = IoUAccumulator()
    with torch.no_grad():
        for i in range(0, len(dataset), 8):
            batch = collate_samples([dataset[j] for j in range(i, min(i + 8, len(dataset)))], tokenizer)
            if oracle is not None:
                oracle.set_batch(batch)
            for masks, gts in zip(model(batch).pred_masks, batch.masks):
                for q in range(gts.shape[0]):
                    acc.update(masks[q] > 0, gts[q])
    model.train()
    return acc.compute()["giou"]


def diagnose(model, own, wrong, tokenizer, cfg, step: int) -> None:
    """Print how much the [SEG] state, the prompt and the masks differ between own and wrong queries."""
    model.eval()
    caught: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = model.text_hidden_fcs.register_forward_hook(lambda m, i, o: caught.append((i[0], o)))
    with torch.no_grad():
        samples = [own[i] for i in range(4)] + [wrong[i] for i in range(4)]
        outs = [model(collate_samples([s], tokenizer)) for s in samples]
        hook.remove()
        hidden, prompt = (torch.cat([c[k] for c in caught]) for k in (0, 1))

        def rel(x: torch.Tensor) -> float:
            return float((x[:4] - x[4:]).norm(dim=-1).mean() / x.norm(dim=-1).mean())

        mask_diff = max(float((outs[i].pred_masks[0] - outs[i + 4].pred_masks[0]).abs().max()) for i in range(4))
        emb = model.encode_sam(collate_samples([samples[0]], tokenizer).sam_images)[0]
        rand = torch.randn(2, prompt.shape[-1])
        rand = rand / rand.norm(dim=-1, keepdim=True) * prompt.norm(dim=-1).mean()
        rand_masks = decode_masks(model.sam, rand, emb, samples[0].resize_hw, samples[0].original_hw,
                                  cfg.sam_image_size)
    logits = outs[0].pred_masks[0]
    print(f"step {step}: own vs wrong query, relative difference of [SEG] hidden {rel(hidden):.4f}, prompt "
          f"{rel(prompt):.4f} (norm {prompt.norm(dim=-1).mean():.2f}); max mask-logit difference {mask_diff:.4f}; "
          f"random prompts change logits by {float((rand_masks[0] - rand_masks[1]).abs().max()):.4f}; logits "
          f"{float(logits.min()):.1f}..{float(logits.max()):.1f}", flush=True)
    model.train()


def main() -> None:
    a = parse_args()
    torch.manual_seed(0)
    if a.lm_init is not None:
        backbones.TINY_LM["initializer_range"] = a.lm_init
    if a.no_system_prompt:
        prompts.LLAVA_V1_SYSTEM = ""
    cfg = TrainingConfig(data_root=a.data, model="tiny", img_size=a.size, sam_image_size=a.size, use_lora=False,
                         freeze_image_encoder=False, freeze_text_encoder=False, freeze_sam=False, cpu=True)
    model, tokenizer, proc = build_model(cfg)
    oracle = OraclePrompt(model.sam.config.mask_decoder_config.hidden_size) if a.oracle else None
    if oracle is not None:
        model.text_hidden_fcs = oracle
    elif a.batch_norm_seg:
        hidden = model.language_model.config.hidden_size
        model.text_hidden_fcs = torch.nn.Sequential(torch.nn.BatchNorm1d(hidden), *model.text_hidden_fcs)
    train = ReasonSegDataset(a.data, "train", proc.sam, proc.vision, train=True, queries_per_image=3)
    own = ReasonSegDataset(a.data, "val", proc.sam, proc.vision, train=False)
    wrong = WrongQueryDataset(own, wrong_query_partners(own.annotations))
    fcs, dec = list(model.text_hidden_fcs.parameters()), list(model.sam.mask_decoder.parameters())
    special = {id(p) for p in fcs + dec}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in special]
    groups = [{"params": rest, "lr": a.lr}, {"params": fcs, "lr": a.fcs_lr or a.lr},
              {"params": dec, "lr": a.lr if a.decoder_lr is None else a.decoder_lr}]
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=0.0)
    base = [g["lr"] for g in optimizer.param_groups]
    weights = LossWeights(ce=a.ce, bce=a.bce, dice=a.dice)
    order: list[int] = []
    rng, epoch = random.Random(0), 0
    for step in range(1, a.steps + 1):
        if len(order) < a.batch_size:
            train.set_epoch(epoch)
            epoch += 1
            order = list(range(len(train)))
            rng.shuffle(order)
        batch = collate_samples([train[order.pop()] for _ in range(a.batch_size)], tokenizer)
        if oracle is not None:
            oracle.set_batch(batch)
        scale = min(1.0, step / 20) * (1 - (step - 1) / a.steps)  # warm-up, then linear decay
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr * scale
        out = model(batch)
        loss = compute_losses(out.logits, out.labels, out.pred_masks, batch.masks, weights)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if a.diag_every and step % a.diag_every == 0 and oracle is None:
            diagnose(model, own, wrong, tokenizer, cfg, step)
        if step % a.eval_every == 0 or step == a.steps:
            line = f"step {step}: loss {loss.item():.3f}; val gIoU own query {val_giou(model, own, tokenizer, oracle):.3f}"
            if oracle is None:  # the oracle reads the image's own target: a wrong query means nothing to it
                line += f", wrong query {val_giou(model, wrong, tokenizer, oracle):.3f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
