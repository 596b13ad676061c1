"""The panorama-dir provider on a tiny official-layout dataset, and the restricted pickle loader it uses.

The fixture's two panoramas are the same image (red ahead of the centre column, then green, blue,
yellow turning right; white sky above +45°, black ground below -45°) with rotation 0 and 90.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from sftrl.street_view.geometry import destination_point
from sftrl.street_view.panorama_dir import (
    PanoramaDirProvider,
    equirect_to_perspective,
    perspective_sample_coords,
)
from sftrl.street_view.provider import ProviderError, ViewRequest, make_provider
from sftrl.street_view.safe_pickle import UnsafePickleError, load_pano_mapping, safe_loads

FIXTURE = Path(__file__).parent / "fixtures" / "panorama_dir"
A = (40.75, -73.99)  # panoA, rotation 0
B = (40.7504, -73.99)  # panoB, rotation 90, 44.5 m north of A
RED, GREEN, BLUE, YELLOW = (220, 20, 20), (20, 200, 20), (20, 20, 220), (230, 210, 20)


def _view(provider: PanoramaDirProvider, at: tuple[float, float], heading: float, **kw) -> np.ndarray:
    req = ViewRequest(lat=at[0], lng=at[1], heading=heading, fov=kw.pop("fov", 60), width=48, height=48, **kw)
    img = provider.get_view(req)
    assert img.size == (48, 48) and img.mode == "RGB"
    return np.asarray(img, dtype=np.float64)


def _is(pixels: np.ndarray, colour: tuple[int, int, int], tol: float = 25.0) -> bool:
    return bool(np.abs(pixels.reshape(-1, 3).mean(axis=0) - np.array(colour)).max() < tol)


@pytest.fixture(scope="module")
def provider() -> PanoramaDirProvider:
    p = make_provider("panorama-dir", root=str(FIXTURE), city="nyc")  # envs pass city: it is ignored
    assert isinstance(p, PanoramaDirProvider)
    return p


@pytest.mark.parametrize(
    ("heading", "colour_a", "colour_b"),
    [(0, RED, YELLOW), (90, GREEN, RED), (180, BLUE, GREEN), (270, YELLOW, BLUE), (-90, YELLOW, BLUE)],
)
def test_heading_selects_the_panorama_columns_with_rotation_applied(provider, heading, colour_a, colour_b):
    # 180 on panoA is the image seam (left and right edges): sampling must wrap, not smear.
    assert _is(_view(provider, A, heading), colour_a)
    assert _is(_view(provider, B, heading), colour_b)


def test_view_edges_follow_the_field_of_view(provider):
    # Heading 45 with a 90° fov straddles red (north) and green (east) at the middle column.
    v = _view(provider, A, 45, fov=90)
    assert _is(v[:, 4:20], RED) and _is(v[:, 28:44], GREEN)
    # A narrow view inside one sector sees one colour only.
    assert _is(_view(provider, A, 30, fov=20), RED)


def test_pitch_looks_up_and_down(provider):
    # The view centre follows the pitch; with a 60° fov, +70° sees sky only above the middle.
    up, down = _view(provider, A, 0, pitch=70), _view(provider, A, 0, pitch=-70)
    assert _is(up[:24], (255, 255, 255)) and _is(up[-2:], RED)
    assert _is(down[24:], (0, 0, 0)) and _is(down[:2], RED)
    level = _view(provider, A, 0, pitch=0)
    assert _is(level[20:28], RED)


def test_nearest_panorama_within_radius(provider):
    near_b = destination_point(*B, 200.0, 12.0)
    assert provider.nearest(*near_b)[0] == "panoB"
    assert _is(_view(provider, near_b, 0), YELLOW)  # panoB's rotation, not panoA's
    pid, dist = provider.nearest(*destination_point(*A, 90.0, 20.0))
    assert pid == "panoA" and 19.0 < dist < 21.0
    # An explicit pano_id wins over the coordinates.
    assert _is(_view(provider, A, 0, pano_id="panoB"), YELLOW)


def test_out_of_radius_is_a_clear_error(provider):
    far = destination_point(*A, 180.0, 200.0)
    with pytest.raises(ProviderError, match=r"no panorama within 30 m") as err:
        provider.get_view(ViewRequest(lat=far[0], lng=far[1], heading=0))
    assert str(FIXTURE / "gps_pano_mapping.pkl") in str(err.value) and "panoA" in str(err.value)
    wide = PanoramaDirProvider(FIXTURE, radius_m=250.0)
    assert wide.nearest(*far)[0] == "panoA"


def test_cache_key_names_the_panorama_and_view(provider):
    req = ViewRequest(lat=A[0], lng=A[1], heading=10, width=48, height=48)
    key = provider.cache_key(req)
    assert key.startswith("panorama-dir/") and "/panoA/" in key
    assert provider.cache_key(req.model_copy(update={"lat": A[0] + 0.00001})) == key  # same panorama
    assert provider.cache_key(req.model_copy(update={"heading": 370})) == key  # same direction
    for change in ({"heading": 11}, {"fov": 60}, {"pitch": 5}, {"width": 64}, {"lat": B[0]}):
        assert provider.cache_key(req.model_copy(update=change)) != key


def test_decoded_panoramas_are_lru_cached():
    p = PanoramaDirProvider(FIXTURE, cache_size=1)
    first = p.panorama("panoA")
    assert p.panorama("panoA") is first
    p.panorama("panoB")
    assert p.panorama("panoA") is not first  # evicted, decoded again
    assert first.shape == (128, 256, 3)


def test_missing_files_name_the_path(tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(FIXTURE, root)
    (root / "street_views" / "panoB.jpg").unlink()
    (root / "street_views" / "panoA.metadata.json").unlink()
    p = PanoramaDirProvider(root)
    with pytest.raises(ProviderError, match="panorama image missing") as err:
        p.get_view(ViewRequest(lat=B[0], lng=B[1], heading=0))
    assert str(root / "street_views" / "panoB.jpg") in str(err.value)
    with pytest.raises(ProviderError, match="metadata missing") as err:
        p.get_view(ViewRequest(lat=A[0], lng=A[1], heading=0))
    assert str(root / "street_views" / "panoA.metadata.json") in str(err.value)
    lenient = PanoramaDirProvider(root, require_metadata=False)
    assert _is(_view(lenient, A, 0), RED)  # rotation defaults to 0
    with pytest.raises(ProviderError, match="panorama directory not found"):
        PanoramaDirProvider(tmp_path / "nowhere")
    (root / "gps_pano_mapping.pkl").unlink()
    with pytest.raises(ProviderError, match="gps_pano_mapping.pkl"):
        PanoramaDirProvider(root)


def test_json_mapping_and_path_traversal_ids(tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(FIXTURE, root)
    (root / "gps_pano_mapping.pkl").unlink()
    (root / "gps_pano_mapping.json").write_text(
        json.dumps({"40.75,-73.99": "panoA", "40.7504,-73.99": "panoB"})
    )
    assert _is(_view(PanoramaDirProvider(root), B, 90), RED)  # found the .json fallback
    (root / "gps_pano_mapping.json").write_text(json.dumps([[40.75, -73.99, "../../secret"]]))
    with pytest.raises(ProviderError, match="not a plain name"):
        PanoramaDirProvider(root).get_view(ViewRequest(lat=A[0], lng=A[1], heading=0))


def test_sampling_geometry_is_exact():
    # Odd sizes: the centre pixel is exactly the view direction.
    col, row = perspective_sample_coords(
        360, 180, yaw_deg=30.0, fov_deg=90.0, pitch_deg=0.0, width=65, height=65
    )
    assert col[32, 32] == pytest.approx((30 + 180) - 0.5)
    assert row[32, 32] == pytest.approx(90 - 0.5)
    assert np.allclose(row[32], 89.5)  # the horizon is a straight row at pitch 0
    # Edge pixel centres sit half a pixel inside fov/2.
    f = 32.5 / np.tan(np.radians(45))
    assert col[32, 0] == pytest.approx(210 - np.degrees(np.arctan(32 / f)) - 0.5)
    _, up = perspective_sample_coords(360, 180, 0.0, 60.0, 40.0, 33, 33)
    assert up[16, 16] == pytest.approx(90 - 40 - 0.5)
    # Bilinear: a horizontal ramp is reproduced between pixel centres.
    ramp = np.repeat(np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 8, 0), 3, 2)
    out = equirect_to_perspective(ramp, 0.0, 2.0, 0.0, 16, 16)
    assert np.all(np.diff(out[8, :, 0].astype(int)) >= 0) and 126 <= out[8, 8, 0] <= 129


# --- safe_pickle ----------------------------------------------------------------------------------------


def test_official_mapping_pickle_loads_without_find_class():
    mapping = load_pano_mapping(FIXTURE / "gps_pano_mapping.pkl")
    assert mapping == {A: "panoA", B: "panoB"}
    np_keys = {(np.float64(40.1), np.float64(-73.2)): "x", (np.float32(1.5), np.int64(3)): "y"}
    for proto in (2, 4, 5):
        assert safe_loads(pickle.dumps(np_keys, protocol=proto)) == {(40.1, -73.2): "x", (1.5, 3): "y"}


class _Evil:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _EvalEvil:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (eval, (f"open({str(self.path)!r}, 'w').write('x')",))


def test_malicious_pickles_are_refused_without_running(tmp_path):
    sentinel = tmp_path / "pwned"
    payloads = [
        pickle.dumps(_Evil(f"touch {sentinel}")),
        pickle.dumps({(1.0, 2.0): _Evil(f"touch {sentinel}")}),
        pickle.dumps(_EvalEvil(sentinel), protocol=0),
        pickle.dumps(np.array([1.0])),  # arrays need numpy's reconstructor: refused too
    ]
    for data in payloads:
        with pytest.raises(UnsafePickleError, match="refusing"):
            safe_loads(data)
    bad = tmp_path / "gps_pano_mapping.pkl"
    bad.write_bytes(payloads[1])
    with pytest.raises(UnsafePickleError, match=str(bad)):
        load_pano_mapping(bad)
    (tmp_path / "street_views").mkdir()
    with pytest.raises(ProviderError, match="refusing"):
        PanoramaDirProvider(tmp_path)
    assert not sentinel.exists()


def test_mapping_content_errors_name_the_file(tmp_path):
    for content in ({(1.0, 2.0): 5}, {"not a point": "p"}, [1, 2], 42):
        f = tmp_path / "m.pkl"
        f.write_bytes(pickle.dumps(content))
        with pytest.raises(ValueError, match=str(f)):
            load_pano_mapping(f)
    rows = tmp_path / "m.json"
    rows.write_text(json.dumps([{"lat": 1.0, "lng": 2.0, "pano_id": "p"}, [3.0, 4.0, "q"]]))
    assert load_pano_mapping(rows) == {(1.0, 2.0): "p", (3.0, 4.0): "q"}
