"""``train.eval_batch_size: auto`` (docs/throughput.md): the evaluation batch a run executes with.

On a CPU, evaluation is bound by memory traffic, not arithmetic: at 256 images a batch's activations and its
``[N, N]`` attention maps (which op counting needs) leave the caches, and every counting reduction streams them from
memory again. Measured side by side (one thread, 2-core host): counted evaluation at batch 32 ran 1.7x faster than
at 256 at the Fashion-MNIST configuration (16: the same) and at 16, 3.0x at the CIFAR-shaped one. So, on a CPU, auto takes the
largest power of two whose estimated activation footprint fits ``CPU_BATCH_BYTES`` (between ``MIN_BATCH`` and
``EVAL_BATCH_ID``); on an accelerator, ``EVAL_BATCH_ID``. Every image is evaluated with the same per-image
arithmetic at any batch size, so the choice stays out of the run id (``execution_field``); a random token drop draws
its tokens batch by batch, so its sample of dropped tokens, not its distribution, depends on the batch.
"""

from __future__ import annotations

from suite.config.train import EVAL_BATCH_ID

CPU_BATCH_BYTES = 8 * 2**20  # Fashion-MNIST's configuration (307 KB per image) gets 16, CIFAR's (524 KB) 16
MIN_BATCH = 8
FLOAT_BYTES = 4


def per_image_bytes(T: int, tokens: int, width: int, heads: int) -> int:
    """The largest activation of one image in a block, over all timesteps: the MLP's hidden layer (``tokens x width``)
    or the attention maps counting builds (``heads x tokens x tokens``), in fp32."""
    return T * tokens * max(width, heads * tokens) * FLOAT_BYTES


def auto_eval_batch(T: int, tokens: int, width: int, heads: int, device_type: str) -> int:
    """``eval_batch_size: auto`` for a model of this shape on ``device_type`` (module docstring)."""
    if device_type != "cpu":
        return EVAL_BATCH_ID
    fits = max(1, CPU_BATCH_BYTES // per_image_bytes(T, tokens, width, heads))
    return max(MIN_BATCH, min(EVAL_BATCH_ID, 1 << (fits.bit_length() - 1)))


def eval_batch(setting: int | str, model, device_type: str) -> int:
    """The evaluation batch ``train.eval_batch_size`` resolves to for ``model`` (a ``Backbone``) on ``device_type``."""
    if setting != "auto":
        return int(setting)
    width = max(int(s.dim * model.cfg.mlp_ratio) for s in model.stages)
    return auto_eval_batch(model.T, max(model.block_tokens()), width, model.cfg.heads, device_type)


def prefix_images(max_batches: int | None, setting: int | str) -> int | None:
    """How many images ``eval.max_batches`` evaluates: that many batches of the configured size (``EVAL_BATCH_ID``
    under auto), whatever batch the evaluation then runs at."""
    if max_batches is None:
        return None
    return max_batches * (EVAL_BATCH_ID if setting == "auto" else int(setting))
