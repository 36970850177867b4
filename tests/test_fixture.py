"""The golden test: our network computes what the official release computes (tiny fixture)."""
import pytest
import torch

from mmoverlock import OverLoCK
from mmoverlock.checkpoint.official import official_cls_to_mmpretrain
from mmoverlock.models.mmpretrain import OverLoCKClsHead

from .helpers import rel_err

TOL = 1e-4


class TinyClassifier(torch.nn.Module):
    """backbone + head as mmpretrain's ImageClassifier arranges them (same state-dict names)."""

    def __init__(self, arch):
        super().__init__()
        self.backbone = OverLoCK(arch, out_indices=(3, 4), layout='classification')
        e3 = arch['embed_dim'][3]
        self.head = OverLoCKClsHead(num_classes=10, in_channels=e3 + e3 // 4, overview_channels=e3,
                                    projection=64)

    def forward(self, x):
        return self.head(self.backbone(x))


@pytest.fixture(scope='module')
def classifier(fixture):
    model = TinyClassifier(fixture['arch'])
    model.load_state_dict(official_cls_to_mmpretrain(fixture['cls_state_dict']), strict=True)
    return model.eval()


def test_cls_logits(classifier, fixture):
    with torch.no_grad():
        for x, ref in zip(fixture['inputs'], fixture['cls_logits']):
            assert rel_err(classifier(x), ref) <= TOL


def test_cls_logits_after_reparam(classifier, fixture):
    import copy
    model = copy.deepcopy(classifier)
    model.backbone.switch_to_deploy()
    assert not any('dil_conv' in k or 'origin_bn' in k for k in model.state_dict())
    with torch.no_grad():
        for x, ref in zip(fixture['inputs'], fixture['cls_logits_reparam']):
            assert rel_err(model(x), ref) <= TOL


@pytest.mark.parametrize('task,layout', [('det', 'detection'), ('seg', 'segmentation')])
def test_dense_features(fixture, task, layout):
    model = OverLoCK(fixture['arch'], layout=layout).eval()
    model.load_state_dict(fixture[f'{task}_state_dict'], strict=True)
    with torch.no_grad():
        for x, refs in zip(fixture['inputs'], fixture[f'{task}_features']):
            outs = model(x)
            assert len(outs) == len(refs) == 4
            for ours, ref in zip(outs, refs):
                assert ours.shape == ref.shape
                assert rel_err(ours, ref) <= TOL
