"""Data layer: ReasonSeg files -> Sample dataclasses -> Batch."""
