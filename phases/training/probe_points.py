"""What every probed network offers the evaluation: named probe points, their shapes and their depths.

A probe point is a name bound to a module path of the network: its activation is that module's output
or, for a path ending in INPUT_TAP (`fc:input`), that module's input. The input tap is what reads the
penultimate features of a library's network, whose forward flattens or pools them functionally right
before the final Linear, so that no module outputs them. The built-in networks (phases.training.models)
and the wrapped library and user models (phases.training.external_models) share this one implementation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

INPUT_TAP = ":input"
# The layers a depth counts: what a network computes with weights (normalisation and activations are cheap).
WEIGHTED_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


class ProbePoints:
    """Mixin for an nn.Module: `probe_points` {point name: module path}, `penultimate` (the point of the
    features the final Linear reads, or None). Every network declares `logits`, which the evaluation reads."""

    probe_points: dict[str, str]
    penultimate: str | None

    def declare_points(self, probe_points: dict[str, str], penultimate: str | None) -> None:
        for path in probe_points.values():
            self.get_submodule(path.removesuffix(INPUT_TAP))  # fails at construction, not at the first evaluation
        if "logits" not in probe_points or (penultimate is not None and penultimate not in probe_points):
            raise ValueError(f"probe points {list(probe_points)} must include 'logits' and {penultimate!r}")
        self.probe_points = dict(probe_points)
        self.penultimate = penultimate

    def hook_point(self, point: str, keep: Callable[[torch.Tensor], None]) -> RemovableHandle:
        """Call `keep(activation)` whenever a forward pass computes the point's activation."""
        path = self.probe_points[point]
        module = self.get_submodule(path.removesuffix(INPUT_TAP))
        if path.endswith(INPUT_TAP):
            def keep_input(_module: nn.Module, inputs: tuple) -> None:
                keep(inputs[0])

            return module.register_forward_pre_hook(keep_input)

        def keep_output(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            keep(output)

        return module.register_forward_hook(keep_output)

    def selectable_points(self) -> list[str]:
        """What `probe.layers` accepts: the probe points, and `penultimate` as an alias."""
        return list(dict.fromkeys([*self.probe_points, "penultimate"]))

    def resolve_points(self, layers: list[str] | None) -> list[str]:
        """`probe.layers` as probe point names: null = all, `penultimate` = this arch's penultimate point
        (skipped in an arch without hidden layers, whose last layer reads the image itself)."""
        if layers is None:
            return list(self.probe_points)
        resolved = (self.penultimate if layer == "penultimate" else layer for layer in layers)
        return list(dict.fromkeys(layer for layer in resolved if layer is not None))

    @torch.no_grad()
    def probe_shapes(self, image_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """Each point's activation shape for one image of `image_shape`, from a forward pass in eval mode."""
        shapes: dict[str, tuple[int, ...]] = {}
        handles = [self.hook_point(point, lambda activation, point=point: shapes.__setitem__(
            point, tuple(activation.shape[1:]))) for point in self.probe_points]
        was_training = self.training
        self.eval()
        try:
            parameter = next(self.parameters())
            self(torch.zeros(1, *image_shape, device=parameter.device, dtype=parameter.dtype))
        finally:
            self.train(was_training)
            for handle in handles:
                handle.remove()
        return shapes

    def probe_depths(self) -> dict[str, float]:
        """Each point's depth as the fraction of the network's conv and linear layers computed before
        it (logits = 1.0), so figures can line up points of architectures with different names."""
        order = [name for name, _ in self.named_modules()]
        weighted = [index for index, (_, module) in enumerate(self.named_modules())
                    if isinstance(module, WEIGHTED_LAYERS)]
        depths = {}
        for point, path in self.probe_points.items():
            module_name = path.removesuffix(INPUT_TAP)
            if path.endswith(INPUT_TAP):  # the module's input: everything registered before it
                last = order.index(module_name) - 1
            else:  # the last module of the point's subtree, in forward (registration) order
                last = max(index for index, name in enumerate(order)
                           if name == module_name or name.startswith(module_name + "."))
            depths[point] = sum(index <= last for index in weighted) / len(weighted)
        return depths
