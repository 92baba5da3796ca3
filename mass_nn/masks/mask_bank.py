"""The mask bank: all masks of one case in one file, each readable without decoding the others.

File layout (`<case>.masks`): 8-byte magic `MASSMB01`, 8-byte little-endian header length, a UTF-8 JSON header
(case id, grid shape, generator, parameter hash, one entry per mask: byte offset and length, bounding box, voxel
count, score, seed axis/slice, extra), then one blob per mask: the boolean crop of its bounding box, bit-packed
(np.packbits, C order) and ZSTD-compressed. Reading mask i = one slice of the memory-mapped file, one
decompression of a few kB, one unpackbits.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import blosc2
import numpy as np

from mass_nn.boxes import Box
from mass_nn.errors import MassError
from mass_nn.io.atomic import atomic_path
from mass_nn.masks.proposal import MaskProposal

MAGIC = b"MASSMB01"
_CPARAMS = blosc2.CParams(codec=blosc2.Codec.ZSTD, clevel=5, typesize=1, nthreads=1)


@dataclass
class MaskEntry:
    """Metadata of one mask in a bank."""

    offset: int
    nbytes: int
    box: Box
    voxels: int
    generator: str
    score: float
    axis: int | None
    seed_slice: int | None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"offset": self.offset, "nbytes": self.nbytes, "box": [list(b) for b in self.box],
                "voxels": self.voxels, "generator": self.generator, "score": self.score, "axis": self.axis,
                "seed_slice": self.seed_slice, "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> "MaskEntry":
        return cls(offset=d["offset"], nbytes=d["nbytes"], box=tuple(tuple(b) for b in d["box"]),
                   voxels=d["voxels"], generator=d["generator"], score=d["score"], axis=d["axis"],
                   seed_slice=d["seed_slice"], extra=d.get("extra", {}))


def write_mask_bank(path: Path, case_id: str, shape, proposals: list[MaskProposal], generator: str,
                    parameters_hash: str) -> None:
    """Write `proposals` (boxes inside `shape`) as one bank file, atomically."""
    blobs, entries, offset = [], [], 0
    for proposal in proposals:
        if any(a < 0 or b > s or a >= b for (a, b), s in zip(proposal.box, shape)):
            raise ValueError(f"mask box {proposal.box} lies outside the case grid {tuple(shape)}")
        blob = blosc2.compress2(np.packbits(np.ascontiguousarray(proposal.crop, dtype=bool)).tobytes(),
                                cparams=_CPARAMS)
        entries.append(MaskEntry(offset=offset, nbytes=len(blob), box=tuple(tuple(map(int, b)) for b in proposal.box),
                                 voxels=proposal.voxels, generator=proposal.generator, score=float(proposal.score),
                                 axis=proposal.axis, seed_slice=proposal.seed_slice, extra=proposal.extra))
        blobs.append(blob)
        offset += len(blob)
    header = json.dumps({"case_id": case_id, "shape": [int(s) for s in shape], "generator": generator,
                         "parameters_hash": parameters_hash, "masks": [e.to_dict() for e in entries]}).encode()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(MAGIC + struct.pack("<Q", len(header)) + header)
            for blob in blobs:
                handle.write(blob)


class MaskBank:
    """Read access to one bank file: count, metadata, one mask (crop or full), masks near a region."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        header, length = self._read_header()
        self._data_start = 16 + length
        try:
            self.case_id: str = header["case_id"]
            self.shape: tuple[int, int, int] = tuple(header["shape"])
            self.generator: str = header["generator"]
            self.parameters_hash: str = header["parameters_hash"]
            self.entries = [MaskEntry.from_dict(d) for d in header["masks"]]
        except (KeyError, TypeError) as err:
            raise self._damaged(f"header lacks {err}") from err
        self._boxes = np.array([[b for pair in e.box for b in pair] for e in self.entries], dtype=np.int64
                               ).reshape(-1, 6)
        self.voxel_counts = np.array([e.voxels for e in self.entries], dtype=np.int64)
        self._map = None
        expected = self._data_start + sum(e.nbytes for e in self.entries)
        actual = self.path.stat().st_size
        if actual != expected:
            raise self._damaged(f"{actual} bytes where its header accounts for {expected}")

    def _damaged(self, what: str) -> MassError:
        return MassError(f"{self.path}: damaged mask bank ({what}); delete it and re-run mass_generate_masks, "
                         f"which redoes only the cases whose banks do not verify")

    def _read_header(self) -> tuple[dict, int]:
        try:
            with open(self.path, "rb") as handle:
                if handle.read(8) != MAGIC:
                    raise MassError(f"{self.path}: not a mass_nn mask bank; delete it and re-run mass_generate_masks")
                prefix = handle.read(8)
                if len(prefix) < 8:
                    raise self._damaged("cut inside its header")
                (length,) = struct.unpack("<Q", prefix)
                raw = handle.read(length)
        except FileNotFoundError as err:
            raise MassError(f"{self.path}: mask bank not found; run mass_generate_masks first") from err
        if len(raw) < length:
            raise self._damaged("cut inside its header")
        try:
            return json.loads(raw), length
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise self._damaged(f"unreadable header: {err}") from err

    def __len__(self) -> int:
        return len(self.entries)

    def _mapped(self) -> mmap.mmap:
        if self._map is None:
            with open(self.path, "rb") as handle:
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def read_crop(self, index: int) -> tuple[Box, np.ndarray]:
        """(box, boolean crop) of mask `index`."""
        entry = self.entries[index]
        start = self._data_start + entry.offset
        packed = np.frombuffer(blosc2.decompress2(self._mapped()[start:start + entry.nbytes]), dtype=np.uint8)
        crop_shape = tuple(b - a for a, b in entry.box)
        crop = np.unpackbits(packed, count=int(np.prod(crop_shape))).astype(bool).reshape(crop_shape)
        return entry.box, crop

    def read(self, index: int) -> np.ndarray:
        """Mask `index` as a full-size boolean volume."""
        box, crop = self.read_crop(index)
        out = np.zeros(self.shape, dtype=bool)
        out[tuple(slice(a, b) for a, b in box)] = crop
        return out

    def proposal(self, index: int) -> MaskProposal:
        entry = self.entries[index]
        box, crop = self.read_crop(index)
        return MaskProposal(box=box, crop=crop, generator=entry.generator, score=entry.score, axis=entry.axis,
                            seed_slice=entry.seed_slice, extra=entry.extra)

    def proposals(self) -> Iterator[MaskProposal]:
        return (self.proposal(i) for i in range(len(self)))

    def indices_intersecting(self, box: Box) -> np.ndarray:
        """Indices of the masks whose bounding box intersects `box` (e.g. a training crop)."""
        if not self.entries:
            return np.zeros(0, dtype=np.int64)
        lo = np.array([b[0] for b in box])
        hi = np.array([b[1] for b in box])
        starts, stops = self._boxes[:, 0::2], self._boxes[:, 1::2]
        return np.flatnonzero(np.all((starts < hi) & (stops > lo), axis=1))

    def indices_at_least(self, min_voxels: int) -> np.ndarray:
        """Indices of the masks with at least `min_voxels` voxels; the largest mask alone when none has."""
        eligible = np.flatnonzero(self.voxel_counts >= min_voxels)
        if eligible.size == 0 and len(self):
            return np.array([int(np.argmax(self.voxel_counts))], dtype=np.int64)
        return eligible

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
