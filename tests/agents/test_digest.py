"""The tool-digest key: private, made once per data dir, or given by the settings."""

from __future__ import annotations

import stat
from pathlib import Path

from pydantic import SecretStr

from shoal.agents import ToolEnv
from shoal.agents.digest import KEY_FILE, arguments_digest, load_digest_key
from shoal.bus import ShoalSettings


def test_the_key_file_is_made_once_private_and_shared_by_the_data_dir(tmp_path: Path) -> None:
    settings = ShoalSettings(data_dir=tmp_path)
    first = load_digest_key(settings)
    path = tmp_path / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 32 and path.read_text() == first.hex()
    assert load_digest_key(settings) == first
    assert ToolEnv.for_settings(settings).digest_key == first
    assert [p.name for p in path.parent.iterdir()] == ["tool-digest.key"]  # no temporary left


def test_the_setting_overrides_the_key_file(tmp_path: Path) -> None:
    settings = ShoalSettings(data_dir=tmp_path, tool_digest_key=SecretStr("deployment-key"))
    assert load_digest_key(settings) == b"deployment-key"
    assert not (tmp_path / KEY_FILE).exists()
    assert "deployment-key" not in repr(settings)


def test_an_unusable_key_file_gives_a_per_process_key(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).parent.mkdir()
    (tmp_path / KEY_FILE).write_text("not hex")
    settings = ShoalSettings(data_dir=tmp_path)
    assert load_digest_key(settings) != load_digest_key(settings)


def test_digests_depend_on_key_session_tool_and_arguments_not_on_their_order() -> None:
    base = arguments_digest(b"k" * 32, "I1", "search", {"q": "a", "n": 1})
    assert arguments_digest(b"k" * 32, "I1", "search", {"n": 1, "q": "a"}) == base
    assert len(base) == 32
    others = [
        arguments_digest(b"j" * 32, "I1", "search", {"q": "a", "n": 1}),
        arguments_digest(b"k" * 32, "I2", "search", {"q": "a", "n": 1}),
        arguments_digest(b"k" * 32, "I1", "lookup", {"q": "a", "n": 1}),
        arguments_digest(b"k" * 32, "I1", "search", {"q": "b", "n": 1}),
    ]
    assert len({base, *others}) == 5
