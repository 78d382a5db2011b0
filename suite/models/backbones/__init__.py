"""Backbones, one module each; each registers itself with ``suite.models.registry``."""
