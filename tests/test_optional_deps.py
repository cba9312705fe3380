"""matplotlib (the ``demo`` extra) and distributed (the ``dask`` extra) are optional: the library
imports and computes without them, and the demo says which extra to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# An import of a module set to None in sys.modules raises ImportError, as when it is not
# installed. One interpreter runs both checks (each start imports torch).
SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["matplotlib"] = None
    sys.modules["distributed"] = None
    import numpy as np
    import napari_stnls.cli, napari_stnls.cli.demo, napari_stnls.data, napari_stnls.flow
    import napari_stnls.plugin._reader, napari_stnls.plugin._sample
    import napari_stnls.plugin.model.denoise, napari_stnls.plugin.model.regions
    import napari_stnls.plugin.model.search, napari_stnls.video.flow, napari_stnls.video.synthetic
    from napari_stnls import denoise, ops, stream, video
    v = np.random.default_rng(0).random((2, 12, 12), dtype=np.float32)
    lazy = stream.denoise_dask(v, "nlm", sigma=0.1, ps=3, ws=5, wt=1, k=4)
    ref = denoise.nl_means(v, 0.1, ps=3, ws=5, wt=1, k=4, device="cpu")
    print("streamed", float(np.abs(lazy.compute() - ref).max()))
    from napari_stnls.cli.demo import run_demo
    try:
        run_demo("fig.png", progress=False)  # full size: fails before computing
    except ImportError as e:
        print("ImportError:", e)
    from napari_stnls.cli import main
    sys.exit(main(["demo", "--out", "fig.png", "--quiet"]))
""")


@pytest.fixture(scope="module")
def without_extras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("no_extras")
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                       cwd=folder)
    return r, folder


def test_the_library_imports_and_streams_without_the_extras(without_extras):
    r, _ = without_extras
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("streamed ")]
    assert lines and float(lines[0].split()[1]) < 1e-5, r.stdout + r.stderr


def test_demo_without_matplotlib_names_the_extra(without_extras):
    r, folder = without_extras
    assert r.returncode == 2, r.stdout + r.stderr
    assert "ImportError: the demo's figure needs matplotlib: pip install 'napari-stnls[demo]'" in r.stdout
    assert "napari-stnls demo: error:" in r.stderr and "napari-stnls[demo]" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (folder / "fig.png").exists()
