"""Backbone and neuron settings (no torch): ``model.*`` of a study."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from suite.config.fields import added_field

# The registered backbones (suite.models.registry; a test keeps both lists equal). Extend both to add one.
BackboneName = Literal["spikformer", "sdt", "qkformer"]
MULTI_STAGE: tuple[str, ...] = ("qkformer",)  # backbones whose token grid and width change between stages


class NeuronConfig(BaseModel):
    """LIF settings; defaults follow the official Spikformer code (spikingjelly defaults + tau 2, detach_reset)."""

    model_config = ConfigDict(extra="forbid")

    tau: float = Field(2.0, gt=1.0)  # Spikformer cifar10/model.py: MultiStepLIFNode(tau=2.0)
    v_threshold: float = Field(1.0, gt=0)  # spikingjelly default
    v_reset: float | None = 0.0  # hard reset to 0 (spikingjelly default); None = soft reset
    detach_reset: bool = True  # Spikformer: detach_reset=True
    # triangle: spikingjelly PiecewiseQuadratic (gradient alpha - alpha^2 |x| for |x| <= 1/alpha); rectangle:
    # spikingjelly Rect (gradient alpha for |x| < 0.5/alpha). alpha is each function's own parameter.
    surrogate: Literal["sigmoid", "atan", "triangle", "rectangle"] = "sigmoid"  # spikingjelly default Sigmoid
    alpha: float = Field(4.0, gt=0)  # surrogate.Sigmoid(alpha=4.0) default
    # lif: LIFNode(tau); plif: ParametricLIFNode, tau learnt per layer from init_tau = tau (Fang et al., ICCV 2021);
    # if: IFNode (no leak, tau unused)
    type: Literal["lif", "plif", "if"] = added_field("lif")
    # The kernel spikingjelly runs the LIF layers on (suite.models.neurons): auto is the fastest available on the
    # device; cupy is spikingjelly 2.0's compiled CUDA kernels (successor of 1.x's CuPy backend); triton; torch.
    backend: Literal["auto", "torch", "cupy", "triton"] = added_field("auto")


class ModelConfig(BaseModel):
    """Backbone shape; defaults are Spikformer-4-384 for CIFAR (ZK-Zhou/spikformer cifar10.yml)."""

    model_config = ConfigDict(extra="forbid")

    backbone: BackboneName = added_field("spikformer")  # spikformer | sdt (Spike-driven Transformer v1); an axis
    # How the stem meets time (STAS, arXiv 2508.14138, reconstructed): per_step runs it at every timestep;
    # once runs it on the static image and feeds the same tokens to every step; integrate runs the first stage's
    # LIF over T, integrates its spikes over time (stem_integrate) and runs the rest of the stem once.
    stem: Literal["per_step", "once", "integrate"] = added_field("per_step")
    stem_integrate: Literal["mean", "sum"] = added_field("mean")
    depth: int = Field(4, ge=1, le=64)
    dim: int = Field(384, ge=8, le=4096)
    heads: int = Field(12, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    T: int = Field(4, ge=1, le=64)  # timesteps (direct encoding: the image is repeated T times)
    attn_scale: float = Field(0.125, gt=0)  # fixed 0.125 in the official code, independent of head dim
    attn_v_threshold: float = Field(0.5, gt=0)  # attn_lif threshold in the official code
    stem_pools: int | None = Field(None, ge=0, le=4)  # None: chosen from the input size (see stem_pool_count)
    # Where a stem stage max-pools: before its LIF (Spikformer's CIFAR code: conv-BN-pool-LIF) or after it
    # (Spikformer's ImageNet code and SDT: conv-BN-LIF-pool). None: the backbone's own (spikformer before, sdt after).
    stem_pool: Literal["before_lif", "after_lif"] | None = added_field(None)
    linear_bias: bool = False  # spikingjelly's spikformer_cifar10 (9.31M params) has none; the official code has
    neuron: NeuronConfig = NeuronConfig()
    # QKFormer only (suite/models/backbones/qkformer.py): blocks per stage (None: the official CIFAR rule 1, 1,
    # depth - 2; qkformer_10_384 is [1, 2, 7]); their sum must be ``depth``. Stage widths are dim/4, dim/2, dim.
    depths: tuple[int, int, int] | None = added_field(None)
    # Q-K attention of stages 1-2: token (a binary mask over tokens, Q summed over channels) | channel
    qk_attention: Literal["token", "channel"] = added_field("token")
    # imagenet: spikingjelly's QKFormer (stem /4, then /2, /2; its conv biases); cifar: the official CIFAR model
    # (zhouchenlin2096/QKFormer cifar10/model.py: no downsampling before stage 1, then /2, /2; its biases)
    patch_embed: Literal["imagenet", "cifar"] = added_field("imagenet")

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.dim % 8:
            raise ValueError(f"dim ({self.dim}) must be divisible by 8 (the stem widths are dim/8, dim/4, dim/2)")
        if self.backbone != "qkformer":
            if self.depths is not None:
                raise ValueError(f"model.depths: only the multi-stage backbones {MULTI_STAGE} have stages")
            return self
        depths = self.stage_depths
        if sum(depths) != self.depth or min(depths) < 1:
            raise ValueError(f"model.depths {list(depths)}: every stage needs a block and they must add up to "
                             f"model.depth ({self.depth})")
        for width in self.stage_dims:
            if width % self.heads:
                raise ValueError(f"model.heads ({self.heads}) must divide every stage width {self.stage_dims}")
        return self

    @property
    def stage_depths(self) -> tuple[int, ...]:
        """Blocks per stage (one stage for single-stage backbones)."""
        if self.backbone != "qkformer":
            return (self.depth,)
        return self.depths if self.depths is not None else (1, 1, self.depth - 2)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Token width per stage."""
        if self.backbone != "qkformer":
            return (self.dim,)
        return (self.dim // 4, self.dim // 2, self.dim)
