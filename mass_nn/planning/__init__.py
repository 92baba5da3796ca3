"""Fingerprint, planner, presets and plans: what every later stage reads to know spacing, patch, windows,
network and splits."""
