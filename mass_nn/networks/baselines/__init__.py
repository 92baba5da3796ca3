"""The baseline pretrainers' networks: reconstruction UNet (MAE, Models Genesis), SparK-3D, contrastive encoder
(SimCLR), ViT / Hi-End-MAE / UNETR, and MiM's hybrid backbone with its segmenter and classifier."""
