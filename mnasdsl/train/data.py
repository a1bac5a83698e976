"""Data sources and the streaming loader.

A source is two index-addressable splits; the loader turns a split into fixed-shape uint8
batches in background threads. Shuffling and every example's augmentation are derived from
(seed, epoch, index) alone, so thread scheduling can never change what a batch contains and a
resumed run sees exactly the data an uninterrupted one would. Normalization happens on the
device (uint8 travels, four times less than float32).
"""

from __future__ import annotations

import math
import os
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from ..diagnostics import MnasError
from ..preprocess import EVAL_CROP, center_box
from ..preprocess import default_norm as norm_stats  # noqa: F401 - the training normalization, by its old name

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
VAL_FRACTION = 0.2
SPLIT_SEED = 0  # fixed, so every run (and `eval`) sees the same validation split whatever the training seed
RRC_SCALE = (0.08, 1.0)  # Inception-style random-resized-crop
RRC_RATIO = (3 / 4, 4 / 3)
ARRAY_CROP_SCALE = (0.7, 1.0)  # digits: area fraction of the random crop
SYNTHETIC_SIZE = (2048, 256)  # train, val examples of `synthetic`
SYNTHETIC_CLASSES = 10

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is corrupt: skip it rather than train on grey


def _to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """HW or HWC uint8 -> HW x channels: grey is replicated, extra channels cycle through RGB."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == channels:
        return arr
    return arr[:, :, np.arange(channels) % arr.shape[2]]


def _rrc_box(rng: np.random.Generator, w: int, h: int) -> tuple[float, float, float, float]:
    """Inception random-resized-crop box (10 tries, then the central crop), as torchvision does it."""
    area = w * h
    log_r = (math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*RRC_SCALE)
        ratio = math.exp(rng.uniform(*log_r))
        cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return x0, y0, x0 + cw, y0 + ch
    side = min(w, h)
    return (w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2


def decode_image(path: str | Path, size: tuple[int, int], channels: int,
                 rng: np.random.Generator | None = None, crop: float = EVAL_CROP) -> np.ndarray:
    """Decode, crop and resize one file to uint8 (H, W, channels): random crop + flip when ``rng`` is
    given, else the eval transform's center crop of fraction ``crop`` (the model's recorded one)."""
    mode = "L" if channels == 1 else "RGB"
    with Image.open(path) as im:
        im.draft(mode, (size[1], size[0]))  # JPEG: decode at a reduced scale when the image is much larger
        im = im.convert(mode)
        w, h = im.size
        box = _rrc_box(rng, w, h) if rng is not None else center_box(w, h, size, crop)
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box)
        if rng is not None and rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = np.asarray(im, dtype=np.uint8)
    return _to_channels(arr, channels)


class Split(ABC):
    """Index-addressable examples: ``labels`` plus ``load(i, size, channels, rng, crop)`` -> uint8 image
    or None. ``crop`` is the eval transform's center-crop fraction, for sources of photos."""

    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @abstractmethod
    def load(self, i: int, size: tuple[int, int], channels: int,
             rng: np.random.Generator | None, crop: float = EVAL_CROP) -> np.ndarray | None:
        raise NotImplementedError


class FileSplit(Split):
    """Image files decoded on demand (never the whole dataset in memory); corrupt files load as None."""

    def __init__(self, paths: Sequence[str], labels: np.ndarray) -> None:
        self.paths = list(paths)
        self.labels = np.asarray(labels, np.int32)
        self.bad: set[int] = set()
        self._lock = threading.Lock()

    def load(self, i: int, size: tuple[int, int], channels: int,
             rng: np.random.Generator | None, crop: float = EVAL_CROP) -> np.ndarray | None:
        try:
            return decode_image(self.paths[i], size, channels, rng, crop)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            with self._lock:
                self.bad.add(i)
            return None


