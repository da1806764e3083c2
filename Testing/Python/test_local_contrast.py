"""The local-contrast input filter (``architecture["local_contrast_px"]``): what it computes, that it ignores the
grey levels it is meant to ignore, and that a package with it reloads to identical outputs and trains from the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from XraySegInferLib.errors import ModelPackageError
from XraySegInferLib.networks import LocalContrast, build_network
from XraySegInferLib.package import load_package, make_card, save_package

ARCH = {"name": "UNet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0, "norm": "instance",
        "local_contrast_px": 3.0}


def edge_image(size: int = 64, low: float = 0.2, high: float = 0.6) -> torch.Tensor:
    image = torch.full((1, 1, size, size), low)
    image[..., size // 2:] = high
    return image


def test_flat_image_gives_zero_and_an_edge_gives_a_signed_unit_response():
    f = LocalContrast(3.0)
    assert float(f(torch.full((1, 1, 32, 32), 0.7)).abs().max()) < 1e-4
    out = f(edge_image())[0, 0]
    row = out[32]
    # bright side positive, dark side negative, antisymmetric about the edge, zero far from it
    assert row[33] > 0.5 and row[30] < -0.5
    assert torch.allclose(row[32:40], -row[24:32].flip(0), atol=1e-5)
    assert abs(float(row[2])) < 1e-3 and abs(float(row[-3])) < 1e-3
    # at the edge the output is the high-pass over its local RMS: about +-1.5 for a step well above the floor
    assert 1.4 < float(row[32]) < 1.6
    # a step 8x lower gives nearly the same response (1.25: its local RMS is near the 0.01 floor), not 8x less
    faint = f(edge_image(low=0.50, high=0.55))[0, 0, 32]
    assert 0.75 * float(row[32]) < float(faint[32]) < float(row[32])


def test_small_inputs_and_mixed_precision_give_the_float32_filter():
    f = LocalContrast(8.0)  # kernel radius 24 px: wider than these images, where reflection is undefined
    small = torch.rand(1, 1, 20, 12)
    assert f(small).shape == small.shape and torch.isfinite(f(small)).all()
    image = edge_image() + 0.01 * torch.rand(1, 1, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the filter itself stays in float32 under AMP
        mixed = f(image)
    assert torch.equal(mixed, f(image))


def test_output_ignores_brightness_and_contrast_of_the_input():
    rng = np.random.default_rng(0)
    structure = torch.from_numpy(rng.random((1, 1, 48, 48)).astype(np.float32))
    structure = torch.nn.functional.avg_pool2d(structure, 5, 1, 2)  # smooth texture, std ~0.06
    f = LocalContrast(4.0)
    a, b = f(0.2 + structure), f(0.5 + 1.5 * structure)
    interior = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert float((a - b)[interior].abs().max()) < 0.1
    # the raw images differ by up to ~0.6 of the range; without the filter the network would see that
    assert float((0.2 + structure - (0.5 + 1.5 * structure)).abs().min()) > 0.25


def test_sigma_must_be_positive():
    with pytest.raises(ModelPackageError, match="local_contrast_px"):
        LocalContrast(0.0)


def test_package_with_the_filter_reloads_to_identical_outputs(tmp_path):
    torch.manual_seed(0)
    network = build_network(ARCH, 2, "multilabel")
    assert isinstance(network[0], LocalContrast)
    assert not any(k.startswith("0.") for k in network.state_dict())  # no weights: nothing to tamper with
    card = make_card(name="lc", architecture=ARCH, mode="multilabel",
                     classes=[{"name": "a", "color": (1, 0, 0)}, {"name": "b", "color": (0, 1, 0)}],
                     spacing_mm=(1.0, 1.0), patch_size=(32, 32),
                     normalization={"window_percentiles": [0.5, 99.5], "gamma": 1.0}, field_of_view_mm=(32.0, 32.0))
    folder = save_package(tmp_path / "pkg", network, card)
    loaded = load_package(folder)
    x = torch.rand(1, 1, 32, 32)
    network.eval()
    with torch.no_grad():
        assert torch.equal(network(x), loaded.network(x))
        # the filter is really in the path: a brighter copy of the image gives (almost) the same logits
        assert float((loaded.network(x) - loaded.network(0.5 * x + 0.3)).abs().max()) < 0.05 * float(
            loaded.network(x).abs().max())
    assert json.loads((folder / "model.json").read_text())["architecture"]["local_contrast_px"] == 3.0


@pytest.mark.slow
def test_cli_trains_with_the_filter_and_refuses_a_bad_sigma(tmp_path):
    from XraySegInferLib.entry import main
    from XraySegInferLib.synthetic import make_dataset

    torch.set_num_threads(1)
    data = make_dataset(tmp_path / "data", n_cts=2, views_per_ct=2, size=64, test_cts=0, seed=0)
    out = tmp_path / "run"
    assert main(["train", str(data), "--recipe", "quick", "--steps", "4", "--val-every", "2", "--patch-size", "64",
                 "--local-contrast", "2.5", "--threads", "1", "--quiet", "--out", str(out)]) == 0
    card = json.loads((out / "model" / "model.json").read_text())
    assert card["architecture"]["local_contrast_px"] == 2.5 and card["architecture"]["channels"] == [8, 16, 32, 64]
    assert main(["train", str(data), "--local-contrast", "0", "--out", str(tmp_path / "bad")]) == 2
