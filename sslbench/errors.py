"""Errors meant for people: each names the file, key or path at fault and what was expected."""


class SslbenchError(Exception):
    """Base class; the CLI prints these as one line and exits with status 2, without a traceback."""


class CheckpointError(SslbenchError):
    """A checkpoint could not be read, detected, or matched to a ResNet or ViT backbone."""


class DatasetError(SslbenchError):
    """A dataset root does not have the expected on-disk layout."""


class RecordError(SslbenchError):
    """A result record is malformed or of an unknown schema version."""


class ConfigError(SslbenchError):
    """A configuration file or a key=value override does not fit the config's schema."""
