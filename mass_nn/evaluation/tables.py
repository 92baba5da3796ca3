"""Small helpers for result reports: markdown tables, the paper's "mean (std)" cells, JSON-safe values."""
from __future__ import annotations

import math

import numpy as np

MISSING = "n/a"


def format_cell(value, digits: int = 4) -> str:
    """Text of one table cell: floats with `digits` decimals, NaN/None as "n/a", anything else via str()."""
    if value is None:
        return MISSING
    if isinstance(value, (float, np.floating)):
        return MISSING if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured markdown table (no trailing newline) with columns padded to equal width.

    Cells go through format_cell; a "|" inside a cell is escaped. Rows shorter than the header are padded with
    empty cells; longer rows raise ValueError.
    """
    if any(len(row) > len(header) for row in rows):
        raise ValueError(f"a row has more cells than the header {header}")
    text_rows = [[_escape(format_cell(c)) for c in row] + [""] * (len(header) - len(row)) for row in rows]
    head = [_escape(str(h)) for h in header]
    widths = [max(3, len(h), *(len(r[i]) for r in text_rows)) for i, h in enumerate(head)]
    lines = [_line(head, widths), "| " + " | ".join("-" * w for w in widths) + " |"]
    lines += [_line(row, widths) for row in text_rows]
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _line(cells: list[str], widths: list[int]) -> str:
    return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"


def mean_std(values, scale: float = 100.0, digits: int = 1, ddof: int = 0) -> str:
    """"mean (std)" of the finite `values` times `scale`, e.g. "83.2 (1.2)" for Dice values 0.832 ± 0.012.

    NaN and None are ignored; the std is numpy's (ddof=0, population) unless `ddof` says otherwise and is 0 for a
    single value; "n/a" when no value is finite.
    """
    array = np.asarray([np.nan if v is None else v for v in np.ravel(values)], dtype=np.float64) * scale
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return MISSING
    std = float(np.std(finite, ddof=ddof)) if finite.size > ddof else 0.0
    return f"{float(np.mean(finite)):.{digits}f} ({std:.{digits}f})"


def json_safe(value):
    """`value` with every non-finite float replaced by None, so the JSON file is standard (NaN is not)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
