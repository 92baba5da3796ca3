"""Modality of a channel, read from its name in dataset.json's `channel_names`."""
from __future__ import annotations

import re

CT, MR, PET, OTHER = "CT", "MR", "PET", "OTHER"

_PET_TOKENS = {"PET", "PT", "SUV", "FDG", "PETCT"}
_MR_TOKENS = {"MR", "MRI", "T1", "T1W", "T1C", "T1CE", "T1GD", "T2", "T2W", "FLAIR", "ADC", "DWI", "PD", "SWI",
              "T2STAR", "DIXON", "CINE", "LGE", "HBV", "MPRAGE", "T1POST", "T1PRE", "SSFP", "BSSFP", "TRUFI", "FIESTA"}


def modality_of_channel(channel_name: str) -> str:
    """CT, MR, PET, or OTHER (treated like MR: per-image z-score and quantile windows).

    The name is split into alphanumeric tokens, so "CT", "ct", "MR_T1", "T1c", "FLAIR" and "PET (SUV)" all work.
    """
    tokens = {t.upper() for t in re.split(r"[^A-Za-z0-9]+", channel_name) if t}
    if "CT" in tokens and not tokens & _PET_TOKENS:
        return CT
    if tokens & _PET_TOKENS:
        return PET
    if tokens & _MR_TOKENS or any(t.startswith(("T1", "T2")) for t in tokens):
        return MR
    return OTHER
