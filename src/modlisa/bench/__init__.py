"""Performance tools: ``modlisa bench`` (timed steps, components, FLOPs, MFU), the memory planner, data-pipeline
throughput."""
