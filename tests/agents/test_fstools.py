"""The sandboxed file tools: nothing outside the workspace is read or listed, even in a race."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shoal.agents import ToolEnv
from shoal.agents.fstools import (
    MAX_READ_BYTES,
    SandboxViolation,
    list_files,
    open_beneath,
    openat2_works,
    read_beneath,
    read_file,
)
from shoal.bus import ShoalSettings

pytestmark = pytest.mark.timeout(60)

RACE_READS = 500


@pytest.fixture
def env(tmp_path: Path) -> ToolEnv:
    root = tmp_path / "ws"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("alpha")
    (root / "sub" / "b.md").write_text("beta")
    (tmp_path / "secret.txt").write_text("do not read")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "x.md").write_text("outside")
    (root / "escape.md").symlink_to(tmp_path / "secret.txt")
    (root / "inner.md").symlink_to(root / "a.md")  # leads inside, still a link: refused
    (root / "linkdir").symlink_to(tmp_path / "outdir")
    return ToolEnv(ShoalSettings(data_dir=tmp_path), root)


@pytest.fixture
def root_fd(env: ToolEnv) -> Iterator[int]:
    fd = os.open(env.workspace, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


STRATEGIES = [
    pytest.param(False, id="openat2", marks=pytest.mark.skipif(not openat2_works(), reason="")),
    pytest.param(True, id="walk"),
]


def test_this_kernel_opens_with_openat2() -> None:
    # The CI kernel is ≥ 5.6: the default path must be openat2, not the fallback.
    assert openat2_works() is True


async def test_read_file_reads_inside_the_workspace(env: ToolEnv) -> None:
    assert await read_file.fn(env, path="sub/b.md") == "beta"
    assert await read_file.fn(env, path="./a.md") == "alpha"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../secret.txt", "path '../secret.txt' is outside the workspace"),
        ("/etc/passwd", "path '/etc/passwd' is outside the workspace"),
        ("sub/../../x", "path 'sub/../../x' is outside the workspace"),
        ("escape.md", "path 'escape.md' goes through a symbolic link (the workspace follows none)"),
        ("inner.md", "path 'inner.md' goes through a symbolic link (the workspace follows none)"),
        (
            "linkdir/x.md",
            "path 'linkdir/x.md' goes through a symbolic link (the workspace follows none)",
        ),
    ],
)
async def test_read_file_refuses_paths_leaving_the_workspace(
    env: ToolEnv, path: str, message: str
) -> None:
    with pytest.raises(SandboxViolation) as raised:
        await read_file.fn(env, path=path)
    assert str(raised.value) == message


@pytest.mark.parametrize("walk", STRATEGIES)
@pytest.mark.parametrize("path", ["escape.md", "inner.md", "linkdir/x.md", "../secret.txt"])
def test_both_open_strategies_refuse_links_and_escapes(root_fd: int, walk: bool, path: str) -> None:
    with pytest.raises(SandboxViolation):
        open_beneath(root_fd, path, walk=walk)


@pytest.mark.parametrize("walk", STRATEGIES)
def test_both_open_strategies_read_a_nested_file(root_fd: int, walk: bool) -> None:
    assert read_beneath(root_fd, "sub/b.md", walk=walk) == b"beta"


async def test_a_missing_file_names_only_its_workspace_path(env: ToolEnv) -> None:
    with pytest.raises(FileNotFoundError) as raised:
        await read_file.fn(env, path="sub/none.md")
    assert str(raised.value) == "[Errno 2] no such file in the workspace: 'sub/none.md'"


async def test_hard_link_fifo_and_directory_are_not_read(env: ToolEnv, tmp_path: Path) -> None:
    os.link(tmp_path / "secret.txt", env.workspace / "hard.md")
    os.mkfifo(env.workspace / "pipe.md")  # opening it blocking would hang the tool's thread
    with pytest.raises(SandboxViolation) as hard:
        await read_file.fn(env, path="hard.md")
    assert str(hard.value) == (
        "path 'hard.md' has 2 hard links (another may be outside the workspace)"
    )
    with pytest.raises(SandboxViolation) as fifo:
        await read_file.fn(env, path="pipe.md")
    assert str(fifo.value) == "path 'pipe.md' is not a regular file"
    with pytest.raises(IsADirectoryError):
        await read_file.fn(env, path="sub")


class Swapper:
    """A thread that keeps swapping workspace dir ``d`` for a symlink to an outside dir."""

    def __init__(self, tmp_path: Path) -> None:
        self.ws = tmp_path / "race"
        (self.ws / "d").mkdir(parents=True)
        (self.ws / "d" / "f.txt").write_text("inside")
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "f.txt").write_text("OUTSIDE")
        (outside / "only-outside.txt").write_text("OUTSIDE")
        (self.ws / "link").symlink_to(outside)
        self.swaps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        ws = self.ws
        while not self._stop.is_set():
            os.rename(ws / "d", ws / "real")
            os.rename(ws / "link", ws / "d")  # d is now the symlink leading out
            os.rename(ws / "d", ws / "link")
            os.rename(ws / "real", ws / "d")
            self.swaps += 1

    def __enter__(self) -> Swapper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _outcome(read: Callable[[], str]) -> str:
    try:
        return read()
    except (SandboxViolation, FileNotFoundError) as e:
        return type(e).__name__


@pytest.mark.parametrize("walk", STRATEGIES)
def test_racing_a_directory_for_a_symlink_never_reads_outside(tmp_path: Path, walk: bool) -> None:
    with Swapper(tmp_path) as swapper:
        fd = os.open(swapper.ws, os.O_RDONLY | os.O_DIRECTORY)
        try:
            outcomes = Counter(
                _outcome(lambda: read_beneath(fd, "d/f.txt", walk=walk).decode())
                for _ in range(RACE_READS)
            )
        finally:
            os.close(fd)
    assert swapper.swaps > 0
    assert outcomes["OUTSIDE"] == 0
    assert sum(outcomes.values()) == RACE_READS
    assert set(outcomes) <= {"inside", "SandboxViolation", "FileNotFoundError"}


async def test_read_file_tool_in_a_race_reads_no_outside_byte(tmp_path: Path) -> None:
    with Swapper(tmp_path) as swapper:
        env = ToolEnv(ShoalSettings(data_dir=tmp_path), swapper.ws)
        outcomes: Counter[str] = Counter()
        for _ in range(RACE_READS):
            try:
                outcomes[await read_file.fn(env, path="d/f.txt")] += 1
            except (SandboxViolation, FileNotFoundError) as e:
                outcomes[type(e).__name__] += 1
    assert outcomes["OUTSIDE"] == 0
    assert sum(outcomes.values()) == RACE_READS


async def test_list_files_lists_only_regular_workspace_files(env: ToolEnv) -> None:
    assert await list_files.fn(env, pattern="**/*.md") == ["a.md", "sub/b.md"]
    assert await list_files.fn(env, pattern="*.md") == ["a.md"]
    assert await list_files.fn(env, pattern="sub/*") == ["sub/b.md"]
    assert await list_files.fn(env, pattern="linkdir/*") == []
    with pytest.raises(SandboxViolation) as raised:
        await list_files.fn(env, pattern="../*")
    assert str(raised.value) == "pattern '../*' is outside the workspace"


async def test_list_files_in_a_race_lists_no_outside_name(tmp_path: Path) -> None:
    with Swapper(tmp_path) as swapper:
        env = ToolEnv(ShoalSettings(data_dir=tmp_path), swapper.ws)
        listed: Counter[str] = Counter()
        for _ in range(RACE_READS // 5):
            listed.update(await list_files.fn(env, pattern="**/*.txt"))
    assert listed["d/only-outside.txt"] == 0
    assert set(listed) <= {"d/f.txt", "real/f.txt"}


async def test_list_files_of_a_missing_workspace_is_empty(tmp_path: Path) -> None:
    env = ToolEnv(ShoalSettings(data_dir=tmp_path), tmp_path / "none")
    assert await list_files.fn(env) == []


@pytest.mark.parametrize("walk", STRATEGIES)
def test_a_read_stops_at_the_cap(env: ToolEnv, root_fd: int, walk: bool) -> None:
    (env.workspace / "big.md").write_bytes(b"x" * (MAX_READ_BYTES + 10))
    assert len(read_beneath(root_fd, "big.md", walk=walk)) == MAX_READ_BYTES
    assert read_beneath(root_fd, "a.md", walk=walk) == b"alpha"
