"""Training, evaluation and energy settings (no torch): ``train.*`` and ``eval.*`` of a study."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from suite.config.energy import MemoryConfig
from suite.config.fields import added_field, execution_field
from suite.names import E_AC_PJ, E_MAC_PJ, NAME_PATTERN

PicoJoules = Annotated[float, Field(gt=0)]
VariantName = Annotated[str, Field(pattern=NAME_PATTERN)]
# the key maps of suite/models/convert.py (docs/checkpoints.md); suite = our own checkpoint.pt
CheckpointFormat = Literal["spikingjelly", "spikformer_official", "sdt_official", "qkformer_official", "suite"]


class CheckpointInit(BaseModel):
    """``train.init_from: {checkpoint: PATH, format: F}``: start from a file's weights (a pretrained dense model).
    The file's sha256 enters the run id (``RunConfig.init_sha256``, set when the study is expanded)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: str = Field(min_length=1)  # a path, relative to the working directory
    format: CheckpointFormat


# a string names a variant, a mapping a checkpoint file (one branch each, so an error names the right keys)
InitFrom = Annotated[Annotated[VariantName, Tag("variant")] | Annotated[CheckpointInit, Tag("file")],
                     Discriminator(lambda v: "variant" if isinstance(v, str) else "file")]


class TrainConfig(BaseModel):
    """Defaults follow the official Spikformer CIFAR-10 recipe (ZK-Zhou/spikformer cifar10.yml)
    where it transfers; studies for CPU shrink epochs and batch."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(300, ge=1, le=100_000)  # cifar10.yml: 300
    batch_size: int = Field(128, ge=1, le=65_536)  # cifar10.yml: 128
    eval_batch_size: int = Field(256, ge=1, le=65_536)
    lr: float = Field(5e-4, gt=0, le=10)  # cifar10.yml: 5e-4
    min_lr: float = Field(1e-5, ge=0)  # cifar10.yml: 1e-5
    weight_decay: float = Field(6e-2, ge=0)  # cifar10.yml: 6e-2
    warmup_epochs: float = Field(20, ge=0)  # cifar10.yml: 20
    label_smoothing: float = Field(0.1, ge=0, lt=1)  # cifar10.yml: 0.1
    loss: Literal["ce", "tet"] = "ce"  # tet: per-timestep CE + MSE (Deng et al. 2022), used by SEENN/DT-SNN
    tet_lambda: float = Field(1e-3, ge=0, le=1)  # SEENN train_snn.py default
    mixup: float = Field(0.0, ge=0)  # Beta(alpha, alpha) mixup alpha; cifar10.yml uses 0.5; 0 = off
    mixup_off_epoch: int | None = Field(None, ge=0)  # cifar10.yml: 200 (turns cutmix off too, as timm)
    # timm's Mixup (suite/train/mix.py): cutmix Beta(alpha, alpha) alpha, 0 = off; with both on, each batch takes
    # cutmix with probability mixup_switch_prob (timm default 0.5), else mixup; a batch is mixed at all with
    # probability mixup_prob (timm default 1.0). A cutmix box's label weight is its area (timm correct_lam).
    cutmix: float = added_field(0.0, ge=0)
    mixup_switch_prob: float = added_field(0.5, ge=0, le=1)
    mixup_prob: float = added_field(1.0, ge=0, le=1)
    # the partner each image is mixed with: a random permutation of the batch (the suite's rule) or the batch
    # reversed, image i with image B-1-i (timm's x.flip(0))
    mixup_pairing: Literal["permutation", "reversed"] = added_field("permutation")
    # An exponential moving average of the weights (timm ModelEmaV2: ema = decay * ema + (1 - decay) * w after every
    # optimizer step, buffers too); when set, validation, evaluation and the run's weights are the EMA model's.
    ema: float | None = added_field(None, gt=0, lt=1)
    # LR schedule pieces of timm's cosine scheduler: the warm-up starts at warmup_lr (unset: at min_lr, as before);
    # the last cooldown_epochs of train.epochs stay at min_lr (timm's --epochs 300 --cooldown-epochs 10 is
    # epochs: 310, cooldown_epochs: 10).
    warmup_lr: float | None = added_field(None, ge=0)
    cooldown_epochs: int = added_field(0, ge=0)
    # per_step: the suite's schedule, set at every optimizer step, the cosine starting after the warm-up;
    # timm_epoch: timm's CosineLRScheduler as the official train.py scripts run it (t_in_epochs, no warmup_prefix):
    # one value per epoch, warm-up from warmup_lr (unset: min_lr) over warmup_epochs, the cosine over
    # epochs - cooldown_epochs counted from epoch 0 (the warm-up overrides its start), then min_lr.
    lr_schedule: Literal["per_step", "timm_epoch"] = added_field("per_step")
    # Repeated augmentation (timm RASampler, DeiT): every image of an epoch's permutation is taken this many times,
    # spread over the run's ranks (each copy augmented apart); the epoch keeps about len(train) images. 1 = off.
    repeated_aug: int = added_field(1, ge=1, le=16)
    # auto: bf16 autocast on CUDA, fp32 on CPU; bf16 on any device that has it; fp16 (CUDA) with a GradScaler
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    grad_clip: float | None = Field(None, gt=0)
    num_workers: int = Field(0, ge=0, le=64)  # data loader workers
    # torch.compile the training forward: auto decides per run from its estimated training time (suite.train.compiled,
    # docs/throughput.md); how a run executes, not what it computes: out of the run id (a schema-1 bool, false there)
    compile: Literal["auto", "on", "off"] = execution_field("auto", id_value=False)
    inject_fault: Literal["none", "nan", "error"] = "none"  # for robustness tests: a NaN loss / an exception at epoch 1
    # Fine-tuning: start from the final weights of this variant's run with the same seed (and matrix point), then
    # train for this section's own epochs and schedule. The parent's run id enters the run id (RunConfig.init_run).
    # Or {checkpoint: PATH, format: F}: a file's weights, converted by format F's key map (docs/checkpoints.md).
    init_from: InitFrom | None = added_field(None)

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare ``off`` as false: ``amp: off`` means off."""
        return "off" if value is False else value

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_bool(cls, value: Any) -> Any:
        """The schema-1 bool (records store ``compile: false``) and YAML 1.1's bare ``on``/``off``."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _lr(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.warmup_lr is not None and self.warmup_lr > self.lr:
            raise ValueError(f"warmup_lr ({self.warmup_lr}) must not exceed lr ({self.lr})")
        if self.cooldown_epochs + self.warmup_epochs >= self.epochs and self.cooldown_epochs:
            raise ValueError(f"cooldown_epochs ({self.cooldown_epochs}) + warmup_epochs ({self.warmup_epochs}) must be "
                             f"fewer than epochs ({self.epochs}): the cooldown is the last epochs of train.epochs")
        return self


class EnergyConfig(BaseModel):
    """Energy per operation in picojoules: ``E = E_MAC * MACs + E_AC * SOPs``; ``memory``: the widths and access
    costs of the ``lemaire2022`` convention."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    e_mac_pj: PicoJoules = E_MAC_PJ
    e_ac_pj: PicoJoules = E_AC_PJ
    memory: MemoryConfig = MemoryConfig()

    def describe(self) -> str:
        """How figures and tables name the constants."""
        return f"E_MAC {self.e_mac_pj} pJ, E_AC {self.e_ac_pj} pJ"


