"""Pretraining data: two overlapping views of one case with shared task masks, augmented and batched."""
