"""Built-in synthetic 10-class dataset, rendered procedurally at whatever resolution is asked for.

How an image is made
--------------------
Each sample is a scene given by continuous parameters: row i of a (N, K) uniform matrix from
`numpy.random.default_rng([seed, split])`, so sample i is the same in every process, for any N and at every
resolution.

* label c in 0..9 = (shape, band): shape = c // 2 picks one of 5 silhouettes (disk, square, triangle, ring,
  cross), band = c % 2 the spatial-frequency band of the object's texture;
* object: centre within +-0.2, radius 0.5-0.75 (in image half-widths), any rotation; its colour has the hue of
  its shape (centres 0.2 apart) jittered by +-0.13, so neighbouring shapes' colours overlap and colour
  narrows the shape down without deciding it;
* texture: one sinusoidal grating (random orientation and phase, depth 0.7-1) with a frequency in *scene*
  units: 3-5 cycles per image width for the coarse band, 9-14 for the fine band;
* nuisance: a two-colour linear background gradient, 4 soft coloured blobs of clutter, and per-pixel
  Gaussian sensor noise (sigma 0.02-0.05 of full scale).

The scene is evaluated on the pixel-centre grid of an R x R image with torch ops, vectorised over samples:
signed distance functions give the silhouette (anti-aliased over one output pixel), the background and the
grating are exact separable functions of x and y (a batched matmul), every frequency is below Nyquist for
R >= 32, and the result is quantised to uint8. Nothing is resized: sample i at 64 and at 96 px is one scene
sampled on two grids (only the pixel noise is drawn per resolution), and the 96 px image has the sharper
edges and finer sampling a real higher-resolution photo would have. 5000 images render in about 2 s at 96 px.

Why resolution matters
----------------------
The evidence lives at three scales: silhouette (coarse: the object's outline, 32-48 px across at 64 px),
texture band (fine: a period of 4.6-7.1 px at 64 px for the fine band, 13-21 px for the coarse one) and
colour (none). Both spatial cues are fixed in scene units, so their size in pixels grows with the resolution:
at 96 px objects are 1.5x bigger and the fine band's period is 6.9-10.7 px, between the two bands as seen at
64 px. Training at the half resolution (64 px) with mild Inception crops (area 0.6-1, zoom <= ~1.3x) teaches
the network these pixel scales; a test at 80 px (1.25x) stays within what the crops showed it (the FixRes
"apparent object size" effect), 96 px (1.5x) goes past it and costs accuracy, 128 px costs a lot. Finetuning
only the head at 96 px re-maps the backbone's features and recovers (or exceeds) the 64 px accuracy: the
train/test resolution discrepancy that half-resolution training plus native-resolution finetuning exploits.
"""

import contextlib
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

from ..core.schema import key, section
from .config import DataConfig
from .source import DataSource
from .transforms import interpolation_mode

NUM_CLASSES = 10
SHAPES = ("disk", "square", "triangle", "ring", "cross")
CLASS_NAMES = tuple(f"{s}_{b}" for s in SHAPES for b in ("coarse", "fine"))

# Generation constants; changing any of them changes the dataset, so they are part of its definition.
COARSE_BAND = (3.0, 5.0)  # texture frequency, cycles per image width
FINE_BAND = (9.0, 14.0)
HUE_JITTER = 0.13  # hue centres are 0.2 apart, so neighbouring shapes' colours overlap
SIZE = (0.5, 0.75)  # object radius, in image half-widths
SHIFT = 0.2  # object centre offset, in image half-widths
CONTRAST = (0.7, 1.0)  # texture modulation depth
NOISE_SIGMA = (0.02, 0.05)  # per-pixel Gaussian noise, 0-1 units
N_BLOBS = 4
_BLOB_COLS = 7
_PARAM_COLS = 20 + _BLOB_COLS * N_BLOBS  # uniform draws per sample; row i is sample i's parameters
_CHUNK = 256  # samples rendered at once (bounds memory); also the unit of pixel-noise seeding

_SPLIT_OFFSET = {"train": 0, "val": 1}

# Per-channel pixel statistics (0-1 units) of the training split at 64 px, measured on 4000 images; the default
# normalisation when the config leaves mean/std null.
MEAN = (0.452, 0.445, 0.448)
STD = (0.211, 0.214, 0.215)


