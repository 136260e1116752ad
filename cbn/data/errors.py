"""The exceptions and warning of :mod:`cbn.data`."""


class DataError(ValueError):
    """A data file is missing, truncated, corrupt, unsafe or has the wrong content.

    The message starts with the offending file's path.
    """


class UnsafePickleError(DataError):
    """A pickle asked for a global outside the allowlist; nothing it names was run."""


class SampleDataWarning(UserWarning):
    """:func:`cbn.data.load_or_sample` fell back to the shipped sample because no CIFAR-10
    was found."""
