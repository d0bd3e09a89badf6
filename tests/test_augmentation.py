"""Photo-like augmentation: the batched degrade_like_photos draws what the plain per-image definition draws,
at a fraction of its cost.

`degrade_one_at_a_time` below is the definition (generator.py ran it until the batched version): every
image, every step, in order. The batched version must give the same distribution of brightness, contrast,
sharpness, JPEG blockiness, colour balance and greyscale faces on real faces, and cost far less.
"""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from scipy import stats

from generator import DEGRADATION_SHARES, degrade_like_photos

FACE_SIDE = 96  # the default input size
DRAWS_PER_FACE = 6  # each real face degraded this many times by each version


def degrade_one_at_a_time(images: np.ndarray, rng: np.random.Generator) -> None:
    """The definition: each image in turn goes through every step it drew."""
    count, size = len(images), images.shape[1] if len(images) else 0
    draws = rng.random((count, 7))
    for image, draw in zip(images, draws):
        if draw[0] < DEGRADATION_SHARES[0]:
            side = int(rng.integers(20, 61))
            small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
            cv2.resize(small, (size, size), dst=image, interpolation=cv2.INTER_LINEAR)
        if draw[1] < DEGRADATION_SHARES[1]:
            cv2.GaussianBlur(image, (0, 0), rng.uniform(0.6, 1.6), dst=image)
        if draw[2] < DEGRADATION_SHARES[2]:
            encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(15, 75))])[1]
            image[...] = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
        if draw[3] < DEGRADATION_SHARES[3]:
            noise = rng.normal(0, rng.uniform(3, 12), image.shape)
            image[...] = np.clip(image + noise, 0, 255)
        if draw[4] < DEGRADATION_SHARES[4]:
            image[...] = np.clip(image * rng.uniform(0.8, 1.2, 3), 0, 255)
        if draw[5] < DEGRADATION_SHARES[5]:
            image[...] = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[..., None]
        if draw[6] < DEGRADATION_SHARES[6]:
            width, height = (rng.uniform(0.15, 0.4, 2) * size).astype(int)
            x, y = int(rng.integers(0, size - width)), int(rng.integers(0, size - height))
            image[y:y + height, x:x + width] = rng.integers(0, 255, 3)
    contrast = rng.uniform(0.7, 1.3, count)
    shift = rng.uniform(-30, 30, count) + 128 * (1 - contrast)
    for image, alpha, beta in zip(images, contrast, shift):
        cv2.addWeighted(image, alpha, image, 0, beta, dst=image)


def face_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: what each degradation moves."""
    grey = images.astype(np.float32) @ np.array([0.114, 0.587, 0.299], np.float32)  # BGR weights
    across = np.abs(np.diff(grey, axis=2))  # horizontal neighbour differences
    at_block_edges = across[:, :, 7::8].mean(axis=(1, 2))  # JPEG's 8x8 blocks meet between columns 7 and 8
    inside_blocks = np.delete(across, np.s_[7::8], axis=2).mean(axis=(1, 2))
    return {
        "mean": images.mean(axis=(1, 2, 3)),
        "std": images.std(axis=(1, 2, 3)),
        "sharpness": np.array([cv2.Laplacian(face, cv2.CV_32F).var() for face in grey]),
        "blockiness": at_block_edges / np.maximum(inside_blocks, 1e-6),
        "blue_minus_red": images[..., 0].mean(axis=(1, 2)) - images[..., 2].mean(axis=(1, 2)),
        "greyscale": (np.ptp(images, axis=3) == 0).all(axis=(1, 2)).astype(np.float64),
    }


@pytest.fixture(scope="module")
def real_faces(utkface_dir) -> np.ndarray:
    paths = sorted(utkface_dir.glob("*.jpg"))[:300]
    return np.stack([cv2.resize(cv2.imread(str(path)), (FACE_SIDE, FACE_SIDE), interpolation=cv2.INTER_AREA)
                     for path in paths])


def degraded(function, faces: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    batches = [faces.copy() for _ in range(DRAWS_PER_FACE)]
    for batch in batches:
        function(batch, rng)
    return np.concatenate(batches)


def test_batched_augmentation_draws_the_distribution_of_the_definition(real_faces):
    batched = face_statistics(degraded(degrade_like_photos, real_faces, seed=1))
    definition = face_statistics(degraded(degrade_one_at_a_time, real_faces, seed=2))
    untouched = face_statistics(real_faces)
    for name in batched:
        if name == "greyscale":  # a share: a two-sample test of proportions
            share_batched, share_definition = batched[name].mean(), definition[name].mean()
            spread = np.sqrt(2 * share_definition * (1 - share_definition) / len(batched[name]))
            assert abs(share_batched - share_definition) < 4 * spread, (share_batched, share_definition)
            continue
        result = stats.ks_2samp(batched[name], definition[name])
        assert result.pvalue > 0.001, (name, result, np.median(batched[name]), np.median(definition[name]))
    # and the test can tell: the augmentation visibly moves these from the untouched faces
    for name in ("sharpness", "blockiness", "blue_minus_red"):
        assert stats.ks_2samp(batched[name], untouched[name]).pvalue < 1e-3, name


def test_batched_augmentation_costs_a_fraction_of_the_definition(real_faces):
    """CPU time, both measured here and now (the machine's load cancels out): the batched version must
    cost well under 60% of the definition (measured: 35-45%)."""
    batch = np.resize(real_faces, (256, FACE_SIDE, FACE_SIDE, 3))

    def cpu_seconds(function) -> float:
        rng = np.random.default_rng(0)
        best = np.inf
        for _ in range(4):
            images = batch.copy()
            started = time.process_time()
            function(images, rng)
            best = min(best, time.process_time() - started)
        return best

    cpu_seconds(degrade_like_photos)  # warm up OpenCV's codecs and kernels
    batched, definition = cpu_seconds(degrade_like_photos), cpu_seconds(degrade_one_at_a_time)
    print(f"CPU per face: batched {batched / len(batch) * 1e6:.0f} us, "
          f"one at a time {definition / len(batch) * 1e6:.0f} us")
    assert batched < 0.6 * definition


def test_degradation_keeps_shape_type_and_handles_odd_batches():
    rng = np.random.default_rng(0)
    for count in (0, 1, 5):
        images = np.full((count, FACE_SIDE, FACE_SIDE, 3), 128, np.uint8)
        degrade_like_photos(images, rng)
        assert images.shape == (count, FACE_SIDE, FACE_SIDE, 3) and images.dtype == np.uint8
    with pytest.raises(ValueError, match="contiguous"):
        degrade_like_photos(np.zeros((4, FACE_SIDE, FACE_SIDE, 3), np.uint8)[::2], rng)
