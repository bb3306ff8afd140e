"""ModifiedLISA model: backbones, [SEG] wiring, adapters, weights I/O."""
