"""Reading and writing key files: a header line naming the kind, then the key in base64.

A node key file looks like this (a cluster key file says ``qchan cluster key v1``)::

    qchan node key v1
    3q2+7w...base64 of the 32 raw bytes...=

Files are created with mode 0600 from the first byte (``os.open(..., 0o600)``, never a chmod
after the fact), written in full to a temporary file in the same directory and then put in
place atomically, so a crash never leaves a half-written key. On loading, a file that its
group or others may access in any way is refused: a private key must be private, the way ssh
refuses a private key with mode 0644.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import stat
from typing import Final

__all__ = ["KINDS", "read_key_file", "write_key_file"]

KINDS: Final = {
    "node key": "qchan keygen -o {path}",
    "cluster key": "qchan cluster-key -o {path}",
}
"""Each kind of key file, with the command that makes one."""

_VERSION: Final = "v1"
_MAX_FILE_SIZE: Final = 4096  # a key file is about 70 bytes: never read a huge file whole


def _header(kind: str) -> str:
    return f"qchan {kind} {_VERSION}"


def write_key_file(path: str | os.PathLike[str], kind: str, key: bytes, *, overwrite: bool) -> None:
    """Write ``key`` as a ``kind`` key file at ``path``, mode 0600, atomically.

    Raises ``FileExistsError`` if ``path`` exists and ``overwrite`` is false (so that a key,
    an identity, is never lost by accident), ``FileNotFoundError`` if its directory does not
    exist, and ``OSError`` for any other failure to write.
    """
    path = os.fspath(path)
    text = f"{_header(kind)}\n{base64.b64encode(key).decode('ascii')}\n".encode("ascii")
    directory = os.path.dirname(path) or "."
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(6).hex()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileNotFoundError:
        raise FileNotFoundError(f"cannot save {path}: no directory {directory}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)  # atomic, and fails if path exists: no clobbering
            except FileExistsError:
                raise FileExistsError(
                    f"{path} already exists; refusing to overwrite a key file "
                    "(remove it first, or save with overwrite=True)"
                ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    # Makes the new directory entry durable; some platforms cannot open a directory: skip there.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_key_file(path: str | os.PathLike[str], kind: str, size: int) -> bytes:
    """The ``size`` raw key bytes of the ``kind`` key file at ``path``.

    Raises ``FileNotFoundError`` if there is no such file, ``PermissionError`` if the file is
    accessible to its group or to others (the message says how to fix it), and ``ValueError``
    if it is not a regular file, holds another kind of key, or is corrupt. Every message names
    the path and none shows the file's content.
    """
    path = os.fspath(path)
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang us (no effect on regular files).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        command = KINDS[kind].format(path=path)
        raise FileNotFoundError(f"no {kind} file at {path} (make one with `{command}`)") from None
    try:
        # Checked on the open file, not the path: nothing can swap the file in between.
        _check_status(path, kind, os.fstat(fd))
        content = b""
        while len(content) <= _MAX_FILE_SIZE:
            chunk = os.read(fd, _MAX_FILE_SIZE + 1 - len(content))
            if not chunk:
                break
            content += chunk
    finally:
        os.close(fd)
    return _parse(path, content, kind, size)


def _check_status(path: str, kind: str, status: os.stat_result) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise ValueError(f"{path} is not a regular file, so not a {kind} file")
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o077:
        raise PermissionError(
            f"{path} is accessible to its group or to others (mode {mode:04o}); "
            f"a {kind} is a secret: run `chmod 600 {path}` and check who has read it"
        )


def _parse(path: str, content: bytes, kind: str, size: int) -> bytes:
    corrupt = f"{path} is a corrupt {kind} file"
    try:
        lines = content.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a qchan {kind} file (not text)") from None
    header, body, rest = lines[0], "".join(lines[1:2]), lines[2:]
    if header.strip() != _header(kind):
        for other in KINDS:
            if header.strip() == _header(other):
                raise ValueError(f"{path} holds a qchan {other}, not a {kind}")
        raise ValueError(f"{path} is not a qchan {kind} file (no '{_header(kind)}' header)")
    if len(content) > _MAX_FILE_SIZE or any(line.strip() for line in rest):
        raise ValueError(f"{corrupt}: unexpected content after the key")
    try:
        key = base64.b64decode(body.strip(), validate=True)
    except binascii.Error:
        raise ValueError(f"{corrupt}: the key is not valid base64") from None
    if len(key) != size:
        raise ValueError(f"{corrupt}: the key is {len(key)} bytes, {size} expected")
    return key
