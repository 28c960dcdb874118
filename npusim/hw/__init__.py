"""The hardware description: NPU configurations (TOML files, presets, overrides)."""
