"""The GPU check: ContMix's aggregation and OverLoCK training on one GPU, in one command and one table.

A thin command line over :mod:`mmoverlock.analysis.gpu_check`, whose modules are its rows. Rows (``--rows``,
default all):

* **a** -- aggregation ``na2d_av`` forward+backward at the OverLoCK-T and -S Focus-Net stage-3/4 shapes of a
  COCO batch (800x1333, batch 2; the large-kernel half of a block), fp32 and bf16: the fused Triton kernels,
  the op's CPU kernels run on the device (per-window matmuls, dense operator or tap loop by map size; the
  baseline of the speed-up notes), the official unfold fallback, a cuDNN depthwise conv of
  the same k (the speed to aim at) and the relative-position-bias + softmax over taps that produces the
  kernels (whether fusing it into the forward could pay). Time and peak memory growth.
* **b** -- a training step of the OverLoCK-T detection backbone at 800x1333 batch 2 (forward, sum of output
  means, backward, AdamW step) against ConvNeXt-T (mmpretrain's; torchvision's where mmpretrain is not
  installed), AMP off and on (fp16 autocast + GradScaler, as mmengine's AmpOptimWrapper).
* **c** -- one training iteration of the shipped Cascade Mask R-CNN OverLoCK-T model
  (configs/det/cascade_overlock_t_3x_coco.py, SyncBN as BN, random weights) on random 800x1333 images with
  random boxes and masks (needs mmdet and mmcv's compiled ops).
* **d** -- determinism: the aggregation op's output and gradients bitwise equal over two runs (a failure
  otherwise: its kernels use no atomics); the backbone's gradients with deterministic cuDNN, compared the same
  way, with the ops PyTorch lists as non-deterministic on the device named in the note (on CUDA the backward
  of the 7x7 region pooling, ``adaptive_avg_pool2d``, and of ``upsample_bilinear2d`` use atomics).
* **e** -- the backbone's depthwise convs (OverLoCK-T/S stages 1-3 at the image size: every train-form branch
  of the DilatedReparamBlocks, the deploy form's merged kernel, the 3x3 ResDWConvs), forward + backward, fp32
  and bf16: PyTorch (cuDNN), the Triton kernels, PyTorch with the FFT weight gradient, and the automatic choice
  of ``mmoverlock.ops.depthwise_conv2d`` (what it picked per pass in the note); then row b's OverLoCK-T
  training step with ``depthwise_choice='auto'`` and ``'torch'`` (AMP off and on).
* **f** -- the first-use check of the fused kernels (``mmoverlock.ops.selfcheck``): ``na2d_av``'s and
  ``depthwise_conv2d``'s Triton kernels on their small fixed problems against the reference, per dtype: passed
  or failed, the error and the tolerance, and what the check costs once per process and dtype (its ms; Triton's
  compilation of the check's kernels falls in it, unless Triton's disk cache holds them from an earlier run).
  A plain run measures it first, before the other rows have compiled anything.

Time is the median of ``--repeats`` runs after ``--warmup`` (CUDA synchronised; Triton's compilation falls
in the warm-up); memory is ``torch.cuda.max_memory_allocated`` growth over the inputs (CUDA only). A row that
cannot run says why in its note (an aggregation map smaller than its kernel, a package that is missing).
Rows are printed as they finish; a row that raises becomes a 'failed' line and the run exits non-zero at the
end, so a crash loses no finished row.

Rows a, b and d need only torch, triton, numpy and mmengine (and mmoverlock): ConvNeXt-T comes from mmpretrain,
else torchvision, else its row is skipped with the reason; row c needs mmdet and mmcv. On a CPU
(``--device cpu``) the non-Triton rows run, for checking the script (at 224x224, batch 1, fp32, one run), and
row f under Triton's interpreter (``TRITON_INTERPRET=1``, Triton >= 3.0). The script runs on torch >= 2.1 (the
wheels-only install of torch 2.1 and Triton 2.1 included):

    python tools/analysis/gpu_check.py --json gpu_check.json      # the whole check on a GPU
    python tools/analysis/gpu_check.py --device cpu --rows a b d   # checks the script on a CPU
"""
from mmoverlock.analysis.gpu_check import (DTYPES, ROWS, feature_size, main,  # noqa: F401
                                           nondeterministic_ops, parse_args, training_step)
from mmoverlock.analysis.gpu_check.determinism import rows as determinism_rows  # noqa: F401

if __name__ == '__main__':
    main(description=__doc__)
