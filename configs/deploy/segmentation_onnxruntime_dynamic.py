# Semantic segmentation of an OverLoCK UperNet config (whole-image inference); batch, height and width dynamic.
# output: (B, 1, H, W) int64 class of every pixel (with_argmax=True, mmdeploy's default); with_argmax=False
# gives the (B, classes, H, W) logits.
_base_ = ['./_base_/onnxruntime.py']
codebase_config = dict(type='mmseg', task='Segmentation', with_argmax=True)
onnx_config = dict(dynamic_axes=dict(
    input={0: 'batch', 2: 'height', 3: 'width'},
    output={0: 'batch', 2: 'height', 3: 'width'}))
