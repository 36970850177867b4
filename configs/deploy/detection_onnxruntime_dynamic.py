# Detection only (boxes, labels) of an OverLoCK Mask R-CNN / Cascade config; batch, height and width dynamic.
_base_ = ['./_base_/mmdet_static.py']
onnx_config = dict(dynamic_axes=dict(
    input={0: 'batch', 2: 'height', 3: 'width'},
    dets={0: 'batch', 1: 'num_dets'},
    labels={0: 'batch', 1: 'num_dets'}))
