"""An arch's probe points at a dataset's image size: what `probe.layers` and `arch.probe_points` can name.

    python -m phases.points arch=torchvision arch.model=resnet18
    python -m phases.points arch=timm arch.model=efficientnet_b0 dataset=cifar10
    python -m phases.points arch=custom arch.target=tests.custom_models.TinyNet arch.kwargs={width:8}
    python -m phases.points arch=vgg8

One line per point: its name, the module it reads (a library or user network's path, as arch.probe_points
takes it; `:input` = that module's input; `(output)` = the network's output), its activation's shape for
one image, its feature count and its depth (the share of conv and linear layers before it). Builds the
network as a run would (pretrained weights are fetched only if dataset.download allows); reads no data.
"""

from __future__ import annotations

import math
import sys

from phases.config.compose import compose
from phases.config.validation import ConfigError, download_allowed, validate
from phases.training.data import dataset_info
from phases.training.external_models import NETWORK, ExternalNetwork
from phases.training.models import build_model


def point_lines(overrides: list[str]) -> list[str]:
    cfg = compose(overrides)
    validate(cfg)
    info = dataset_info(cfg.dataset)
    model = build_model(cfg.arch, info, download=download_allowed(cfg.dataset.download))
    shapes = model.probe_shapes((info.channels, info.image_size, info.image_size))
    depths = model.probe_depths()
    rows = []
    for point, path in model.probe_points.items():
        if isinstance(model, ExternalNetwork):  # paths of the user's network, as arch.probe_points takes them
            path = "(output)" if path == NETWORK else path.removeprefix(f"{NETWORK}.")
        shape = "x".join(map(str, shapes[point]))
        rows.append((point, path, shape, str(math.prod(shapes[point])), f"{depths[point]:.2f}"))
    header = ("point", "module", "shape", "features", "depth")
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    title = f"{cfg.arch.name} on {cfg.dataset.name} ({info.channels}x{info.image_size}x{info.image_size} images)"
    if model.penultimate not in (None, "penultimate"):
        title += f"; probe.layers=[penultimate] probes {model.penultimate}"
    return [title, *("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])]


def main(overrides: list[str]) -> int:
    if any(argument in ("-h", "--help") for argument in overrides):
        print(__doc__)
        return 0
    try:
        lines = point_lines(overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
