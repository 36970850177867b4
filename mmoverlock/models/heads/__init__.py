from .overlock_cls_head import OverLoCKClsHead

__all__ = ['OverLoCKClsHead']
