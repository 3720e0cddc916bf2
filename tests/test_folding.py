"""BatchNorm folding for inference: same outputs as the model, and refused where it would not be."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from hf_transfer.folding import fold_batch_norms, folded_copy


def _with_trained_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, as a trained model has."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for tensor, low, high in ((module.running_mean, -1, 1), (module.running_var, 0.5, 2),
                                      (module.weight.data, 0.5, 1.5), (module.bias.data, -0.5, 0.5)):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model.eval()


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet", "test_byobnet"])
def test_folded_copy_gives_the_models_outputs_without_its_batchnorms(name: str) -> None:
    model = _with_trained_statistics(timm.create_model(name, pretrained=False, num_classes=7))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    probe, images = torch.randn(2, 3, 32, 32), torch.randn(4, 3, 32, 32)
    folded = folded_copy(model, probe)
    assert folded is not model
    norms = lambda m: sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())  # noqa: E731
    assert norms(folded) < norms(model)
    with torch.no_grad():
        torch.testing.assert_close(folded(images), model(images), rtol=1e-4, atol=1e-4)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())  # the model is untouched


def test_a_model_without_batchnorm_is_returned_as_it_is() -> None:
    model = timm.create_model("test_vit", pretrained=False).eval()
    assert folded_copy(model, torch.randn(2, 3, *model.pretrained_cfg["input_size"][1:])) is model


class NormBeforeConv(nn.Module):
    """A BatchNorm registered after a convolution but applied before it: not foldable into it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


def test_a_fold_that_changes_the_output_is_not_used() -> None:
    model = _with_trained_statistics(NormBeforeConv())
    assert fold_batch_norms(NormBeforeConv()) == 1  # the pairing alone would fold it
    assert folded_copy(model, torch.randn(2, 3, 8, 8)) is model
