"""Metrics, scoring of prediction folders and predictors, training-free in-context evaluation, result tables
and figures."""
