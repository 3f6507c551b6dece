"""Print the ResNet backbones' structure, parameters and multiply-adds (Table 1 of the ResNet paper).

Usage: python tools/backbone_summary.py [--depth 18 34 50 101 152] [--style caffe|pytorch] [--size 224]
"""

import argparse
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from restransfer.backbone import DEPTHS, ResNet
from restransfer.cli import run_tool


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, nargs="+", default=list(DEPTHS), choices=list(DEPTHS))
    parser.add_argument("--style", default="caffe", choices=["caffe", "pytorch"])
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    if args.size < 1:
        parser.error(f"--size {args.size}: give the input side in pixels, at least 1 (the paper's is 224)")
    print(f"{'depth':>5} {'blocks':>16} {'params (M)':>11} {'mult-adds (G)':>14}  feature shapes at {args.size}px")
    for depth in args.depth:
        model = ResNet(depth, style=args.style, num_classes=1000, out_features=("res2", "res3", "res4", "res5")).eval()
        x = torch.zeros(1, 3, args.size, args.size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.classify(x)
        with torch.no_grad():
            feats = model(x)
        shapes = " ".join(f"{k}:{tuple(v.shape[1:])}" for k, v in feats.items())
        params = sum(p.numel() for p in model.parameters()) + sum(
            b.numel() for n, b in model.named_buffers() if n.endswith(("weight", "bias"))
        )
        print(
            f"{depth:>5} {str(DEPTHS[depth][1]):>16} {params / 1e6:>11.1f} "
            f"{counter.get_total_flops() / 2e9:>14.2f}  {shapes}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, memory_hint="lower --size"))
