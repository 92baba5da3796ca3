"""Downstream training from a pretrained encoder (mass_train FINETUNE): segmentation finetuning and the
frozen-encoder classification probe."""
