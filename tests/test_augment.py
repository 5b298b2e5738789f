"""Replayable augmentation: same key -> same views; replay at another resolution shows the same region."""
import numpy as np
import pytest
from PIL import Image

from cifd_clip.data.augment import AugmentSettings, IDENTITY, apply_params, sample_views


def _gradient_image(width, height):
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def test_view_zero_is_plain_image_and_views_are_deterministic():
    s = AugmentSettings(views=4, seed=7)
    a = sample_views(s, "000123", 200, 150)
    b = sample_views(s, "000123", 200, 150)
    assert a.shape == (4, 5) and a.dtype == np.float32
    assert tuple(a[0]) == IDENTITY
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sample_views(s, "000124", 200, 150))
    assert not np.array_equal(a, sample_views(AugmentSettings(views=4, seed=8), "000123", 200, 150))
    boxes = a[1:, :4]
    assert (boxes >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 1 + 1e-6).all() and (boxes[:, 1] + boxes[:, 3] <= 1 + 1e-6).all()


def test_identity_returns_the_image_unchanged():
    img = _gradient_image(64, 48)
    assert apply_params(img, IDENTITY) is img


@pytest.mark.parametrize("key", ["a", "b", "c", "d"])
def test_replay_at_another_resolution_crops_the_same_region(key):
    s = AugmentSettings(views=3, seed=1, flip_prob=0.5)
    params = sample_views(s, key, 400, 300)
    big, small = _gradient_image(400, 300), _gradient_image(100, 75)
    for p in params[1:]:
        crop_big = apply_params(big, p).resize((32, 32), Image.BILINEAR)
        crop_small = apply_params(small, p).resize((32, 32), Image.BILINEAR)
        diff = np.abs(np.asarray(crop_big, np.float32) - np.asarray(crop_small, np.float32)).mean()
        assert diff < 6.0, diff
    # the flip really mirrors: a flipped view's left column is the crop's right column
    p = np.array([0.1, 0.1, 0.5, 0.5, 1.0], dtype=np.float32)
    flipped = np.asarray(apply_params(big, p))
    unflipped = np.asarray(apply_params(big, [0.1, 0.1, 0.5, 0.5, 0.0]))
    np.testing.assert_array_equal(flipped[:, 0], unflipped[:, -1])
