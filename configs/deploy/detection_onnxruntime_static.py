# Detection only (boxes, labels) of an OverLoCK Mask R-CNN / Cascade config, static input: the size the export
# image takes through the model config's test pipeline.
_base_ = ['./_base_/mmdet_static.py']
