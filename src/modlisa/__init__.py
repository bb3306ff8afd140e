"""modlisa: train, evaluate and benchmark ModifiedLISA reasoning-segmentation models."""

__version__ = "0.1.0"
