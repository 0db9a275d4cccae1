"""Frames -> faces -> frames: detection, alignment, paste-back, the FaceBatch."""
