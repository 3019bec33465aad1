"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class UserError(ValueError):
    """Bad input from the user (config, data, files). The message names the file/field."""


class ConfigError(UserError):
    """A config key is unknown or its value is invalid."""


class DataError(UserError):
    """An annotation, feature or shard file is missing, malformed or inconsistent."""
