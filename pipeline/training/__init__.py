"""Training: what a run needs around MONAI's SupervisedTrainer.

Checkpoints and exact resume, run folders and names, progress lines, device and GPU options,
distributed (torchrun/DDP) training and the allocator setting.

May import: ``pipeline.data``, ``pipeline.tracking``, ``pipeline.atomic``, ``transforms``, ``networks``.
"""
