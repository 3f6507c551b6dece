"""Writers of tiny ImageNet CLS-LOC files (devkit and Kaggle layouts) for the CLS-LOC tests.

A ground truth is a list of image dicts ``{"name", "labels": [wnid...], "objects": [(wnid, (xmin, ymin, xmax,
ymax))...], "width", "height"}`` with devkit (inclusive) boxes; both layouts are written from the same list.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Dict, List, Sequence, Tuple


def make_classes(k: int, seed: int = 0) -> Tuple[List[str], List[str], List[str]]:
    """``k`` WNIDs in sorted order, their names, and a shuffled "devkit id" order (devkit id i+1 = order[i])."""
    wnids = [f"n{1440764 + 1013 * i:08d}" for i in range(k)]
    names = [f"class_{i}" for i in range(k)]
    order = list(wnids)
    random.Random(seed).shuffle(order)
    return wnids, names, order


def write_map_clsloc(path: Path, devkit_order: Sequence[str], names_by_wnid: Dict[str, str]) -> Path:
    path.write_text("".join(f"{w} {i} {names_by_wnid[w]}\n" for i, w in enumerate(devkit_order, 1)))
    return path


def write_loc_synset_mapping(path: Path, wnids: Sequence[str], names_by_wnid: Dict[str, str]) -> Path:
    path.write_text("".join(f"{w} {names_by_wnid[w]}, alt name\n" for w in sorted(wnids)))
    return path


def xml_text(img: dict, folder: str = "val") -> str:
    objects = "".join(
        f"\t<object>\n\t\t<name>{w}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
        f"\t\t<difficult>0</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{b[0]}</xmin>\n\t\t\t<ymin>{b[1]}</ymin>\n"
        f"\t\t\t<xmax>{b[2]}</xmax>\n\t\t\t<ymax>{b[3]}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        for w, b in img["objects"]
    )
    return (
        f"<annotation>\n\t<folder>{folder}</folder>\n\t<filename>{img['name']}</filename>\n"
        f"\t<source>\n\t\t<database>ILSVRC_2012</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{img['width']}</width>\n\t\t<height>{img['height']}</height>\n"
        f"\t\t<depth>3</depth>\n\t</size>\n\t<segmented>0</segmented>\n{objects}</annotation>\n"
    )


def write_devkit(root: Path, images: Sequence[dict], devkit_order: Sequence[str]) -> Tuple[Path, Path]:
    """Validation XML folder and ground-truth file (devkit ids of ``devkit_order``); returns both paths."""
    xml_dir = root / "Annotations" / "CLS-LOC" / "val"
    xml_dir.mkdir(parents=True, exist_ok=True)
    ids = {w: i for i, w in enumerate(devkit_order, 1)}
    for img in images:
        (xml_dir / f"{img['name']}.xml").write_text(xml_text(img))
    gt = root / "ground_truth.txt"
    ordered = sorted(images, key=lambda im: im["name"])
    gt.write_text("".join(" ".join(str(ids[w]) for w in im["labels"]) + "\n" for im in ordered))
    return xml_dir, gt


def write_kaggle_solution(path: Path, images: Sequence[dict], seed: int = 0) -> Path:
    """Kaggle's solution CSV, rows in shuffled order (Kaggle's files are not sorted)."""
    rows = list(images)
    random.Random(seed).shuffle(rows)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "PredictionString"])
        for im in rows:
            w.writerow([im["name"], " ".join(f"{wn} {b[0]} {b[1]} {b[2]} {b[3]}" for wn, b in im["objects"]) + " "])
    return path


def write_devkit_submission(path: Path, guesses: Sequence[Sequence[tuple]], devkit_order: Sequence[str]) -> Path:
    """``guesses[i]`` = [(wnid, (xmin, ymin, xmax, ymax)), ...] for image i in ground-truth order."""
    ids = {w: i for i, w in enumerate(devkit_order, 1)}
    path.write_text("".join(" ".join(f"{ids[w]} {b[0]} {b[1]} {b[2]} {b[3]}" for w, b in g) + "\n" for g in guesses))
    return path


def write_kaggle_submission(path: Path, names: Sequence[str], guesses: Sequence[Sequence[tuple]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "PredictionString"])
        for name, g in reversed(list(zip(names, guesses))):  # any row order
            w.writerow([name, " ".join(f"{wn} {b[0]} {b[1]} {b[2]} {b[3]}" for wn, b in g)])
    return path
