"""Trainers by name: MASS and the baseline pretrainers, segmentation finetuning and classification; their data
loaders, augmentation, losses, optimisers and run folders."""
