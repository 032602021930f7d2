"""Probes of frozen backbones: feature extraction and cache, kNN, linear probes, metrics."""
