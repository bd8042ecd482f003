"""The model library: open_clip encoders that share CLIP's text space.

`encoder.identity` (which encoder, which embedding space) imports no torch; `encoder.model`
builds the model. Nothing here imports another satfind package.
"""
