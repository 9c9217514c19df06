"""User-facing errors: one line, naming the offending key or file."""


class FedHelloError(Exception):
    """An error caused by user input (config, data, run directory, client update).

    The CLI prints ``error: <message>`` on one line and exits with status 2.
    """


class ConfigError(FedHelloError, ValueError):
    """Invalid experiment configuration; the message names the dotted key.

    A ValueError too, so that a rule raising it inside a config validator reads
    as pydantic's own validation error (:func:`fedhello.config.format_validation_error`)."""


class DataError(FedHelloError):
    """Missing or malformed data; the message names the file or column."""


class UpdateError(FedHelloError):
    """A client update that must not be aggregated (wrong keys, shapes, values)."""
