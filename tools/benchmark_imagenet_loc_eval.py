"""Time the ImageNet CLS-LOC evaluation and localization on a synthetic validation set of full size.

    python tools/benchmark_imagenet_loc_eval.py [--images 50000] [--xml] [--output timings.json]

Builds 50,000 images (1000 classes, 1-3 boxes each, like ILSVRC val), writes the Kaggle solution, a devkit text
submission and a Kaggle CSV submission with 5 guesses per image into a temporary folder (with --xml also the
50,000 devkit XML files), then times reading each file, the evaluation itself, and the three localization
modes over detector outputs of 100 detections per image. Prints seconds per step.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import restransfer  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restransfer.cli import run_tool


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=50000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--detections", type=int, default=100, help="detections per image for the localization timing")
    p.add_argument("--xml", action="store_true", help="also write and time reading the devkit XML folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="write the timings as json")
    args = p.parse_args(argv)

    from restransfer.boxes import devkit_to_xyxy
    from restransfer.data.imagenet_loc import (
        LocImage, Synsets, read_devkit_annotations, read_kaggle_solution,
    )
    from restransfer.evaluation.imagenet_loc import (
        evaluate_localization, pack_ground_truth, read_devkit_submission, read_kaggle_submission,
    )
    from restransfer.localization import (
        LocGuesses, classifier_guesses, detector_guesses, gt_class_guesses, write_devkit_submission,
        write_kaggle_submission,
    )

    rng = np.random.default_rng(args.seed)
    n, k = args.images, args.classes
    wnids = tuple(f"n{10000000 + 7919 * i:08d}" for i in range(k))
    synsets = Synsets(wnids, wnids, "map_clsloc")
    names = [f"ILSVRC2012_val_{i:08d}" for i in range(1, n + 1)]
    sizes = rng.integers(200, 500, (n, 2))
    labels = rng.integers(0, k, n)
    images = []
    for i in range(n):
        m = int(rng.integers(1, 4))
        xy = rng.integers(0, 100, (m, 2))
        wh = rng.integers(10, 100, (m, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float64)
        images.append(LocImage(names[i], f"val/{names[i]}.JPEG", (wnids[labels[i]],), (wnids[labels[i]],) * m,
                               boxes, int(sizes[i, 0]), int(sizes[i, 1])))
    # guesses: the right class at a random rank (or not at all) with a jittered box, other classes elsewhere
    guesses = LocGuesses.empty(np.arange(1, n + 1))
    for i, im in enumerate(images):
        classes = rng.choice(k, 5, replace=False)
        rank = rng.integers(0, 7)
        if rank < 5:
            classes[rank] = labels[i]
        guesses.wnids[i] = [wnids[c] for c in classes]
        guesses.boxes[i] = devkit_to_xyxy(im.boxes[0]) + rng.normal(0, 8, (5, 4))
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        solution = tmp / "LOC_val_solution.csv"
        with open(solution, "w") as f:
            f.write("ImageId,PredictionString\n")
            for im in images:
                f.write(im.name + "," + " ".join(f"{w} " + " ".join(str(int(v)) for v in b)
                                                 for w, b in zip(im.box_wnids, im.boxes)) + "\n")
        write_devkit_submission(tmp / "sub.txt", guesses, synsets)
        write_kaggle_submission(tmp / "sub.csv", guesses, names)

        def timed(name, fn):
            t = time.perf_counter()
            out = fn()
            timings[name] = time.perf_counter() - t
            print(f"{name:>32s}: {timings[name]:7.3f} s", flush=True)
            return out

        gt_images = timed("read Kaggle solution csv", lambda: read_kaggle_solution(solution, synsets))
        gt = timed("pack ground truth", lambda: pack_ground_truth(gt_images, synsets))
        sub = timed("read devkit submission txt", lambda: read_devkit_submission(tmp / "sub.txt", synsets, n))
        sub_csv = timed("read Kaggle submission csv", lambda: read_kaggle_submission(tmp / "sub.csv", synsets, gt.names))
        blacklist = np.sort(rng.choice(n, n // 50, replace=False))
        metrics = timed("evaluate (top-1 and top-5)", lambda: evaluate_localization(gt, sub, blacklist=blacklist))
        assert metrics == evaluate_localization(gt, sub_csv, blacklist=blacklist)
        print("  metrics:", {key: round(v, 3) for key, v in metrics.items()})
        if args.xml:
            xml_dir = tmp / "Annotations" / "CLS-LOC" / "val"
            xml_dir.mkdir(parents=True)
            for im in images:
                objs = "".join(f"<object><name>{w}</name><bndbox><xmin>{int(b[0])}</xmin><ymin>{int(b[1])}</ymin>"
                               f"<xmax>{int(b[2])}</xmax><ymax>{int(b[3])}</ymax></bndbox></object>"
                               for w, b in zip(im.box_wnids, im.boxes))
                (xml_dir / f"{im.name}.xml").write_text(
                    f"<annotation><size><width>{im.width}</width><height>{im.height}</height></size>{objs}</annotation>")
            timed("read devkit XML folder", lambda: read_devkit_annotations(xml_dir, synsets))

        det = args.detections
        preds = [{"image_id": i + 1, "boxes": np.tile(devkit_to_xyxy(im.boxes[:1]), (det, 1)).astype(np.float32),
                  "scores": rng.random(det).astype(np.float32), "labels": rng.integers(1, k + 1, det)}
                 for i, im in enumerate(images)]
        lut = {j + 1: w for j, w in enumerate(wnids)}
        size_of = {i + 1: (im.width, im.height) for i, im in enumerate(images)}
        scores = rng.random((n, k), dtype=np.float32)
        timed("localize: detector mode", lambda: detector_guesses(preds, lut))
        timed("localize: classifier mode", lambda: classifier_guesses(preds, scores, lut, size_of))
        timed("localize: gt_class mode", lambda: gt_class_guesses(
            preds, {i + 1: im.labels for i, im in enumerate(images)}, lut, size_of))
    timings["machine"] = f"{platform.processor() or platform.machine()}, {platform.python_version()}"
    if args.output:
        Path(args.output).write_text(json.dumps(timings, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, memory_hint="lower --images or --detections"))
