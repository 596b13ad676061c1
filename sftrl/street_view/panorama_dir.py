"""Street views cut from a directory of equirectangular panoramas (the official SFTvsRL offline data).

Layout (what the SFTvsRL ``nyc_1k_routes`` / ``VLN_mini`` downloads hold, and what ``agent routes
collect --views`` writes)::

    ROOT/gps_pano_mapping.pkl          {(lat, lng): pano_id}  (or gps_pano_mapping.json)
    ROOT/street_views/{pano_id}.jpg    equirectangular panorama, 360° wide, 180° high
    ROOT/street_views/{pano_id}.metadata.json   {"rotation": deg}

A request is served by the panorama nearest to its lat/lng (haversine) within ``radius_m``, or by
``request.pano_id`` when the directory has that panorama. The view is a pinhole-camera crop at the
request's heading, horizontal fov and pitch, sampled bilinearly in one vectorised numpy pass.

Heading convention: ``rotation`` is the compass heading (degrees clockwise from north) of the
panorama's centre column; column ``x`` of a ``W`` px wide panorama looks towards
``rotation + (x + 0.5) / W * 360 - 180``. Headings grow to the right, as in Street View. Rows go from
+90° elevation (top) to -90° (bottom).

The mapping file is read with :mod:`sftrl.street_view.safe_pickle` (no code from the file runs), and
panorama ids are used as file names only when they are plain names (no path separators).
"""

from __future__ import annotations

import json
import math
import re
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from sftrl.street_view.geometry import GridIndex, LocalProjection, haversine_m
from sftrl.street_view.provider import ProviderError, ViewRequest
from sftrl.street_view.safe_pickle import UnsafePickleError, load_pano_mapping

__all__ = ["PanoramaDirProvider", "equirect_to_perspective", "perspective_sample_coords"]

# Bump when the crop changes, so caches keyed by cache_key() never serve stale pictures.
CROP_VERSION: Final = 1
IMAGE_SUFFIXES: Final = (".jpg", ".jpeg", ".png")
# Street View panoramas are at most 16384 x 8192; larger images are refused before they are decoded.
MAX_PANORAMA_PIXELS: Final = 16384 * 8192
# Google panorama ids are URL-safe base64; Touchdown / our own ids are word characters and dashes.
_SAFE_ID = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_\-.]{0,199}$")


