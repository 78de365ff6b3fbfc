import pickle
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from g16net.data import NAMES, DataSource, build_data
from g16net.data.synthetic import CLASS_NAMES, SyntheticRenderer, render, sample_params

# ---------------------------------------------------------------- synthetic


def small_synthetic(**kw):
    cfg = dict(name="synthetic", native_resolution=96, half_resolution=64,
               synthetic=dict(train_size=64, val_size=48, seed=3))
    cfg.update(kw)
    return build_data(cfg)


def highfreq_energy(imgs: torch.Tensor) -> float:
    """Share of spectral power above half the Nyquist frequency (per image, averaged)."""
    x = imgs.float().mean(1)
    x = x - x.mean((1, 2), keepdim=True)
    p = torch.fft.fft2(x).abs() ** 2
    f = torch.fft.fftfreq(x.shape[-1]).abs()
    high = (f[:, None].maximum(f[None, :]) > 0.25).float()
    return ((p * high).sum((1, 2)) / p.sum((1, 2))).mean().item()


def test_synthetic_source_metadata_and_shapes():
    src = small_synthetic()
    assert isinstance(src, DataSource)
    assert (src.name, src.num_classes, src.native_resolution, src.half_resolution) == ("synthetic", 10, 96, 64)
    assert src.class_names == list(CLASS_NAMES) and len(set(src.class_names)) == 10
    assert len(src.mean) == 3 and len(src.std) == 3 and all(0 < s < 1 for s in src.std)
    for ds, n, res in [(src.train_dataset(64), 64, 64), (src.val_dataset(96), 48, 96),
                       (src.train_dataset(80, eval_transform=True), 64, 80)]:
        assert len(ds) == n
        img, label = ds[5]
        assert img.shape == (3, res, res) and img.dtype == torch.uint8
        assert isinstance(label, int) and 0 <= label < 10
    # pixel values use the whole range rather than a constant or a 0-1 float cast to uint8
    imgs = src.val_dataset(64).images.float()
    assert imgs.std() > 20 and imgs.max() > 200


def test_synthetic_same_seed_identical_different_seed_differs():
    a = SyntheticRenderer(40, seed=7, split="train")
    b = SyntheticRenderer(40, seed=7, split="train")
    c = SyntheticRenderer(40, seed=8, split="train")
    assert torch.equal(a.images(64), b.images(64)) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images(64), c.images(64))
    assert not torch.equal(a.labels, c.labels)
    # train and val are different draws from the same seed
    assert not torch.equal(SyntheticRenderer(40, 7, "val").images(64), a.images(64))
    # sample i does not depend on how many samples are drawn
    assert torch.equal(SyntheticRenderer(300, 7, "train").images(64)[:40], a.images(64))


