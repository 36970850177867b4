# mmdeploy 1.3.1 -> ONNX Runtime, for OverLoCK models (docs/deployment.md). Self-contained: the mmdeploy wheel
# ships no deploy configs. The compatibility module (mmoverlock/deploy/mmdeploy_compat.py) is imported when
# mmdeploy loads this config, in every process of tools/deploy.py.
custom_imports = dict(imports=['mmoverlock', 'mmoverlock.deploy.mmdeploy_compat'], allow_failed_imports=False)
onnx_config = dict(
    type='onnx',
    export_params=True,
    keep_initializers_as_inputs=False,
    # ContMix's clamped window starts export as Clip on int64 (opset >= 12); opset 16+ has RoiAlign's
    # half_pixel mode (mmcv's aligned=True) inside ONNX Runtime
    opset_version=17,
    save_file='end2end.onnx',
    input_names=['input'],
    output_names=['output'],
    input_shape=None,
    # mmdeploy's graph optimizer is a C++ extension the PyPI wheel does not ship
    optimize=False)
backend_config = dict(type='onnxruntime')
