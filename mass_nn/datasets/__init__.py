"""Preprocessed datasets as the trainers and evaluations see them: one dataset's plans, splits and arrays
(preprocessed_sources.py) and labelled datasets with the seeded few-shot selection (labelled_data.py)."""
