"""Models: backbones behind one protocol (``backbone.py``), registered by name (``registry.py``), with token and time
policies (``policies/``) that work on any backbone, and compacted inference (``compact.py``).

Adding a backbone: one module in ``backbones/`` with a ``Backbone`` subclass decorated ``@register_backbone(name)``,
imported below, and its name added to ``suite.config.model.BackboneName``.
"""

from suite.models.backbone import Backbone, LIFLayer, ModelOutput, Stage
from suite.models.backbones.qkformer import QKFormer, qkformer_lif_layers
from suite.models.backbones.sdt import SDT, sdt_lif_layers
from suite.models.backbones.spikformer import Spikformer, spikformer_lif_layers
from suite.models.registry import BACKBONES, build_model, register_backbone

__all__ = ["BACKBONES", "SDT", "Backbone", "LIFLayer", "ModelOutput", "QKFormer", "Spikformer", "Stage", "build_model",
           "qkformer_lif_layers", "register_backbone", "sdt_lif_layers", "spikformer_lif_layers"]
