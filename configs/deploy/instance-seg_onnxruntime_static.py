# Instance segmentation (boxes, labels, masks) of an OverLoCK Mask R-CNN / Cascade Mask R-CNN config, static
# input: the size the export image takes through the model config's test pipeline.
# masks: (B, K, 28, 28) probabilities of each detection's class; mmdeploy's backend model pastes them into the
# image (export_postprocess_mask=False, as mmdeploy's own ONNX Runtime configs).
_base_ = ['./_base_/mmdet_static.py']
onnx_config = dict(output_names=['dets', 'labels', 'masks'])
codebase_config = dict(post_processing=dict(export_postprocess_mask=False))
