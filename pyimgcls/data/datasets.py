"""Datasets for ``pyimgcls train``: where the images come from and how they are decoded.

Specs (``--data``):

* ``digits`` (default): scikit-learn's bundled 8x8 handwritten digits (1797 real images, 10
  classes), resized to ``image_size`` (32), stratified 80/20 split with seed 0 (1437 / 360 images).
* ``synthetic``: random images of a chosen shape and class count (throughput runs).
* ``mnist:PATH`` / ``fashion-mnist:PATH``: the four IDX files (``train-images-idx3-ubyte`` ...,
  gzipped or not) in PATH or PATH/raw.
* ``cifar10:PATH``: the python pickle batches (``data_batch_1..5``, ``test_batch``) in PATH or
  PATH/cifar-10-batches-py.
* ``imagefolder:PATH``: one sub-folder per class (PATH/train/<class> and PATH/test|val/<class>, or
  PATH/<class> split 80/20 stratified with seed 0), decoded with Pillow in DataLoader workers.

The small datasets live in memory as float32 tensors in [0, 1] ([N, C, H, W]); the image-folder one
decodes lazily. Normalisation and augmentation happen later, batched, on the training device
(``augment.py``). A missing or corrupt file raises :class:`DataError` naming the file.
"""
from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ArgumentValueError

DATASETS = ("digits", "synthetic", "mnist", "fashion-mnist", "cifar10", "imagefolder")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class DataError(ArgumentValueError):
    """A data set could not be loaded: missing or corrupt file, bad spec."""


class TensorSplit:
    """One split held in memory: ``images`` float32 [N, C, H, W] in [0, 1], ``labels`` int64 [N]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, n: int | None) -> "TensorSplit":
        return self if n is None or n >= len(self) else TensorSplit(self.images[:n], self.labels[:n])

    def targets(self) -> list[int]:
        return self.labels.tolist()

    def select(self, indices) -> "TensorSplit":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TensorSplit(self.images[idx], self.labels[idx])


class FolderSplit(torch.utils.data.Dataset):
    """One split of an image folder: ``samples`` is a list of (path, label); images are decoded with
    Pillow, converted to ``in_channels`` (1: "L", 3: "RGB"), resized to ``image_size`` and returned
    as float32 [C, H, W] in [0, 1]."""

    def __init__(self, samples: list[tuple[str, int]], image_size: int, in_channels: int):
        self.samples = samples
        self.image_size = image_size
        self.in_channels = in_channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return load_image(path, self.image_size, self.in_channels), label

    def subset(self, n: int | None) -> "FolderSplit":
        return self if n is None or n >= len(self) else FolderSplit(self.samples[:n], self.image_size,
                                                                     self.in_channels)

    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def select(self, indices) -> "FolderSplit":
        return FolderSplit([self.samples[i] for i in indices], self.image_size, self.in_channels)


def split_validation(split, fraction: float, seed: int):
    """Carve a validation split from ``split``: (train, val), val holding ``fraction`` of the images
    (at least one), stratified by class where every class can give one, drawn with ``seed``; a
    fraction of 0 gives (split, None). Train and val keep the original order within themselves."""
    if fraction <= 0:
        return split, None
    n = len(split)
    n_val = max(1, int(round(fraction * n)))
    if n_val >= n:
        raise DataError(f"--val-fraction {fraction}: leaves no training images out of {n}")
    from sklearn.model_selection import train_test_split
    labels = np.asarray(split.targets())
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    stratify = labels if counts.min() >= 2 and len(counts) <= min(n_val, n - n_val) else None
    train_idx, val_idx = train_test_split(np.arange(n), test_size=n_val, stratify=stratify, random_state=seed)
    return split.select(np.sort(train_idx).tolist()), split.select(np.sort(val_idx).tolist())


@dataclass
class Dataset:
    """A train/test pair and what a model (and ``predict``) needs to know about its images."""
    name: str
    spec: str
    train: TensorSplit | FolderSplit
    test: TensorSplit | FolderSplit
    num_classes: int
    in_channels: int
    image_size: int
    class_names: list[str]
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    hflip_ok: bool = True          # horizontal flips keep the label (not for digits)
    rotation_ok: bool = True

    def meta(self) -> dict:
        return {"dataset": self.spec, "num_classes": self.num_classes, "in_channels": self.in_channels,
                "image_size": self.image_size, "class_names": list(self.class_names),
                "mean": list(self.mean), "std": list(self.std)}


# Decompression bombs: a small file may declare a huge canvas. Images are scaled to image_size x
# image_size, so a file is refused, from its header and before any pixel is decoded, when it has more
# than IMAGE_PIXELS_PER_INPUT_PIXEL x image_size x image_size pixels. The limit never goes below
# MIN_IMAGE_PIXEL_LIMIT (photos of a few megapixels stay usable at small input sizes; 16.8 megapixels
# of RGB decode to about 50 MB) nor above Pillow's own Image.MAX_IMAGE_PIXELS.
IMAGE_PIXELS_PER_INPUT_PIXEL = 1024
MIN_IMAGE_PIXEL_LIMIT = 4096 * 4096


def image_pixel_limit(image_size: int) -> int:
    """Most pixels (width x height) an image file may declare when the model input is image_size x image_size."""
    from PIL import Image

    limit = max(MIN_IMAGE_PIXEL_LIMIT, IMAGE_PIXELS_PER_INPUT_PIXEL * image_size * image_size)
    return min(limit, Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else limit


def load_image(path: str, image_size: int, in_channels: int) -> torch.Tensor:
    """Decode one image file with Pillow -> float32 [C, image_size, image_size] in [0, 1]. A file that
    declares more than ``image_pixel_limit(image_size)`` pixels is refused before decoding."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    limit = image_pixel_limit(image_size)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; a file that large is refused here too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:      # lazy: reads the header, decodes nothing yet
                w, h = im.size
                if w * h > limit:
                    raise DataError(f"image file {path} is too large: {w}x{h} = {w * h} pixels, more than the "
                                    f"{limit} allowed for --image-size {image_size} (a decompression bomb?)")
                im = im.convert("L" if in_channels == 1 else "RGB")
                if im.size != (image_size, image_size):
                    im = im.resize((image_size, image_size), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
    except DataError:       # a ValueError too: keep it out of the generic clause below
        raise
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"image file {path} is too large (a decompression bomb?): {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot decode image file {path}: {e}") from None
    t = torch.from_numpy(arr.copy()).to(torch.float32).div_(255.0)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    shrink = images.shape[-1] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=shrink).clamp_(0.0, 1.0)


