"""The end of a multi-process run (issue #33): five 2-process trainings in a row each exit 0, and a process
that raises ends the whole run in one line (its own), then the launcher's, with exit status 1 and no traceback.

Setting: tools/analysis/stress_exit.py's tiny OverLoCK classifier (mmpretrain, 8 images of 32 px, one epoch
with validation at the end), 2 CPU processes over gloo, started by tools/dist_train.sh and by the demo's
torchrun command, alternately.
"""
import os
import os.path as osp
import textwrap

import pytest

from .conftest import load_tool

pytestmark = pytest.mark.integration   # 2-process runs of the tools

stress_exit = load_tool('analysis/stress_exit')
TIMEOUT = 300

RAISE_HOOK = textwrap.dedent('''
    """Test helper: one process of the run raises after its first training iteration, as bad data would."""
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

    @HOOKS.register_module()
    class RaiseInOneProcessHook(Hook):
        def __init__(self, rank):
            self.rank = rank

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if runner.rank == self.rank:
                raise RuntimeError(f'sample {batch_idx} of process {runner.rank} is broken')
''')


@pytest.fixture(scope='module')
def cls_setup(tmp_path_factory):
    work = str(tmp_path_factory.mktemp('dist_end'))
    return work, stress_exit.prepare_cls(work)


@pytest.mark.slow
def test_five_two_process_trainings_each_exit_0(cls_setup):
    work, setup = cls_setup
    demo = stress_exit.load_demo_tool()
    results = [stress_exit.run_once(stress_exit.PATHS[i % 2], i, setup, work, TIMEOUT, demo) for i in range(5)]
    for result in results:
        output = open(result['log']).read()
        assert result['code'] == 0 and result['validated'] and result['aborts'] == 0, output[-3000:]
        assert 'Traceback' not in output, output[-3000:]


@pytest.mark.parametrize('path', stress_exit.PATHS)
def test_a_process_that_raises_ends_the_run_in_one_line(cls_setup, monkeypatch, path):
    work, setup = cls_setup
    hooks_dir = osp.join(work, 'hooks')
    os.makedirs(hooks_dir, exist_ok=True)
    with open(osp.join(hooks_dir, 'raise_in_one_process.py'), 'w') as f:
        f.write(RAISE_HOOK)
    config = osp.join(work, 'raising.py')
    with open(config, 'w') as f:
        f.write(f"_base_ = [{setup['config']!r}]\n"
                "custom_imports = dict(imports=['mmoverlock', 'raise_in_one_process'], allow_failed_imports=False)\n"
                "custom_hooks = [dict(type='RaiseInOneProcessHook', rank=1)]\n")
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [hooks_dir, os.environ.get('PYTHONPATH')])))
    demo = stress_exit.load_demo_tool()
    result = stress_exit.run_once(path, 0, dict(setup, config=config), osp.join(work, path), TIMEOUT, demo)
    output = open(result['log']).read()
    assert result['code'] == 1, output[-3000:]          # the launcher says it failed (and did not hang)
    assert 'Traceback' not in output and result['aborts'] == 0, output[-3000:]
    errors = [line for line in output.splitlines() if ': error: ' in line]
    assert errors[0].startswith('tools/train.py: error: process 1 of 2: RuntimeError: sample 0 of process 1 is '
                                'broken (traceback: '), output[-3000:]
    assert len(errors) == 2 and errors[1].startswith('torchrun: error: process 1 (pid '), output[-3000:]
    # process 0, stopped because of it (SIGTERM or a broken collective), adds nothing: no 'interrupted' line
    assert 'interrupted by' not in output, output[-3000:]
    # the whole traceback is in the file the line names
    traceback_file = errors[0].split('(traceback: ')[1].rstrip(')')
    assert 'raise_in_one_process.py", line' in open(traceback_file).read()


