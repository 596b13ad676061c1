"""Downloaded files cannot run code, exhaust memory or leak odd exceptions (issue 13, items 11-12).

The panorama mapping pickle is read by sftrl's own bounded interpreter (real memo bombs, ``BUILD``
on the loader's functions, a thousand mutated files in a real second process whose peak memory is
measured); ``agent routes import`` turns it into JSON once; a symlink out of the dataset and a
decompression-bomb PNG are refused with the provider's one error type.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from sftrl.cli import main
from sftrl.street_view.panorama_dir import PanoramaDirProvider
from sftrl.street_view.provider import ProviderError, ViewRequest
from sftrl.street_view.safe_pickle import UnsafePickleError, _latin1_bytes, load_pano_mapping, safe_loads

FIXTURE = Path(__file__).parent / "fixtures" / "panorama_dir"
A = (40.75, -73.99)


def test_plain_objects_read_back_exactly_on_every_protocol():
    rng = random.Random(0)
    shared = ("shared", 1.5)
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        value = {(rng.uniform(-90, 90), rng.uniform(-180, 180)): f"pano{i}" for i in range(50)} | {
            "list": [shared, shared, b"\x00\xff", None, True, -(2**40), 1e-300],
            "t": (),
            "d": {},
        }
        assert safe_loads(pickle.dumps(value, protocol=proto)) == value
        np_keys = {(np.float64(40.1), np.float32(-73.5)): "x"}
        assert safe_loads(pickle.dumps(np_keys, protocol=proto)) == {(40.1, -73.5): "x"}


def test_a_memo_bomb_costs_nothing():
    # PROTO 4, None, LONG_BINPUT 2**32-1, STOP: CPython's unpickler sizes its memo to the index (> 1 GiB).
    bomb = b"\x80\x04Nr\xff\xff\xff\xff."
    assert len(bomb) == 9
    assert safe_loads(bomb) is None
    get_bomb = b"\x80\x04j\xff\xff\xff\x7f."  # LONG_BINGET of an entry never stored
    with pytest.raises(UnsafePickleError, match="never stored"):
        safe_loads(get_bomb)


def test_build_cannot_touch_the_loaders_own_functions():
    defaults = _latin1_bytes.__defaults__
    evil = b"c_codecs\nencode\n(dV__defaults__\n(Vutf-8\ntsb."  # BUILD {"__defaults__": ("utf-8",)}
    with pytest.raises(UnsafePickleError, match="refusing to set the state"):
        safe_loads(evil)
    assert _latin1_bytes.__defaults__ == defaults


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"\x80\x04\x8a\x40" + b"\xff" * 63 + b"\x7f.", "refusing an integer"),  # LONG1, 511 bits
        (b"I" + b"9" * 5000 + b"\n.", "malformed pickle"),  # INT of 5000 digits
        (b"\x80\x04N" + b"\x85" * 40 + b".", "nested deeper"),  # TUPLE1 x 40: deep keys crash hashing
        (b"\x80\x04]NNs.", "set an item on a list"),  # SETITEM on a list (TypeError in CPython)
        (b"\x80\x04X\xff\xff\xff\x7fab.", "malformed pickle"),  # BINUNICODE longer than the file
        (b"\x80\x04\x8f.", "refusing pickle opcode EMPTY_SET"),
        (b"\x80\x04", "before seeing STOP"),
        (b"(", "before seeing STOP"),
    ],
)
def test_malformed_pickles_raise_the_one_error_type(data, needle):
    with pytest.raises(UnsafePickleError, match=needle):
        safe_loads(data)


_MUTATOR = textwrap.dedent(
    """
    import pickle, random, sys
    import numpy as np
    from sftrl.street_view.safe_pickle import UnsafePickleError, load_pano_mapping
    path = sys.argv[1]
    rows = {(40.0 + i / 1e4, np.float64(-73.0 - i / 1e4)): f"p{i}" for i in range(20)}
    base = pickle.dumps(rows, protocol=4)
    rng, kinds = random.Random(0), {}
    for _ in range(int(sys.argv[2])):
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(data))
            data[i] = rng.randrange(256) if rng.random() < 0.8 else 0xFF
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        open(path, "wb").write(bytes(data))
        try:
            load_pano_mapping(path)
            kind = "ok"
        except (UnsafePickleError, ValueError) as exc:
            kind = type(exc).__name__
        kinds[kind] = kinds.get(kind, 0) + 1  # anything else propagates: the process fails
    # VmHWM: this process's peak RSS (ru_maxrss would include the forking parent's, kept over exec).
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(kinds, int(hwm.split()[1]) // 1024)
    """
)


def test_a_thousand_mutated_pickles_give_one_error_type_and_bounded_memory(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _MUTATOR, str(tmp_path / "m.pkl"), "1000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    kinds, peak_mb = proc.stdout.rsplit(" ", 1)
    assert "UnsafePickleError" in kinds and int(peak_mb) < 200, proc.stdout  # ~50 MB measured


def _dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(FIXTURE, root)
    return root


def test_routes_import_converts_the_pickle_once_and_runs_read_no_pickle(tmp_path, capsys):
    root = _dataset(tmp_path)
    expected = load_pano_mapping(root / "gps_pano_mapping.pkl")
    assert main(["routes", "import", str(root)]) == 0
    assert "wrote 2 panoramas" in capsys.readouterr().out
    rows = json.loads((root / "gps_pano_mapping.json").read_text())
    assert {(lat, lng): pano for lat, lng, pano in rows} == expected
    # The provider reads the JSON: a pickle replaced by garbage afterwards is never opened.
    (root / "gps_pano_mapping.pkl").write_bytes(b"\x80\x04Nr\xff\xff\xff\xff.garbage")
    provider = PanoramaDirProvider(root)
    assert provider.mapping_path.name == "gps_pano_mapping.json" and len(provider) == 2
    assert main(["routes", "import", str(root)]) == 2
    assert "exists (pass --overwrite" in capsys.readouterr().err
    (root / "gps_pano_mapping.json").unlink()
    assert main(["routes", "import", str(root)]) == 2
    err = capsys.readouterr().err
    assert "gps_pano_mapping.pkl" in err and err.count("\n") == 1


def test_a_panorama_symlinked_outside_the_dataset_is_refused(tmp_path):
    root = _dataset(tmp_path)
    outside = tmp_path / "secret.jpg"
    image = root / "street_views" / "panoA.jpg"
    shutil.copy(image, outside)
    image.unlink()
    image.symlink_to(outside)
    provider = PanoramaDirProvider(root)
    with pytest.raises(ProviderError, match="outside"):
        provider.get_view(ViewRequest(lat=A[0], lng=A[1], heading=0.0))


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("size", [(20000, 12000), (16384, 8193)], ids=["pillow-bomb", "over-our-limit"])
def test_a_decompression_bomb_panorama_is_the_providers_error(tmp_path, size):
    root = _dataset(tmp_path)
    (root / "street_views" / "panoA.jpg").unlink()
    (root / "street_views" / "panoA.png").write_bytes(_png_header_only(*size))
    provider = PanoramaDirProvider(root)
    with pytest.raises(ProviderError, match="panoA.png"):
        provider.get_view(ViewRequest(lat=A[0], lng=A[1], heading=0.0))


def test_a_hostile_mapping_refuses_the_run_before_the_first_episode(tmp_path, capsys):
    root = _dataset(tmp_path)
    (root / "gps_pano_mapping.pkl").write_bytes(b"\x80\x04Nr\xff\xff\xff\xff.")  # memo bomb
    out = tmp_path / "run"
    args = ["run", "--env", "virl", "--modality", "vision", "--street-view", "panorama-dir"]
    assert main([*args, "--panorama-dir", str(root), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot start" in err and "gps_pano_mapping.pkl" in err and err.count("\n") == 1
    assert not (out / "episodes.jsonl").exists() or not (out / "episodes.jsonl").read_bytes()
