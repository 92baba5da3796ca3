"""Classification heads on a pretrained encoder (pooled linear head, attention pooling) and the ResUNet encoder
classifier."""
