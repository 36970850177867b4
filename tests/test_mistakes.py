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
import signal
import subprocess
import sys
import time

import pytest
from mmengine.registry import MODELS, Registry

from mmoverlock.cli.checks import check_writable
from mmoverlock.cli.errors import known_mistake
from mmoverlock.cli.interruption import resume_command
from mmoverlock.engine.atomic_checkpoint import signals_deferred

from .conftest import ROOT
from .helpers import empty_checkpoint, exit_message

MASK_RCNN = osp.join(ROOT, 'configs', 'det', 'mask_rcnn_overlock_t_1x_coco.py')
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore')


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    from .helpers import make_coco
    from .test_det import derive_tiny
    root = tmp_path_factory.mktemp('mistakes')
    make_coco(str(root / 'coco'))
    config = derive_tiny(MASK_RCNN, str(root / 'coco'), str(root / 'tiny.py'), val_interval=100)
    return root, config


@pytest.mark.integration
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


@pytest.mark.integration
def test_misspelled_argument_names_the_closest_argument(tiny, tmp_path):
    _, config = tiny
    message = exit_message('train', config, '--work-dir', tmp_path, '--cfg-options',
                           'model.backbone.dropp_path_rate=0.1')
    assert message == ("tools/train.py: error: OverLoCK (mmdet::model) got an unknown argument 'dropp_path_rate'; "
                       "did you mean 'drop_path_rate'?")
    message = exit_message('train', config, '--work-dir', tmp_path, '--cfg-options', 'model.neck.in_chanels=[1]')
    assert message == ("tools/train.py: error: FPN (mmdet::model) got an unknown argument 'in_chanels'; did you mean "
                       "'in_channels'?")


@pytest.mark.integration
def test_truncated_annotation_file_is_named_with_the_position(tiny, tmp_path):
    from .helpers import make_coco
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


@pytest.mark.integration
def test_infer_on_a_file_that_is_not_an_image(tiny, tmp_path):
    _, config = tiny
    text = tmp_path / 'photo.jpg'
    text.write_text('not an image\n')
    checkpoint = empty_checkpoint(tmp_path)
    message = exit_message('infer', text, config, checkpoint, '--out', tmp_path / 'out.png')
    assert message == (f"tools/infer.py: error: image '{text}' is not an image OpenCV can decode (another kind of "
                       f"file, or truncated); expected a .jpg, .png, .bmp or .tif image")


@pytest.mark.integration
def test_unwritable_outputs_are_named_before_anything_runs(tiny, tmp_path):
    root, config = tiny
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    checkpoint = empty_checkpoint(tmp_path)
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


# ---------------------------------------------------------------------------- the machinery, without the tools
def test_known_mistakes_of_any_registry_and_parser(tmp_path):
    """``_scope_``: built in the toy's scope, whatever default scope an earlier test left."""
    toys = Registry('toy', parent=MODELS, scope='toyscope')

    @toys.register_module()
    class Widget:
        def __init__(self, width: int = 1, height: int = 2):
            self.width, self.height = width, height

    with pytest.raises(KeyError) as err:
        toys.build(dict(_scope_='toyscope', type='Widgte'))
    assert known_mistake(err.value) == ("unknown type 'Widgte': not in the toyscope::toy registry; did you mean "
                                        "'Widget'?")
    with pytest.raises(KeyError) as err:
        toys.build(dict(_scope_='toyscope', type='Gizmo'))
    assert known_mistake(err.value) == ("unknown type 'Gizmo': not in the toyscope::toy registry (nor close to a "
                                        "name in it)")
    with pytest.raises(TypeError) as err:
        toys.build(dict(_scope_='toyscope', type='Widget', widht=3))
    assert known_mistake(err.value) == "Widget (toyscope::toy) got an unknown argument 'widht'; did you mean 'width'?"
    with pytest.raises(TypeError) as err:
        toys.build(dict(_scope_='toyscope', type='Widget', colour=3))
    assert known_mistake(err.value) == ("Widget (toyscope::toy) got an unknown argument 'colour'; its arguments: "
                                        "width, height")

    @toys.register_module()
    class Buggy:
        def __init__(self, width: int = 1):
            Widget(widht=width)   # a bug in the code, not a keyword of the config: keeps its traceback

    with pytest.raises(TypeError) as err:
        toys.build(dict(_scope_='toyscope', type='Buggy', width=2))
    assert known_mistake(err.value) is None
    bad = tmp_path / 'instances.json'
    bad.write_text('{"images": [{"id": 1}, ')
    with pytest.raises(json.JSONDecodeError) as err, open(bad) as f:
        json.load(f)
    assert known_mistake(err.value) == f"annotation file '{bad}' is not valid JSON (Expecting value: line 1 column " \
                                       f"24 (char 23)); is it truncated? download or write it again"
    assert known_mistake(ValueError('something else')) is None and known_mistake(KeyError('x')) is None


def test_a_save_finishes_before_a_signal_acts():
    """SIGINT inside ``signals_deferred``: the block runs to its end, then the handler; twice: at once."""
    events = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: events.append('handled'))
    try:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            events.append('block finished')
        time.sleep(0.05)
        assert events == ['block finished', 'handled']
        assert signal.getsignal(signal.SIGINT) is not previous   # ours again after the block: the lambda
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with pytest.raises(KeyboardInterrupt):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                events.append('not reached')
        assert 'not reached' not in events
    finally:
        signal.signal(signal.SIGINT, previous)


def test_resume_command_is_the_run_command_with_resume(monkeypatch, tmp_path):
    monkeypatch.delenv('LOCAL_WORLD_SIZE', raising=False)
    command = resume_command('tools/train.py', ['c.py', '--work-dir', 'w', '--resume', 'w/iter_4.pth',
                                                '--cfg-options', 'a=1'])
    assert command.endswith(' tools/train.py c.py --work-dir w --cfg-options a=1 --resume')
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '8')   # a process torchrun started (tools/dist_train.sh)
    assert resume_command('tools/train.py', ['c.py', '--launcher', 'pytorch', '--work-dir', 'my dir']) == \
        "tools/dist_train.sh c.py 8 --work-dir 'my dir' --resume"
    assert check_writable(str(tmp_path / 'new' / 'dir'), '--work-dir', folder=True) == str(tmp_path / 'new' / 'dir')
    with pytest.raises(ValueError) as err:
        check_writable(str(tmp_path / 'new'), '--out', folder=False)
    assert str(err.value) == f"--out '{tmp_path / 'new'}' is not writable (Is a directory); pass a file you can " \
                             f"write to"