def _channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def _set_channels(images: torch.Tensor, in_channels: int) -> torch.Tensor:
    c = images.shape[1]
    if c == in_channels:
        return images
    if c == 1:
        return images.expand(-1, in_channels, -1, -1).contiguous()
    if in_channels == 1:
        return images.mean(dim=1, keepdim=True)
    raise DataError(f"cannot convert {c}-channel images to in_channels={in_channels}")


def _tensor_dataset(name, spec, x_train, y_train, x_test, y_test, num_classes, class_names, image_size,
                    in_channels, hflip_ok, rotation_ok) -> Dataset:
    x_train = _set_channels(_resize(x_train, image_size), in_channels)
    x_test = _set_channels(_resize(x_test, image_size), in_channels)
    mean, std = _channel_stats(x_train)
    return Dataset(name, spec, TensorSplit(x_train, y_train), TensorSplit(x_test, y_test), num_classes,
                   in_channels, image_size, class_names, mean, std, hflip_ok, rotation_ok)


# ---------------------------------------------------------------------------------------- digits
def load_digits(image_size: int = 32, in_channels: int = 1) -> Dataset:
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    d = _sk_digits()
    images = d.images.astype(np.float32) / 16.0            # 0..16 ink levels -> [0, 1]
    idx_train, idx_test = train_test_split(np.arange(len(d.target)), test_size=0.2, stratify=d.target,
                                           random_state=0)
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    it, iv = torch.from_numpy(idx_train), torch.from_numpy(idx_test)
    return _tensor_dataset("digits", "digits", x[it], y[it], x[iv], y[iv], 10, [str(i) for i in range(10)],
                           image_size, in_channels, hflip_ok=False, rotation_ok=True)


