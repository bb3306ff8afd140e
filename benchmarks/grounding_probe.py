"""Probe whether a tiny ModifiedLISA learns to follow its query, and where the query signal dies.

Trains the tiny preset on a ReasonSeg-format folder with a plain loop (the package's model, dataset, collate
and losses) and prints every ``--eval_every`` steps: val gIoU with each image's own query and with another
image's query (the wrong-query baseline), and for one val image how much the projected [SEG] prompt differs
between the two queries, the largest mask-logit difference they cause, and the largest change caused by two
random prompts of the same norm (does the mask decoder listen to its prompt at all?).

``--prompt`` chooses what the SAM mask decoder reads in place of ``text_hidden_fcs([SEG] hidden)``:

- ``seg``:    LISA's prompt (the default);
- ``oracle``: a learned sum of embeddings of the target's colour, kind and size, read from the synthetic JSON
  ("target"): an upper bound for the decoder side;
- ``bow``:    a learned bag of words of the query (3 x the mean of per-token embeddings), no LM;
- ``point``:  SAM's own point prompt at a random pixel of the ground-truth mask.

``--distill F`` (with ``--prompt seg``): for the first F of the steps the decoder reads the bag-of-words prompt
while ``text_hidden_fcs([SEG] hidden)`` is regressed onto it (relative squared error added to the loss); after
that the decoder reads LISA's prompt only. Every eval uses LISA's prompt. Results: docs/TRAINING_GUIDE.md,
"Does it follow the query?".

    python benchmarks/grounding_probe.py --data data/easy --steps 800 --distill 0.5
"""

from __future__ import annotations

import argparse
import functools
import json
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from modlisa.config import TrainingConfig
from modlisa.data import prompts
from modlisa.data.collate import collate_samples
from modlisa.data.dataset import ReasonSegDataset
from modlisa.engine.grounding import WrongQueryDataset, wrong_query_partners
from modlisa.losses import LossWeights, compute_losses
from modlisa.metrics import IoUAccumulator
from modlisa.model.factory import build_model
from modlisa.model.seg import decode_masks
from modlisa.synthetic import COLOURS, KINDS, SIZES


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/demo")
    p.add_argument("--size", type=int, default=128, help="img_size = sam_image_size")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--queries_per_image", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lm_lr", type=float, default=None, help="LM and text_hidden_fcs (default --lr)")
    p.add_argument("--decoder_lr", type=float, default=None, help="SAM mask decoder (default --lr)")
    p.add_argument("--prompt", choices=("seg", "oracle", "bow", "point"), default="seg")
    p.add_argument("--distill", type=float, default=0.0, help="fraction of steps with the bag-of-words teacher")
    p.add_argument("--batch_norm_seg", action="store_true",
                   help="BatchNorm1d on the [SEG] hidden state before text_hidden_fcs (removes its common mode)")
    p.add_argument("--plain", action="store_true",
                   help="no LLaVA system sentence, one question and one answer template (less template noise)")
    p.add_argument("--bce", type=float, default=0.5)
    p.add_argument("--dice", type=float, default=2.0)
    p.add_argument("--eval_every", type=int, default=100)
    return p.parse_args()


@functools.cache
def synthetic_target(json_path: str) -> dict[str, str]:
    """The "target" entry (colour, kind, size) of a synthetic annotation file, read once per file."""
    return json.loads(Path(json_path).read_text(encoding="utf-8"))["target"]


