"""Image-domain randomisation (issue 10, item 5): the simulated radiograph made to look like the CR/DX images
of many sites and vendors, in the spirit of SyntheX (Gao et al. 2023, Nat. Mach. Intell. 5:294: strong
domain randomisation beats realism alone) and beyond.

One plan per sample, drawn from ``default_rng([seed, crc32(ct_id), view, 0xD0])`` (independent of the geometry
and physics draws, so turning it on changes nothing else), recorded in the sidecar; ``apply`` is deterministic
given the plan. Level ``light`` varies the processing mildly; ``strong`` draws everything below with high
probabilities.

Before the physics (``add_devices``): **wires, ECG leads and devices** as metal (titanium channel of the
material line integrals, g/cm^2) along random smooth curves (leads, with round electrodes) and compact shapes
(a pacemaker-like can), so the physics attenuates them like any other material. Without physics the same mass is
added to the naive DRR's line integral at the metal's attenuation for 60 keV.

After the physics, on the [0, 1] MONOCHROME2 image (``apply``), in this order (a detector, then the workstation):

1. **blur** (Gaussian), **noise** (Gaussian, and horizontal line noise), **dropout** (dead detector lines and
   rectangular holes at a constant value);
2. **vendor processing**, one style: ``multiscale`` (multi-scale contrast equalisation: band-pass details
   compressed by a power law and re-weighted, MUSICA-like), ``latitude`` (latitude compression: a fraction of
   the large-scale signal removed, then unsharp masking), ``unsharp`` (unsharp masking only), ``plain`` (none);
   then a **LUT**: a sigmoid or a gamma curve, re-windowed to [0, 1];
3. **collimation and shutters**: the field is a random rectangle (rotated a little), optionally with a circular
   or elliptical shutter; outside it every pixel is ``shutter_value`` (1: white, as unexposed film; 0: black
   electronic masking). Nothing can be seen there, so the exporter clears the labels there;
4. **burned-in text and markers** (PIL): lead side markers ("L", "R"), view and technique text, dates, at
   ``text_value`` 0 or 1;
5. **inversion** (displayed as MONOCHROME1: ``1 - image``).
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

from .errors import InputError

LEVELS = ("none", "light", "strong")
STYLES = ("multiscale", "latitude", "unsharp", "plain")
TITANIUM_G_CM3 = 4.5
# probability of each transform by level
PROBABILITIES = {
    "light": {"devices": 0.15, "blur": 0.3, "noise": 0.4, "line_noise": 0.05, "dropout": 0.05, "collimation": 0.3,
              "shutter": 0.05, "text": 0.4, "inversion": 0.05},
    "strong": {"devices": 0.5, "blur": 0.5, "noise": 0.7, "line_noise": 0.2, "dropout": 0.25, "collimation": 0.6,
               "shutter": 0.2, "text": 0.7, "inversion": 0.2},
}
TEXTS = ("PA", "AP", "ERECT", "SUPINE", "PORTABLE", "CHEST", "INSP", "SITTING", "120 kV 2.5 mAs", "85 kV 4 mAs",
         "2019-03-14", "14/11/2021", "10:42:17", "ID 0048213", "Acc 77312", "S 1250", "L 2.1", "SID 180cm", "1/1")


def domain_rng(seed: int, ct_id: str, view: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(ct_id.encode()), int(view), 0xD0])


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise InputError(f"--domain-randomisation {level!r}: use one of {', '.join(LEVELS)}")
    return level


# ---------------------------------------------------------------------------------------------------------------
# The plan


def _curve(rng: np.random.Generator, rows: int, cols: int, n: int = 5) -> list[list[float]]:
    """Control points (row, col) of a smooth random curve that crosses the image."""
    start = rng.uniform([0, 0], [rows, cols])
    heading = rng.uniform(0, 2 * math.pi)
    points = [start]
    step = 0.3 * max(rows, cols)
    for _ in range(n - 1):
        heading += rng.normal(0, 0.6)
        points.append(points[-1] + step * np.array([math.sin(heading), math.cos(heading)]))
    return [[float(a), float(b)] for a, b in points]


def draw_plan(level: str, rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, Any] | None:
    """Every random choice of one sample's randomisation (JSON-able); None for level "none"."""
    if check_level(level) == "none":
        return None
    p = PROBABILITIES[level]
    rows, cols = shape
    strong = level == "strong"
    plan: dict[str, Any] = {"level": level}
    on = {name: bool(rng.random() < prob) for name, prob in sorted(p.items())}
    devices = []
    if on["devices"]:
        for _ in range(int(rng.integers(1, 5))):
            kind = str(rng.choice(["lead", "wire", "can"], p=[0.5, 0.3, 0.2]))
            if kind == "can":
                devices.append({"kind": "can", "center": [float(rng.uniform(0.1, 0.5) * rows),
                                                          float(rng.uniform(0.15, 0.85) * cols)],
                                "radii_px": [float(rng.uniform(0.03, 0.06) * rows), float(rng.uniform(0.04, 0.07) * cols)],
                                "angle_deg": float(rng.uniform(0, 180)), "thickness_mm": float(rng.uniform(4, 8))})
            else:
                devices.append({"kind": kind, "points": _curve(rng, rows, cols),
                                "diameter_mm": float(rng.uniform(0.4, 1.2) if kind == "lead" else rng.uniform(0.8, 2.0)),
                                "electrode": bool(kind == "lead" and rng.random() < 0.8),
                                "electrode_mm": float(rng.uniform(8, 14))})
    plan["devices"] = devices
    plan["blur_sigma_px"] = float(rng.uniform(0.5, 2.5 if strong else 1.2)) if on["blur"] else 0.0
    plan["noise_std"] = float(rng.uniform(0.005, 0.05 if strong else 0.02)) if on["noise"] else 0.0
    plan["line_noise_std"] = float(rng.uniform(0.005, 0.03)) if on["line_noise"] else 0.0
    dropout = []
    if on["dropout"]:
        for _ in range(int(rng.integers(1, 4))):
            if rng.random() < 0.5:
                axis = int(rng.integers(0, 2))
                dropout.append({"kind": "line", "axis": axis, "index": int(rng.integers(0, shape[axis])),
                                "width": int(rng.integers(1, 4)), "value": float(rng.choice([0.0, 1.0]))})
            else:
                h, w = (int(rng.uniform(0.03, 0.12) * rows), int(rng.uniform(0.03, 0.12) * cols))
                dropout.append({"kind": "rect", "box": [int(rng.integers(0, rows - h)), int(rng.integers(0, cols - w)),
                                                        h, w], "value": float(rng.choice([0.0, 1.0]))})
    plan["dropout"] = dropout
    styles = STYLES if strong else ("multiscale", "unsharp", "plain")
    style = str(rng.choice(styles))
    plan["style"] = style
    plan["style_params"] = {
        "multiscale": {"power": float(rng.uniform(0.5, 0.9) if strong else rng.uniform(0.75, 0.95)),
                       "gains": [float(g) for g in rng.uniform(0.9, 1.8 if strong else 1.3, 5)],
                       "sigmas_px": [1.5, 3.0, 6.0, 12.0, 24.0]},
        "latitude": {"fraction": float(rng.uniform(0.3, 0.8)), "sigma_px": float(rng.uniform(20, 60)),
                     "unsharp": float(rng.uniform(0.3, 1.5)), "unsharp_sigma_px": float(rng.uniform(1.5, 6.0))},
        "unsharp": {"amount": float(rng.uniform(0.3, 2.0 if strong else 1.0)), "sigma_px": float(rng.uniform(1.5, 12))},
        "plain": {},
    }[style]
    if rng.random() < 0.5:
        plan["lut"] = {"kind": "sigmoid", "center": float(rng.uniform(0.4, 0.6)),
                       "slope": float(rng.uniform(4, 12 if strong else 8))}
    else:
        plan["lut"] = {"kind": "gamma", "gamma": float(math.exp(rng.uniform(math.log(0.5 if strong else 0.75),
                                                                           math.log(2.0 if strong else 1.35))))}
    plan["window_percentiles"] = [float(rng.uniform(0.0, 3.0 if strong else 1.0)),
                                  float(rng.uniform(97.0 if strong else 99.0, 100.0))]
    plan["collimation"] = None
    if on["collimation"]:
        plan["collimation"] = {"margins": [float(m) for m in rng.uniform(0.0, 0.18 if strong else 0.1, 4)],
                               "angle_deg": float(rng.normal(0, 3 if strong else 1)),
                               "shutter": (None if not on["shutter"] else
                                           {"radii": [float(r) for r in rng.uniform(0.45, 0.7, 2)]}),
                               "value": float(rng.choice([1.0, 0.0], p=[0.7, 0.3]))}
    texts = []
    if on["text"]:
        corners = rng.permutation(4)[: int(rng.integers(1, 5))]
        for corner in corners:
            texts.append({"text": str(rng.choice(["L", "R"]) if rng.random() < 0.4 else rng.choice(TEXTS)),
                          "corner": int(corner), "size_fraction": float(rng.uniform(0.025, 0.07)),
                          "inset": [float(v) for v in rng.uniform(0.02, 0.2, 2)], "boxed": bool(rng.random() < 0.3)})
    plan["text"] = texts
    plan["text_value"] = float(rng.choice([1.0, 0.0], p=[0.8, 0.2]))
    plan["inversion"] = on["inversion"]
    plan["noise_seed"] = int(rng.integers(0, 2**63 - 1))
    return plan


