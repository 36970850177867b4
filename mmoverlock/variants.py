"""The official OverLoCK variants (XT, T, S, B): one table of the release's facts that the backbone's arch table,
the timm models, the checkpoint converters, the configs (``configs/_base_/variants/``, checked against it by
``tests/test_variants.py``) and the docs read.

Imports nothing of the package (and no torch): any module can read it without an import cycle.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

#: where the release's ImageNet-1K weights are (``RELEASE_URL.format(file_name)``)
RELEASE_URL = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/{}'
#: the keys of an arch dict (:func:`mmoverlock.models.backbones.overlock.resolve_arch`)
ARCH_KEYS = ('depth', 'sub_depth', 'embed_dim', 'kernel_size', 'mlp_ratio', 'sub_num_heads', 'sub_mlp_ratio')


@dataclass(frozen=True)
class Variant:
    """One official variant.

    Attributes:
        name: the short arch name ('xt' | 't' | 's' | 'b').
        alias: the long arch name ('x-tiny' | 'tiny' | 'small' | 'base').
        depth: Base-Net / Overview-Net blocks per stage (4 values).
        sub_depth: Focus-Net blocks of stages 3 and 4.
        embed_dim: channels of stages 1-4.
        kernel_size: large (DilatedReparamBlock / ContMix) kernel per stage.
        mlp_ratio: MLP expansion of the Base-Net / Overview-Net blocks.
        sub_num_heads: ContMix heads of the Focus-Net stages 3 and 4.
        sub_mlp_ratio: MLP expansion of the Focus-Net blocks.
        drop_path: stochastic depth per task ('cls', 'det', 'seg') of the release's recipes (XT: ImageNet only).
        crop_pct: ImageNet test crop (the release's model default_cfg).
        params: parameters of the ImageNet model as trained (train form, with the auxiliary head), counted.
        params_deploy: parameters of the ImageNet model for inference (deploy form, no auxiliary head), counted.
        top1: the release's ImageNet-1K top-1 at 224x224.
    """
    name: str
    alias: str
    depth: Tuple[int, ...]
    sub_depth: Tuple[int, ...]
    embed_dim: Tuple[int, ...]
    drop_path: Dict[str, float]
    crop_pct: float
    params: int
    params_deploy: int
    top1: float
    kernel_size: Tuple[int, ...] = (17, 15, 13, 7)
    mlp_ratio: int = 4
    sub_num_heads: Tuple[int, ...] = field(default=(4, 8))
    sub_mlp_ratio: int = 3

    @property
    def timm_name(self) -> str:
        """The timm model name (``overlock_xt`` ...)."""
        return f'overlock_{self.name}'

    def file_name(self, reparam: bool = False) -> str:
        """The release's ImageNet checkpoint file (``_reparam``: the deploy-form one)."""
        return f'overlock_{self.name}_in1k_224{"_reparam" if reparam else ""}.pth'

    def url(self, reparam: bool = False) -> str:
        """The release's download address of :meth:`file_name`."""
        return RELEASE_URL.format(self.file_name(reparam))

    @property
    def arch(self) -> dict:
        """The backbone's arch dict (lists, as ``OverLoCK(arch=...)`` takes it)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in ((k, getattr(self, k)) for k in ARCH_KEYS)}

    @property
    def channels(self) -> List[int]:
        """out_channels of stages 1-4 in the dense layouts: e0, e1, e2 + e3 // 4, e3 + e3 // 4."""
        e = self.embed_dim
        return [e[0], e[1], e[2] + e[3] // 4, e[3] + e[3] // 4]

    @property
    def overview_channels(self) -> int:
        """Channels of the Overview-Net map (e3), read by the ImageNet auxiliary head."""
        return self.embed_dim[3]


#: short name -> variant, in the release's order
VARIANTS: Dict[str, Variant] = {v.name: v for v in (
    Variant('xt', 'x-tiny', depth=(2, 2, 3, 2), sub_depth=(6, 2), embed_dim=(56, 112, 256, 336),
            sub_num_heads=(4, 6), drop_path=dict(cls=0.1), crop_pct=0.925,
            params=17_307_272, params_deploy=16_453_712, top1=82.7),
    Variant('t', 'tiny', depth=(4, 4, 6, 2), sub_depth=(12, 2), embed_dim=(64, 128, 256, 512),
            sub_num_heads=(4, 8), drop_path=dict(cls=0.15, det=0.2, seg=0.2), crop_pct=0.95,
            params=34_990_472, params_deploy=33_467_040, top1=84.2),
    Variant('s', 'small', depth=(6, 6, 8, 3), sub_depth=(16, 3), embed_dim=(64, 128, 320, 512),
            sub_num_heads=(8, 16), drop_path=dict(cls=0.4, det=0.4, seg=0.3), crop_pct=0.95,
            params=58_309_772, params_deploy=56_156_452, top1=84.8),
    Variant('b', 'base', depth=(8, 8, 10, 4), sub_depth=(20, 4), embed_dim=(80, 160, 384, 576),
            sub_num_heads=(6, 9), drop_path=dict(cls=0.5, det=0.6, seg=0.5), crop_pct=0.975,
            params=98_012_968, params_deploy=94_942_528, top1=85.1),
)}


def params_m(count: int) -> str:
    """A parameter count as the docs quote it: millions with two decimals ('17.31M')."""
    return f'{count / 1e6:.2f}M'


__all__ = ['Variant', 'VARIANTS', 'RELEASE_URL', 'ARCH_KEYS', 'params_m']
