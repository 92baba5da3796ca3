"""The in-context segmentation network of MASS/Iris: configuration, encoder (ResUNet or nnU-Net's ResEnc),
task encoder, decoder, mask head, task embeddings, and the fixed-class network finetuning trains."""