class PromptSource(nn.Module):
    """What the mask decoder reads for each [SEG] of the current batch: (K, h) [SEG] states -> (K, D).

    ``set_batch`` records, per [SEG] in the model's order (image, then row), the query text, the target's
    attributes and the ground-truth mask; ``forward`` returns LISA's projection or one of the substitutes.
    """

    def __init__(self, lisa_projection: nn.Module, sam: nn.Module, tokenizer, dim: int) -> None:
        super().__init__()
        self.lisa_projection = lisa_projection
        self.sam = sam
        self.tokenizer = tokenizer
        self.words = nn.Embedding(len(tokenizer), dim)
        self.attributes = nn.ModuleDict({"colour": nn.Embedding(len(COLOURS), dim),
                                         "kind": nn.Embedding(len(KINDS), dim), "size": nn.Embedding(len(SIZES), dim)})
        self.mode, self.distill = "seg", False
        self.texts: list[str] = []
        self.targets: list[dict[str, str] | None] = []
        self.masks: list[Tensor] = []
        self.scale = torch.ones(0, 2)
        self.aux_loss = torch.zeros(())

    def set_batch(self, samples: Sequence, batch) -> None:
        """Per-[SEG] texts, targets, K masks (H_b, W_b) and the original -> SAM-input scale (K, 2) (x, y)."""
        self.texts, self.targets, scale = [], [], []
        for b, sample in enumerate(samples):
            count = int(batch.masks[b].shape[0])  # rows without [SEG] (text-only explanations) have no mask
            self.texts += list(sample.queries)[:count]
            self.targets += [synthetic_target(str(sample.json_path)) if self.mode == "oracle" else None] * count
            (h, w), (rh, rw) = batch.original_hw[b], batch.resize_hw[b]
            scale += [(rw / w, rh / h)] * count
        self.masks = [mask for b in range(len(samples)) for mask in batch.masks[b]]  # K x (H_b, W_b)
        self.scale = torch.tensor(scale, dtype=torch.float32).reshape(-1, 2)
        self.aux_loss = torch.zeros(())

    def bag_of_words(self) -> Tensor:
        """(K, D): 3 x the mean embedding of each query's tokens."""
        ids = [torch.tensor(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in self.texts]
        return torch.stack([self.words(i).mean(0) for i in ids]) * 3.0

    def oracle(self) -> Tensor:
        """(K, D): sum of the learned colour, kind and size embeddings of each query's target."""
        index = {"colour": list(COLOURS), "kind": list(KINDS), "size": list(SIZES)}
        return torch.stack([sum(self.attributes[k](torch.tensor(index[k].index(t[k]))) for k in index)
                            for t in self.targets]) * 3.0

    def points(self) -> Tensor:
        """(K, D): SAM's point-prompt embedding at a random pixel of each ground-truth mask."""
        coords = []
        for mask, (sx, sy) in zip(self.masks, self.scale.tolist()):
            ys, xs = torch.nonzero(mask > 0, as_tuple=True)
            i = int(torch.randint(len(ys), (1,))) if len(ys) else 0
            coords.append([(float(xs[i]) + 0.5) * sx, (float(ys[i]) + 0.5) * sy] if len(ys) else [0.0, 0.0])
        points = torch.tensor(coords).reshape(1, -1, 1, 2)
        labels = torch.ones(1, points.shape[1], 1, dtype=torch.long)
        sparse, _ = self.sam.prompt_encoder(input_points=points, input_labels=labels, input_boxes=None,
                                            input_masks=None)
        return sparse[0, :, 0]

    def forward(self, seg_hidden: Tensor) -> Tensor:
        lisa = self.lisa_projection(seg_hidden)
        if len(lisa) == 0 or (self.mode == "seg" and not self.distill):
            return lisa
        if self.mode == "seg":  # distillation: the decoder reads the teacher, LISA's projection regresses it
            teacher = self.bag_of_words()
            target = teacher.detach()
            self.aux_loss = self.aux_loss + (lisa - target).pow(2).sum() / target.pow(2).sum()
            return teacher
        return {"oracle": self.oracle, "bow": self.bag_of_words, "point": self.points}[self.mode]()


def evaluate(model, dataset, tokenizer, source: PromptSource) -> float:
    """gIoU over ``dataset`` with the prompt source's current mode (no distillation)."""
    model.eval()
    acc = IoUAccumulator()
    distill, source.distill = source.distill, False
    with torch.no_grad():
        for i in range(0, len(dataset), 8):
            samples = [dataset[j] for j in range(i, min(i + 8, len(dataset)))]
            batch = collate_samples(samples, tokenizer)
            source.set_batch(samples, batch)
            for masks, gts in zip(model(batch).pred_masks, batch.masks):
                for q in range(gts.shape[0]):
                    acc.update(masks[q] > 0, gts[q])
    source.distill = distill
    model.train()
    return acc.compute()["giou"]


def listening(model, own, wrong, tokenizer, source: PromptSource, size: int) -> str:
    """Own vs wrong prompt difference, the mask-logit difference it causes, and random-prompt sensitivity."""
    model.eval()
    with torch.no_grad():
        outs, projected = [], []
        for sample in (own[0], wrong[0]):
            batch = collate_samples([sample], tokenizer)
            source.set_batch([sample], batch)
            out = model(batch)
            outs.append(out)
            projected.append(source.lisa_projection(out.seg_embeddings))
        embedding = model.encode_sam(collate_samples([own[0]], tokenizer).sam_images)[0]
        norm = projected[0].norm(dim=-1).mean()
        rand = torch.randn(2, projected[0].shape[-1])
        rand = rand / rand.norm(dim=-1, keepdim=True) * norm
        rand_masks = decode_masks(model.sam, rand, embedding, own[0].resize_hw, own[0].original_hw, size)
    model.train()
    logits = outs[0].pred_masks[0]
    return (f"prompt own-wrong {float((projected[0] - projected[1]).norm()):.2f} (norm {float(norm):.2f}), "
            f"mask logits differ by {float((logits - outs[1].pred_masks[0]).abs().max()):.3f}, random prompts "
            f"change them by {float((rand_masks[0] - rand_masks[1]).abs().max()):.3f} (range "
            f"{float(logits.min()):.1f}..{float(logits.max()):.1f})")


def main() -> None:
    a = parse_args()
    torch.manual_seed(0)
    if a.plain:
        prompts.LLAVA_V1_SYSTEM = ""
        prompts.SHORT_QUESTIONS[:] = prompts.SHORT_QUESTIONS[:1]
        prompts.LONG_QUESTIONS[:] = prompts.LONG_QUESTIONS[:1]
        prompts.ANSWERS[:] = [prompts.EVAL_ANSWER]
    cfg = TrainingConfig(data_root=a.data, model="tiny", img_size=a.size, sam_image_size=a.size, use_lora=False,
                         freeze_image_encoder=False, freeze_text_encoder=False, freeze_sam=False, cpu=True)
    model, tokenizer, proc = build_model(cfg)
    projection = model.text_hidden_fcs
    if a.batch_norm_seg:
        projection = nn.Sequential(nn.BatchNorm1d(model.language_model.config.hidden_size), *projection)
    source = PromptSource(projection, model.sam, tokenizer, model.sam.config.mask_decoder_config.hidden_size)
    source.mode = a.prompt
    model.text_hidden_fcs = source
    train = ReasonSegDataset(a.data, "train", proc.sam, proc.vision, train=True,
                             queries_per_image=a.queries_per_image)
    own = ReasonSegDataset(a.data, "val", proc.sam, proc.vision, train=False)
    wrong = WrongQueryDataset(own, wrong_query_partners(own.annotations))
    text_side = {id(p) for p in [*model.language_model.parameters(), *projection.parameters()]}
    decoder = {id(p) for p in model.sam.mask_decoder.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) in text_side], "lr": a.lm_lr or a.lr},
              {"params": [p for p in params if id(p) in decoder], "lr": a.decoder_lr or a.lr},
              {"params": [p for p in params if id(p) not in text_side | decoder], "lr": a.lr}]
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=0.0)
    base = [g["lr"] for g in optimizer.param_groups]
    weights = LossWeights(ce=1.0, bce=a.bce, dice=a.dice)
    order: list[int] = []
    rng, epoch = random.Random(0), 0
    for step in range(1, a.steps + 1):
        if len(order) < a.batch_size:
            train.set_epoch(epoch)
            epoch += 1
            order = list(range(len(train)))
            rng.shuffle(order)
        samples = [train[order.pop()] for _ in range(a.batch_size)]
        batch = collate_samples(samples, tokenizer)
        source.distill = a.prompt == "seg" and step <= a.distill * a.steps
        source.set_batch(samples, batch)
        scale = min(1.0, step / 20) * (1 - (step - 1) / a.steps)  # warm-up, then linear decay
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr * scale
        out = model(batch)
        loss = compute_losses(out.logits, out.labels, out.pred_masks, batch.masks, weights)["loss"]
        loss = loss + source.aux_loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % a.eval_every == 0 or step == a.steps:
            line = f"step {step}: loss {loss.item():.3f}; val gIoU own query {evaluate(model, own, tokenizer, source):.3f}"
            if a.prompt == "seg":  # the substitutes read the image's own target or mask: a wrong query means nothing
                line += (f", wrong query {evaluate(model, wrong, tokenizer, source):.3f}; "
                         + listening(model, own, wrong, tokenizer, source, a.size))
            print(line, flush=True)


if __name__ == "__main__":
    main()
