"""Crop, normalise, resample and store cases as the plans say, and the way back to the raw geometry; the
plan-and-preprocess stage (plan_and_preprocess.py)."""
