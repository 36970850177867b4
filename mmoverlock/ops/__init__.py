from .depthwise import depthwise_conv2d, triton_depthwise_conv2d  # noqa: F401
from .na2d import (na2d_av, na2d_av_channels_first, na2d_av_reference, na2d_av_unfold,  # noqa: F401
                   triton_na2d_av)
from .tracing import is_exporting, is_tracing  # noqa: F401

__all__ = ['na2d_av', 'na2d_av_channels_first', 'na2d_av_reference', 'na2d_av_unfold', 'triton_na2d_av',
           'depthwise_conv2d', 'triton_depthwise_conv2d', 'is_exporting', 'is_tracing']
