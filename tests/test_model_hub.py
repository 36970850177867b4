"""OverLoCK in mmpretrain's model hub (after the classification adapter is imported), offline: names are listed,
models build from the shipped configs, and a local file is accepted for ``pretrained``."""
import ast
import subprocess
import sys

import pytest
import torch

from .conftest import ROOT

IMAGENET_MODELS = sorted(f'overlock_{v}_in1k{form}' for v in ('xt', 't', 's', 'b') for form in ('', '_reparam'))


@pytest.mark.slow
def test_bare_import_registers_nothing_with_the_hub():
    code = ('import mmoverlock, mmpretrain\n'
            'print(mmpretrain.list_models("overlock*"))\n'
            'import mmoverlock.models.mmpretrain\n'
            'print(mmpretrain.list_models("overlock*"))\n')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = out.stdout.strip().splitlines()[-2:]
    assert before == '[]' and ast.literal_eval(after) == IMAGENET_MODELS


@pytest.mark.slow
def test_get_model_builds_from_the_config_and_takes_a_local_checkpoint(tmp_path):
    import mmpretrain

    import mmoverlock.models.mmpretrain  # noqa: F401  (the adapter registers the models with the hub)
    from mmoverlock.checkpoint.official import official_cls_to_mmpretrain
    assert mmpretrain.list_models('overlock*') == IMAGENET_MODELS
    model = mmpretrain.get_model('overlock_xt_in1k')
    assert type(model).__name__ == 'OverLoCKClassifier' and model.backbone.arch['embed_dim'] == [56, 112, 256, 336]
    params = sum(p.numel() for n, p in model.named_parameters() if 'aux_head' not in n)
    assert params == 16_969_600                 # train form: the dilated branches and their BNs too
    own = {k: v + 1 for k, v in model.state_dict().items() if v.is_floating_point()}
    torch.save(dict(state_dict=own), tmp_path / 'ours.pth')           # mmpretrain's layout (a training run)
    official = {(k[len('backbone.'):] if k.startswith('backbone.') else k.replace('head.main_head.', 'head.')
                 .replace('head.aux_head.', 'aux_head.')): v for k, v in own.items()}
    assert official_cls_to_mmpretrain(official).keys() == own.keys()
    torch.save(official, tmp_path / 'overlock_xt_in1k_224.pth')        # the release's layout
    for path in ('ours.pth', 'overlock_xt_in1k_224.pth'):
        loaded = mmpretrain.get_model('overlock_xt_in1k', pretrained=str(tmp_path / path)).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in own.items()), path
    deployed = mmpretrain.get_model('overlock_xt_in1k_reparam')
    assert deployed.backbone.blocks1[0].proj[1].deployed
    assert sum(p.numel() for n, p in deployed.named_parameters() if 'aux_head' not in n) == 16_453_712  # 16.45 M
    with pytest.raises(ValueError, match='Failed to find model "overlock_z_in1k"'):
        mmpretrain.get_model('overlock_z_in1k')
