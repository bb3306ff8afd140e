"""Training and evaluation loops, checkpoints, meters."""
