# Semantic segmentation of an OverLoCK UperNet config at 512x512 (the ADE20K crop): output as
# segmentation_onnxruntime_dynamic.py.
_base_ = ['./_base_/onnxruntime.py']
codebase_config = dict(type='mmseg', task='Segmentation', with_argmax=True)
onnx_config = dict(input_shape=[512, 512])
