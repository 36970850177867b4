"""First-conv weights for another number of image channels, adapted as timm's ``adapt_input_conv`` adapts them."""
import math

import torch


def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """A first-conv weight (O, I, k, k) trained on I image channels -> (O, in_chans, k, k), timm's rule:

    * ``in_chans == 1``: the sum over the input channels (over each group of 3 when I is a multiple of 3 above 3);
    * any other count from RGB (I == 3): the RGB kernels repeated channel after channel and cut at ``in_chans``,
      scaled by 3 / in_chans (the response to a grey image keeps its size).

    Computed in fp32, returned in the weight's dtype. Other conversions raise a one-line ``ValueError``.
    """
    if in_chans < 1:
        raise ValueError(f'adapt_input_conv: in_chans={in_chans} must be >= 1')
    out_chs, chans, kh, kw = weight.shape
    if chans == in_chans:
        return weight
    w = weight.float()
    if in_chans == 1:
        if chans > 3 and chans % 3 == 0:
            w = w.reshape(out_chs, chans // 3, 3, kh, kw).sum(dim=2)
        else:
            w = w.sum(dim=1, keepdim=True)
    elif chans == 3:
        w = w.repeat(1, math.ceil(in_chans / 3), 1, 1)[:, :in_chans] * (3 / in_chans)
    else:
        raise ValueError(f'adapt_input_conv: a first conv of {chans} input channels cannot be adapted to '
                         f'in_chans={in_chans}; only 3-channel (RGB) weights adapt to any channel count')
    return w.to(weight.dtype)
