"""Class-agnostic 3D mask proposals: generators, post-processing, the mask bank, previews and quality."""
