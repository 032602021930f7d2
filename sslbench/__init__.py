"""sslbench: judge self-supervised ResNet checkpoints the way papers do."""

__version__ = "0.1.0"