# ------------------------------------------------------------------------------------- synthetic
def load_synthetic(image_size: int = 32, in_channels: int = 3, num_classes: int = 10, size: int = 1024,
                   seed: int = 0) -> Dataset:
    """Random images whose class is a learnable per-class mean pattern plus noise (so a throughput
    run still shows the loss falling); ``size`` training images and ``size // 4`` test images."""
    if size < 1 or num_classes < 2 or image_size < 1:
        raise DataError(f"synthetic data needs --synthetic-size >= 1, --num-classes >= 2 and --image-size >= 1, "
                        f"got {size}, {num_classes}, {image_size}")
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, in_channels, image_size, image_size, generator=g)

    def make(n):
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = (0.6 * protos[y] + 0.4 * torch.rand(n, in_channels, image_size, image_size, generator=g))
        return x, y

    x_train, y_train = make(size)
    x_test, y_test = make(max(1, size // 4))
    return _tensor_dataset("synthetic", "synthetic", x_train, y_train, x_test, y_test, num_classes,
                           [str(i) for i in range(num_classes)], image_size, in_channels, True, True)


# ------------------------------------------------------------------------------------------ IDX
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


# Deflate expands data at most about 1032:1, so a gzipped IDX file whose header claims more data than
# that many times its own size cannot hold it: refused before decompressing anything.
DEFLATE_MAX_RATIO = 1032


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (gzipped or not): magic 0x0000TTDD, DD big-endian int32 dims, then data. The
    header's size is checked against the file before the data is read, and a gzip stream is never
    decompressed past what the header claims."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if f.read(2) != b"\x1f\x8b":
            f.seek(0)
            return _read_idx_stream(f, path, size, gz=False)
        f.seek(0)
        try:
            with gzip.GzipFile(fileobj=f, mode="rb") as g:
                return _read_idx_stream(g, path, size, gz=True)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"corrupt gzip IDX file {path}: {e}") from None


def _read_idx_stream(f, path: str, size: int, gz: bool) -> np.ndarray:
    magic = f.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
        raise DataError(f"corrupt IDX file {path}: bad magic number {magic.hex() or '(empty file)'}")
    dtype = np.dtype(_IDX_DTYPES[magic[2]])
    ndim = magic[3]
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"corrupt IDX file {path}: truncated header")
    dims = [int.from_bytes(raw_dims[4 * i: 4 * i + 4], "big") for i in range(ndim)]
    nbytes = math.prod(dims) * dtype.itemsize if dims else 0
    claim = f"corrupt IDX file {path}: header says {dims} ({nbytes} bytes of data)"
    if not gz:
        held = size - 4 - 4 * ndim
        if held != nbytes:
            raise DataError(f"{claim}, file holds {held}")
        return np.frombuffer(f.read(nbytes), dtype=dtype).reshape(dims)
    if nbytes > DEFLATE_MAX_RATIO * size:
        raise DataError(f"{claim}, more than a {size}-byte gzip file can hold")
    data = bytearray()
    while len(data) <= nbytes:      # one byte past the claim tells "more data than the header says"
        chunk = f.read(min(1 << 20, nbytes + 1 - len(data)))
        if not chunk:
            break
        data += chunk
    if len(data) != nbytes:
        held = f"{len(data)}" if len(data) < nbytes else f"more than {nbytes}"
        raise DataError(f"{claim}, file holds {held}")
    return np.frombuffer(data, dtype=dtype).reshape(dims)


def _find_file(root: str, names: list[str], what: str) -> str:
    for d in (root, os.path.join(root, "raw")):
        for n in names:
            for cand in (n, n + ".gz"):
                p = os.path.join(d, cand)
                if os.path.isfile(p):
                    return p
    raise DataError(f"{what}: file {names[0]}[.gz] not found in {root} (nor in {os.path.join(root, 'raw')})")


