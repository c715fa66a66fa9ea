"""Sandboxed file tools: ``read_file`` and ``list_files``, confined to the workspace dir.

A path is resolved (symlinks included) and must stay inside :attr:`ToolEnv.workspace`;
``../`` or an absolute path or a symlink leading out is refused with :class:`SandboxViolation`.
File reads run in a thread (the event loop never blocks on disk).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from shoal.agents.tools import ToolEnv, tool
from shoal.errors import ShoalError

__all__ = ["SandboxViolation", "list_files", "read_file", "resolve_in"]

MAX_READ_BYTES = 1_000_000


class SandboxViolation(ShoalError):
    """A file tool was asked for a path outside its workspace."""


def resolve_in(root: Path, relative: str) -> Path:
    """``root / relative`` resolved, or :class:`SandboxViolation` if it leaves ``root``."""
    root = root.resolve()
    path = (root / relative).resolve()
    if path != root and root not in path.parents:
        raise SandboxViolation(f"path {relative!r} is outside the workspace")
    return path


@tool("read_file")
async def read_file(env: ToolEnv, path: str) -> str:
    """Read a text file of the workspace (at most 1 MB)."""
    target = resolve_in(env.workspace, path)

    def _read() -> str:
        with target.open("rb") as f:
            return f.read(MAX_READ_BYTES).decode("utf-8", errors="replace")

    return await asyncio.to_thread(_read)


@tool("list_files")
async def list_files(env: ToolEnv, pattern: str = "*") -> list[str]:
    """List workspace files matching a glob pattern, as sorted relative paths."""
    root = env.workspace
    if ".." in Path(pattern).parts or Path(pattern).is_absolute():
        raise SandboxViolation(f"pattern {pattern!r} is outside the workspace")

    def _list() -> list[str]:
        if not root.is_dir():
            return []
        return sorted(
            str(p.relative_to(root))
            for p in root.glob(pattern)
            if p.is_file() and root in p.resolve().parents
        )

    return await asyncio.to_thread(_list)