def perspective_sample_coords(
    pano_w: int,
    pano_h: int,
    yaw_deg: float,
    fov_deg: float,
    pitch_deg: float,
    width: int,
    height: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Fractional panorama (column, row) of every output pixel of a pinhole view.

    ``yaw_deg`` is the view direction relative to the panorama's centre column (positive = right),
    ``fov_deg`` the horizontal field of view; pixels are square, so the vertical fov follows from
    the aspect ratio. Positive pitch looks up.
    """
    f = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    xs = (np.arange(width, dtype=np.float64) + 0.5 - width / 2.0) / f
    ys = (height / 2.0 - (np.arange(height, dtype=np.float64) + 0.5)) / f
    xc, yc = np.meshgrid(xs, ys)  # camera frame: x right, y up, z forward (= 1)
    p = math.radians(pitch_deg)
    # Tilt the camera up by the pitch (a rotation about its x axis).
    y1 = yc * math.cos(p) + math.sin(p)
    z1 = -yc * math.sin(p) + math.cos(p)
    azimuth = np.degrees(np.arctan2(xc, z1)) + yaw_deg
    elevation = np.degrees(np.arctan2(y1, np.hypot(xc, z1)))
    rel = (azimuth + 180.0) % 360.0  # 0 at the panorama's left edge
    col = rel / 360.0 * pano_w - 0.5
    row = (90.0 - elevation) / 180.0 * pano_h - 0.5
    return col, row


def equirect_to_perspective(
    pano: npt.NDArray[np.uint8],
    yaw_deg: float,
    fov_deg: float,
    pitch_deg: float,
    width: int,
    height: int,
) -> npt.NDArray[np.uint8]:
    """A ``height`` × ``width`` × 3 perspective crop of an equirectangular ``pano`` (H × W × 3 uint8).

    Bilinear sampling; columns wrap around (the panorama is a full circle), rows clamp at the poles.
    """
    ph, pw = pano.shape[:2]
    col, row = perspective_sample_coords(pw, ph, yaw_deg, fov_deg, pitch_deg, width, height)
    row = np.clip(row, 0.0, ph - 1.0)
    c0 = np.floor(col)
    r0 = np.floor(row)
    fc = (col - c0)[..., None].astype(np.float32)
    fr = (row - r0)[..., None].astype(np.float32)
    c0i = c0.astype(np.int64) % pw
    c1i = (c0i + 1) % pw
    r0i = r0.astype(np.int64)
    r1i = np.minimum(r0i + 1, ph - 1)
    img = pano.astype(np.float32, copy=False)
    top = img[r0i, c0i] * (1.0 - fc) + img[r0i, c1i] * fc
    bottom = img[r1i, c0i] * (1.0 - fc) + img[r1i, c1i] * fc
    out = top * (1.0 - fr) + bottom * fr
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class PanoramaDirProvider:
    """Serve views from an official SFTvsRL panorama directory (see the module docstring).

    ``PanoramaDirProvider(root)`` is what ``make_provider("panorama-dir", root=...)`` builds; ``mapping``
    and ``street_views`` are paths relative to ``root`` (or absolute). Other keyword arguments (e.g.
    the ``city`` envs pass to every provider) are ignored.
    """

    name = "panorama-dir"

    def __init__(
        self,
        root: str | Path,
        mapping: str | Path = "gps_pano_mapping.pkl",
        street_views: str | Path = "street_views",
        radius_m: float = 30.0,
        *,
        cache_size: int = 8,
        require_metadata: bool = True,
        max_pixels: int = MAX_PANORAMA_PIXELS,
        **ignored: Any,
    ) -> None:
        if radius_m <= 0:
            raise ValueError("radius_m must be positive")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ProviderError(f"panorama directory not found: {self.root}")
        self.mapping_path = self._under_root(mapping)
        if str(mapping) == "gps_pano_mapping.pkl":
            # `agent routes import` writes the JSON form once: then no pickle is read at all.
            alt = self.root / "gps_pano_mapping.json"
            if alt.is_file():
                self.mapping_path = alt
        self.views_dir = self._under_root(street_views)
        if not self.views_dir.is_dir():
            raise ProviderError(f"street-view image directory not found: {self.views_dir}")
        self._views_real = self.views_dir.resolve()
        self.max_pixels = int(max_pixels)
        self.radius_m = float(radius_m)
        self.require_metadata = require_metadata
        try:
            table = load_pano_mapping(self.mapping_path)
        except FileNotFoundError as exc:
            raise ProviderError(str(exc)) from None
        except (UnsafePickleError, ValueError) as exc:
            raise ProviderError(str(exc)) from None
        if not table:
            raise ProviderError(f"panorama mapping is empty: {self.mapping_path}")
        self._lat = np.fromiter((k[0] for k in table), dtype=np.float64, count=len(table))
        self._lng = np.fromiter((k[1] for k in table), dtype=np.float64, count=len(table))
        self._ids: list[str] = list(table.values())
        self._proj = LocalProjection.around(self._lat, self._lng)
        x, y = self._proj.to_xy(self._lat, self._lng)
        self._index = GridIndex(x, y, cell_m=max(self.radius_m, 10.0))
        self._panos: OrderedDict[str, npt.NDArray[np.uint8]] = OrderedDict()
        self._cache_size = max(1, int(cache_size))
        self._rotations: dict[str, float] = {}
        # Envs may share a provider across threads; the caches are the only shared mutable state.
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for process pools: the lock is rebuilt and decoded panoramas are read again there.
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state["_panos"] = OrderedDict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _under_root(self, p: str | Path) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else self.root / path

    def __len__(self) -> int:
        return len(self._ids)

    # -- lookup ------------------------------------------------------------------------------------
    def nearest(self, lat: float, lng: float) -> tuple[str, float]:
        """(pano id, distance in metres) of the panorama nearest to lat/lng within ``radius_m``."""
        x, y = self._proj.to_xy(lat, lng)
        # The planar index is within 0.5 % at city scale: search a little wider, then decide exactly.
        cand = self._index.within(float(x), float(y), self.radius_m * 1.01 + 1.0)
        best: tuple[float, int] | None = None
        for k in cand.tolist():
            d = haversine_m(lat, lng, float(self._lat[k]), float(self._lng[k]))
            if d <= self.radius_m and (best is None or (d, k) < best):
                best = (d, k)
        if best is None:
            k, _ = self._index.nearest(float(x), float(y))
            d = haversine_m(lat, lng, float(self._lat[k]), float(self._lng[k]))
            raise ProviderError(
                f"no panorama within {self.radius_m:g} m of ({lat:.6f}, {lng:.6f}) in {self.mapping_path} "
                f"(nearest: {self._ids[k]} at {d:.0f} m)"
            )
        return self._ids[best[1]], best[0]

    def _pano_for(self, request: ViewRequest) -> str:
        if request.pano_id and _SAFE_ID.match(request.pano_id) and self._image_path(request.pano_id, False):
            return request.pano_id
        return self.nearest(request.lat, request.lng)[0]

    def _image_path(self, pano_id: str, required: bool = True) -> Path | None:
        if not _SAFE_ID.match(pano_id):
            raise ProviderError(
                f"refusing panorama id {pano_id!r:.60} from {self.mapping_path}: not a plain name"
            )
        for suffix in IMAGE_SUFFIXES:
            p = self.views_dir / f"{pano_id}{suffix}"
            if p.is_file():
                return self._inside(p)
        if required:
            raise ProviderError(f"panorama image missing: {self.views_dir / (pano_id + '.jpg')}")
        return None

    def _inside(self, path: Path) -> Path:
        """``path`` if it resolves (symlinks followed) inside the street-view directory."""
        real = path.resolve()
        if not real.is_relative_to(self._views_real):
            raise ProviderError(f"refusing {path}: it links to {real}, outside {self.views_dir}")
        return real

    def rotation(self, pano_id: str) -> float:
        """Compass heading of the panorama's centre column (its ``metadata.json`` ``rotation``)."""
        with self._lock:
            if pano_id in self._rotations:
                return self._rotations[pano_id]
        self._image_path(pano_id, required=False)  # validates the id before it becomes a path
        path = self.views_dir / f"{pano_id}.metadata.json"
        if not path.is_file():
            if self.require_metadata:
                raise ProviderError(f"panorama metadata missing: {path}")
            value = 0.0
        else:
            try:
                meta = json.loads(self._inside(path).read_text(encoding="utf-8"))
                value = float(meta["rotation"])
                if not math.isfinite(value):
                    raise ValueError("not finite")
            except (ValueError, KeyError, TypeError) as exc:
                raise ProviderError(f"bad panorama metadata {path}: {exc!r:.100}") from None
        with self._lock:
            self._rotations[pano_id] = value
        return value

    def panorama(self, pano_id: str) -> npt.NDArray[np.uint8]:
        """The decoded panorama (H × W × 3 uint8), from a small LRU cache."""
        with self._lock:
            arr = self._panos.get(pano_id)
            if arr is not None:
                self._panos.move_to_end(pano_id)
                return arr
        path = self._image_path(pano_id)
        assert path is not None
        try:
            with warnings.catch_warnings():
                # Pillow warns from ~89 Mpx; the limit that counts is ours, checked right below.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    if im.width * im.height > self.max_pixels:
                        raise ProviderError(
                            f"refusing panorama {path}: {im.width}x{im.height} pixels is over the limit "
                            f"of {self.max_pixels} (a decompression bomb, or not a Street View panorama)"
                        )
                    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except ProviderError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            # Pillow raises all of these on corrupt or hostile files (DecompressionBombError over its
            # own pixel limit, before ours is checked).
            raise ProviderError(f"cannot decode panorama {path}: {exc}") from None
        with self._lock:
            self._panos[pano_id] = arr
            while len(self._panos) > self._cache_size:
                self._panos.popitem(last=False)
        return arr

    # -- provider API ----------------------------------------------------------------------------------
    def cache_key(self, request: ViewRequest) -> str:
        pano = self._pano_for(request)
        return (
            f"panorama-dir/v{CROP_VERSION}/{pano}/h{round(request.heading % 360.0, 2) % 360.0:.2f}/"
            f"f{request.fov:.2f}/p{request.pitch:.2f}/{request.width}x{request.height}"
        )

    def get_view(self, request: ViewRequest) -> Image.Image:
        pano = self._pano_for(request)
        rotation = self.rotation(pano)
        arr = self.panorama(pano)
        yaw = ((request.heading - rotation + 180.0) % 360.0) - 180.0
        out = equirect_to_perspective(arr, yaw, request.fov, request.pitch, request.width, request.height)
        return Image.fromarray(out, "RGB")
