"""Backbones (torchvision ResNets, with a small-input stem for 32-64 px images) and heads."""
