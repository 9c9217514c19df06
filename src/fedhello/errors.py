"""User-facing errors: one line, naming the offending key or file."""


class FedHelloError(Exception):
    """An error caused by user input (config, data, run directory, client update).

    The CLI prints ``error: <message>`` on one line and exits with status 2.
    """


class ConfigError(FedHelloError):
    """Invalid experiment configuration; the message names the dotted key.

    Raised inside a config validator it passes through pydantic unchanged (it is not
    a ValueError), so the rules of :mod:`fedhello.config` word their own messages."""


class DataError(FedHelloError):
    """Missing or malformed data; the message names the file or column."""


class UpdateError(FedHelloError):
    """A client update that must not be aggregated (wrong keys, shapes, values)."""
