"""Satellite encoder: open_clip models that share CLIP's text space (GRAFT-trained)."""

from encoder.model import EncoderIdentity, EncoderSpec, SatelliteEncoder

__all__ = ["EncoderIdentity", "EncoderSpec", "SatelliteEncoder"]
