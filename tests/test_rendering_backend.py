"""Backend resolution: auto picks nerfacc only for CUDA tensors when it imports."""
import pytest
import torch

from models.rendering import nerfacc_available, resolve_backend


def test_torch_and_auto_on_cpu():
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("auto", torch.device("cpu")) == "torch"


def test_auto_on_cuda_follows_nerfacc_availability():
    assert resolve_backend("auto", "cuda") == ("nerfacc" if nerfacc_available() else "torch")


def test_nerfacc_on_cpu_raises_with_reason():
    with pytest.raises(RuntimeError, match="CUDA"):
        resolve_backend("nerfacc", "cpu")


@pytest.mark.skipif(nerfacc_available(), reason="nerfacc is installed")
def test_nerfacc_missing_raises_with_reason():
    with pytest.raises(RuntimeError, match="nerfacc"):
        resolve_backend("nerfacc", "cuda")


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown"):
        resolve_backend("jax", "cpu")


def test_availability_is_cached_and_boolean():
    assert nerfacc_available() is nerfacc_available()
    assert isinstance(nerfacc_available(), bool)
