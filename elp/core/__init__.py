"""Model core: backbones (with the per-family module table and presets), adapters, methods, the adapted model, heads."""
