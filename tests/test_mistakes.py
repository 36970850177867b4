"""The rest of a newcomer's mistakes end in one line (issue #34, item 3): each exits non-zero with one line that
names the bad value and what would be right, no traceback -- a misspelled registry type (the closest registered
names), a misspelled constructor argument (the closest argument names), an annotation file that does not parse
(the file, the parser's position), a file that is not an image given to tools/infer.py, an output path that
cannot be written. (``--resume`` with nothing to resume: tests/test_resume_exact.py.)

In-process where the exit is a ``SystemExit`` with its message (what Python prints, exit status 1, no traceback);
one subprocess checks that, end to end, for the misspelled type after the Runner's log.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from .conftest import ROOT, load_tool
from .test_det import derive_tiny, make_coco

MASK_RCNN = osp.join(ROOT, 'configs', 'det', 'mask_rcnn_overlock_t_1x_coco.py')
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore')

pytestmark = pytest.mark.integration   # the tools, on a tiny COCO set


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('mistakes')
    make_coco(str(root / 'coco'))
    config = derive_tiny(MASK_RCNN, str(root / 'coco'), str(root / 'tiny.py'), val_interval=100)
    return root, config


def exit_message(tool: str, *argv) -> str:
    with pytest.raises(SystemExit) as err:
        load_tool(tool).main([str(a) for a in argv])
    message = err.value.code
    assert isinstance(message, str) and '\n' not in message, message
    return message


def test_misspelled_type_names_the_closest_registered_names(tiny, tmp_path):
    _, config = tiny
    for bad, registry in (('mmoverlock.OverLock', 'mmoverlock'), ('OverLoCK', 'mmdet')):   # a typo; no scope
        message = exit_message('train', config, '--work-dir', tmp_path / bad, '--cfg-options',
                               f'model.backbone.type={bad}')
        assert message == (f"tools/train.py: error: unknown type '{bad}': not in the {registry}::model registry; "
                           f"did you mean 'mmoverlock.OverLoCK'?"), message
    # end to end: after the Runner's log, the last line is the error, exit status 1, no traceback
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir',
                           str(tmp_path / 'e2e'), '--cfg-options', 'model.backbone.type=mmoverlock.OverLock'],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "tools/train.py: error: unknown type 'mmoverlock.OverLock': not in the mmoverlock::model registry; did you "
        "mean 'mmoverlock.OverLoCK'?")


def test_misspelled_argument_names_the_closest_argument(tiny, tmp_path):
    _, config = tiny
    message = exit_message('train', config, '--work-dir', tmp_path, '--cfg-options',
                           'model.backbone.dropp_path_rate=0.1')
    assert message == ("tools/train.py: error: OverLoCK (mmdet::model) got an unknown argument 'dropp_path_rate'; "
                       "did you mean 'drop_path_rate'?")
    message = exit_message('train', config, '--work-dir', tmp_path, '--cfg-options', 'model.neck.in_chanels=[1]')
    assert message == ("tools/train.py: error: FPN (mmdet::model) got an unknown argument 'in_chanels'; did you mean "
                       "'in_channels'?")


def test_truncated_annotation_file_is_named_with_the_position(tiny, tmp_path):
    root, config = tiny
    coco = tmp_path / 'coco'
    make_coco(str(coco))
    ann = coco / 'annotations' / 'instances_train.json'
    text = ann.read_text()
    ann.write_text(text[:len(text) // 2])   # a download cut short
    try:
        json.loads(ann.read_text())
    except json.JSONDecodeError as err:
        position = f'{err.msg}: line {err.lineno} column {err.colno} (char {err.pos})'
    message = exit_message('train', config, '--work-dir', tmp_path / 'work', '--cfg-options',
                           f'train_dataloader.dataset.data_root={coco}')
    assert message == (f"tools/train.py: error: annotation file '{ann}' is not valid JSON ({position}); is it "
                       f"truncated? download or write it again")


def test_infer_on_a_file_that_is_not_an_image(tiny, tmp_path):
    _, config = tiny
    text = tmp_path / 'photo.jpg'
    text.write_text('not an image\n')
    checkpoint = tmp_path / 'model.pth'
    torch.save({'state_dict': {}}, checkpoint)
    message = exit_message('infer', text, config, checkpoint, '--out', tmp_path / 'out.png')
    assert message == (f"tools/infer.py: error: image '{text}' is not an image OpenCV can decode (another kind of "
                       f"file, or truncated); expected a .jpg, .png, .bmp or .tif image")


def test_unwritable_outputs_are_named_before_anything_runs(tiny, tmp_path):
    root, config = tiny
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    checkpoint = tmp_path / 'model.pth'
    torch.save({'state_dict': {}}, checkpoint)
    image = osp.join(root, 'coco', 'val', '0000.jpg')
    bad = blocker / 'sub'   # a folder inside a file: not creatable, even for root
    for tool, argv, flag in (('train', [config, '--work-dir', bad], '--work-dir'),
                             ('test', [config, checkpoint, '--work-dir', bad], '--work-dir'),
                             ('test', [config, checkpoint, '--work-dir', tmp_path, '--out', bad / 'r.pkl'], '--out'),
                             ('infer', [image, config, checkpoint, '--out', bad / 'o.png'], '--out')):
        message = exit_message(tool, *argv)
        path = argv[argv.index(flag) + 1]
        assert message.startswith(f"tools/{tool}.py: error: {flag} '{path}' is not writable (") and \
            message.endswith('you can write to'), message
    if os.geteuid() != 0:   # permissions bind everyone but root
        locked = tmp_path / 'locked'
        locked.mkdir(mode=0o555)
        message = exit_message('train', config, '--work-dir', locked)
        assert message == (f"tools/train.py: error: --work-dir '{locked}' is not writable (Permission denied); pass "
                           f"a folder you can write to")
