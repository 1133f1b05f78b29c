"""PSNR and SSIM against hand values and an independent numpy SSIM (explicit 2-D windows)."""
import math

import numpy as np
import pytest
import torch

from systems.metrics import psnr, ssim


def test_psnr_hand_case():
    gt = torch.full((8, 6, 3), 0.5)
    pred = gt + 0.1  # MSE = 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert float(psnr(pred, gt)) == pytest.approx(20.0, abs=1e-4)
    # the same error relative to a peak of 2 -> 20 + 20 log10(2)
    assert float(psnr(pred, gt, max_val=2.0)) == pytest.approx(20.0 + 20 * math.log10(2), abs=1e-4)
    assert psnr(pred, gt).dim() == 0


def test_psnr_mask_selects_pixels():
    gt = torch.zeros(4, 4, 3)
    pred = torch.zeros(4, 4, 3)
    pred[:2] = 0.1  # MSE 0.01 on the top half
    pred[2:] = 0.3  # MSE 0.09 on the bottom half
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2] = True
    assert float(psnr(pred, gt, mask=mask)) == pytest.approx(20.0, abs=1e-4)
    assert float(psnr(pred, gt, mask=~mask[..., None])) == pytest.approx(
        10 * math.log10(1 / 0.09), abs=1e-4)
    # rays layout [R, 3] with a [R] mask
    assert float(psnr(pred.reshape(-1, 3), gt.reshape(-1, 3), mask=mask.reshape(-1))) == \
        pytest.approx(20.0, abs=1e-4)
    with pytest.raises(ValueError, match="mask"):
        psnr(pred, gt, mask=torch.zeros(4, 4, dtype=torch.bool))


def test_psnr_identical_is_inf():
    x = torch.rand(5, 5, 3)
    assert math.isinf(float(psnr(x, x)))


def reference_ssim(a: np.ndarray, b: np.ndarray, data_range=1.0, size=11, sigma=1.5) -> float:
    """SSIM from Wang et al. 2004, written out with explicit 2-D windows (no convolution)."""
    half = size // 2
    x = np.arange(size) - half
    w1 = np.exp(-(x**2) / (2 * sigma**2))
    w = np.outer(w1, w1)
    w /= w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    h, wd, nc = a.shape
    values = []
    for ch in range(nc):
        pa = np.lib.stride_tricks.sliding_window_view(a[..., ch], (size, size))
        pb = np.lib.stride_tricks.sliding_window_view(b[..., ch], (size, size))
        mu_a = np.einsum("ijkl,kl->ij", pa, w)
        mu_b = np.einsum("ijkl,kl->ij", pb, w)
        da, db = pa - mu_a[..., None, None], pb - mu_b[..., None, None]
        var_a = np.einsum("ijkl,kl->ij", da**2, w)
        var_b = np.einsum("ijkl,kl->ij", db**2, w)
        cov = np.einsum("ijkl,kl->ij", da * db, w)
        num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
        s = num / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        values.append(s.mean())
    return float(np.mean(values))


def random_pair(seed, shape=(32, 40, 3), noise=0.15):
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    # a smooth-ish image plus noise, so SSIM is far from both 0 and 1
    a = 0.5 * a + 0.5 * np.cumsum(a, axis=1) / np.arange(1, shape[1] + 1)[None, :, None]
    b = np.clip(a + noise * rng.standard_normal(shape), 0.0, 1.0)
    return a, b


def test_ssim_identical_is_one():
    a, _ = random_pair(0)
    assert float(ssim(torch.from_numpy(a), torch.from_numpy(a))) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("seed,noise", [(1, 0.05), (2, 0.3), (3, 1.0)])
def test_ssim_matches_independent_reference(seed, noise):
    a, b = random_pair(seed, noise=noise)
    ref = reference_ssim(a, b)
    got = float(ssim(torch.from_numpy(a).float(), torch.from_numpy(b).float()))
    assert 0.0 < abs(ref) < 0.999  # a non-trivial case
    assert got == pytest.approx(ref, abs=1e-5)


def test_ssim_symmetry_and_range_scaling():
    a, b = random_pair(4)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    assert float(ssim(ta, tb)) == pytest.approx(float(ssim(tb, ta)), abs=1e-6)
    # scaling the images and max_val together leaves SSIM unchanged
    assert float(ssim(255 * ta, 255 * tb, max_val=255.0)) == pytest.approx(float(ssim(ta, tb)),
                                                                            abs=1e-5)


def test_ssim_matches_scikit_image_if_available():
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is not installed")
    a, b = random_pair(5)
    ref = metrics.structural_similarity(a, b, data_range=1.0, channel_axis=-1,
                                        gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False)
    assert float(ssim(torch.from_numpy(a), torch.from_numpy(b))) == pytest.approx(ref, abs=1e-5)


def test_ssim_rejects_small_or_mismatched_images():
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.rand(8, 8, 3), torch.rand(8, 8, 3))
    with pytest.raises(ValueError, match="differ"):
        ssim(torch.rand(16, 16, 3), torch.rand(16, 17, 3))