def sample_params(n: int, seed: int, split: str) -> dict[str, torch.Tensor]:
    """Scene parameters of samples 0..n-1 (float64), identical in every process for the same seed/split."""
    # PCG64 fills the (n, K) matrix row by row, so sample i's parameters do not depend on n.
    u = torch.from_numpy(np.random.default_rng([seed, _SPLIT_OFFSET[split]]).random((n, _PARAM_COLS)))
    label = (u[:, 0] * NUM_CLASSES).long().clamp_(max=NUM_CLASSES - 1)
    shape, band = label // 2, label % 2

    def lerp(col, lo, hi):
        return lo + (hi - lo) * u[:, col]

    f_lo = torch.where(band == 1, FINE_BAND[0], COARSE_BAND[0])
    f_hi = torch.where(band == 1, FINE_BAND[1], COARSE_BAND[1])
    blobs = u[:, 20:].reshape(n, N_BLOBS, _BLOB_COLS)
    return dict(
        label=label, shape=shape,
        cx=lerp(1, -SHIFT, SHIFT), cy=lerp(2, -SHIFT, SHIFT), size=lerp(3, *SIZE), rot=lerp(4, 0, 2 * math.pi),
        hue=(shape / len(SHAPES) + lerp(5, -HUE_JITTER, HUE_JITTER)) % 1.0, sat=lerp(6, 0.55, 1.0),
        val=lerp(7, 0.6, 1.0),
        freq=f_lo + (f_hi - f_lo) * u[:, 8], tex_angle=lerp(9, 0, math.pi), tex_phase=lerp(10, 0, 2 * math.pi),
        contrast=lerp(11, *CONTRAST),
        bg0=u[:, 12:15] * 0.8 + 0.1, bg1=u[:, 15:18] * 0.8 + 0.1, bg_angle=lerp(18, 0, 2 * math.pi),
        noise=lerp(19, *NOISE_SIGMA),
        blob_xy=blobs[..., 0:2] * 2.4 - 1.2, blob_sigma=0.08 + 0.2 * blobs[..., 2], blob_rgb=blobs[..., 3:6],
        blob_alpha=0.3 + 0.5 * blobs[..., 6],
    )


def _hsv_to_rgb(h, s, v):
    n = torch.tensor([5.0, 3.0, 1.0], dtype=h.dtype)
    k = (n + h[:, None] * 6) % 6
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _separable(coef, ybasis, xbasis):
    """sum_k coef[b, c, k] * ybasis[b, k, i] * xbasis[b, k, j] -> (B, C, R, R), one batched matmul.

    The smooth parts of a scene (background gradient, Gaussian blobs, gratings) are sums of products of a
    function of y and a function of x, so they are evaluated exactly on the grid at the cost of a matmul.
    """
    return (ybasis.transpose(1, 2).unsqueeze(1) * coef.unsqueeze(2)) @ xbasis.unsqueeze(1)


def _silhouette_sdf(shape: int, dx, dy, cr, sr, size):
    """Signed distance in scene units (negative inside) of one shape; dx (b,1,R), dy (b,R,1) from the centre.

    Built from broadcast sums of per-row and per-column terms so each full-size tensor costs one op.
    """
    if shape in (0, 3):  # disk, ring
        r = (dx * dx + dy * dy).sqrt_()
        return r.sub_(size) if shape == 0 else r.sub_(0.72 * size).abs_().sub_(0.28 * size)
    if shape == 2:  # triangle: three half-planes at 120 degrees, inradius 0.55
        d = None
        for k in range(3):
            ck, sk = math.cos(2 * math.pi * k / 3), math.sin(2 * math.pi * k / 3)
            h = (dx * (cr * ck - sr * sk)) + (dy * (sr * ck + cr * sk))
            d = h if d is None else torch.maximum(d, h, out=d)
        return d.sub_(0.55 * size)
    au = ((cr * dx) + (sr * dy)).abs_()
    av = ((cr * dy) - (sr * dx)).abs_()
    if shape == 1:  # square
        return torch.maximum(au, av).sub_(0.8 * size)
    arm = 0.34 * size  # cross: union of two bars
    return torch.minimum(torch.maximum(au - size, av - arm), torch.maximum(au - arm, av - size))


@contextlib.contextmanager
def _one_thread():
    # These are memory-bound elementwise ops on mid-sized tensors: with intra-op threads the per-op
    # synchronisation dominates (measured 4-5x slower with 2 threads on a busy 2-core machine).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def render(params: dict[str, torch.Tensor], resolution: int, seed: int = 0) -> torch.Tensor:
    """uint8 (N, 3, R, R) images of the scenes in `params` (from `sample_params`), rendered at R = resolution.

    Pixel noise is drawn per chunk of `_CHUNK` samples from a generator keyed on (seed, resolution, chunk).
    """
    n, res = params["label"].shape[0], resolution
    out = torch.empty(n, 3, res, res, dtype=torch.uint8)
    with _one_thread():
        for c0 in range(0, n, _CHUNK):
            _render_chunk(params, slice(c0, min(c0 + _CHUNK, n)), res, seed, out)
    return out


