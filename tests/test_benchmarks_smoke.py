"""The benchmark's PyTorch twins compute the same function as the eos_jax models."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_models  # noqa: E402
from eos_jax.models import create_model  # noqa: E402


@pytest.mark.parametrize("name, shape", [("small_cnn", (8, 8, 1)), ("resnet20", (32, 32, 3))])
def test_twin_has_same_params_and_logits(name, shape):
    model = create_model(name)
    images = np.random.default_rng(0).normal(size=(4, *shape)).astype(np.float32)
    variables = model.init(jax.random.key(0), images, train=False)
    logits, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])

    twin = torch_models.create_model(name, shape[-1])
    num_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
    assert num_params == sum(p.numel() for p in twin.parameters())
    torch_models.load_flax_params(name, twin, variables["params"])
    twin.train()
    with torch.no_grad():
        twin_logits = twin(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(twin_logits, np.asarray(logits), rtol=1e-4, atol=1e-4)
