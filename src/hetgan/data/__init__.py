"""Data: spec parsing, readers for every supported format, and device-resident samplers."""

from hetgan.data.sampler import ImageSampler, MixtureSampler, make_sampler
from hetgan.data.sources import (
    DATASETS,
    ImageData,
    Mixture,
    absolute_path,
    absolute_spec,
    check_spec,
    colour_warning,
    describe_data,
    describe_specs,
    is_mixture_spec,
    load_data,
    with_classes,
)

__all__ = [
    "DATASETS",
    "ImageData",
    "ImageSampler",
    "Mixture",
    "MixtureSampler",
    "absolute_path",
    "absolute_spec",
    "check_spec",
    "colour_warning",
    "describe_data",
    "describe_specs",
    "is_mixture_spec",
    "load_data",
    "make_sampler",
    "with_classes",
]
