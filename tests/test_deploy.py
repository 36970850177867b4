"""Deployment: ONNX export of the deployed backbone (dynamic H/W, both ContMix map-size paths) checked
with onnxruntime, the branch-free export helpers against their eager counterparts, and torch.compile."""

import pytest
import torch
import torch.nn.functional as F

from mmoverlock import OverLoCK
from mmoverlock.deploy import onnx as onnx_export
from mmoverlock.models.contmix import adaptive_avg_pool2d_traceable, fit_size_traceable, small_map_size
from mmoverlock.utils import compat

from .conftest import load_tool, needs_fake_impl


def _deployed_backbone(arch):
    model = OverLoCK(arch, out_indices=(0, 1, 2, 3, 4))
    for m in model.modules():   # non-trivial BN statistics: the fused re-parameterisation matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    model.switch_to_deploy()
    return model.eval()


@pytest.mark.parametrize('in_hw, out_hw', [((13, 9), (7, 7)), ((7, 7), (7, 7)), ((4, 10), (7, 3)),
                                           ((14, 17), (4, 6)), ((5, 5), (9, 11))])
def test_adaptive_pool_traceable_matches(in_hw, out_hw):
    x = torch.randn(2, 3, *in_hw)
    torch.testing.assert_close(adaptive_avg_pool2d_traceable(x, out_hw), F.adaptive_avg_pool2d(x, out_hw))


def test_fit_size_traceable_matches_small_map_rule():
    for k in (3, 7, 13):
        for h in range(1, 20):
            for w in range(1, 20):
                expected = small_map_size(h, w, k) or (h, w)
                assert tuple(int(v) for v in fit_size_traceable(h, w, k)) == expected, (h, w, k)


