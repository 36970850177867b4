"""The demo's results: the metrics and scalars mmengine wrote for each phase, the loss / AP curves, the captioned
prediction montage and ERF pictures, and the untrained-vs-trained AP table (``tools/demo.py`` runs the phases and
calls these)."""
import glob
import json
import os.path as osp
from typing import Dict, List, Optional

AP_KEYS = ('coco/bbox_mAP_50', 'coco/bbox_mAP', 'coco/segm_mAP_50', 'coco/segm_mAP')


def latest_run_dir(work_dir: str) -> str:
    """The newest ``YYYYMMDD_HHMMSS`` folder mmengine made under ``work_dir``."""
    runs = sorted(d for d in glob.glob(osp.join(work_dir, '[0-9]' * 8 + '_' + '[0-9]' * 6)) if osp.isdir(d))
    if not runs:
        raise FileNotFoundError(f'no mmengine run folder under {work_dir}')
    return runs[-1]


def test_metrics(work_dir: str) -> Dict[str, float]:
    """The metrics tools/test.py logged (``<run>/<run>.json``)."""
    run = latest_run_dir(work_dir)
    with open(osp.join(run, osp.basename(run) + '.json')) as f:
        return json.load(f)


def train_scalars(work_dir: str) -> List[dict]:
    """Every record of the training run's ``vis_data/scalars.json`` (losses by iteration, metrics by epoch)."""
    with open(osp.join(latest_run_dir(work_dir), 'vis_data', 'scalars.json')) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(scalars: List[dict], untrained: Dict[str, float], out: str) -> None:
    """Loss by iteration and bbox / segm AP50 by epoch (epoch 0 = untrained) side by side."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    losses = [(r['step'], r['loss']) for r in scalars if 'loss' in r]
    evals = [r for r in scalars if 'coco/bbox_mAP_50' in r]
    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    if losses:
        ax_loss.plot(*zip(*losses), color='tab:blue')
    ax_loss.set_xlabel('iteration')
    ax_loss.set_ylabel('total loss')
    ax_loss.set_title('training loss (Cascade Mask R-CNN, all stages)')
    ax_loss.grid(alpha=0.3)
    for key, name, colour in (('coco/bbox_mAP_50', 'bbox AP50', 'tab:green'),
                              ('coco/segm_mAP_50', 'segm AP50', 'tab:purple'),
                              ('coco/bbox_mAP', 'bbox AP', 'tab:olive')):
        points = [(0, untrained.get(key, 0.))] + [(r['step'], r[key]) for r in evals if key in r]
        ax_ap.plot(*zip(*points), marker='o', label=name, color=colour)
    ax_ap.set_xlabel('epoch (0 = untrained)')
    ax_ap.set_ylabel('COCO AP on the val split')
    ax_ap.set_ylim(0, 1)
    ax_ap.set_title('validation AP')
    ax_ap.grid(alpha=0.3)
    ax_ap.legend(loc='lower right')
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


#: how to read the pictures, written onto them
PREDICTIONS_CAPTION = 'Each row: LEFT = ground truth, RIGHT = the trained model\'s prediction (val images).'
ERF_CAPTION = ('How to read: colour = log10(input gradient + 1), scaled to [0, 1] in each picture on its own. '
               'An untrained net spreads a weak gradient thinly everywhere, so its field can look wider; '
               'the printed "centred square holding N%" fractions measure the spread.')


def caption(image, text: str):
    """``image`` (BGR) with ``text`` wrapped on a white band above it."""
    import cv2
    import numpy as np
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
    width = image.shape[1]
    lines, line = [], ''
    for word in text.split():
        trial = f'{line} {word}'.strip()
        if line and cv2.getTextSize(trial, font, scale, thickness)[0][0] > width - 12:
            lines.append(line)
            trial = word
        line = trial
    lines.append(line)
    band = np.full((18 * len(lines) + 8, width, 3), 255, np.uint8)
    for i, text_line in enumerate(lines):
        cv2.putText(band, text_line, (6, 18 * (i + 1)), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return np.concatenate([band, image], axis=0)


def caption_file(path: str, text: str) -> None:
    """Write ``text`` onto the picture at ``path`` (in place)."""
    import cv2
    cv2.imwrite(path, caption(cv2.imread(path), text))


def montage(overlay_dir: str, out: str, count: int = 4) -> Optional[str]:
    """Stack the first ``count`` overlays (ground truth | prediction) into one PNG, captioned so."""
    import cv2
    import numpy as np
    files = sorted(glob.glob(osp.join(overlay_dir, '*.jpg')) + glob.glob(osp.join(overlay_dir, '*.png')))
    if not files:
        return None
    tiles = [cv2.imread(f) for f in files[:count]]
    width = min(t.shape[1] for t in tiles)
    tiles = [cv2.resize(t, (width, int(t.shape[0] * width / t.shape[1]))) for t in tiles]
    cv2.imwrite(out, caption(np.concatenate(tiles, axis=0), PREDICTIONS_CAPTION))
    return out


def result_table(untrained: Dict[str, float], trained: Dict[str, float]) -> str:
    """The untrained and trained COCO AP side by side, one metric a row."""
    rows = [f"{'val split (synthetic)':<24}{'untrained':>10}{'trained':>10}"]
    for key, name in zip(AP_KEYS, ('bbox AP50', 'bbox AP', 'segm AP50', 'segm AP')):
        rows.append(f'{name:<24}' + ''.join(f'{m.get(key, float("nan")):>10.3f}' for m in (untrained, trained)))
    return '\n'.join(rows)


def write_summary(path: str, untrained: Dict[str, float], trained: Dict[str, float], checkpoint: str, curves: str,
                  predictions: Optional[str], timings: Dict[str, float]) -> dict:
    """The demo's ``summary.json``: the untrained and trained AP (:data:`AP_KEYS`), where the checkpoint and
    pictures are, each phase's seconds (one decimal). Returns what it wrote."""
    summary = dict(untrained={k: untrained.get(k) for k in AP_KEYS}, trained={k: trained.get(k) for k in AP_KEYS},
                   checkpoint=checkpoint, curves=curves, predictions=predictions,
                   timings={k: round(v, 1) for k, v in timings.items()})
    with open(path, 'w') as f:
        json.dump(summary, f, indent=2)
    return summary


__all__ = ['AP_KEYS', 'latest_run_dir', 'test_metrics', 'train_scalars', 'plot_curves', 'PREDICTIONS_CAPTION',
           'ERF_CAPTION', 'caption', 'caption_file', 'montage', 'result_table', 'write_summary']