# ---------------------------------------------------------------------------------------------- in-process parts
def test_launcher_line_names_the_first_failed_process_and_how_it_ended():
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from mmoverlock.cli import launch
    from mmoverlock.cli.launch import failure_line
    failed = ProcessFailure(local_rank=1, pid=4321, exitcode=1, error_file='<N/A>')
    stopped = ProcessFailure(local_rank=0, pid=4320, exitcode=-15, error_file='<N/A>')   # the launcher's SIGTERM
    stopped.timestamp = failed.timestamp + 1
    line = failure_line(ChildFailedError('tools/train.py', {1: failed, 0: stopped}), 'torchrun')
    assert line == ('torchrun: error: process 1 (pid 4321) exited with status 1; the launcher stopped the other '
                    'processes')
    ended_on_sigterm = ProcessFailure(local_rank=0, pid=4320, exitcode=128 + 15, error_file='<N/A>')
    ended_on_sigterm.timestamp = failed.timestamp + 1   # process 0 caught the SIGTERM: stopped, not failed
    assert failure_line(ChildFailedError('tools/train.py', {1: failed, 0: ended_on_sigterm})) == line
    # process 0 failed because process 1 had (its collective broke) and exited in the same poll of torchrun's,
    # with an earlier timestamp: the line still names process 1, the one that failed on its own
    follower = ProcessFailure(local_rank=0, pid=4320, exitcode=launch.PEER_FAILED_STATUS, error_file='<N/A>')
    follower.timestamp = failed.timestamp - 1
    assert failure_line(ChildFailedError('tools/train.py', {0: follower, 1: failed})) == line
    second = ProcessFailure(local_rank=0, pid=4320, exitcode=1, error_file='<N/A>')   # failed on its own, later
    second.timestamp = failed.timestamp + 1
    assert failure_line(ChildFailedError('tools/train.py', {0: second, 1: failed})) == line.replace(
        'status 1;', 'status 1; 1 more failed;')
    aborted = ProcessFailure(local_rank=0, pid=99, exitcode=-6, error_file='<N/A>')
    assert 'process 0 (pid 99) was killed by SIGABRT' in failure_line(ChildFailedError('x', {0: aborted}))


@pytest.mark.parametrize('rank, printed', [('0', True), ('1', False)])
def test_a_failing_process_prints_one_line_before_the_process_group_exists(tmp_path, monkeypatch, capsys, rank,
                                                                           printed):
    """Without a process group (an error while the Runner is built) the first process speaks, the others write
    their traceback only and exit with ``PEER_FAILED_STATUS``; each at once (``os._exit``, replaced here)."""
    from mmoverlock.cli import launch
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', rank)

    class Exited(Exception):
        pass

    def fake_exit(status):
        raise Exited(status)
    monkeypatch.setattr(launch.os, '_exit', fake_exit)
    with pytest.raises(Exited) as exited:
        with launch.rank_failures('tools/train.py', str(tmp_path)):
            raise KeyError('SGDX is not in the mmengine::optimizer registry.\nPlease check whether the value ...')
    assert exited.value.args == ((1, ) if printed else (launch.PEER_FAILED_STATUS, ))
    err = capsys.readouterr().err
    traceback_file = tmp_path / f'process_{rank}_error.log'
    assert 'Traceback' in traceback_file.read_text() and 'Traceback' not in err
    if printed:
        assert err == (f'tools/train.py: error: process 0 of 2: KeyError: SGDX is not in the mmengine::optimizer '
                       f'registry. Please check whether the value ... (traceback: {traceback_file})\n')
    else:
        assert err == ''


def test_the_end_hook_leaves_a_lone_process_alone():
    from mmoverlock.engine import DistributedEndHook, end_distributed_run
    assert end_distributed_run(None) is False
    DistributedEndHook().after_run(runner=None)   # no process group: nothing to do, nothing raised


@pytest.mark.parametrize('code, shown, status', [('tools/train.py: error: model.neck.in_channels=...', True, 1),
                                                 (1, False, 1), (None, False, 0)])
def test_a_one_line_error_of_a_process_is_printed_and_ends_it(monkeypatch, capsys, code, shown, status):
    from mmoverlock.cli import launch
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', '0')
    exits = []
    monkeypatch.setattr(launch.os, '_exit', exits.append)
    with launch.rank_failures('tools/train.py', None):
        raise SystemExit(code)
    assert exits == [status]
    assert capsys.readouterr().err == (f'{code}\n' if shown else '')


def test_the_exit_path_flushes_past_a_closed_log_stream(monkeypatch, tmp_path):
    """A log handler whose stream is closed (left by an earlier run in the same process, e.g. a test's captured
    stdout) is skipped: the process still exits with its status instead of raising ``ValueError: I/O operation
    on closed file``."""
    import logging

    from mmoverlock.cli import launch
    monkeypatch.setenv('WORLD_SIZE', '2')
    exits = []
    monkeypatch.setattr(launch.os, '_exit', exits.append)
    stream = open(tmp_path / 'captured.txt', 'w')   # a file: its flush raises once closed (a StringIO's does not)
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger('mmoverlock.test_closed_stream')
    logger.addHandler(handler)
    stream.close()
    try:
        launch.exit_process(3)
    finally:
        logger.removeHandler(handler)
    assert exits == [3]