class ArraySplit(Split):
    """Small in-memory uint8 images (digits), resized once per target size. Training augmentation is a
    mild random-resized-crop (scale 0.7-1: shifts and zooms) and never a flip (a flipped digit is another).
    Evaluation resizes the whole image (a digit fills its frame: a center crop would cut strokes off),
    which is why such a source records crop 1.0 (``DataSource.fixed_crop``) and ignores ``crop``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = images
        self.labels = np.asarray(labels, np.int32)
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self._lock = threading.Lock()

    def _resized(self, size: tuple[int, int]) -> np.ndarray:
        with self._lock:
            if size not in self._cache:
                self._cache[size] = np.stack([
                    np.asarray(Image.fromarray(im).resize((size[1], size[0]), Image.Resampling.BILINEAR))
                    for im in self.images])
            return self._cache[size]

    def load(self, i: int, size: tuple[int, int], channels: int,
             rng: np.random.Generator | None, crop: float = EVAL_CROP) -> np.ndarray | None:
        img = self._resized(size)[i]
        if rng is not None:
            h, w = img.shape[:2]
            side = rng.uniform(ARRAY_CROP_SCALE[0], ARRAY_CROP_SCALE[1]) ** 0.5
            ch, cw = max(1.0, h * side), max(1.0, w * side)
            y0, x0 = rng.uniform(0, h - ch), rng.uniform(0, w - cw)
            img = np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.Resampling.BILINEAR,
                                                         box=(x0, y0, x0 + cw, y0 + ch)))
        return _to_channels(img, channels)


class SyntheticSplit(Split):
    """Random images and labels, each generated from (seed, index): for measuring speed."""

    def __init__(self, n: int, classes: int, seed: int) -> None:
        self.seed = seed
        self.labels = np.random.default_rng([seed, 1]).integers(0, classes, n).astype(np.int32)

    def load(self, i: int, size: tuple[int, int], channels: int,
             rng: np.random.Generator | None, crop: float = EVAL_CROP) -> np.ndarray | None:
        return np.random.default_rng([self.seed, 2, i]).integers(0, 256, (*size, channels), dtype=np.uint8)


@dataclass
class DataSource:
    """A named dataset: class names and a train and a validation split."""

    name: str
    class_names: tuple[str, ...]
    train: Split
    val: Split
    augment: bool = True  # random-resized-crop + flip for training images
    fixed_crop: float | None = None  # an eval transform that ignores the model's crop (digits: 1.0, whole image)
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def corrupt_count(self) -> int:
        return sum(len(s.bad) for s in (self.train, self.val) if isinstance(s, FileSplit))


def stratified_split(labels: np.ndarray, fraction: float = VAL_FRACTION,
                     seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split (train, val indices); a class with one example stays in train."""
    rng = np.random.default_rng([seed, 7])
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(max(int(round(len(idx) * fraction)), 1), len(idx) - 1) if len(idx) > 1 else 0
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _scan(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Class folders (sorted) and (path, class) pairs of their image files."""
    try:
        entries = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise MnasError(f"{root}: cannot read data directory: {e.strerror or e}") from None
    items: list[tuple[str, str]] = []
    classes: list[str] = []
    for d in entries:
        files: list[str] = []
        for dirpath, dirnames, filenames in os.walk(d, followlinks=True):
            dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
            files.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                         if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTS)
        if files:
            classes.append(d.name)
            items.extend((f, d.name) for f in files)
    return classes, items


def image_folder(path: str | Path) -> DataSource:
    """An ImageFolder tree: ``<class>/*.jpg``, with ``train/`` and ``val/`` subfolders or else a stratified split."""
    root = Path(path)
    if not root.exists():
        raise MnasError(f"{root}: data directory does not exist")
    if not root.is_dir():
        raise MnasError(f"{root}: data source is not a directory (expected `digits`, `synthetic` or an ImageFolder)")
    val_dir = next((root / n for n in ("val", "validation") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        classes, items = _scan(root / "train")
        vclasses, vitems = _scan(val_dir)
        _check_classes(root / "train", classes, items)
        extra = sorted(set(vclasses) - set(classes))
        if extra:
            raise MnasError(f"{val_dir}: validation classes not in train/: {', '.join(extra[:5])}")
        if not vitems:
            raise MnasError(f"{val_dir}: no images found")
        index = {c: i for i, c in enumerate(classes)}
        train = FileSplit([p for p, _ in items], np.array([index[c] for _, c in items]))
        val = FileSplit([p for p, _ in vitems], np.array([index[c] for _, c in vitems]))
        return DataSource(str(root), tuple(classes), train, val)
    classes, items = _scan(root)
    _check_classes(root, classes, items)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[c] for _, c in items], np.int32)
    tr, va = stratified_split(labels)
    paths = [p for p, _ in items]
    return DataSource(str(root), tuple(classes), FileSplit([paths[i] for i in tr], labels[tr]),
                      FileSplit([paths[i] for i in va], labels[va]))


def _check_classes(root: Path, classes: list[str], items: list[tuple[str, str]]) -> None:
    if not items:
        raise MnasError(f"{root}: no images found (expected an ImageFolder layout: <class>/<image>.jpg|png)")
    if len(classes) < 2:
        raise MnasError(f"{root}: only one class ({classes[0]!r}); classification needs at least two")


def digits() -> DataSource:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no download)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MnasError("the `digits` data set ships with scikit-learn: pip install 'mnasdsl[digits]'") from None

    d = load_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = d.target.astype(np.int32)
    tr, va = stratified_split(labels)
    return DataSource("digits", tuple(str(i) for i in range(10)), ArraySplit(images[tr], labels[tr]),
                      ArraySplit(images[va], labels[va]), fixed_crop=1.0)


def synthetic(n_train: int = SYNTHETIC_SIZE[0], n_val: int = SYNTHETIC_SIZE[1],
              classes: int = SYNTHETIC_CLASSES) -> DataSource:
    """Random images and labels (nothing to learn): for speed runs."""
    return DataSource("synthetic", tuple(f"class{i}" for i in range(classes)), SyntheticSplit(n_train, classes, 11),
                      SyntheticSplit(n_val, classes, 12), augment=False)


def open_source(source: str | DataSource) -> DataSource:
    """`digits`, `synthetic` (or `synthetic:N`), or an ImageFolder directory."""
    if isinstance(source, DataSource):
        return source
    if source == "digits":
        return digits()
    if source == "synthetic" or source.startswith("synthetic:"):
        if source == "synthetic":
            return synthetic()
        try:
            n = int(source.split(":", 1)[1])
        except ValueError:
            raise MnasError(f"bad data source {source!r}: expected synthetic:N") from None
        if n < 2:
            raise MnasError(f"bad data source {source!r}: N must be >= 2")
        return synthetic(n, max(2, n // 8))
    if not Path(source).exists():  # neither a directory nor a built-in: name the built-ins, guess a typo
        import difflib

        name, colon, n_part = source.partition(":")
        guess = difflib.get_close_matches(name.lower(), ("digits", "synthetic"), n=1, cutoff=0.6)
        hint = f"did you mean `{guess[0]}{colon + n_part if guess[0] == 'synthetic' else ''}`? " if guess else ""
        raise MnasError(f"{source}: data directory does not exist ({hint}built-in sources: `digits`, `synthetic`, "
                        "`synthetic:N`)")
    return image_folder(source)


@dataclass(frozen=True)
class Batch:
    images: np.ndarray  # uint8 (B, H, W, C)
    labels: np.ndarray  # int32 (B,)
    mask: np.ndarray  # float32 (B,): 0 for padding and skipped (corrupt) examples


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n) if shuffle else np.arange(n)


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Augmentation randomness of one example: a pure function of (seed, epoch, index)."""
    return np.random.default_rng([seed, epoch, index, 0xA06])


class Loader:
    """Fixed-shape batches of one split, built ahead by background threads.

    Training drops the last partial batch (one compiled shape); evaluation pads it with mask 0.
    Unaugmented images get the eval transform with center-crop fraction ``crop``.
    """

    def __init__(self, split: Split, *, batch: int, size: tuple[int, int], channels: int, train: bool,
                 augment: bool = True, seed: int = 0, epoch: int = 0, workers: int | None = None,
                 prefetch: int = 4, limit: int | None = None, crop: float = EVAL_CROP) -> None:
        self.split, self.batch, self.size, self.channels, self.crop = split, batch, size, channels, crop
        self.train, self.augment, self.seed, self.epoch = train, augment and train, seed, epoch
        self.workers = workers or max(1, min(8, (os.cpu_count() or 1)))
        self.prefetch = max(1, prefetch)
        order = epoch_order(len(split), seed, epoch, shuffle=train)
        n_batches = len(order) // batch if train else -(-len(order) // batch)
        if limit is not None:
            n_batches = min(n_batches, limit)
        self.order, self.n_batches = order, n_batches

    def __len__(self) -> int:
        return self.n_batches

    def _build(self, b: int) -> Batch:
        idx = self.order[b * self.batch:(b + 1) * self.batch]
        h, w = self.size
        images = np.zeros((self.batch, h, w, self.channels), np.uint8)
        labels = np.zeros(self.batch, np.int32)
        mask = np.zeros(self.batch, np.float32)
        for j, i in enumerate(idx):
            rng = example_rng(self.seed, self.epoch, int(i)) if self.augment else None
            img = self.split.load(int(i), self.size, self.channels, rng, self.crop)
            if img is not None:
                images[j], labels[j], mask[j] = img, self.split.labels[i], 1.0
        return Batch(images, labels, mask)

    def __iter__(self) -> Iterator[Batch]:
        if self.n_batches == 0:
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="mnasdsl-data") as pool:
            pending: deque[Future[Batch]] = deque()
            nxt = 0
            try:
                while nxt < self.n_batches and len(pending) < self.prefetch:
                    pending.append(pool.submit(self._build, nxt))
                    nxt += 1
                while pending:
                    out = pending.popleft().result()
                    if nxt < self.n_batches:
                        pending.append(pool.submit(self._build, nxt))
                        nxt += 1
                    yield out
            finally:
                for f in pending:
                    f.cancel()