def _render_chunk(params, sl: slice, res: int, seed: int, out: torch.Tensor) -> None:
    q = {k: v[sl].to(torch.float32) for k, v in params.items()}
    img = _render_scene(q, params["shape"][sl], res)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, res, sl.start]).generate_state(1)[0]))
    # Drawn at full chunk size so sample i's noise does not depend on the dataset size.
    noise = torch.randn(_CHUNK, 3, res, res, generator=gen)[: img.shape[0]]
    img.add_(noise.mul_((q["noise"] * 255).view(-1, 1, 1, 1)))
    out[sl] = img.clamp_(0, 255).to(torch.uint8)


def _render_scene(q: dict[str, torch.Tensor], shapes: torch.Tensor, res: int) -> torch.Tensor:
    """Noise-free scenes as float (b, 3, R, R) in 0-255 units, offset by +0.5 so a truncating cast rounds."""
    b = shapes.shape[0]
    g = ((torch.arange(res, dtype=torch.float32) + 0.5) * (2.0 / res) - 1.0).expand(b, res)  # pixel centres
    px = 2.0 / res  # one output pixel in scene units (the scene spans [-1, 1])
    one = torch.ones(b, 1, res)

    def vec(name):
        return q[name].view(b, 1)

    # Background = weighted mean of a two-colour linear gradient and N_BLOBS Gaussian blobs of clutter;
    # numerator (3 channels) and denominator share the separable basis [1, x, y, blobs...].
    two_var = 2 * q["blob_sigma"].unsqueeze(2) ** 2
    gx = torch.exp(-((g.unsqueeze(1) - q["blob_xy"][..., 0:1]) ** 2) / two_var)
    gy = torch.exp(-((g.unsqueeze(1) - q["blob_xy"][..., 1:2]) ** 2) / two_var)
    bg_x = torch.cat([one, g.unsqueeze(1), one, gx], 1)
    bg_y = torch.cat([one, one, g.unsqueeze(1), gy], 1)
    diff = q["bg1"] - q["bg0"]
    num = torch.cat([
        (q["bg0"] + 0.5 * diff).unsqueeze(2), (0.35 * diff * torch.cos(vec("bg_angle"))).unsqueeze(2),
        (0.35 * diff * torch.sin(vec("bg_angle"))).unsqueeze(2),
        q["blob_alpha"].unsqueeze(1) * q["blob_rgb"].transpose(1, 2),
    ], 2)  # (b, 3, K)
    den = torch.cat([torch.ones(b, 1, 1), torch.zeros(b, 1, 2), q["blob_alpha"].unsqueeze(1)], 2)
    planes = _separable(torch.cat([num * 255 + 0.5 * den, den], 1), bg_y, bg_x)  # (b, 4, R, R)
    bg = planes[:, :3] / planes[:, 3:]

    # Object fill: colour * (1 - c/2 + c/2 * cos(w (x cos a + y sin a) + phase)), the grating split into
    # x and y factors with cos(p + q) = cos p cos q - sin p sin q.
    wv = math.pi * vec("freq")  # rad per scene unit; freq is in cycles per image width (2 units)
    ax = wv * torch.cos(vec("tex_angle")) * g + vec("tex_phase")
    ay = wv * torch.sin(vec("tex_angle")) * g
    obj_x = torch.stack([one[:, 0], ax.cos(), ax.sin()], 1)
    obj_y = torch.stack([one[:, 0], ay.cos(), ay.sin()], 1)
    c = q["contrast"]
    shade = torch.stack([1 - c / 2, c / 2, -c / 2], 1)  # (b, 3)
    obj_coef = (_hsv_to_rgb(q["hue"], q["sat"], q["val"]) * 255).unsqueeze(2) * shade.unsqueeze(1)
    obj_coef[:, :, 0] += 0.5
    obj = _separable(obj_coef, obj_y, obj_x)

    # Silhouette alpha ramps over one output pixel: anti-aliasing at the rendering resolution.
    alpha = torch.empty(b, 1, res, res)
    dx, dy = (g - vec("cx")).unsqueeze(1), (g - vec("cy")).unsqueeze(2)
    cr, sr = torch.cos(q["rot"]).view(b, 1, 1), torch.sin(q["rot"]).view(b, 1, 1)
    size = q["size"].view(b, 1, 1)
    for s in range(len(SHAPES)):
        idx = (shapes == s).nonzero().squeeze(1)
        if len(idx):
            sdf = _silhouette_sdf(s, dx[idx], dy[idx], cr[idx], sr[idx], size[idx])
            alpha[idx, 0] = sdf.mul_(-1 / px).add_(0.5).clamp_(0, 1)
    return obj.sub_(bg).mul_(alpha).add_(bg)


