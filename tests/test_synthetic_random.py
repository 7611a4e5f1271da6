"""The domain-randomised synthetic generator (segprompt.data.synthetic_random, shapes, procedural)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import ndimage

from segprompt.data import procedural as pr
from segprompt.data.registry import load_dataset
from segprompt.data.shapes import SHAPES, random_object
from segprompt.data.synthetic import SyntheticLesions
from segprompt.data.synthetic_random import DEFAULT_SETTINGS, DEFAULT_VARIANT, VARIANTS, RandomisedSettings, make_randomised
from segprompt.errors import ConfigError


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_every_image_is_well_formed(seed: int) -> None:
    image, mask, meta = make_randomised(np.random.default_rng(seed))
    h, w = mask.shape
    assert image.shape == (h, w, 3) and image.dtype == np.uint8
    assert mask.dtype == bool and mask.sum() >= DEFAULT_SETTINGS.min_pixels
    lo, hi = DEFAULT_SETTINGS.long_side
    assert lo <= max(h, w) < hi and min(h, w) >= lo / DEFAULT_SETTINGS.aspect[1] - 1
    # one 8-connected object: a click inside it designates all of it
    assert ndimage.label(mask, structure=np.ones((3, 3)))[1] == 1
    assert meta["shape"] in SHAPES and 0 <= meta["distractors"] <= DEFAULT_SETTINGS.max_distractors
    assert meta["area"] == pytest.approx(mask.mean())


def test_samples_depend_on_seed_and_index_only() -> None:
    a = SyntheticLesions(n=4, seed=3, size=None, style="randomised")
    b = SyntheticLesions(n=8, seed=3, size=None, style="randomised")
    for i in (0, 3):
        assert np.array_equal(a[i].image, b[i].image) and np.array_equal(a[i].mask, b[i].mask)
    assert not np.array_equal(a[0].mask.shape, a[1].mask.shape) or not np.array_equal(a[0].image, a[1].image)
    c = SyntheticLesions(n=1, seed=4, size=None, style="randomised")
    assert not (c[0].image.shape == a[0].image.shape and np.array_equal(c[0].image, a[0].image))


def test_the_set_is_diverse_as_the_issue_asks() -> None:
    """Over 80 images: grey and colour, objects from under 1 % to over 25 % of the image, every
    shape family, distractors in most images, borders touched sometimes."""
    ds = load_dataset("synthetic-random", n=80, seed=11)
    samples = [ds[i] for i in range(len(ds))]
    grey = [s.meta["grey"] for s in samples]
    areas = np.array([s.meta["area"] for s in samples])
    shapes = {s.meta["shape"] for s in samples}
    assert 0.15 < np.mean(grey) < 0.55
    assert areas.min() < 0.015 and areas.max() > 0.25
    assert shapes >= {"blob", "ellipse", "lobed", "thin"} and len(shapes) >= 6
    assert np.mean([s.meta["distractors"] > 0 for s in samples]) > 0.6
    touching = [s.mask[0].any() or s.mask[-1].any() or s.mask[:, 0].any() or s.mask[:, -1].any() for s in samples]
    assert 0 < np.mean(touching) < 0.6
    # colour images are not grey in disguise, grey ones are
    chroma = [np.abs(s.image.astype(int) - s.image.mean(axis=2, keepdims=True)).mean() for s in samples]
    assert all(c < 0.6 for c, g in zip(chroma, grey) if g)
    assert np.median([c for c, g in zip(chroma, grey) if not g]) > 3


def test_a_fixed_size_is_honoured_and_settings_narrow_the_draw() -> None:
    image, mask, _ = make_randomised(np.random.default_rng(0), (150, 210))
    assert image.shape == (150, 210, 3) and mask.shape == (150, 210)
    small = RandomisedSettings(area=(0.01, 0.02), max_distractors=0)
    areas = [make_randomised(np.random.default_rng(s), (200, 200), small)[1].mean() for s in range(12)]
    # occluders and apertures only cut; shapes scatter around the requested area
    assert np.median(areas) < 0.04 and max(areas) < 0.08


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_each_shape_has_about_the_requested_area(name: str) -> None:
    rng = np.random.default_rng(5)
    fractions = [random_object(rng, (300, 300), 0.05, shape=name, centre=(150, 150))[0].mean() for _ in range(10)]
    assert all(f > 0 for f in fractions)
    assert 0.01 < np.median(fractions) < 0.2, (name, fractions)


@pytest.mark.parametrize("name", sorted(pr.TEXTURES))
def test_textures_are_finite_fields_of_unit_spread(name: str) -> None:
    field = pr.TEXTURES[name](np.random.default_rng(1), (96, 128))
    assert field.shape == (96, 128) and field.dtype == np.float32 and np.isfinite(field).all()
    assert field.std() == pytest.approx(0.0 if name == "flat" else 1.0, abs=0.05)


def test_artefacts_keep_the_image_frame() -> None:
    rng = np.random.default_rng(2)
    img = np.full((80, 100, 3), 120, np.float32)
    where = np.zeros((80, 100), bool)
    where[30:50, 40:60] = True
    lit = pr.specular_highlights(rng, img, where=where, count=5)
    bright = lit.max(axis=2) > 200
    assert bright.any() and (bright & ~ndimage.binary_dilation(where, iterations=8)).sum() == 0
    fov = pr.field_of_view(rng, (80, 100))
    assert fov.dtype == bool and fov[40, 50] and not fov.all()
    assert pr.jpeg(rng, img.astype(np.uint8)).shape == (80, 100, 3)
    assert pr.text_overlay(rng, img.astype(np.uint8)).dtype == np.uint8


def test_an_unknown_style_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="randomised"):
        SyntheticLesions(style="cartoon")
    with pytest.raises(ConfigError, match="v1, v2, v3"):
        SyntheticLesions(style="randomised", variant="v9")
    with pytest.raises(ConfigError, match="randomised"):
        SyntheticLesions(style="mixed", variant="v1")


def test_variants_share_geometry_draws_but_v2_adds_parts_inside_the_object() -> None:
    """v1 (sam-tiny's first training phase) stays reproducible; v2 paints parts of other colours
    inside some objects without changing what the object is (one connected mask)."""
    v1 = SyntheticLesions(n=30, seed=9, size=None, style="randomised", variant="v1")
    v2 = SyntheticLesions(n=30, seed=9, size=None, style="randomised", variant="v2")
    assert SyntheticLesions(style="randomised").variant == DEFAULT_VARIANT == "v3"
    assert all(v1[i].image.shape == v2[i].image.shape for i in range(5))  # the size is drawn first
    assert np.mean([v1[i].meta["area"] for i in range(30)]) < np.mean([v2[i].meta["area"] for i in range(30)])
    # inner parts: inside the mask the colour varies more than in v1 on average
    def spread(s):
        return float(s.image[s.mask].astype(np.float32).std(axis=0).mean())
    assert np.mean([spread(v2[i]) for i in range(30)]) > np.mean([spread(v1[i]) for i in range(30)])


def test_a_raised_object_is_told_apart_by_shading_not_by_colour() -> None:
    """v3's raised objects: inside and around the object the mean colour barely differs, but
    the brightness inside varies along the light direction far more than the surface does."""
    raised = dataclasses.replace(VARIANTS["v3"], p_raised=1.0, max_distractors=0)
    painted = dataclasses.replace(VARIANTS["v3"], p_raised=0.0, max_distractors=0)

    def contrast(settings, seed):
        img, mask, _ = make_randomised(np.random.default_rng(seed), (240, 240), settings)
        ring = ndimage.binary_dilation(mask, iterations=6) & ~mask
        grey = img.astype(np.float32).mean(axis=2)
        return abs(grey[mask].mean() - grey[ring].mean())

    assert np.median([contrast(raised, s) for s in range(16)]) < np.median([contrast(painted, s) for s in range(16)])


def test_v4_without_its_additions_is_v3_pixel_for_pixel() -> None:
    """A probability of 0 draws nothing, so v3's images (the bundled model's earlier data) stay
    reproducible beside v4."""
    stripped = dataclasses.replace(VARIANTS["v4"], p_lesion_look=0.0, p_rayleigh=0.0)
    assert stripped == VARIANTS["v3"]
    for seed in range(6):
        a = make_randomised(np.random.default_rng(seed), None, stripped)
        b = make_randomised(np.random.default_rng(seed), None, VARIANTS["v3"])
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_v4_draws_the_fixed_lesion_looks_at_its_rate() -> None:
    ds = SyntheticLesions(n=80, seed=3, size=None, style="randomised", variant="v4")
    looks = [ds[i] for i in range(80) if ds[i].meta["shape"].startswith("lesion-")]
    assert 4 <= len(looks) <= 22, len(looks)  # 15 % of 80 = 12; binomial 1st-99th percentile 5-20
    assert {s.meta["shape"] for s in looks} <= {"lesion-endoscopy", "lesion-ultrasound", "lesion-dermoscopy"}
    for s in looks:
        assert s.image.dtype == np.uint8 and s.image.shape[:2] == s.mask.shape and s.mask.dtype == bool and s.mask.any()


def test_rayleigh_speckle_is_unit_mean_pixel_grain() -> None:
    s = pr.rayleigh_speckle(np.random.default_rng(0), (256, 256))
    assert s.dtype == np.float32 and s.min() >= 0
    assert abs(float(s.mean()) - 1.0) < 0.01
    assert abs(float(np.corrcoef(s[:, 1:].ravel(), s[:, :-1].ravel())[0, 1])) < 0.02  # independent neighbours: a grain of one pixel


def test_v4_speckles_grey_images_pixel_by_pixel() -> None:
    """Fully developed speckle raises the pixel-scale (Laplacian) energy of grey images."""
    grey = dataclasses.replace(VARIANTS["v4"], p_grey=1.0, p_lesion_look=0.0)
    speckled = dataclasses.replace(grey, p_rayleigh=1.0)
    plain = dataclasses.replace(grey, p_rayleigh=0.0)

    def grain(settings, seed):
        img, _, _ = make_randomised(np.random.default_rng(seed), (200, 200), settings)
        g = img[..., 0].astype(np.float32)
        lap = g[1:-1, 1:-1] * 4 - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
        return float(np.abs(lap).mean() / max(1.0, g.mean()))

    assert np.median([grain(speckled, s) for s in range(12)]) > 1.5 * np.median([grain(plain, s) for s in range(12)])
