"""User-facing errors. Each message says what is wrong and how to fix it; the CLI prints it as one line."""


class DiffmiaError(ValueError):
    """A user mistake (bad file, shape, value or option)."""


class DataError(DiffmiaError):
    """Input data is missing or malformed."""


class SplitError(DiffmiaError):
    """A membership split is inconsistent with its data or itself."""


class TargetError(DiffmiaError):
    """A target folder or model cannot be used."""
