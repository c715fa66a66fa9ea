"""Sandboxed file tools: ``read_file`` and ``list_files``, confined to the workspace dir.

Paths are never resolved and then opened by name (a directory swapped for a symlink in
between would lead out). Every open starts from a descriptor of :attr:`ToolEnv.workspace`
and follows no symbolic link at all: ``openat2`` with ``RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS`` where the kernel has it (Linux ≥ 5.6), else one ``O_NOFOLLOW`` open
per component relative to the previous directory's descriptor. The opened descriptor is
then checked: a regular file with one link, whose path (``/proc/self/fd``) is beneath the
workspace. An absolute path, a ``..`` component or any symlink is refused with
:class:`SandboxViolation`. File work runs in a thread (the event loop never blocks on disk).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import os
import stat
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import PurePosixPath
from typing import Any

from shoal.agents.tools import ToolEnv, tool
from shoal.errors import ShoalError

__all__ = ["SandboxViolation", "list_files", "open_beneath", "read_file"]

MAX_READ_BYTES = 1_000_000

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted in the workspace must not hang the tool's thread.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY

_SYS_OPENAT2 = 437  # the same number on every Linux architecture (new syscall table)
_RESOLVE_NO_MAGICLINKS, _RESOLVE_NO_SYMLINKS, _RESOLVE_BENEATH = 0x02, 0x04, 0x08


class SandboxViolation(ShoalError):
    """A file tool was asked for a path outside its workspace (or through a link)."""


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


@functools.cache
def _libc_syscall() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    return fn


def _openat2(dir_fd: int, relative: str, flags: int) -> int:
    """``openat2(dir_fd, relative, flags, RESOLVE_BENEATH|NO_SYMLINKS)``; ENOSYS if absent."""
    syscall = _libc_syscall()
    if syscall is None:
        raise OSError(errno.ENOSYS, "no syscall()")
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    fd = syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(relative)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), relative)
    return int(fd)


@functools.cache
def openat2_works() -> bool:
    """Whether this kernel (and its seccomp profile) lets us call ``openat2``."""
    try:
        os.close(_openat2(_cwd_fd(), ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    except OSError as e:
        return e.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL)
    return True


def _cwd_fd() -> int:
    return -100  # AT_FDCWD


def _components(relative: str, what: str = "path") -> list[str]:
    """The path's components, or :class:`SandboxViolation` for one that could lead out."""
    if "\x00" in relative:
        raise SandboxViolation(f"{what} {relative!r} contains a NUL byte")
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts:
        raise SandboxViolation(f"{what} {relative!r} is outside the workspace")
    return [p for p in path.parts if p != "."]


def _open_walk(root_fd: int, parts: list[str], flags: int) -> int:
    """One ``O_NOFOLLOW`` open per component, each relative to the previous directory."""
    fd = root_fd
    try:
        for name in parts[:-1]:
            try:
                parent, fd = fd, os.open(name, _DIR_FLAGS, dir_fd=fd)
            except NotADirectoryError:
                # O_DIRECTORY|O_NOFOLLOW on a symlink says ENOTDIR: tell it from a plain file
                # (a directory here was a symlink a moment ago: swapped during the open).
                mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
                if stat.S_ISLNK(mode) or stat.S_ISDIR(mode):
                    raise OSError(errno.ELOOP, "a symbolic link", name) from None
                raise
            if parent != root_fd:
                os.close(parent)
        return os.open(parts[-1], flags, dir_fd=fd) if parts else os.dup(root_fd)
    finally:
        if fd != root_fd:
            os.close(fd)


