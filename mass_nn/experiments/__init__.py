"""Protocols that run several trainings and evaluations and tabulate them (the few-shot grid of mass_fewshot)."""
