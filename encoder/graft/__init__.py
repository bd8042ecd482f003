"""GRAFT (Mall et al., ICLR 2024, arXiv 2312.06960): align a satellite image encoder to the
frozen CLIP image embeddings of ground photos taken inside each satellite patch."""