def open_beneath(
    root_fd: int, relative: str, *, flags: int = _FILE_FLAGS, walk: bool = False
) -> int:
    """A descriptor of ``relative`` opened beneath ``root_fd``, following no symlink.

    ``openat2`` when the kernel has it, else (or with ``walk=True``) component by component.
    Refusals are :class:`SandboxViolation`; a missing file is :class:`FileNotFoundError`.
    """
    parts = _components(relative)
    try:
        if not walk and openat2_works():
            return _openat2(root_fd, "/".join(parts) or ".", flags)
        return _open_walk(root_fd, parts, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symlink met under RESOLVE_NO_SYMLINKS / O_NOFOLLOW
            raise SandboxViolation(
                f"path {relative!r} goes through a symbolic link (the workspace follows none)"
            ) from None
        if e.errno == errno.EXDEV:
            raise SandboxViolation(f"path {relative!r} is outside the workspace") from None
        if e.errno == errno.ENOENT:
            raise FileNotFoundError(
                errno.ENOENT, "no such file in the workspace", relative
            ) from None
        raise


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None  # no /proc: the no-symlink open is the whole guarantee


def _check_regular(fd: int, root_fd: int, relative: str) -> os.stat_result:
    """Refuse what is not a plain file of the workspace (raises; closes nothing)."""
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", relative)
    if not stat.S_ISREG(st.st_mode):
        raise SandboxViolation(f"path {relative!r} is not a regular file")
    if st.st_nlink > 1:
        raise SandboxViolation(
            f"path {relative!r} has {st.st_nlink} hard links (another may be outside the workspace)"
        )
    root, path = _fd_path(root_fd), _fd_path(fd)
    if root is not None and path is not None and not path.startswith(root.rstrip("/") + "/"):
        raise SandboxViolation(f"path {relative!r} is outside the workspace")
    return st


def _root_fd(env: ToolEnv) -> int:
    # The workspace itself is the operator's setting: following a link to it is fine.
    return os.open(env.workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def read_beneath(root_fd: int, relative: str, *, walk: bool = False) -> bytes:
    """At most :data:`MAX_READ_BYTES` of a regular file beneath ``root_fd``."""
    fd = open_beneath(root_fd, relative, walk=walk)
    try:
        size = _check_regular(fd, root_fd, relative).st_size
        # Sized by the file (+1 to see growth), not by the cap: a 1 MB buffer per small
        # read cost more than the open and the checks together.
        chunks, left = [], MAX_READ_BYTES
        while left > 0 and (chunk := os.read(fd, min(left, max(size + 1, 65536)))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@tool("read_file")
async def read_file(env: ToolEnv, path: str) -> str:
    """Read a text file of the workspace (at most 1 MB)."""

    def _read() -> str:
        root_fd = _root_fd(env)
        try:
            return read_beneath(root_fd, path).decode("utf-8", errors="replace")
        finally:
            os.close(root_fd)

    return await asyncio.to_thread(_read)


def _matches(parts: list[str], pattern: list[str]) -> bool:
    """Glob match by components: ``*``/``?``/``[..]`` within one, ``**`` any number of them."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def walk_files(root_fd: int, max_depth: int | None) -> Iterator[list[str]]:
    """Every regular file beneath ``root_fd`` as path components; symlinks are not entered."""
    stack: list[tuple[int, list[str]]] = [(os.dup(root_fd), [])]
    while stack:
        fd, prefix = stack.pop()
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        yield [*prefix, entry.name]
                    elif entry.is_dir(follow_symlinks=False) and (
                        max_depth is None or len(prefix) + 1 < max_depth
                    ):
                        try:
                            child = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                        except OSError:
                            continue  # swapped for a link (or removed) since it was listed
                        stack.append((child, [*prefix, entry.name]))
        finally:
            os.close(fd)


@tool("list_files")
async def list_files(env: ToolEnv, pattern: str = "*") -> list[str]:
    """List workspace files matching a glob pattern, as sorted relative paths."""
    wanted = _components(pattern, "pattern")
    max_depth = None if "**" in wanted else len(wanted)

    def _list() -> list[str]:
        try:
            root_fd = _root_fd(env)
        except FileNotFoundError:
            return []
        try:
            found = walk_files(root_fd, max_depth)
            return sorted("/".join(p) for p in found if _matches(p, wanted))
        finally:
            os.close(root_fd)

    return await asyncio.to_thread(_list)
