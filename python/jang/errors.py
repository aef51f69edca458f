"""Every error jang reports to a user, one class per stage, all under `JangError`.

A `JangError` is an expected failure (bad input, a missing file, an unsupported model) whose
message names the file or tensor and what would work; the command line prints it in one
line, without a traceback. Anything else escaping a command is a bug in jang.
"""


class JangError(Exception):
    """An expected failure; the message is for the user."""


class DataError(JangError, RuntimeError):
    """A data target could not be prepared (download, checksum or format)."""


class TextError(JangError, ValueError):
    """Text that cannot be read or cut into windows; the message names it."""


class SourceError(JangError, ValueError):
    """A model source is missing, malformed or unsupported (message names the file)."""


class GGUFError(SourceError):
    """A GGUF file is truncated, corrupt or uses something this reader does not handle."""


class ArchError(JangError, ValueError):
    """The config cannot describe a causal LM, or jang does not convert its family."""


class ProfileError(JangError, ValueError):
    """An unknown profile name or an impossible bit target."""


class PlanError(JangError, ValueError):
    """The request cannot be planned (message says why and what would work)."""


class QuantizationError(JangError, ValueError):
    """A weight or parameter the quantizers cannot handle; the message says which and why."""


class BundleError(JangError, ValueError):
    """A bundle cannot be written or does not match its manifest."""


class ConversionError(JangError, RuntimeError):
    """A conversion failed; nothing was written to the output path."""


def install_hint(extra: str) -> str:
    """The command that installs an optional extra's packages into this environment.

    Spelled out from the installed package's own metadata, so it works however jang was
    installed (a wheel, a checkout, an editable install), where ``jang[extra]`` would
    only work for an index that serves jang.
    """
    import importlib.metadata as metadata

    marker = f'extra == "{extra}"'
    try:
        requires = metadata.requires("jang") or []
    except metadata.PackageNotFoundError:
        requires = []
    packages = [r.split(";")[0].strip() for r in requires if marker in r]
    if not packages:
        return f"pip install 'jang[{extra}]'"
    return "pip install " + " ".join(f"'{p}'" for p in packages)
