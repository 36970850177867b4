"""The ops: ``na2d_av`` (ContMix's neighbourhood aggregation) and ``depthwise_conv2d``, by concern.

* :mod:`~mmoverlock.ops.functional` -- the public functions (re-exported here: import from ``mmoverlock.ops``);
* :mod:`~mmoverlock.ops.na2d_op`, :mod:`~mmoverlock.ops.depthwise_op` -- the ``torch.library`` registration of
  each op: kernels per device, fake implementations, autograd;
* :mod:`~mmoverlock.ops.na2d_cpu`, :mod:`~mmoverlock.ops.depthwise_cpu` -- the CPU kernels;
* :mod:`~mmoverlock.ops.na2d_triton`, :mod:`~mmoverlock.ops.depthwise_triton` -- the Triton kernels (imported on
  first use), :mod:`~mmoverlock.ops.triton_common` -- what they share (helpers, the tuning policy);
* :mod:`~mmoverlock.ops.reference` -- the reference implementations (the baselines);
* :mod:`~mmoverlock.ops.selection` -- which path runs: the CPU rules and the measured choice on CUDA;
* :mod:`~mmoverlock.ops.checks` -- input checks; :mod:`~mmoverlock.ops.selfcheck` -- the fused kernels'
  first-use check; :mod:`~mmoverlock.ops.flops` -- mmengine's FLOP handles; :mod:`~mmoverlock.ops.tracing`.
"""
from .functional import *  # noqa: F401,F403
from .functional import __all__  # noqa: F401
