"""The networks behind arch=torchvision, arch=timm and arch=custom, made for a dataset's classes and channels.

Each builder returns the bare network, which phases.training.external_models wraps with probe points,
and the points its library declares (timm's feature_info), or None where the generic rule picks them.

Channels: torchvision's builders take RGB images. For a dataset with other channels (Fashion-MNIST: 1),
the first conv with 3 inputs (the first registered: the stem) is replaced by an equal conv (same outputs,
kernel, stride, padding, groups, bias) of `channels` inputs whose weights are the RGB weights summed:
with 1 channel that is exactly the network fed the grey image on all three inputs, for random and
pretrained weights alike. Other channel counts follow timm's rule (the RGB weights repeated over the
channels, times 3/channels). timm makes the first conv itself (`in_chans`, the same rule for weights).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision.models
from omegaconf import DictConfig, OmegaConf
from torch import nn

from phases.config.validation import ConfigError
from phases.training.data import DatasetInfo

# Arguments a custom class gets from the dataset when its __init__ names them: its name -> DatasetInfo's field.
DATASET_ARGUMENTS = {"num_classes": "classes", "in_channels": "channels", "image_size": "image_size"}


def _close(name: str, known: list[str]) -> str:
    matches = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(matches)}?" if matches else ""


def builder_kwargs(arch: DictConfig, reserved: tuple[str, ...]) -> dict:
    """arch.kwargs as a dict, without the arguments the dataset or the arch's own keys set."""
    if arch.kwargs is None:
        return {}
    if not isinstance(arch.kwargs, DictConfig):
        raise ConfigError("arch.kwargs", arch.kwargs, "a mapping of keyword arguments, e.g. {dropout: 0.1}, or null")
    kwargs = OmegaConf.to_container(arch.kwargs, resolve=True)
    for name in reserved:
        if name in kwargs:
            raise ConfigError(f"arch.kwargs.{name}", kwargs[name],
                              "left out: the dataset or the arch's own keys set it")
    return kwargs


