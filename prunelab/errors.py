"""User-facing errors.

A :class:`PrunelabError` is raised for anything the *user* can fix (a wrong name, a bad file, a
missing data set).  Its message is one line that names the problem and the fix; the CLI prints it
without a traceback and exits with code 2.  Anything else is a bug and keeps its traceback.
"""


class PrunelabError(Exception):
    """An error the user can fix; the message says how."""

    exit_code = 2


def write_error(path, e: OSError) -> PrunelabError:
    """The one line for a write that the file system refused (a full disk, a read-only mount, no
    permission): names the path and what to do.

    >>> import errno
    >>> str(write_error("runs/s/model", OSError(errno.ENOSPC, "No space left on device")))
    'cannot write runs/s/model: the disk is full; free space on it and run the same command again'
    """
    import errno

    full = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EFBIG: "the file is too large for that file system"}
    denied = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
              errno.EPERM: "permission denied"}
    other = {errno.EISDIR: "it is a folder", errno.ENOTDIR: "a parent is not a folder"}
    if e.errno in full:
        return PrunelabError(f"cannot write {path}: {full[e.errno]}; free space on it and run "
                             "the same command again")
    if e.errno in denied:
        return PrunelabError(f"cannot write {path}: {denied[e.errno]}; choose a writable folder "
                             "(e.g. another --out)")
    why = other.get(e.errno, e.strerror or str(e))
    return PrunelabError(f"cannot write {path}: {why}; choose another path")


def is_write_error(e: BaseException) -> bool:
    """An OSError a full, read-only or forbidden file system raises on a write."""
    import errno

    return isinstance(e, OSError) and e.errno in (
        errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)
