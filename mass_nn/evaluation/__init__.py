"""Metrics, evaluation of prediction folders, the few-shot protocol and result tables."""
