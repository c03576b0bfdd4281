"""The frozen-feature cache: the image encoder runs once per (backbone, images, transform).

:class:`FeatureBatch` and :class:`SplitFeatures`, the types it serves, live here too.

The backbone never changes, so the image features every method trains on are
computed once and stored on disk:

* the *plain* view (resize + centre crop, no augmentation) of every image of a
  split, and
* ``V`` augmented views (random-resized-crop + flip) of every training image,
  each view drawn with a seed that depends only on the image file's content and
  the view index, so the same image always gets the same V views, wherever the
  dataset lies on disk (a different root or cache folder gives the same numbers).

Entries are keyed by a hash of: the backbone's fingerprint (checkpoint hash),
the ordered list of the images' *contents* (SHA-256 of each file's bytes, or
"missing"), the transform, V, whether multi-scale patch tokens are stored and
the pixel limit of :func:`visprompt.data.images.max_image_pixels`. A different
checkpoint, few-shot draw or transform therefore never reuses stale features,
an image edited or replaced in place is encoded afresh, an unreadable image
fixed in place is read again, and a removed one is never served; the same
images under another root share the entry.

Hashing every file on every run would read the whole dataset, so a small index
maps the files' identities (path, device, inode, size, modification and change
times in ns) to the content key; any write to a file changes its change time,
which no tool can set back, so an edited file always misses the index and is
hashed again. Index records are only written for files last changed more than
:data:`SETTLE_SECONDS` before hashing began, so a coarse file-system clock
cannot hide an edit made in the same tick. Files are written atomically
(temporary file, then rename, with the umask's permissions), so an interrupted
extraction never leaves a half-written entry.

Training samples one cached view per image per epoch and never runs the image
encoder again; ``LiveFeatures`` instead encodes freshly augmented images every
step (the reference implementations' behaviour, kept for comparison).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from visprompt.backbone import FrozenCLIP
from visprompt.backbone.loader import sha256_of_file
from visprompt.data.images import load_rgb, max_image_pixels, read_image
from visprompt.data.transforms import CROP_SCALE, build_transforms, transform_spec
from visprompt.data.types import Sample
from visprompt.fileio import atomic_write_bytes, atomic_write_text

#: 3: keyed by image content; 16-bit images scaled, transparency on white.
CACHE_VERSION = 3
#: A file changed less than this long before it was hashed is hashed again next time.
SETTLE_SECONDS = 2.0
#: Grid sizes of the adaptive pooling of ViT patch tokens (1 + 4 + 16 = 21 tokens).
PATCH_SCALES = (1, 2, 4)


def default_cache_dir() -> Path:
    root = os.environ.get("VISPROMPT_CACHE") or Path.home() / ".cache" / "visprompt"
    return Path(root) / "features"


def pool_patch_tokens(tokens: torch.Tensor, scales: Sequence[int] = PATCH_SCALES) -> torch.Tensor:
    """(B, gh, gw, D) patch tokens -> (B, sum(s*s), D) adaptive-average-pooled tokens."""
    grid = tokens.permute(0, 3, 1, 2)
    pooled = [F.adaptive_avg_pool2d(grid, s).flatten(2).transpose(1, 2) for s in scales]
    return torch.cat(pooled, dim=1)


def view_seed(image_key: str, view: int) -> int:
    """Seed of augmented view ``view`` of the image identified by ``image_key``."""
    digest = hashlib.sha256(f"{image_key}|{view}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class FeatureBatch:
    """Frozen image features of a batch of images: what a method's ``forward`` receives.

    Defined here, next to the cache that produces it, so that the data layer
    never imports methods; :mod:`visprompt.methods` re-exports it for method files.

    Attributes:
        image: (B, D) L2-normalised global embeddings.
        patches: (B, T, D) multi-scale pooled patch tokens (ViT only), when the
            method asked for them (``needs_patches``), else None.
    """

    image: torch.Tensor
    patches: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def index(self, idx: torch.Tensor | slice) -> FeatureBatch:
        return FeatureBatch(
            image=self.image[idx], patches=None if self.patches is None else self.patches[idx]
        )

    def to(self, device: torch.device) -> FeatureBatch:
        return FeatureBatch(
            image=self.image.to(device, non_blocking=True),
            patches=None if self.patches is None else self.patches.to(device, non_blocking=True),
        )


@dataclass
class SplitFeatures:
    """Cached features of one list of images.

    Attributes:
        image: (N, D) normalised global embeddings of the plain view.
        patches: (N, T, D) pooled patch tokens of the plain view, or None.
        views: (V, N, D) normalised embeddings of V augmented views, or None.
        view_patches: (V, N, T, D) pooled patch tokens of the views, or None.
        ok: (N,) False for images that could not be read (their features are zeros).
        errors: why each image could not be read ('' where it could; no paths in
            it), or None when unknown.
    """

    image: torch.Tensor
    ok: torch.Tensor
    patches: torch.Tensor | None = None
    views: torch.Tensor | None = None
    view_patches: torch.Tensor | None = None
    errors: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def plain_view(self, idx: torch.Tensor | slice | None = None) -> FeatureBatch:
        """Features of samples ``idx`` (all when None) under the plain, un-augmented view.

        (Not "clean": everywhere else that word means "correctly labelled".)
        """
        idx = slice(None) if idx is None else idx
        patches = None if self.patches is None else self.patches[idx].float()
        return FeatureBatch(image=self.image[idx], patches=patches)

    def view(self, view_index: torch.Tensor, idx: torch.Tensor) -> FeatureBatch:
        """Features of samples ``idx`` under views ``view_index`` (one per sample)."""
        if self.views is None:
            return self.plain_view(idx)
        image = self.views[view_index, idx]
        patches = None
        if self.view_patches is not None:
            patches = self.view_patches[view_index, idx].float()
        return FeatureBatch(image=image, patches=patches)

    def subset(self, keep: torch.Tensor) -> SplitFeatures:
        """Only the samples where ``keep`` (bool (N,)) is True."""
        return SplitFeatures(
            image=self.image[keep],
            ok=self.ok[keep],
            patches=None if self.patches is None else self.patches[keep],
            views=None if self.views is None else self.views[:, keep],
            view_patches=None if self.view_patches is None else self.view_patches[:, keep],
            errors=None
            if self.errors is None
            else tuple(e for e, k in zip(self.errors, keep.tolist(), strict=True) if k),
        )


class _ViewsDataset(Dataset):
    """Each item: all V augmented views of one image (decoded once), its index, ok flag."""

    def __init__(self, samples: Sequence[Sample], transform, num_views: int, image_size: int):
        self.samples, self.transform = list(samples), transform
        self.num_views, self.image_size = num_views, image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        try:  # read once: the bytes are both decoded and hashed
            data = Path(self.samples[index].path).read_bytes()
        except OSError:
            data = None
        read = (
            read_image(self.samples[index].path) if data is None else read_image(io.BytesIO(data))
        )
        image = read.image
        if image is None:
            blank = torch.zeros(self.num_views, 3, self.image_size, self.image_size)
            return blank, index, False, read.error
        # Seed by content, not path: the same dataset under another root (or a
        # generated one under another cache folder) must get the same views.
        key = hashlib.sha256(data).hexdigest()
        views = []
        for v in range(self.num_views):
            torch.manual_seed(view_seed(key, v))
            views.append(self.transform(image))
        return torch.stack(views), index, True, ""


class _PlainDataset(Dataset):
    """Each item: the plain view of one image, its index, ok flag and read error."""

    def __init__(self, samples: Sequence[Sample], transform, image_size: int):
        self.samples, self.transform, self.image_size = list(samples), transform, image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        read = read_image(self.samples[index].path)
        if read.image is None:
            blank = torch.zeros(1, 3, self.image_size, self.image_size)
            return blank, index, False, read.error
        return self.transform(read.image).unsqueeze(0), index, True, ""


class FeatureExtractor:
    """Runs the frozen image encoder over lists of images (plain or augmented views)."""

    def __init__(
        self,
        backbone: FrozenCLIP,
        with_patches: bool = False,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = True,
        crop_scale: Sequence[float] = CROP_SCALE,
    ) -> None:
        self.backbone = backbone
        self.crop_scale = tuple(crop_scale)
        self.with_patches = with_patches
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress
        self.train_tf, self.test_tf = build_transforms(
            backbone.image_size, backbone.image_mean, backbone.image_std, self.crop_scale
        )

    def spec(self, augmented: bool) -> dict:
        size, mean, std = (
            self.backbone.image_size,
            self.backbone.image_mean,
            self.backbone.image_std,
        )
        return {**transform_spec(size, mean, std, self.crop_scale), "augmented": augmented}

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 3, H, W) -> normalised (B, D) and pooled patches (B, T, D) or None."""
        if self.with_patches:
            glob, tokens = self.backbone.encode_image(images, return_patches=True)
            return glob.cpu(), pool_patch_tokens(tokens).cpu()
        return self.backbone.encode_image(images).cpu(), None

    def extract(
        self, samples: Sequence[Sample], num_views: int = 0, desc: str = ""
    ) -> SplitFeatures:
        """Plain-view features (``num_views=0``) or V augmented views of ``samples``."""
        n = len(samples)
        size = self.backbone.image_size
        if num_views:
            dataset: Dataset = _ViewsDataset(samples, self.train_tf, num_views, size)
            per_item = num_views
        else:
            dataset = _PlainDataset(samples, self.test_tf, size)
            per_item = 1
        loader = DataLoader(
            dataset,
            batch_size=max(1, self.batch_size // per_item),
            shuffle=False,
            num_workers=self.num_workers,
        )
        dim = self.backbone.embed_dim
        feats = torch.zeros(per_item, n, dim)
        patches = None
        ok = torch.zeros(n, dtype=torch.bool)
        errors = [""] * n
        bar = tqdm(total=n, desc=desc or "encoding images", disable=not self.progress, leave=False)
        with torch.random.fork_rng(devices=[]):
            for images, index, good, why in loader:
                for i, e in zip(index.tolist(), why, strict=True):
                    errors[i] = e
                b = images.shape[0]
                glob, pooled = self.encode(images.flatten(0, 1))
                feats[:, index] = glob.view(b, per_item, dim).transpose(0, 1)
                if pooled is not None:
                    if patches is None:
                        patches = torch.zeros(per_item, n, pooled.shape[1], dim, dtype=torch.half)
                    patches[:, index] = pooled.view(b, per_item, -1, dim).transpose(0, 1).half()
                ok[index] = good
                bar.update(b)
        bar.close()
        feats[:, ~ok] = 0.0
        if num_views:
            return SplitFeatures(
                image=feats[0].clone(),
                ok=ok,
                views=feats,
                view_patches=patches,
                errors=tuple(errors),
            )
        patches0 = None if patches is None else patches[0]
        return SplitFeatures(image=feats[0], ok=ok, patches=patches0, errors=tuple(errors))


def _file_identity(path: str) -> list[int] | None:
    """(device, inode, size, mtime ns, ctime ns) of a file; None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def content_hash(path: str) -> str:
    """SHA-256 of a file's bytes, or ``missing`` / ``unreadable:<error>`` when it has none."""
    try:
        return sha256_of_file(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable:{type(exc).__name__}"


class FeatureCache:
    """Disk cache of :class:`SplitFeatures`, keyed by backbone, image contents, transform, views.

    Args:
        extractor: computes features on a miss.
        root: cache folder (default ``$VISPROMPT_CACHE/features``).
        store: write new entries to disk (False keeps everything in memory).

    Layout: ``root/<k[:2]>/<k>.safetensors`` per entry (``k`` the content key)
    and ``root/index/<i[:2]>/<i>.json`` mapping files' identities to ``k``.
    """

    def __init__(self, extractor: FeatureExtractor, root: Path | None = None, store: bool = True):
        self.extractor = extractor
        self.root = Path(root) if root is not None else default_cache_dir()
        self.store = store
        #: how many entries were computed (misses) and loaded (hits) by this cache
        self.misses = 0
        self.hits = 0

    def _settings(self, num_views: int) -> dict:
        ident = self.extractor.backbone.identity
        return {
            "version": CACHE_VERSION,
            "backbone": ident.fingerprint,
            "arch": ident.arch,
            "dtype": str(self.extractor.backbone.dtype),
            "transform": self.extractor.spec(augmented=num_views > 0),
            "views": num_views,
            "patches": self.extractor.with_patches,
            "max_image_pixels": max_image_pixels(),
        }

    @staticmethod
    def _digest(payload: dict) -> str:
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def key(self, samples: Sequence[Sample], num_views: int) -> str:
        """The content key of an entry: settings plus the SHA-256 of every image file.

        Files are hashed unless the index already knows their current identity.
        """
        settings = self._settings(num_views)
        paths = [s.path for s in samples]
        identities = [_file_identity(p) for p in paths]
        index_key = self._digest({**settings, "paths": paths, "files": identities})
        index_path = self.root / "index" / index_key[:2] / f"{index_key}.json"
        if self.store:
            try:
                return str(json.loads(index_path.read_text())["key"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
        started_ns = time.time_ns()
        workers = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            hashes = list(pool.map(content_hash, paths, chunksize=16))
        key = self._digest(
            {**settings, "contents": hashlib.sha256("\n".join(hashes).encode()).hexdigest()}
        )
        settled = all(
            ident is not None and max(ident[3], ident[4]) < started_ns - SETTLE_SECONDS * 1e9
            for ident in identities
        )
        if self.store and settled:
            with contextlib.suppress(OSError):  # the index only saves time
                atomic_write_text(index_path, json.dumps({"key": key}))
        return key

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, samples: Sequence[Sample], num_views: int = 0, desc: str = "") -> SplitFeatures:
        if not self.store:
            self.misses += 1
            return self.extractor.extract(samples, num_views=num_views, desc=desc)
        path = self.path(self.key(samples, num_views))
        if path.is_file():
            try:
                loaded = _load(path)
                if len(loaded.ok) == len(samples):
                    self.hits += 1
                    return loaded
            except Exception:  # a damaged entry is recomputed, never trusted
                pass
        self.misses += 1
        feats = self.extractor.extract(samples, num_views=num_views, desc=desc)
        _save_atomic(path, feats)
        return feats


def _save_atomic(path: Path, feats: SplitFeatures) -> None:
    tensors = {"image": feats.image.contiguous(), "ok": feats.ok.to(torch.uint8)}
    for name in ("patches", "views", "view_patches"):
        value = getattr(feats, name)
        if value is not None:
            tensors[name] = value.contiguous()
    meta = None
    if feats.errors is not None:
        meta = {"errors": json.dumps({i: e for i, e in enumerate(feats.errors) if e})}
    atomic_write_bytes(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _load(path: Path) -> SplitFeatures:
    with safe_open(str(path), framework="pt") as fh:
        t = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 - safe_open API
        meta = fh.metadata() or {}
    errors = None
    if "errors" in meta:
        listed = {int(i): e for i, e in json.loads(meta["errors"]).items()}
        errors = tuple(listed.get(i, "") for i in range(len(t["ok"])))
    return SplitFeatures(
        image=t["image"],
        ok=t["ok"].bool(),
        patches=t.get("patches"),
        views=t.get("views"),
        view_patches=t.get("view_patches"),
        errors=errors,
    )


class LiveFeatures:
    """Encodes freshly augmented training images every step (no cache; reference behaviour)."""

    def __init__(self, extractor: FeatureExtractor, samples: Sequence[Sample]):
        self.extractor = extractor
        self.samples = list(samples)

    def batch(self, idx: torch.Tensor) -> FeatureBatch:
        images = []
        for i in idx.tolist():
            image = load_rgb(self.samples[i].path)
            size = self.extractor.backbone.image_size
            images.append(
                torch.zeros(3, size, size) if image is None else self.extractor.train_tf(image)
            )
        glob, pooled = self.extractor.encode(torch.stack(images))
        return FeatureBatch(image=glob, patches=pooled)