@pytest.mark.slow
def test_onnx_export_dynamic_shapes(fixture, tmp_path):
    """One export at 224x256 (every Focus-Net map >= its kernel 7: stage 3 14x16, stage 4 7x8) is right at
    96x128 too (stage 3 6x8, stage 4 3x4: both take the small-map path), for all five outputs."""
    pytest.importorskip('onnxruntime')
    model = _deployed_backbone(fixture['arch'])
    out = str(tmp_path / 'backbone.onnx')
    names = onnx_export.export(model, (224, 256), out)
    assert len(names) == 5
    assert small_map_size(224 // 32, 256 // 32, 7) is None and small_map_size(96 // 16, 128 // 16, 7)
    results = onnx_export.check(model, out, [(224, 256), (96, 128)], batch=2)
    for r in results:
        assert r['max_abs_err'] <= 1e-4 * max(1., r['output_scale']), r


def test_exported_contmix_softmax_runs_over_the_last_axis(tmp_path):
    """The exported kernels' softmax runs over the last axis (ONNX Runtime's Softmax over a middle axis is 4.5x
    slower), and the graph gives the eager kernels in onnxruntime."""
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    from mmoverlock.models.contmix import ContMix
    mixer = ContMix(16, 16, kernel_size=5, smk_size=3, num_groups=2).eval()
    x = torch.randn(1, 16, 9, 11)
    out = str(tmp_path / 'contmix.onnx')
    with torch.no_grad():
        expected = mixer(x)
        torch.onnx.export(mixer, (x, ), out, opset_version=onnx_export.OPSET, input_names=['x'],
                          dynamic_axes={'x': {2: 'h', 3: 'w'}}, **compat.onnx_export_kwargs())
    graph = onnx.load(out).graph
    softmaxes = [n for n in graph.node if n.op_type == 'Softmax']
    assert len(softmaxes) == 2
    assert all(a.i == -1 for n in softmaxes for a in n.attribute if a.name == 'axis')
    got = ort.InferenceSession(out, providers=['CPUExecutionProvider']).run(None, {'x': x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)


def test_exported_aggregation_computes_nothing_from_the_map_size(tmp_path):
    """The aggregation's tap chain exports with constant slices on the 5-d value: no node reads the map's shape
    (the shape arithmetic made up most of the graph), and the graph gives the op's output at other sizes."""
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    from mmoverlock.ops import na2d_av_channels_first

    class Aggregation(torch.nn.Module):
        def forward(self, attn, value):
            return na2d_av_channels_first(attn, value, 5)

    out = str(tmp_path / 'aggregation.onnx')
    sizes = {0: 'batch', 3: 'height', 4: 'width'}
    attn, value = torch.randn(1, 2, 25, 7, 8).softmax(2), torch.randn(1, 2, 3, 7, 8)
    torch.onnx.export(Aggregation(), (attn, value), out, opset_version=onnx_export.OPSET,
                      input_names=['attn', 'value'], dynamic_axes={'attn': sizes, 'value': sizes},
                      **compat.onnx_export_kwargs())
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert 'Shape' not in ops and 'Gather' not in ops
    assert ops.count('Pad') == ops.count('Mul') == 25
    session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    for shape in ((2, 5, 5), (1, 9, 6), (3, 12, 17)):
        batch, h, w = shape
        attn, value = torch.randn(batch, 2, 25, h, w).softmax(2), torch.randn(batch, 2, 3, h, w)
        got = session.run(None, {'attn': attn.numpy(), 'value': value.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(got), na2d_av_channels_first(attn, value, 5),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.integration
def test_export_cli_backbone_only(tmp_path, capsys):
    """The script end to end on a packaged config with a tiny arch (initial weights)."""
    pytest.importorskip('onnxruntime')
    cfg = tmp_path / 'tiny_seg.py'
    arch = dict(depth=[1, 1, 1, 1], sub_depth=[1, 1], embed_dim=[8, 16, 32, 48], kernel_size=[7, 5, 5, 5],
                mlp_ratio=[2, 2, 2, 2], sub_num_heads=[1, 1], sub_mlp_ratio=[2, 2])
    model = OverLoCK(arch, out_indices=(2, ))
    cfg.write_text(
        f"default_scope = 'mmseg'\n"
        f"custom_imports = dict(imports=['mmoverlock'], allow_failed_imports=False)\n"
        f"model = dict(type='EncoderDecoder', data_preprocessor=dict(type='SegDataPreProcessor'),\n"
        f"    backbone=dict(type='mmoverlock.OverLoCK', arch={arch!r}, out_indices=(0, 1, 2, 3)),\n"
        f"    decode_head=dict(type='FCNHead', in_channels={model.out_channels[0]}, channels=8, num_convs=1,\n"
        f"        in_index=2, num_classes=3, norm_cfg=dict(type='BN', requires_grad=True)))\n")
    results = load_tool('deployment/export_onnx').main([str(cfg), 'none', '--shape', '96', '128',
                                                        '--out', str(tmp_path / 'm.onnx'), '--check-shape', '64', '64'])
    assert [r['shape'] for r in results] == [(96, 128), (64, 64)]
    for r in results:
        assert r['max_abs_err'] <= 1e-4 * max(1., r['output_scale']), r
    assert 'max abs error' in capsys.readouterr().out
    results = load_tool('deployment/export_onnx').main([str(cfg), 'none', '--shape', '96', '128', '--fixed-size',
                                                        '--out', str(tmp_path / 'fixed.onnx')])
    assert [r['shape'] for r in results] == [(96, 128)]
    assert results[0]['max_abs_err'] <= 1e-4 * max(1., results[0]['output_scale']), results[0]
    assert 'fixed height/width' in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        load_tool('deployment/export_onnx').main([str(cfg), 'none', '--shape', '96', '128', '--fixed-size',
                                                  '--check-shape', '64', '64'])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        '--check-shape 64 64: a --fixed-size graph runs at --shape 96 128 only; drop one of the two')


@pytest.mark.slow
@needs_fake_impl
def test_torch_compile_one_graph_same_output(fixture):
    """The deployed backbone is captured by TorchDynamo as one graph (``fullgraph=True`` raises on any graph
    break) and gives the eager output; both ContMix map-size paths are in it at 96x128. The inductor backend
    (C++ codegen, minutes on a small CPU) is exercised by ``tools/analysis/benchmark.py --compile``."""
    model = _deployed_backbone(fixture['arch'])
    x = torch.randn(1, 3, 96, 128)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    with torch.no_grad():
        expected, got = model(x), compiled(x)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_fixed_size_export_writes_small_map_aggregations_as_matmuls(fixture, tmp_path):
    """``export(fixed_size=True)``: height and width are constants of the graph, the batch stays dynamic, and each
    aggregation takes the eager forward's path in standard ops -- at 160x160 the large kernels (stage 3 at 10x10
    with k=9, stage 4 resized from 5x5 to 7x7 with k=7) per-window MatMuls, the small k=5 ones the dense operator
    (ScatterElements + MatMul) -- with no tap chain (Pad) left, and a Resize only where a map is smaller than its
    kernel; onnxruntime gives the eager outputs at another batch size and refuses another image size."""
    onnx = pytest.importorskip('onnx')
    pytest.importorskip('onnxruntime')
    from mmoverlock.ops import na2d_cpu_path
    arch = dict(fixture['arch'], kernel_size=[9, 7, 9, 7])
    model = _deployed_backbone(arch)
    assert [na2d_cpu_path(*hwk, forward_only=True) for hwk in ((10, 10, 9), (7, 7, 7), (10, 10, 5), (7, 7, 5))] == [
        'windows', 'windows', 'dense', 'dense']
    fixed = str(tmp_path / 'fixed.onnx')
    onnx_export.export(model, (160, 160), fixed, fixed_size=True)
    graph = onnx.load(fixed).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ['batch', 3, 160, 160]
    ops = [n.op_type for n in graph.node]
    stage3, stage4 = arch['sub_depth']
    assert 'Pad' not in ops                                                   # no tap chain
    assert ops.count('ScatterElements') == stage3 + stage4                    # one dense matrix per block
    assert ops.count('MatMul') >= 4 * stage3 + stage4 + stage3 + stage4       # the windows' and the dense
    # a Resize in front of an aggregation only where the map is smaller than the kernel: stage 4 at 160 (5x5 < 7),
    # not at 224 (7x7); the dynamic export resizes every block's maps (identities where they fit)
    fitting = str(tmp_path / 'fixed224.onnx')
    onnx_export.export(model, (224, 224), fitting, fixed_size=True)
    assert ops.count('Resize') - [n.op_type for n in onnx.load(fitting).graph.node].count('Resize') == stage4
    for r in onnx_export.check(model, fixed, [(160, 160)], batch=2):
        assert r['max_abs_err'] <= 1e-4 * max(1., r['output_scale']), r
    with pytest.raises(Exception, match='[Ii]nvalid dimensions'):       # another size: refused, not wrong
        onnx_export.ort_session(fixed).run(None, {'input': torch.zeros(1, 3, 192, 192).numpy()})


def test_fixed_size_export_forms_equal_the_op():
    """The forms the fixed-size export writes -- per window Slice, MatMul, Concat; the dense operator by
    ScatterElements and MatMul -- compute the op's sums."""
    from mmoverlock.ops import na2d_av_channels_first, na2d_cpu_path
    from mmoverlock.ops.na2d_cpu import dense_scatter_forward, windows_concat_forward
    for form, path, cases in ((windows_concat_forward, 'windows', ((14, 14, 13), (13, 13, 13), (7, 9, 7))),
                              (dense_scatter_forward, 'dense', ((14, 14, 5), (7, 7, 5), (9, 6, 3)))):
        for h, w, k in cases:
            assert na2d_cpu_path(h, w, k, forward_only=True) == path
            attn, value = torch.randn(2, 3, k * k, h, w).softmax(2), torch.randn(2, 3, 4, h, w)
            torch.testing.assert_close(form(attn, value, k), na2d_av_channels_first(attn, value, k),
                                       rtol=1e-5, atol=1e-6)
