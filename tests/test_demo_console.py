"""The demo's console (mmoverlock.demo.console): mmengine's log lines -> progress, phases in child processes."""
import sys

import pytest

from mmoverlock.demo import console as demo_console

# lines as mmengine's LoggerHook writes them (from a demo run's logs, cut short)
TRAIN = ('12/05 15:47:49 - mmengine - INFO - Epoch(train) [2][130/200]  base_lr: 1.8007e-02 lr: 1.8007e-02  '
         'eta: 0:04:40  time: 0.2214  data_time: 0.0054  grad_norm: 4.4029  loss: 3.1466  loss_rpn_cls: 0.0479')
VAL = ('2026/12/05 15:42:52 - mmengine - INFO - Epoch(val) [3][15/15]    coco/bbox_mAP: 0.4210  '
       'coco/bbox_mAP_50: 0.6120  coco/segm_mAP_50: 0.5900  data_time: 0.0070  time: 1.0230')
TEST = '12/05 15:58:19 - mmengine - INFO - Epoch(test) [10/15]    eta: 0:00:05  time: 1.0230  data_time: 0.0070'
TEST_END = ('12/05 15:58:19 - mmengine - INFO - Epoch(test) [15/15]    coco/bbox_mAP: 0.0060  '
            'coco/bbox_mAP_50: 0.0120  coco/bbox_mAP_75: 0.0000')


def test_training_lines_give_iterations_of_the_whole_run_loss_and_last_validation():
    progress = demo_console.LogProgress(max_epochs=9)
    progress.feed('12/05 15:47:30 - mmengine - INFO - Config:')   # not a progress line
    assert progress.total is None and progress.status() == ''
    progress.feed(TRAIN)
    assert (progress.done, progress.total, progress.loss) == (330, 1800, 3.1466)
    progress.feed(VAL)   # validation lines do not move a training bar
    assert (progress.done, progress.total) == (330, 1800)
    assert progress.metrics['coco/bbox_mAP_50'] == 0.612 and progress.metrics_epoch == 3
    assert progress.status() == 'loss 3.147  bbox AP50 0.612 (epoch 3)'


def test_test_lines_give_batches_and_the_metrics():
    progress = demo_console.LogProgress()
    progress.feed(TRAIN)   # a test run has no training bar
    assert progress.total is None
    progress.feed(TEST)
    assert (progress.done, progress.total) == (10, 15)
    progress.feed(TEST_END)
    assert (progress.done, progress.total) == (15, 15)
    assert progress.status() == 'bbox AP50 0.012'


def test_follower_returns_complete_lines_then_the_rest(tmp_path):
    log = tmp_path / 'phase.log'
    follower = demo_console.LogFollower(str(log))
    assert follower.new_lines() == []   # not there yet
    log.write_text('one\ntw')
    assert follower.new_lines() == ['one']
    with open(log, 'a') as f:
        f.write('o\nthree')
    assert follower.new_lines() == ['two']
    assert follower.rest() == ['three'] and follower.rest() == []


def test_a_phase_shows_one_line_and_keeps_the_output_in_its_log(tmp_path, capsys):
    script = tmp_path / 'fake_tool.py'
    script.write_text('import sys\n'
                      'print("a config dump, " * 50)\n'
                      f'print({TEST!r}, flush=True)\n'
                      f'print({TEST_END!r})\n'
                      'print("a warning", file=sys.stderr)\n')
    log = tmp_path / 'logs' / 'test.log'
    progress = demo_console.run_phase(demo_console.make_console(), 'trained', [sys.executable, str(script)],
                                      str(log), unit='batches')
    assert progress.metrics['coco/bbox_mAP_50'] == 0.012
    shown = capsys.readouterr().out
    assert shown.count('\n') == 1 and shown.startswith('trained') and '15/15 batches' in shown
    assert 'bbox AP50 0.012' in shown and 'config dump' not in shown
    kept = log.read_text()
    assert 'a config dump' in kept and 'a warning' in kept and TEST_END in kept


def test_a_failing_phase_says_which_and_shows_the_end_of_its_log(tmp_path):
    script = tmp_path / 'failing_tool.py'
    script.write_text('import sys\nprint("\\n".join(f"line {i}" for i in range(40)))\n'
                      'sys.exit("ValueError: the real reason")\n')
    log = tmp_path / 'train.log'
    with pytest.raises(demo_console.PhaseFailed) as err:
        demo_console.run_phase(demo_console.make_console(), 'train', [sys.executable, str(script)], str(log),
                               unit='iterations', max_epochs=1)
    message = str(err.value)
    assert message.startswith('demo: train failed (exit code 1)') and str(log) in message
    assert 'ValueError: the real reason' in message and 'line 39' in message and 'line 10\n' not in message


def test_background_steps_run_together_and_log_in_the_order_started(tmp_path, capsys):
    log = tmp_path / 'pictures.log'
    steps = demo_console.BackgroundSteps(demo_console.make_console(), 'pictures', str(log))
    marker = tmp_path / 'first_started'
    # the first waits until the second has run: both must be running at once
    steps.start([[sys.executable, '-c', 'import os, sys, time\n'
                  f'while not os.path.exists({str(marker)!r}): time.sleep(0.05)\nprint("first")']])
    steps.start([[sys.executable, '-c', f'open({str(marker)!r}, "w").close(); print("second")']])
    steps.wait()
    text = log.read_text()
    assert text.index('first\n') < text.index('second\n') and '2/2 steps' in capsys.readouterr().out


def test_a_failed_background_step_fails_the_phase_with_its_output(tmp_path):
    log = tmp_path / 'pictures.log'
    steps = demo_console.BackgroundSteps(demo_console.make_console(), 'pictures', str(log))
    steps.start([[sys.executable, '-c', 'print("drawn")'],
                 [sys.executable, '-c', 'import sys; sys.exit("ValueError: no such block")']])
    with pytest.raises(demo_console.PhaseFailed, match=r'pictures failed \(exit code 1\)') as err:
        steps.wait()
    assert 'ValueError: no such block' in str(err.value) and 'drawn' in log.read_text()


def test_closing_background_steps_stops_them(tmp_path):
    steps = demo_console.BackgroundSteps(demo_console.make_console(), 'pictures', str(tmp_path / 'p.log'))
    steps.start([[sys.executable, '-c', 'import time; time.sleep(60)']])
    process = steps._steps[0][1]
    steps.close()
    assert process.poll() is not None and not steps._steps


def test_verbose_streams_the_output_instead(tmp_path, capfd):
    log = tmp_path / 'train.log'
    demo_console.run_phase(demo_console.make_console(), 'train', [sys.executable, '-c', f'print({TRAIN!r})'],
                           str(log), unit='iterations', max_epochs=9, verbose=True)
    out = capfd.readouterr().out
    assert TRAIN in out and '330/1800' not in out


def test_verbose_steps_run_at_the_wait_and_leave_a_note_in_their_log(tmp_path, capfd):
    log = tmp_path / 'pictures.log'
    steps = demo_console.BackgroundSteps(demo_console.make_console(), 'pictures', str(log), verbose=True)
    steps.start([[sys.executable, '-c', 'print("drawn")']])
    assert 'drawn' not in capfd.readouterr().out
    steps.wait()
    assert 'drawn' in capfd.readouterr().out and 'went to the terminal' in log.read_text()
