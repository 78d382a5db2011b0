"""Token and time policies: they see blocks, tokens and LIF-layer metadata, never a backbone by name."""
