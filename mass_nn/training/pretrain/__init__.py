"""Pretraining trainers (MASS and, later, the baselines it is compared with)."""