def set_module(network: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(network.get_submodule(parent), name, module)


def adapt_first_conv(network: nn.Module, channels: int) -> None:
    """The first conv with 3 inputs takes `channels` instead (the module docstring says how)."""
    if channels == 3:
        return
    found = next(((path, module) for path, module in network.named_modules()
                  if isinstance(module, nn.Conv2d) and module.in_channels == 3), None)
    if found is None:  # no RGB stem: the forward check at build time tells whether the network fits
        return
    path, conv = found
    adapted = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                        conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        if channels == 1:
            adapted.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        else:
            repeated = conv.weight.repeat(1, math.ceil(channels / 3), 1, 1)[:, :channels]
            adapted.weight.copy_(repeated * (3 / channels))
        if conv.bias is not None:
            adapted.bias.copy_(conv.bias)
    set_module(network, path, adapted)


def replace_classifier(network: nn.Module, classes: int, arch: DictConfig) -> None:
    """A pretrained network's last Linear (ImageNet's 1000 classes) becomes a fresh one for `classes`."""
    found = [(path, module) for path, module in network.named_modules() if isinstance(module, nn.Linear)]
    if not found:
        raise ConfigError("arch.weights", arch.weights, f"null: {arch.model}'s classifier is no Linear layer, so its "
                          "pretrained head cannot be resized to the dataset's classes")
    path, linear = found[-1]
    if linear.out_features != classes:
        set_module(network, path, nn.Linear(linear.in_features, classes, bias=linear.bias is not None))


def pretrained_weights(arch: DictConfig, download: bool):
    """arch.weights as torchvision's enum member, its file in torch's hub cache (fetched when allowed)."""
    members = torchvision.models.get_model_weights(arch.model).__members__
    if arch.weights not in members:
        raise ConfigError("arch.weights", arch.weights,
                          f"null (random init) or a weights name of {arch.model}: {', '.join(members)}")
    weights = members[arch.weights]
    # Where torch.hub.load_state_dict_from_url keeps them, which is where torchvision looks first.
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    fetch = (f"fetch them where there is internet (python -c \"import torchvision; torchvision.models.get_model("
             f"'{arch.model}', weights='{arch.weights}')\") and copy {file.name} into {file.parent} (TORCH_HOME "
             "moves that folder)")
    if file.is_file():
        return weights
    if not download:
        raise ConfigError("arch.weights", arch.weights, f"weights in torch's hub cache, or dataset.download=auto: "
                          f"{file} is missing and dataset.download=false keeps the run offline; {fetch}")
    try:
        weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as error:  # no network (URLError is an OSError), a file failing its hash
        raise ConfigError("arch.weights", arch.weights, f"weights that can be fetched: {error}; {fetch}") from error
    return weights


def torchvision_network(arch: DictConfig, info: DatasetInfo, download: bool) -> tuple[nn.Module, None]:
    known = torchvision.models.list_models(module=torchvision.models)  # classification builders only
    if arch.model not in known:
        raise ConfigError("arch.model", arch.model, f"a classification model of torchvision.models"
                          f"{_close(arch.model, known)} (all of them: python -c \"import torchvision; "
                          "print(torchvision.models.list_models(module=torchvision.models))\")")
    kwargs = builder_kwargs(arch, ("num_classes", "weights"))
    try:
        if arch.weights is None:
            network = torchvision.models.get_model(arch.model, weights=None, num_classes=info.classes, **kwargs)
        else:
            network = torchvision.models.get_model(arch.model, weights=pretrained_weights(arch, download), **kwargs)
            replace_classifier(network, info.classes, arch)
    except TypeError as error:
        raise ConfigError("arch.kwargs", kwargs, f"keyword arguments of torchvision's {arch.model}: {error}") from error
    adapt_first_conv(network, info.channels)
    return network, None


def timm_network(arch: DictConfig, info: DatasetInfo, download: bool) -> tuple[nn.Module, list[str] | None]:
    """timm's model with random weights; its default points are the modules its feature_info lists."""
    try:
        import timm  # optional: only arch=timm needs it
    except ImportError as error:
        raise ConfigError("arch", "timm", "an installed library: pip install timm (or pip install -e '.[timm]' "
                          "in a checkout)") from error
    if not timm.is_model(arch.model):  # also refuses hf-hub: names, which would fetch a config from the internet
        raise ConfigError("arch.model", arch.model, f"a model of timm {timm.__version__}"
                          f"{_close(arch.model, timm.list_models())} (all of them: python -c \"import timm; "
                          "print(timm.list_models())\")")
    kwargs = builder_kwargs(arch, ("num_classes", "in_chans", "pretrained"))
    try:
        network = timm.create_model(arch.model, pretrained=False, num_classes=info.classes, in_chans=info.channels,
                                    **kwargs)
    except TypeError as error:
        raise ConfigError("arch.kwargs", kwargs, f"keyword arguments of timm's {arch.model}: {error}") from error
    feature_info = getattr(network, "feature_info", None) or []
    return network, [str(feature["module"]) for feature in feature_info] or None


def import_class(target: str) -> type[nn.Module]:
    """The nn.Module class `module.Class` names; imported only here, after the config was validated."""
    module_name, _, class_name = str(target).rpartition(".")
    if not module_name:
        raise ConfigError("arch.target", target, "your nn.Module class as module.Class, e.g. my_package.MyNet")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError("arch.target", target, f"an importable module.Class: {error} (install its package, or "
                          "run from the folder that holds it)") from error
    found = getattr(module, class_name, None)
    if isinstance(found, type) and issubclass(found, nn.Module):
        return found
    classes = [name for name, value in vars(module).items() if isinstance(value, type) and issubclass(value, nn.Module)
               and value.__module__ == module.__name__]
    raise ConfigError("arch.target", target, f"an nn.Module class of {module_name}{_close(class_name, classes)}; "
                      f"its classes: {', '.join(classes) or 'none'}")


def custom_network(arch: DictConfig, info: DatasetInfo, download: bool) -> tuple[nn.Module, None]:
    """arch.target's class with arch.kwargs, plus num_classes, in_channels and image_size from the dataset
    when its __init__ names them (by name: an argument hidden in **kwargs gets nothing)."""
    network_class = import_class(arch.target)
    accepted = inspect.signature(network_class).parameters
    given = {name: getattr(info, field) for name, field in DATASET_ARGUMENTS.items() if name in accepted}
    kwargs = builder_kwargs(arch, tuple(given))
    try:
        return network_class(**given, **kwargs), None
    except TypeError as error:
        raise ConfigError("arch.kwargs", kwargs, f"keyword arguments {network_class.__name__} accepts (it got "
                          f"{', '.join(given) or 'nothing'} from the dataset): {error}") from error
