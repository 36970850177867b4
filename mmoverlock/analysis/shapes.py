"""Shapes of ContMix's aggregation in the official variants, derived from the backbone's arch table."""
from typing import Dict, Iterable, Tuple

from mmoverlock.models.backbones.overlock import arch_settings

#: Focus-Net stages (3 and 4) -> index into the per-stage and per-sub-stage lists of the arch table
FOCUS_STAGES = (3, 4)


def focus_aggregation_shapes(variants: Iterable[str] = ('t', 's')) -> Dict[str, Dict[int, Tuple[int, int, int, int]]]:
    """``{'OverLoCK-T': {stage: (dim, groups, large kernel, stride)}}`` of the Focus-Net stages: the map is
    ``dim`` wide, ContMix runs ``groups = 2 * sub_num_heads`` groups (as the backbone builds it), and the
    large-kernel half aggregates (B, groups, dim / (2 * groups), H / stride, W / stride) values."""
    shapes = {}
    for variant in variants:
        arch = arch_settings[variant]
        shapes[f'OverLoCK-{variant.upper()}'] = {
            stage: (arch['embed_dim'][stage - 1], 2 * arch['sub_num_heads'][stage - 3],
                    arch['kernel_size'][stage - 1], 2 ** (stage + 1))
            for stage in FOCUS_STAGES}
    return shapes
