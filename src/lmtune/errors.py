"""Errors meant for users: the CLI prints their message on one line and exits with status 2."""


class LmtuneError(Exception):
    """A problem the user can fix; the message says what was wrong, where, and what to do."""


class ConfigError(LmtuneError):
    pass


class DataError(LmtuneError):
    pass


class RecordError(DataError):
    """One record is unusable; the message is the reason alone, the loader adds file and line."""


class ModelError(LmtuneError):
    pass


class AdapterError(LmtuneError):
    pass
