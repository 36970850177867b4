"""The golden data can be regenerated: ``tools/analysis/make_golden_fixture.py`` run on a checkout of the official
release reproduces ``tests/data/overlock_tiny_fixture.pt`` (from its own weights) and the state-dict layouts.

The regeneration test needs the release's code, which this repository does not ship: point ``OVERLOCK_RELEASE`` at
a checkout of github.com/LMMMEng/OverLoCK (the commit in tests/data/README.md); without it that test is skipped.
"""
import glob
import os
import os.path as osp

import pytest
import torch

from .conftest import FIXTURE, LAYOUTS, load_tool
from .helpers import rel_err

make_golden_fixture = load_tool('analysis/make_golden_fixture')
RELEASE = os.environ.get('OVERLOCK_RELEASE')
OUTPUT_TOL = 1e-5


def assert_same_state_dict(ours, ref, what):
    assert list(ours) == list(ref), f'{what}: keys differ'
    for key, value in ref.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), f'{what}: {key} differs'


def assert_close_outputs(ours, ref, what):
    assert len(ours) == len(ref), what
    for i, (a, b) in enumerate(zip(ours, ref)):
        if isinstance(b, torch.Tensor):
            assert a.shape == b.shape and a.dtype == b.dtype, f'{what}[{i}]: {a.shape} vs {b.shape}'
            assert rel_err(a, b) <= OUTPUT_TOL, f'{what}[{i}]: relative error {rel_err(a, b):.2e}'
        else:
            assert type(a) is type(b), f'{what}[{i}]: {type(a).__name__} vs {type(b).__name__}'
            assert_close_outputs(a, b, f'{what}[{i}]')


@pytest.mark.skipif(not RELEASE, reason='set OVERLOCK_RELEASE=/path/to/a/checkout/of/LMMMEng/OverLoCK to '
                                        'regenerate the golden data with the release\'s code')
def test_regenerated_data_equal_committed(tmp_path):
    make_golden_fixture.main(['--official', RELEASE, '--weights-from', FIXTURE, '--out', str(tmp_path)])

    ours = torch.load(tmp_path / make_golden_fixture.FIXTURE_NAME, weights_only=True)
    ref = torch.load(FIXTURE, weights_only=True)
    assert list(ours) == list(ref)
    assert ours['arch'] == ref['arch']
    assert len(ours['inputs']) == len(ref['inputs'])
    assert all(torch.equal(a, b) for a, b in zip(ours['inputs'], ref['inputs']))
    for task in ('cls', 'det', 'seg'):
        assert_same_state_dict(ours[f'{task}_state_dict'], ref[f'{task}_state_dict'], f'{task}_state_dict')
    for key in ('cls_logits', 'cls_logits_reparam', 'det_features', 'seg_features'):
        assert type(ours[key]) is type(ref[key])
        assert_close_outputs(ours[key], ref[key], key)

    committed = sorted(osp.basename(p) for p in glob.glob(osp.join(LAYOUTS, '*.tsv')))
    regenerated = sorted(osp.basename(p) for p in glob.glob(str(tmp_path / make_golden_fixture.LAYOUT_DIR / '*.tsv')))
    assert regenerated == committed
    for name in committed:
        with open(osp.join(LAYOUTS, name)) as f, open(tmp_path / make_golden_fixture.LAYOUT_DIR / name) as g:
            assert g.read() == f.read(), f'{name} differs'


def test_not_a_release_checkout_is_one_line_error(tmp_path, capsys):
    (tmp_path / 'models').mkdir()
    (tmp_path / 'models' / 'overlock.py').write_text('')
    with pytest.raises(SystemExit) as exc:
        make_golden_fixture.main(['--official', str(tmp_path), '--out', str(tmp_path / 'out')])
    message = str(exc.value)
    assert '\n' not in message
    assert str(tmp_path) in message and 'LMMMEng/OverLoCK' in message
    # the file that is there is not named missing
    assert 'missing detection/models/overlock.py, segmentation/models/overlock.py;' in message
    assert not (tmp_path / 'out').exists()


def test_missing_official_path_names_expected_files(tmp_path):
    missing = tmp_path / 'no-such-checkout'
    with pytest.raises(SystemExit, match=r'--official .*no-such-checkout: not a checkout of the OverLoCK release.*'
                                         r'missing models/overlock.py, detection/models/overlock.py, '
                                         r'segmentation/models/overlock.py'):
        make_golden_fixture.main(['--official', str(missing)])


def test_na2d_av_stand_in_matches_window_definition():
    """The brute-force gather against an independent statement of NATTEN's neighbourhood: attention one-hot on
    tap t must return the value at the clamped window's tap t (corners and borders included)."""
    k, h, w = 3, 4, 5
    value = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w, 1)
    for t in range(k * k):
        attn = torch.zeros(1, 1, h, w, k * k)
        attn[..., t] = 1
        out = make_golden_fixture.na2d_av_brute_force(attn, value, k)
        for i in range(h):
            for j in range(w):
                top, left = min(max(i - 1, 0), h - k), min(max(j - 1, 0), w - k)
                assert out[0, 0, i, j, 0] == value[0, 0, top + t // k, left + t % k, 0]