def test_synthetic_identical_in_another_process():
    code = ("import hashlib, torch; from g16net.data.synthetic import SyntheticRenderer as R; r = R(30, 5, 'val');"
            "print(hashlib.sha256(r.images(48).numpy().tobytes() + r.labels.numpy().tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    import hashlib

    r = SyntheticRenderer(30, 5, "val")
    assert out == hashlib.sha256(r.images(48).numpy().tobytes() + r.labels.numpy().tobytes()).hexdigest()


def noise_free_params(n, seed, split="val"):
    p = sample_params(n, seed, split)
    p["noise"] = torch.zeros_like(p["noise"])
    return p


def test_synthetic_rendered_at_resolution_not_upsampled():
    p = noise_free_params(64, 0)
    lo, hi = render(p, 64), render(p, 96)
    assert lo.shape == (64, 3, 64, 64) and hi.shape == (64, 3, 96, 96)
    # Same scenes: 8x8 (at 64 px) and 12x12 (at 96 px) block means agree closely, and not across scenes.
    pool = torch.nn.functional.avg_pool2d
    assert (pool(hi.float(), 12) - pool(lo.float(), 8)).abs().mean() < 2
    assert (pool(hi.float(), 12) - pool(lo.float(), 8).roll(1, 0)).abs().mean() > 20
    # ... but the 96 px render has detail an upsampled 64 px render lacks (one-pixel edges at 96 px).
    up = torch.nn.functional.interpolate(lo.float(), size=96, mode="bicubic", align_corners=False)
    up = up.clamp(0, 255).round().to(torch.uint8)
    assert highfreq_energy(hi) > 1.7 * highfreq_energy(up)


def test_synthetic_scene_is_resolution_independent_without_noise():
    p = noise_free_params(20, 1, "train")
    lo, hi = render(p, 64).float(), render(p, 128).float()
    # Without sensor noise, 2x2 box-downsampling the 128 px render gives the 64 px render up to edge aliasing.
    assert (torch.nn.functional.avg_pool2d(hi, 2) - lo).abs().mean() < 1.5
    # The same labels at every resolution: the renderer only decides pixels.
    r = SyntheticRenderer(20, 1, "train")
    assert torch.equal(r.dataset(64).labels, r.dataset(128).labels)


def test_synthetic_labels_balanced_and_classes_visible():
    p = sample_params(2000, 0, "train")
    counts = torch.bincount(p["label"], minlength=10)
    assert counts.min() > 150
    # the texture band is where the class says: fine band frequencies are all above the coarse band ones
    fine, coarse = p["freq"][p["label"] % 2 == 1], p["freq"][p["label"] % 2 == 0]
    assert fine.min() > coarse.max()


def test_synthetic_train_augmentation_and_crop_pct():
    torch.manual_seed(0)
    src = small_synthetic(train_scale=[1.0, 1.0], train_ratio=[1.0, 1.0])  # flips only
    ds = src.train_dataset(64)
    base = src.renderers["train"].images(64)
    out = [ds[i][0] for i in range(len(ds))]
    flipped = sum(not torch.equal(o, b) for o, b in zip(out, base))
    assert 10 < flipped < len(ds) - 10  # random horizontal flips, about half
    assert all(torch.equal(o, b) or torch.equal(o, b.flip(-1)) for o, b in zip(out, base))
    ev = src.train_dataset(64, eval_transform=True)
    assert all(torch.equal(ev[i][0], base[i]) for i in range(len(ev)))
    # The default adds mild Inception crops (area 0.6-1): same size, but neither the image nor its mirror.
    default = small_synthetic().train_dataset(64)
    for i in range(4):
        img = default[i][0]
        assert img.shape == (3, 64, 64) and img.dtype == torch.uint8
        assert not torch.equal(img, base[i]) and not torch.equal(img, base[i].flip(-1))
    cropped = small_synthetic(crop_pct=0.8).val_dataset(64)
    full = SyntheticRenderer(48, 3, "val").images(80)
    assert torch.equal(cropped[0][0], full[0, :, 8:72, 8:72])


def test_synthetic_dataloader_workers_and_pickle():
    ds = small_synthetic().val_dataset(64)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2)
    x, y = next(iter(loader))
    assert x.shape == (16, 3, 64, 64) and x.dtype == torch.uint8 and torch.equal(x[0], ds[0][0])
    assert torch.equal(pickle.loads(pickle.dumps(ds)).images, ds.images)
    # a source's render is cached: asking again returns the same tensor, not a second render
    src = small_synthetic()
    assert src.val_dataset(64).images is src.val_dataset(64).images


# ---------------------------------------------------------------- image folders


