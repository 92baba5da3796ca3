"""Exports of pretrained weights into other tools' formats (nnU-Net v2: nnunet_export.py)."""
