"""User-facing errors: one clear line, non-zero exit, no traceback wall."""


class XltError(Exception):
    """Bad input or configuration that the user can fix.

    The message names what is wrong and where (file and line, config key, the
    valid choices).  ``xlt`` prints it as a single line and exits with code 2.
    """


class MissingFileError(XltError):
    """A data file that does not exist (an evaluation set may then be skipped)."""


def one_line(err: BaseException) -> str:
    """``err``'s message on one line (Hydra's, Lightning's and transformers'
    run over several); its type's name when it has none."""
    return " ".join(str(err).split()) or type(err).__name__


def require_file(path: str, what: str = "file") -> str:
    """Return ``path`` if it is a readable file, else raise XltError naming it."""
    import os

    if not os.path.isfile(path):
        raise MissingFileError(f"{what} not found: {path}")
    if not os.access(path, os.R_OK):
        raise XltError(f"{what} is not readable: {path}")
    return path


def no_space(err: BaseException) -> bool:
    """``err`` says the disk (or the user's quota) is full; safetensors and
    torch report it in their own exception types, so the message counts too."""
    import errno

    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text


def disk_full(path, needed: int | None = None, written: int | None = None) -> XltError:
    """One line for a write that a full disk stopped: the path, the space it
    needed (or had written before it failed) and what is free there."""
    import os
    import shutil

    folder = str(path)
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        free = f"{_size(shutil.disk_usage(folder or '.').free)} free there"
    except OSError:
        free = "free space unknown"
    wanted = (f"needs {_size(needed)}" if needed is not None
              else f"failed after {_size(written)}" if written is not None else "needs more space")
    return XltError(f"no space left on device writing {path}: {wanted}, {free}; free some space "
                    "(or set paths.cache_dir / hydra.run.dir elsewhere) and rerun the same command")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def open_utf8(path: str, newline: str | None = None):
    """``open(path, encoding="utf-8")`` for a data file, read at once, so that
    invalid UTF-8 (a latin-1 export, say) is one line naming the file, the
    line and the byte instead of a UnicodeDecodeError traceback without a
    file name, in a job and in a sweep's recorded error alike.

    A byte-order mark (what Windows tools put first) is dropped, not kept as
    part of the first field; a NUL byte (a binary or UTF-16 file, a broken
    copy) is an error naming its line, never text a model is trained on."""
    import io

    require_file(path, "data file")
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise XltError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[err.start]:02x} at column {column}: {err.reason}); "
            "convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if (nul := text.find("\0")) >= 0:
        line = text.count("\n", 0, nul) + 1
        column = nul - (text.rfind("\n", 0, nul) + 1) + 1
        raise XltError(f"{path}:{line}: NUL byte at column {column} (a binary or UTF-16 file?); "
                       "data files must be UTF-8 text")
    return io.StringIO(text, newline=newline)


class hub_errors:  # noqa: N801 - used like a function: ``with hub_errors("model bert-base"):``
    """Turn a failure to fetch ``what`` from the HuggingFace hub (offline, no
    such repo, gated, rate-limited) into one XltError line.

    Used around ``from_pretrained`` and ``datasets.load_dataset`` calls, so
    ``model=mbert`` or ``data=hub`` without network is one line naming what
    could not be loaded and the offline alternative, not a 100-line traceback.
    """

    where = "the HuggingFace hub"

    def __init__(self, what: str, hint: str = "offline? use model=e5_small and data=shared, or local paths"):
        self.what, self.hint = what, hint

    def __enter__(self) -> "hub_errors":
        return self

    def __exit__(self, kind, err, tb) -> bool:
        if err is None or isinstance(err, XltError) or not self.failed(err):
            return False
        reason = one_line(err)[:300]
        raise XltError(f"cannot load {self.what} from {self.where} ({type(err).__name__}: {reason}); "
                       f"{self.hint}") from None

    @staticmethod
    def failed(err: BaseException) -> bool:
        return _is_hub_failure(err)


# What a model folder holds: said by every error about one.
MODEL_FOLDER = "a local model is a folder save_pretrained wrote: config.json, the weights and the tokenizer's files"


class folder_errors(hub_errors):  # noqa: N801
    """The same for a model folder on disk (``model.pretrained=/path``, a
    state's directory): transformers' errors for a folder without weights
    (OSError), with a config.json it cannot read or without tokenizer files
    (ValueError, which blames a missing sentencepiece) are one line naming
    the folder, not a traceback."""

    where = "disk"

    def __init__(self, what: str, hint: str = ""):
        super().__init__(what, hint or MODEL_FOLDER)

    @staticmethod
    def failed(err: BaseException) -> bool:
        names = {cls.__name__ for cls in type(err).__mro__}
        return isinstance(err, (OSError, ValueError)) or "SafetensorError" in names


def _is_hub_failure(err: BaseException) -> bool:
    """Network and hub-lookup failures (not bugs such as a TypeError)."""
    if isinstance(err, (OSError, ConnectionError, TimeoutError)):  # includes LocalEntryNotFoundError, requests errors
        return True
    names = {cls.__name__ for cls in type(err).__mro__}
    return bool(names & {"HfHubHTTPError", "DatasetNotFoundError", "DataFilesNotFoundError", "OfflineModeIsEnabled",
                         "HFValidationError", "RepositoryNotFoundError", "EmptyDatasetError",
                         "TransportError"})  # httpx's: no connection, a timeout, a proxy (huggingface_hub's HfApi)