class Override(BaseModel):
    """One evaluation of a trained checkpoint with some settings changed (no retraining)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=+-]{0,80}$")
    set: dict[str, Any]  # dotted path -> value, e.g. tokens.halting.beta_offset: -2


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: Literal["test", "val"] = "test"
    apply: dict[str, Any] = {}  # evaluation-time settings for the main evaluation only (e.g. training-free
    # ToMe: a dense model trained without merging, evaluated with tokens.merge: {r: 2})
    overrides: list[Override] = []
    heatmap_images: int = Field(8, ge=0, le=256)  # halting maps saved with the run for the report
    e_mac_pj: PicoJoules = E_MAC_PJ  # suite.names: 45 nm 32-bit float MAC (Horowitz, ISSCC 2014)
    e_ac_pj: PicoJoules = E_AC_PJ  # suite.names: 45 nm 32-bit float add (Horowitz, ISSCC 2014)
    max_batches: int | None = Field(None, ge=1)  # evaluate on a prefix of the split (quick checks)
    # token_pct is % of the dense model of the same backbone at this T. Unset: the run's own T in metrics.json,
    # and in a study's tables the largest T of its dense variants (suite.records.reference_T).
    reference_T: int | None = added_field(None, ge=1, le=100_000)
    # widths and SRAM costs of the lemaire2022 energy convention (every convention is computed by every evaluation)
    energy: MemoryConfig = added_field(MemoryConfig())

    @property
    def costs(self) -> EnergyConfig:
        """Every energy constant of this evaluation: per operation and the memory model's (``eval.energy``)."""
        return EnergyConfig(e_mac_pj=self.e_mac_pj, e_ac_pj=self.e_ac_pj, memory=self.energy)
