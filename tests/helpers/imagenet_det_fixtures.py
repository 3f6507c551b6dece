"""Writers of tiny ILSVRC DET layouts (devkit-format files) for the ImageNet-DET tests."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

# A few real ILSVRC DET classes; tests use the first K of them.
WNIDS = ["n02672831", "n02691156", "n02219486", "n02419796", "n07739125", "n02454379"]
NAMES = ["accordion", "airplane", "ant", "antelope", "apple", "armadillo"]

Obj = Tuple[str, int, int, int, int]  # wnid, xmin, ymin, xmax, ymax (inclusive)


def write_synsets(path: Path, k: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {i + 1} {n}\n" for i, (w, n) in enumerate(zip(WNIDS[:k], NAMES[:k]))))
    return path


def xml_text(name: str, width: int, height: int, objects: Sequence[Obj]) -> str:
    parts = [
        "<annotation>",
        "\t<folder>val</folder>",
        f"\t<filename>{name}</filename>",
        "\t<size>",
        f"\t\t<width>{width}</width>",
        f"\t\t<height>{height}</height>",
        "\t</size>",
    ]
    for wnid, x1, y1, x2, y2 in objects:
        parts += [
            "\t<object>",
            f"\t\t<name>{wnid}</name>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{x1}</xmin>",
            f"\t\t\t<ymin>{y1}</ymin>",
            f"\t\t\t<xmax>{x2}</xmax>",
            f"\t\t\t<ymax>{y2}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def write_val(root: Path, images: Dict[str, Tuple[int, int, List[Obj]]]) -> Tuple[Path, Path]:
    """Write ``root/Annotations/DET/val/<name>.xml`` and ``root/ImageSets/DET/val.txt`` (index = line).
    Returns (annotations dir, val.txt)."""
    ann_dir = root / "Annotations" / "DET" / "val"
    ann_dir.mkdir(parents=True, exist_ok=True)
    sets = root / "ImageSets" / "DET"
    sets.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (name, (w, h, objs)) in enumerate(images.items(), 1):
        (ann_dir / f"{name}.xml").write_text(xml_text(name, w, h, objs))
        lines.append(f"{name} {i}\n")
    (sets / "val.txt").write_text("".join(lines))
    return ann_dir, sets / "val.txt"


def write_train(root: Path, images: Dict[str, Tuple[int, int, List[Obj]]], k: int, flags: Dict[str, List[int]]) -> None:
    """Write train XMLs and ``train_1..k.txt``; ``flags[name][c]`` is the flag of image name for class c+1."""
    ann_dir = root / "Annotations" / "DET" / "train"
    sets = root / "ImageSets" / "DET"
    sets.mkdir(parents=True, exist_ok=True)
    for name, (w, h, objs) in images.items():
        p = ann_dir / f"{name}.xml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(xml_text(name.rsplit("/", 1)[-1], w, h, objs))
    for c in range(k):
        (sets / f"train_{c + 1}.txt").write_text("".join(f"{n} {flags[n][c]}\n" for n in images))