class SyntheticImages(torch.utils.data.Dataset):
    """Pre-rendered uint8 images (N, 3, R, R) and labels; read-only after construction, so safe in workers."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        self.images, self.labels, self.transform = images, labels, transform
        self.classes = list(CLASS_NAMES)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        img = self.images[i]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[i])


class SyntheticRenderer:
    """Renders and caches one split per resolution; the lock keeps concurrent first requests from rendering twice."""

    def __init__(self, size: int, seed: int, split: str):
        self.size, self.seed, self.split = size, seed, split
        self._params = None
        self._cache: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()

    @property
    def params(self) -> dict[str, torch.Tensor]:
        with self._lock:
            if self._params is None:
                self._params = sample_params(self.size, self.seed, self.split)
            return self._params

    @property
    def labels(self) -> torch.Tensor:
        return self.params["label"]

    def images(self, resolution: int) -> torch.Tensor:
        params = self.params
        with self._lock:
            if resolution not in self._cache:
                noise_seed = self.seed * 2 + _SPLIT_OFFSET[self.split]
                self._cache[resolution] = render(params, resolution, seed=noise_seed)
            return self._cache[resolution]

    def dataset(self, resolution: int, transform=None) -> SyntheticImages:
        return SyntheticImages(self.images(resolution), self.labels, transform)


@dataclass
class SyntheticSizes:
    train_size: Any = key("training images", int, ge=1)
    val_size: Any = key("validation images", int, ge=1)
    seed: Any = key("same seed -> identical images and labels in every process", int, ge=0)


@dataclass
class SyntheticConfig(DataConfig):
    synthetic: Any = section(SyntheticSizes, "the rendered set")


class SyntheticSource(DataSource):
    """The `synthetic` dataset: train/val splits drawn from the same seed, rendered on demand per resolution."""
    Config = SyntheticConfig

    def __init__(self, c: dict):
        syn = c["synthetic"]
        self.name, self._c = "synthetic", c
        if c["num_classes"] is not None and c["num_classes"] != NUM_CLASSES:
            raise ValueError(f"data.num_classes={c['num_classes']} but the synthetic set has {NUM_CLASSES} "
                             "classes; set it to null or 10")
        self.num_classes, self.class_names = NUM_CLASSES, list(CLASS_NAMES)
        self.native_resolution, self.half_resolution = c["native_resolution"], c["half_resolution"]
        self.mean = c["mean"] or MEAN
        self.std = c["std"] or STD
        self.verify_images = c["verify_images"]
        self.renderers = {split: SyntheticRenderer(syn[f"{split}_size"], syn["seed"], split)
                          for split in ("train", "val")}

    def train_dataset(self, resolution: int, eval_transform: bool = False) -> SyntheticImages:
        if eval_transform:
            return self._eval_view("train", resolution)
        res, c = self._check_resolution(resolution), self._c
        steps = []
        if tuple(c["train_scale"]) != (1.0, 1.0) or tuple(c["train_ratio"]) != (1.0, 1.0):
            steps.append(v2.RandomResizedCrop(res, scale=c["train_scale"], ratio=c["train_ratio"],
                                              interpolation=interpolation_mode(c["interpolation"]),
                                              antialias=True))
        if c["hflip"]:
            steps.append(v2.RandomHorizontalFlip())
        return self.renderers["train"].dataset(res, v2.Compose(steps) if steps else None)

    def val_dataset(self, resolution: int) -> SyntheticImages:
        return self._eval_view("val", resolution)

    def _eval_view(self, split: str, resolution: int) -> SyntheticImages:
        # The scene is rendered straight at the size; with crop_pct < 1 it is rendered at size / crop_pct and
        # centre-cropped, the synthetic equivalent of the resize + centre crop used for photos.
        res = self._check_resolution(resolution)
        full = math.floor(res / self._c["crop_pct"])
        if full == res:
            return self.renderers[split].dataset(res)
        return self.renderers[split].dataset(full, v2.CenterCrop(res))