def write_png(path, colour, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    arr = np.clip(np.array(colour)[None, None] + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(arr.astype(np.uint8)).save(path)


COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "emu": (40, 40, 200)}


@pytest.fixture
def split_tree(tmp_path):
    for split, n in (("train", 4), ("val", 2)):
        for cls, col in COLOURS.items():
            for i in range(n):
                write_png(tmp_path / split / cls / f"{cls}{i}.png", col)
    return tmp_path


@pytest.fixture
def flat_tree(tmp_path):
    for cls, col in COLOURS.items():
        for i in range(10):
            write_png(tmp_path / cls / f"{cls}{i}.png", col)
    return tmp_path


def folder_cfg(root, **kw):
    return dict(name="imagefolder", root=str(root), native_resolution=48, half_resolution=32, **kw)


def test_imagefolder_train_val_layout(split_tree):
    torch.manual_seed(0)
    (split_tree / "train" / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    (split_tree / "val" / "README.txt").write_text("loose files are ignored")
    src = build_data(folder_cfg(split_tree))
    assert src.class_names == ["cat", "dog", "emu"] and src.num_classes == 3
    assert src.mean == pytest.approx((0.485, 0.456, 0.406))
    train, val = src.train_dataset(32), src.val_dataset(48)
    assert len(train) == 12 and len(val) == 6 and src.num_files == 18
    for ds, res in ((train, 32), (val, 48), (src.train_dataset(48, eval_transform=True), 48)):
        for i in range(len(ds)):
            img, label = ds[i]
            assert img.shape == (3, res, res) and img.dtype == torch.uint8
            # the class colour survives the transforms: labels match the folders
            assert int(img.float().mean((1, 2)).argmax()) == label
    # eval preprocessing is deterministic, training augmentation is not
    ev = src.train_dataset(48, eval_transform=True)
    assert torch.equal(ev[0][0], ev[0][0])
    tr = src.train_dataset(48)
    assert any(not torch.equal(tr[0][0], tr[0][0]) for _ in range(5))
    assert src.maybe_verify() is True  # auto, 18 files


def test_imagefolder_eval_resize_and_centre_crop(tmp_path):
    # left third red, middle green, right third blue; 90x60 -> short side 60 / 0.5 ... crop keeps the centre
    arr = np.zeros((60, 90, 3), np.uint8)
    arr[:, :30, 0] = arr[:, 30:60, 1] = arr[:, 60:, 2] = 255
    for split in ("train", "val"):
        for c in ("a", "b"):  # classification needs 2 classes; class a's one image is the one looked at
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(arr).save(tmp_path / split / c / "x.png")
    img = build_data(folder_cfg(tmp_path, crop_pct=0.5)).val_dataset(32)[0][0].float()
    # short side resized to 64 (32 / 0.5): width 96, centre crop 32 covers only the green middle third
    assert img.shape == (3, 32, 32) and img[1].mean() > 250 and img[0].max() < 5 and img[2].max() < 5
    img = build_data(folder_cfg(tmp_path, crop_pct=1.0)).val_dataset(30)[0][0].float()
    assert img[0, :, :5].mean() > 200 and img[2, :, -5:].mean() > 200


def test_imagefolder_split_fraction_is_deterministic_and_stratified(flat_tree):
    src = build_data(folder_cfg(flat_tree, split_fraction=0.7))
    train, val = src.train_dataset(32), src.val_dataset(32)
    assert len(train) == 21 and len(val) == 9
    assert sorted(train.targets) == [0] * 7 + [1] * 7 + [2] * 7
    assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}
    again = build_data(folder_cfg(flat_tree, split_fraction=0.7))
    assert again.train_dataset(32).samples == train.samples
    other = build_data(folder_cfg(flat_tree, split_fraction=0.7, split_seed=1))
    assert other.train_dataset(32).samples != train.samples
    img, label = val[0]
    assert img.shape == (3, 32, 32) and int(img.float().mean((1, 2)).argmax()) == label


def test_imagenet_layout_and_resolutions_from_model_size(split_tree):
    """imagenet leaves its resolutions to the run plan, which reads them from the model size's row."""
    from g16net.core.config import ConfigError

    from .conftest import compose_cfg, plan_of

    src = build_data(dict(name="imagenet", root=str(split_tree)))
    assert (src.native_resolution, src.half_resolution, src.num_classes) == (None, None, 3)
    base = ["data=imagenet", f"data.root={split_tree}", "trainer=cpu", "batch_size=8", "finetune.batch_size=8"]
    for extra, want in ((["model.size=b0"], (224, 160)), (["model.size=b6", "data.half_resolution=128"], (528, 128)),
                        (["model.size=b3", "data.native_resolution=256"], (256, 204))):
        plan = plan_of(compose_cfg([*base, *extra]))
        assert (plan.native_res, plan.train_res) == want, extra
    with pytest.raises(ConfigError, match="no half resolution"):
        plan_of(compose_cfg([*base, "model.size=b7"]))


def test_hydra_config_files_load_and_validate(split_tree):
    from pathlib import Path

    from hydra.utils import get_class
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf" / "data"
    files = sorted(p.stem for p in conf.glob("*.yaml"))
    assert files == sorted(NAMES)
    for name in files:
        cfg = OmegaConf.load(conf / f"{name}.yaml")
        assert cfg.name == name and issubclass(get_class(cfg._target_), DataSource)
    # each yaml lists only its own arguments: a folder layout key is unknown to the synthetic set
    with pytest.raises(ValueError, match=r"unknown config key 'data\.split_fraction'"):
        build_data(dict(name="synthetic", split_fraction=0.5))
    src = build_data(OmegaConf.load(conf / "synthetic.yaml"))
    assert (src.native_resolution, src.half_resolution, src.num_classes) == (96, 64, 10)
    cfg = OmegaConf.load(conf / "imagenet.yaml")
    with pytest.raises(ValueError, match=r"data\.root='\?\?\?' is not set"):
        build_data(cfg)
    cfg.root = str(split_tree)
    assert build_data(cfg).num_classes == 3
    cfg = OmegaConf.load(conf / "imagefolder.yaml")
    cfg.root = str(split_tree)
    with pytest.raises(ValueError, match=r"data\.native_resolution='\?\?\?' is not set"):
        build_data(cfg)


# ---------------------------------------------------------------- errors


def test_error_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.root.*does not exist"):
        build_data(folder_cfg(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"data\.root='\?\?\?' is not set"):
        build_data(dict(name="imagefolder", native_resolution=48, half_resolution=32))


def test_error_empty_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.root.*is empty"):
        build_data(folder_cfg(tmp_path))


def test_error_no_class_subfolders(tmp_path):
    write_png(tmp_path / "loose.png", (1, 2, 3))
    with pytest.raises(FileNotFoundError, match=r"no class subfolders.*loose\.png"):
        build_data(folder_cfg(tmp_path, split_fraction=0.5))


def test_error_class_folders_without_images(tmp_path):
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            (tmp_path / split / c / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"data\.root.*no valid file"):
        build_data(folder_cfg(tmp_path)).train_dataset(32)


def test_error_flat_folder_needs_split_fraction(flat_tree):
    with pytest.raises(ValueError, match="split_fraction must be set"):
        build_data(folder_cfg(flat_tree))
    with pytest.raises(ValueError, match=r"data\.split_fraction=1\.0 is invalid"):
        build_data(folder_cfg(flat_tree, split_fraction=1.0))
    with pytest.raises(FileNotFoundError, match="root/train"):
        build_data(dict(name="imagenet", root=str(flat_tree)))


def test_error_train_val_class_mismatch(split_tree):
    write_png(split_tree / "val" / "fox" / "f.png", (9, 9, 9))
    with pytest.raises(ValueError, match=r"different class folders.*fox"):
        build_data(folder_cfg(split_tree))


@pytest.mark.parametrize("key,value,match", [
    ("name", "mnist", r"data\.name='mnist' is invalid; allowed: synthetic, cifar10"),
    ("native_resolution", 0, r"data\.native_resolution=0 is invalid; allowed: a positive integer"),
    ("half_resolution", 64.5, r"data\.half_resolution=64\.5 is invalid"),
    ("native_resolution", "96", r"data\.native_resolution='96' is invalid"),
    ("crop_pct", 1.5, r"data\.crop_pct=1\.5 is invalid; allowed: a number in \(0, 1\]"),
    ("train_scale", [0.5, 0.1], r"data\.train_scale=\[0\.5, 0\.1\] is invalid"),
    ("interpolation", "lanczos", r"data\.interpolation='lanczos' is invalid; allowed: nearest, bilinear"),
    ("verify_images", "sometimes", r"data\.verify_images='sometimes' is invalid"),
    ("mean", [0.5, 0.5], r"data\.mean=\[0\.5, 0\.5\] is invalid"),
    ("std", [0.5, 0.5, 0], r"data\.std=\[0\.5, 0\.5, 0\] is invalid"),
    ("num_workers", -1, r"data\.num_workers=-1 is invalid"),
    ("hflip", "yes", r"data\.hflip='yes' is invalid; allowed: true or false"),
    ("num_classes", 12, r"data\.num_classes=12 but the synthetic set has 10"),
    ("synthetic", {"train_size": 0}, r"data\.synthetic\.train_size=0 is invalid"),
    ("synthetic", {"size": 10}, r"unknown config key 'data\.synthetic\.size'"),
    ("batch_size", 32, r"unknown config key 'data\.batch_size'"),
])
def test_error_bad_values_name_key_value_and_allowed(key, value, match):
    with pytest.raises(ValueError, match=match):
        small_synthetic(**{key: value})


def test_error_resolution_null_for_non_imagenet(split_tree):
    with pytest.raises(ValueError, match=r"data\.half_resolution is not set.*must be a positive integer"):
        build_data(dict(name="synthetic", native_resolution=96, half_resolution=None))
    with pytest.raises(ValueError, match=r"data\.resolution=0 is invalid"):
        small_synthetic().val_dataset(0)


def test_error_num_classes_mismatch(split_tree):
    with pytest.raises(ValueError, match=r"data\.num_classes=5 but .* has 3 class folders"):
        build_data(folder_cfg(split_tree, num_classes=5))


def test_corrupt_png_named_by_verify_and_by_loading(split_tree):
    bad = split_tree / "train" / "dog" / "dog9.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    src = build_data(folder_cfg(split_tree, verify_images=True))
    with pytest.raises(ValueError, match=r"corrupt or unreadable image file .*dog9\.png"):
        src.verify()
    with pytest.raises(ValueError, match=r"corrupt or unreadable image file .*dog9\.png"):
        src.maybe_verify()
    ds = src.train_dataset(32)
    idx = [i for i, (p, _) in enumerate(ds.samples) if p.endswith("dog9.png")][0]
    with pytest.raises(ValueError, match=r"cannot load image file .*dog9\.png"):
        ds[idx]
    ds[0]  # the good files still load
    assert build_data(folder_cfg(split_tree, verify_images=False)).maybe_verify() is False


def test_truncated_png_named_when_loaded(split_tree):
    good = split_tree / "val" / "cat" / "cat0.png"
    good.write_bytes(good.read_bytes()[:60])
    ds = build_data(folder_cfg(split_tree)).val_dataset(32)
    with pytest.raises(ValueError, match=r"cat0\.png"):
        ds[0]


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_error_cifar_without_data_and_download_false(tmp_path, name, folder):
    cfg = dict(name=name, root=str(tmp_path / "cifar"), native_resolution=64, half_resolution=32)
    with pytest.raises(FileNotFoundError, match=rf"data\.root=.*{folder}.*data\.download=true"):
        build_data(cfg)
    with pytest.raises(ValueError, match=r"data\.root=None is invalid; allowed: the path of the dataset's folder"):
        build_data({**cfg, "root": None})


def test_cifar_from_local_files(tmp_path, monkeypatch):
    """A tiny fake CIFAR-10 in torchvision's on-disk format (MD5 check bypassed) goes through the transforms."""
    from torchvision import datasets

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for fname, _ in datasets.CIFAR10.train_list + datasets.CIFAR10.test_list:
        batch = {"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 9]}
        (base / fname).write_bytes(pickle.dumps(batch))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    cfg = dict(name="cifar10", root=str(tmp_path), native_resolution=64, half_resolution=32)
    monkeypatch.setattr(datasets.cifar, "check_integrity", lambda *a, **k: True)
    src = build_data(cfg)
    assert src.num_classes == 10 and src.class_names == names
    assert src.mean == pytest.approx((0.4914, 0.4822, 0.4465))
    train, val = src.train_dataset(32), src.val_dataset(64)
    assert len(train) == 20 and len(val) == 4
    img, label = val[3]
    assert img.shape == (3, 64, 64) and img.dtype == torch.uint8 and label == 9
    assert train[0][0].shape == (3, 32, 32)
    # without the bypass, torchvision's checksum failure is reported against the config key
    monkeypatch.undo()
    src = build_data(cfg)
    with pytest.raises(ValueError, match=r"data\.root=.*fail their checksum"):
        src.verify()
