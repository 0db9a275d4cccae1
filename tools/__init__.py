"""Developer scripts (not part of the pack; ComfyUI never imports this folder)."""