def load_mnist(root: str, fashion: bool = False, image_size: int = 32, in_channels: int = 1) -> Dataset:
    name = "fashion-mnist" if fashion else "mnist"
    if not os.path.isdir(root):
        raise DataError(f"{name}: directory not found: {root}")
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ipath = _find_file(root, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"], name)
        lpath = _find_file(root, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"], name)
        images, labels = read_idx(ipath), read_idx(lpath)
        if images.ndim != 3:
            raise DataError(f"corrupt IDX file {ipath}: expected 3 dimensions (N, H, W), got {images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(f"IDX files {ipath} and {lpath} disagree: {images.shape[0]} images, "
                            f"labels of shape {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"corrupt IDX file {lpath}: labels outside 0..9")
        arrays[split] = (torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1),
                         torch.from_numpy(labels.astype(np.int64)))
    classes = FASHION_CLASSES if fashion else [str(i) for i in range(10)]
    return _tensor_dataset(name, f"{name}:{root}", *arrays["train"], *arrays["test"], 10, classes, image_size,
                           in_channels, hflip_ok=fashion, rotation_ok=True)


# -------------------------------------------------------------------------------------- CIFAR-10
# What the CIFAR batches may hold beyond pickle's own types: numpy arrays of these plain numeric
# dtypes, numpy scalars, and bytes that Python 3 stores through _codecs.encode(str, "latin1").
_CIFAR_DTYPES = frozenset("b1 i1 u1 i2 u2 i4 u4 i8 u8 f2 f4 f8".split())


def _text(v) -> str:
    return v.decode("latin1") if isinstance(v, bytes) else v


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` in a batch: only ``_reconstruct`` accepts it. Calling it is refused
    (``numpy.ndarray(shape)`` would allocate whatever shape the file claims)."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("numpy.ndarray may only be rebuilt through _reconstruct")


class _DtypeStub:
    """``numpy.dtype(code, align, copy)`` then its BUILD state, for plain numeric codes only: object,
    structured and sub-array dtypes (whose state can claim any item size) are refused."""

    def __init__(self, code, align=False, copy=True):
        code = _text(code)
        if not isinstance(code, str) or code not in _CIFAR_DTYPES:
            raise pickle.UnpicklingError(f"dtype {code!r} is not a plain numeric dtype")
        self.dtype = np.dtype(code)

    def __setstate__(self, state):
        # (version, byte order, subarray, names, fields, item size, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 5 or any(v is not None for v in state[2:5]):
            raise pickle.UnpicklingError("dtype state is not that of a plain numeric dtype")
        order = _text(state[1])
        if order not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"dtype byte order {order!r}")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


class _ArrayStub:
    """What ``numpy.core.multiarray._reconstruct`` makes: nothing is allocated from the claimed shape;
    the BUILD state (shape, dtype, raw bytes) becomes a read-only view of the bytes the file holds,
    after checking that the shape accounts for exactly those bytes."""

    array = None

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]                   # drop the format version
        if not isinstance(state, tuple) or len(state) != 4:
            raise pickle.UnpicklingError("ndarray state is not (shape, dtype, fortran, data)")
        shape, dtype, fortran, raw = state
        if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
            raise pickle.UnpicklingError(f"ndarray shape {shape!r} is not a tuple of sizes")
        if not isinstance(dtype, _DtypeStub) or not isinstance(raw, bytes):
            raise pickle.UnpicklingError("ndarray state holds no plain numeric dtype and raw bytes")
        nbytes = math.prod(shape) * dtype.dtype.itemsize
        if nbytes != len(raw):
            raise pickle.UnpicklingError(f"ndarray claims shape {shape} ({nbytes} bytes) but holds {len(raw)} bytes")
        self.array = np.frombuffer(raw, dtype=dtype.dtype).reshape(shape, order="F" if fortran else "C")


class _CifarUnpickler(pickle._Unpickler):
    """The CIFAR batches are pickles; this reads only what they contain, so a hostile file can neither
    run code nor make the reader allocate more than a small multiple of the file's size. It is pickle's
    pure-Python unpickler (its memo is a dict; the C one sizes an array from a memo index the file
    chooses), reading from memory (a length the file claims is never allocated up front), with numpy's
    globals replaced by the stand-ins above."""

    def __init__(self, file):
        super().__init__(file, encoding="bytes")
        self._encoded: dict[int, tuple[str, bytes]] = {}
        self._globals = {("numpy", "ndarray"): _NdarrayClass, ("numpy", "dtype"): _DtypeStub,
                         ("_codecs", "encode"): self._latin1}
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            self._globals[(mod, "_reconstruct")] = self._reconstruct
            self._globals[(mod, "scalar")] = self._scalar

    def find_class(self, module, name):
        try:
            return self._globals[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None

    def _latin1(self, text, encoding="utf-8", errors="strict"):
        # Only what Python 3 writes for bytes, and one result per string: re-encoding a memoised string
        # many times would otherwise cost the string's size per few bytes of file.
        if not isinstance(text, str) or encoding != "latin1":
            raise pickle.UnpicklingError(f"_codecs.encode is allowed only for str to latin1, got {encoding!r}")
        if id(text) not in self._encoded:
            self._encoded[id(text)] = (text, text.encode("latin1", errors))
        return self._encoded[id(text)][1]

    @staticmethod
    def _reconstruct(cls, shape, typecode):
        if cls is not _NdarrayClass:
            raise pickle.UnpicklingError("_reconstruct of something other than numpy.ndarray")
        return _ArrayStub()

    @staticmethod
    def _scalar(dtype, data):
        if not isinstance(dtype, _DtypeStub) or not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
            raise pickle.UnpicklingError("numpy scalar without a plain numeric dtype and its bytes")
        return np.frombuffer(data, dtype=dtype.dtype)[0].item()


def _arrays(v):
    return v.array if isinstance(v, _ArrayStub) else v


def _read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        d = _CifarUnpickler(io.BytesIO(raw)).load()
    except FileNotFoundError:
        raise DataError(f"cifar10: file not found: {path}") from None
    except Exception as e:  # any unpickling failure is a corrupt file; say which
        raise DataError(f"cifar10: corrupt pickle batch {path}: {type(e).__name__}: {e}") from None
    if not isinstance(d, dict):
        raise DataError(f"cifar10: corrupt pickle batch {path}: expected a dict, got {type(d).__name__}")
    data = _arrays(d.get(b"data", d.get("data")))
    labels = _arrays(d.get(b"labels", d.get("labels")))
    if data is None or labels is None:
        raise DataError(f"cifar10: corrupt pickle batch {path}: missing 'data' or 'labels'")
    if not isinstance(data, np.ndarray):
        raise DataError(f"cifar10: corrupt pickle batch {path}: 'data' is a {type(data).__name__}, not an array")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise DataError(f"cifar10: corrupt pickle batch {path}: labels: {type(e).__name__}: {e}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or data.shape[0] != labels.shape[0]:
        raise DataError(f"cifar10: corrupt pickle batch {path}: data of shape {data.shape}, "
                        f"labels of shape {labels.shape} (expected [N, 3072] and N labels)")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"cifar10: corrupt pickle batch {path}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(root: str, image_size: int = 32, in_channels: int = 3) -> Dataset:
    if not os.path.isdir(root):
        raise DataError(f"cifar10: directory not found: {root}")
    sub = os.path.join(root, "cifar-10-batches-py")
    if os.path.isdir(sub):
        root = sub
    parts = [_read_cifar_batch(os.path.join(root, f"data_batch_{i}")) for i in range(1, 6)]
    xt, yt = _read_cifar_batch(os.path.join(root, "test_batch"))
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    to_t = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)  # noqa: E731
    return _tensor_dataset("cifar10", f"cifar10:{root}", to_t(x), torch.from_numpy(y), to_t(xt),
                           torch.from_numpy(yt), 10, CIFAR10_CLASSES, image_size, in_channels, True, True)


# ----------------------------------------------------------------------------------- imagefolder
def _scan_classes(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    samples = []
    for ci, c in enumerate(classes):
        n = len(samples)
        for dirpath, _, files in sorted(os.walk(os.path.join(root, c))):
            for fn in sorted(files):
                if fn.lower().endswith(IMAGE_EXTENSIONS):
                    samples.append((os.path.join(dirpath, fn), ci))
        if len(samples) == n:
            # As torchvision's ImageFolder: a class without images is an error, not a class no sample has.
            raise DataError(f"imagefolder: class folder {os.path.join(root, c)} has no image files "
                            f"({', '.join(IMAGE_EXTENSIONS)}); remove it or add images")
    return classes, samples


def load_imagefolder(root: str, image_size: int = 32, in_channels: int = 3) -> Dataset:
    if not os.path.isdir(root):
        raise DataError(f"imagefolder: directory not found: {root}")
    test_dir = next((os.path.join(root, d) for d in ("test", "val") if os.path.isdir(os.path.join(root, d))), None)
    if os.path.isdir(os.path.join(root, "train")) and test_dir:
        classes, train = _scan_classes(os.path.join(root, "train"))
        test_classes, test = _scan_classes(test_dir)
        if test_classes != classes:
            raise DataError(f"imagefolder: class folders differ between {os.path.join(root, 'train')} "
                            f"({classes}) and {test_dir} ({test_classes})")
    else:
        from sklearn.model_selection import train_test_split
        classes, samples = _scan_classes(root)
        if len(samples) < 2:
            raise DataError(f"imagefolder: no images found under {root} (expected {root}/<class>/<image>)")
        labels = [s[1] for s in samples]
        counts = np.bincount(labels)
        stratify = labels if counts.min() >= 2 else None
        train, test = train_test_split(samples, test_size=0.2, stratify=stratify, random_state=0)
    if len(classes) < 2:
        raise DataError(f"imagefolder: need at least 2 class sub-folders under {root}, found {classes}")
    if not train or not test:
        raise DataError(f"imagefolder: no images found under {root} (expected <class>/<image> files)")
    # ImageNet statistics: the usual choice for natural images, and what pretrained weights expect.
    mean = [0.485, 0.456, 0.406] if in_channels == 3 else [0.5] * in_channels
    std = [0.229, 0.224, 0.225] if in_channels == 3 else [0.25] * in_channels
    return Dataset("imagefolder", f"imagefolder:{root}", FolderSplit(train, image_size, in_channels),
                   FolderSplit(test, image_size, in_channels), len(classes), in_channels, image_size, classes,
                   mean, std, True, True)


# ----------------------------------------------------------------------------------------- entry
def parse_spec(spec: str) -> tuple[str, str | None]:
    name, _, path = spec.partition(":")
    name = name.lower()
    if name not in DATASETS:
        raise DataError(f"--data: unknown dataset {name!r}; expected one of digits, synthetic, mnist:PATH, "
                        f"fashion-mnist:PATH, cifar10:PATH, imagefolder:PATH")
    needs_path = name in ("mnist", "fashion-mnist", "cifar10", "imagefolder")
    if needs_path and not path:
        raise DataError(f"--data: {name} needs a path: --data {name}:PATH")
    if not needs_path and path:
        raise DataError(f"--data: {name} takes no path, got {spec!r}")
    return name, (os.path.expanduser(path) if path else None)


def default_in_channels(name: str) -> int:
    return {"digits": 1, "mnist": 1, "fashion-mnist": 1}.get(name, 3)


def load_dataset(spec: str = "digits", image_size: int | None = None, in_channels: int | None = None,
                 num_classes: int = 10, synthetic_size: int = 1024, seed: int = 0) -> Dataset:
    """Load the data set named by ``spec`` (see the module docstring). ``image_size`` defaults to 32
    (the LeNet-5 input); ``in_channels`` to the data set's own (1 for digits and MNIST, else 3)."""
    name, path = parse_spec(spec)
    size = 32 if image_size is None else int(image_size)
    if size < 1:
        raise DataError(f"--image-size must be positive, got {size}")
    ch = default_in_channels(name) if in_channels is None else int(in_channels)
    if ch not in (1, 3):
        raise DataError(f"--in-channels must be 1 or 3, got {ch}")
    if name == "digits":
        return load_digits(size, ch)
    if name == "synthetic":
        return load_synthetic(size, ch, num_classes, synthetic_size, seed)
    if name in ("mnist", "fashion-mnist"):
        return load_mnist(path, name == "fashion-mnist", size, ch)
    if name == "cifar10":
        return load_cifar10(path, size, ch)
    return load_imagefolder(path, size, ch)


def cifar_batch_bytes(data: np.ndarray, labels) -> bytes:
    """Serialise one CIFAR-style batch (tests build tiny fixtures with it)."""
    buf = io.BytesIO()
    pickle.dump({b"data": np.ascontiguousarray(data, dtype=np.uint8), b"labels": list(map(int, labels))}, buf,
                protocol=2)
    return buf.getvalue()