# ---------------------------------------------------------------------------------------------------------------
# Devices: metal mass per pixel (g/cm^2)


def _spline(points: np.ndarray, samples: int) -> np.ndarray:
    """Catmull-Rom through the control points, ``samples`` points."""
    p = np.vstack([points[0], points, points[-1]])
    out = []
    for k in range(1, len(p) - 2):
        t = np.linspace(0, 1, max(2, samples // (len(p) - 3)), endpoint=False)[:, None]
        a, b, c, d = p[k - 1], p[k], p[k + 1], p[k + 2]
        out.append(0.5 * ((2 * b) + (-a + c) * t + (2 * a - 5 * b + 4 * c - d) * t ** 2 + (-a + 3 * b - 3 * c + d) * t ** 3))
    return np.vstack(out + [points[-1:]])


def device_mass(plan: dict | None, shape: tuple[int, int], spacing_mm: tuple[float, float]) -> np.ndarray:
    """(rows, cols) float32 titanium mass thickness (g/cm^2) of the plan's devices at the detector."""
    mass = np.zeros(shape, np.float32)
    if not plan or not plan["devices"]:
        return mass
    rows, cols = shape
    pixel = float(min(spacing_mm))
    rr, cc = np.mgrid[0:rows, 0:cols].astype(np.float32)
    for device in plan["devices"]:
        if device["kind"] == "can":
            (r0, c0), (a, b), angle = device["center"], device["radii_px"], math.radians(device["angle_deg"])
            dr, dc = rr - r0, cc - c0
            u = (dr * math.cos(angle) + dc * math.sin(angle)) / a
            v = (-dr * math.sin(angle) + dc * math.cos(angle)) / b
            inside = u * u + v * v <= 1.0
            # a flat can with rounded rim: thickness falls off over the outer fifth
            rim = np.clip((1.0 - np.sqrt(u * u + v * v)) / 0.2, 0, 1)
            mass += np.where(inside, rim * device["thickness_mm"] * 0.1 * TITANIUM_G_CM3, 0).astype(np.float32)
            continue
        path = _spline(np.asarray(device["points"], float), 400)
        radius_px = 0.5 * device["diameter_mm"] / pixel
        distance = np.full(shape, np.inf, np.float32)
        for r, c in path:  # distance to the polyline samples (dense enough: steps << a pixel at 400 samples)
            r0, r1 = int(max(r - radius_px - 2, 0)), int(min(r + radius_px + 3, rows))
            c0, c1 = int(max(c - radius_px - 2, 0)), int(min(c + radius_px + 3, cols))
            if r0 >= r1 or c0 >= c1:
                continue
            d = np.hypot(rr[r0:r1, c0:c1] - r, cc[r0:r1, c0:c1] - c)
            np.minimum(distance[r0:r1, c0:c1], d, out=distance[r0:r1, c0:c1])
        # chord length through a round wire of that radius (mm), averaged across the pixel (4 sub-samples
        # along the normal), as metal mass
        chord = sum(2.0 * np.sqrt(np.clip(radius_px ** 2 - (distance + offset) ** 2, 0, None))
                    for offset in (-0.375, -0.125, 0.125, 0.375)) * (0.25 * pixel)
        mass += (chord * 0.1 * TITANIUM_G_CM3).astype(np.float32)
        if device["electrode"]:
            r, c = path[-1]
            disc = np.hypot(rr - r, cc - c) <= 0.5 * device["electrode_mm"] / pixel
            mass += disc * np.float32(0.05)  # a snap electrode: thin metal foil and stud
    return mass


def add_devices(result, plan: dict | None) -> int:
    """Put the plan's metal into a ``DrrResult`` before the physics (metal channel, else the line integral).
    Returns the number of pixels touched."""
    if not plan or not plan["devices"]:
        return 0
    spacing = tuple(result.geometry.spacing)
    mass = device_mass(plan, result.line_integral.shape, spacing)
    touched = int((mass > 0).sum())
    names = tuple(result.material_names)
    if result.material_g_cm2 is not None and "metal" in names:
        result.material_g_cm2[names.index("metal")] += mass
    else:
        from .physics import mass_attenuation

        mu_per_g = float(mass_attenuation("Ti", np.array([60.0]))[0])  # cm^2/g at 60 keV, as the DRR's mu_water
        result.line_integral += mass * np.float32(mu_per_g)
    return touched


# ---------------------------------------------------------------------------------------------------------------
# The image: detector defects, vendor processing, collimation, burned-in text, inversion


def _blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    from .physics import gaussian_blur, smooth_at_low_resolution

    if sigma_px <= 0:
        return image
    if sigma_px > 8:  # broad: downsampled FFT
        return smooth_at_low_resolution(image, sigma_px, (1.0, 1.0))
    return gaussian_blur(image, (sigma_px, sigma_px))


def _window(image: np.ndarray, percentiles=(0.0, 100.0)) -> np.ndarray:
    step = max(1, image.size // 65536)
    low, high = np.percentile(image.ravel()[::step], percentiles)
    return np.clip((image - low) / max(float(high - low), 1e-6), 0, 1).astype(np.float32)


def vendor_processing(image: np.ndarray, style: str, params: dict) -> np.ndarray:
    """One processing style (see the module docstring) on a [0, 1] image; the result is not yet windowed."""
    image = np.asarray(image, np.float32)
    if style == "multiscale":
        bands, previous = [], image
        for sigma in params["sigmas_px"]:
            smooth = _blur(image, sigma)
            bands.append(previous - smooth)
            previous = smooth
        out = previous.copy()
        for band, gain in zip(bands, params["gains"]):
            scale = float(np.percentile(np.abs(band[::4, ::4]), 99)) + 1e-6
            # power law on the normalised detail: small details amplified, large ones compressed
            out += gain * scale * np.sign(band) * np.abs(band / scale) ** params["power"]
        return out
    if style == "latitude":
        compressed = image - params["fraction"] * _blur(image, params["sigma_px"])
        return compressed + params["unsharp"] * (compressed - _blur(compressed, params["unsharp_sigma_px"]))
    if style == "unsharp":
        return image + params["amount"] * (image - _blur(image, params["sigma_px"]))
    if style == "plain":
        return image
    raise InputError(f"unknown processing style {style!r}; use one of {', '.join(STYLES)}")


def apply_lut(image: np.ndarray, lut: dict) -> np.ndarray:
    """Monotone increasing display curve on [0, 1] (sigmoid re-scaled to [0, 1] at the ends, or gamma)."""
    x = np.clip(image, 0, 1)
    if lut["kind"] == "sigmoid":
        def s(v):
            return 1.0 / (1.0 + np.exp(-lut["slope"] * (v - lut["center"])))
        low, high = s(0.0), s(1.0)
        return ((s(x) - low) / (high - low)).astype(np.float32)
    return (x ** lut["gamma"]).astype(np.float32)


def collimation_mask(plan: dict | None, shape: tuple[int, int]) -> np.ndarray:
    """(rows, cols) bool: True where the collimator (or the circular shutter) blocks the beam."""
    rows, cols = shape
    if not plan or not plan.get("collimation"):
        return np.zeros(shape, bool)
    col = plan["collimation"]
    top, bottom, left, right = col["margins"]
    rr, cc = np.mgrid[0:rows, 0:cols].astype(np.float64)
    r0, c0 = (rows - 1) / 2, (cols - 1) / 2
    t = math.radians(col["angle_deg"])
    u = (rr - r0) * math.cos(t) - (cc - c0) * math.sin(t) + r0  # rotated field coordinates
    v = (rr - r0) * math.sin(t) + (cc - c0) * math.cos(t) + c0
    blocked = (u < top * rows) | (u > (1 - bottom) * rows - 1) | (v < left * cols) | (v > (1 - right) * cols - 1)
    if col["shutter"]:
        a, b = col["shutter"]["radii"]
        blocked |= ((rr - r0) / (a * rows)) ** 2 + ((cc - c0) / (b * cols)) ** 2 > 1.0
    return blocked


def text_mask(plan: dict | None, shape: tuple[int, int]) -> np.ndarray:
    """(rows, cols) bool of the burned-in text and markers (PIL, its default scalable font)."""
    from PIL import Image, ImageDraw, ImageFont

    rows, cols = shape
    canvas = Image.new("L", (cols, rows), 0)
    if not plan or not plan.get("text"):
        return np.zeros(shape, bool)
    draw = ImageDraw.Draw(canvas)
    for item in plan["text"]:
        size = max(6, int(round(item["size_fraction"] * rows)))
        font = ImageFont.load_default(size=size)
        left, top, right, bottom = draw.textbbox((0, 0), item["text"], font=font)
        w, h = right - left, bottom - top
        inset_r, inset_c = int(item["inset"][0] * rows), int(item["inset"][1] * cols)
        corner = item["corner"]
        y = inset_r if corner in (0, 1) else rows - inset_r - h
        x = inset_c if corner in (0, 2) else cols - inset_c - w
        draw.text((x - left, y - top), item["text"], fill=255, font=font)
        if item["boxed"]:
            pad = max(2, size // 5)
            draw.rectangle((x - pad, y - pad, x + w + pad, y + h + pad), outline=255, width=max(1, size // 10))
    return np.asarray(canvas) > 127


def apply(image: np.ndarray, plan: dict | None, rng_noise: np.random.Generator | None = None) -> np.ndarray:
    """The plan's image transforms on a [0, 1] MONOCHROME2 image (order: module docstring); float32 [0, 1].
    The noise is drawn from ``rng_noise`` (default: from the plan's own seed, ``plan['noise_seed']``)."""
    image = np.asarray(image, np.float32)
    if not plan:
        return image
    rng = rng_noise or np.random.default_rng(plan.get("noise_seed", 0))
    out = _blur(image, plan["blur_sigma_px"])
    if plan["noise_std"] > 0:
        out = out + rng.normal(0, plan["noise_std"], out.shape).astype(np.float32)
    if plan["line_noise_std"] > 0:
        out = out + rng.normal(0, plan["line_noise_std"], (out.shape[0], 1)).astype(np.float32)
    out = np.clip(out, 0, 1)
    for drop in plan["dropout"]:
        if drop["kind"] == "line":
            index = slice(drop["index"], drop["index"] + drop["width"])
            if drop["axis"] == 0:
                out[index, :] = drop["value"]
            else:
                out[:, index] = drop["value"]
        else:
            r, c, h, w = drop["box"]
            out[r: r + h, c: c + w] = drop["value"]
    out = vendor_processing(out, plan["style"], plan["style_params"])
    out = apply_lut(_window(out, plan["window_percentiles"]), plan["lut"])
    out[collimation_mask(plan, out.shape)] = plan["collimation"]["value"] if plan["collimation"] else 0.0
    out[text_mask(plan, out.shape)] = plan["text_value"]
    if plan["inversion"]:
        out = 1.0 - out
    return np.clip(out, 0, 1).astype(np.float32)


def clear_collimated_labels(result, plan: dict | None) -> int:
    """Nothing can be seen behind the collimator: its pixels lose their labels (path lengths set to 0).
    Returns the number of collimated pixels."""
    blocked = collimation_mask(plan, result.line_integral.shape)
    if blocked.any():
        result.thickness_mm[:, blocked] = 0.0
    return int(blocked.sum())
