"""Benchmark ContMix's aggregation ``na2d_av``: ours vs the unfold formulation vs the brute-force reference.

Shapes are the large-kernel half of OverLoCK-T / -S Focus-Net blocks: stage 3 (stride 16, K=13) and stage 4
(stride 32, K=7), at 224x224 and 800x1333 inputs, batch 1 and 2; attn (B, G, K*K, H, W), value
(B, G, C, H, W) with G = 2 * sub_num_heads and C = dim / (2 * G).

How it measures: every (case, implementation) runs in its **own subprocess** (python -c ... importing
``mmoverlock.ops``; 'ours' is the registered op ``torch.ops.mmoverlock.na2d_av``). The inputs are built first,
then the peak-RSS counter is reset
(``/proc/self/clear_refs``) and the peak RSS growth over the baseline (VmHWM - VmRSS before the first run)
is the CPU memory figure; on CUDA it is ``torch.cuda.max_memory_allocated`` growth. Time: one warm-up run
excluded, then the median of ``--repeats`` runs; on CPU both wall-clock and process CPU time are taken,
ratios use CPU time (robust on a shared machine; use ``--threads 1`` there), on CUDA wall-clock with
synchronisation.

    python tools/analysis/benchmark_contmix.py                 # the full table (several minutes on CPU)
    python tools/analysis/benchmark_contmix.py --quick         # batch 1, 1 repeat
    python tools/analysis/benchmark_contmix.py --device cuda
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys

from mmoverlock.analysis.shapes import focus_aggregation_shapes

#: model -> stage -> (dim, groups, kernel, stride), from the backbone's arch table
SHAPES = focus_aggregation_shapes(('t', 's'))
INPUTS = {'224x224': (224, 224), '800x1333': (800, 1333)}

# The child: imports mmoverlock.ops, builds inputs, measures, prints JSON.
CHILD = r'''
import json, sys
import torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args['threads'])
from mmoverlock import ops as na2d
from mmoverlock.utils.timing import measure
b, g, c, h, w, k = args['shape']
dev = torch.device(args['device'])
cuda = dev.type == 'cuda'
torch.manual_seed(0)
attn_cf = torch.randn(b, g, k * k, h, w, device=dev).softmax(2)
value_cf = torch.randn(b, g, c, h, w, device=dev)
if args['impl'] == 'ours':
    attn, value, fn = attn_cf, value_cf, na2d.na2d_av_channels_first
else:   # the NATTEN layout these two take
    attn = attn_cf.permute(0, 1, 3, 4, 2).contiguous()
    value = value_cf.permute(0, 1, 3, 4, 2).contiguous()
    fn = na2d.na2d_av_unfold if args['impl'] == 'unfold' else na2d.na2d_av_reference
del attn_cf, value_cf
backward = args['mode'] == 'fwd+bwd'
attn.requires_grad_(backward); value.requires_grad_(backward)

def rss_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])

def run():
    if backward:
        attn.grad = value.grad = None
        fn(attn, value, k).sum().backward()
    else:
        with torch.no_grad():
            fn(attn, value, k)
    if cuda:
        torch.cuda.synchronize()

# initialise the libraries (autograd engine, BLAS, allocator pools) on a tiny map first, so their
# one-off buffers do not count as the case's memory
tiny_a = torch.rand(1, 1, k * k, k + 1, k + 1, device=dev, requires_grad=backward)
tiny_v = torch.rand(1, 1, 1, k + 1, k + 1, device=dev, requires_grad=backward)
if backward:
    na2d.na2d_av_channels_first(tiny_a, tiny_v, k).sum().backward()
    na2d.na2d_av_unfold(tiny_a.permute(0, 1, 3, 4, 2), tiny_v.permute(0, 1, 3, 4, 2), k).sum().backward()
del tiny_a, tiny_v
if cuda:
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
else:
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')                   # reset VmHWM to the current RSS
    base = rss_kib('VmRSS') * 1024
run()                                  # warm-up (excluded from timing); its peak counts for memory
peak = (torch.cuda.max_memory_allocated() if cuda else rss_kib('VmHWM') * 1024) - base
timing = measure(run, dev, repeats=args['repeats'])     # wall and process CPU time of the same runs
print(json.dumps(dict(wall_ms=timing.median, cpu_ms=timing.cpu_median, peak_mib=peak / 2 ** 20)))
'''


def stage_shape(model: str, stage: int, size, batch: int):
    dim, groups, kernel, stride = SHAPES[model][stage]
    h, w = size
    for _ in range({16: 4, 32: 5}[stride]):   # each 3x3 stride-2 conv with padding 1: ceil(n / 2)
        h, w = (h + 1) // 2, (w + 1) // 2
    h, w = max(h, kernel), max(w, kernel)     # smaller maps are resized to K (the small-map path)
    return batch, groups, dim // (2 * groups), h, w, kernel


def run_case(impl, mode, shape, args):
    payload = dict(impl=impl, mode=mode, shape=shape, device=args.device, threads=args.threads,
                   repeats=args.repeats)
    try:
        proc = subprocess.run([sys.executable, '-c', CHILD, json.dumps(payload)], capture_output=True,
                              text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return None, f'timeout > {args.timeout}s'
    if proc.returncode != 0:
        return None, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f'rc {proc.returncode}'
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def fmt(value, spec):
    return format(value, spec) if value is not None else '-'


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads per case (default 1)')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per case (median), after 1 warm-up')
    parser.add_argument('--batch', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--models', nargs='+', default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument('--inputs', nargs='+', default=list(INPUTS), choices=list(INPUTS))
    parser.add_argument('--modes', nargs='+', default=['fwd', 'fwd+bwd'], choices=['fwd', 'fwd+bwd'])
    parser.add_argument('--max-ref-elements', type=float, default=6e7,
                        help='run the brute-force reference only where B*G*C*K*K*H*W is at most this')
    parser.add_argument('--timeout', type=int, default=300, help='seconds per case')
    parser.add_argument('--quick', action='store_true', help='batch 1, 1 repeat')
    parser.add_argument('--json', help='also write the rows to this file')
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats = [1], 1
    if args.device not in ('cpu', 'cuda'):
        parser.error(f"--device {args.device!r}: expected 'cpu' or 'cuda'")
    timer = 'CPU time' if args.device == 'cpu' else 'wall-clock (synchronised)'
    memory = ('peak RSS growth over the inputs (own subprocess per case, /proc VmHWM reset)'
              if args.device == 'cpu' else 'torch.cuda.max_memory_allocated growth (own subprocess per case)')
    print(f'na2d_av benchmark on {args.device} ({args.threads} thread(s)); time = median of {args.repeats} '
          f'after 1 warm-up, {timer}; memory = {memory}. Ratios are ours / unfold.\n')
    header = ('| model | stage (K) | input | B | mode | G, C, H, W | ours ms | unfold ms | ref ms | ours MiB '
              '| unfold MiB | ref MiB | time ratio | memory ratio |')
    print(header)
    print('|' + '---|' * (header.count('|') - 1))
    rows = []
    for model in args.models:
        for stage in (3, 4):
            for input_name in args.inputs:
                for batch in args.batch:
                    shape = stage_shape(model, stage, INPUTS[input_name], batch)
                    b, g, c, h, w, k = shape
                    for mode in args.modes:
                        result = {}
                        for impl in ('ours', 'unfold', 'ref'):
                            if impl == 'ref' and b * g * c * k * k * h * w > args.max_ref_elements:
                                result[impl] = None
                                continue
                            result[impl], err = run_case(impl, mode, shape, args)
                            if err:
                                print(f'  ({impl} {model} stage {stage} {input_name} B{batch} {mode}: {err})',
                                      file=sys.stderr)
                        key = 'cpu_ms' if args.device == 'cpu' else 'wall_ms'
                        get = lambda impl, field: result[impl][field] if result[impl] else None  # noqa: E731
                        ours_t, unf_t = get('ours', key), get('unfold', key)
                        ours_m, unf_m = get('ours', 'peak_mib'), get('unfold', 'peak_mib')
                        time_ratio = ours_t / unf_t if ours_t and unf_t else None
                        mem_ratio = ours_m / unf_m if ours_m is not None and unf_m else None
                        print(f'| {model} | {stage} ({k}) | {input_name} | {b} | {mode} | {g}, {c}, {h}, {w} | '
                              f'{fmt(ours_t, ".1f")} | {fmt(unf_t, ".1f")} | {fmt(get("ref", key), ".1f")} | '
                              f'{fmt(ours_m, ".1f")} | {fmt(unf_m, ".1f")} | {fmt(get("ref", "peak_mib"), ".1f")} | '
                              f'{fmt(time_ratio, ".2f")} | {fmt(mem_ratio, ".3f")} |', flush=True)
                        rows.append(dict(model=model, stage=stage, kernel=k, input=input_name, batch=b, mode=mode,
                                         shape=shape, results=result, time_ratio=time_ratio,
                                         memory_ratio=mem_ratio))
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)


if __name__ == '__main__':
    main()
