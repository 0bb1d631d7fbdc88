"""User-facing errors: one clear line, non-zero exit, no traceback wall."""


class XltError(Exception):
    """Bad input or configuration that the user can fix.

    The message names what is wrong and where (file and line, config key, the
    valid choices).  ``xlt`` prints it as a single line and exits with code 2.
    """


class MissingFileError(XltError):
    """A data file that does not exist (an evaluation set may then be skipped)."""


def require_file(path: str, what: str = "file") -> str:
    """Return ``path`` if it is a readable file, else raise XltError naming it."""
    import os

    if not os.path.isfile(path):
        raise MissingFileError(f"{what} not found: {path}")
    if not os.access(path, os.R_OK):
        raise XltError(f"{what} is not readable: {path}")
    return path
