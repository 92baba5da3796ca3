"""Inference: sliding-window prediction, in-context reference encoding, label maps, export to raw geometry."""
