"""A second stack home reuses the first one's downloads (symlinks), and only where it has none of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from touchpoint.errors import StackError
from touchpoint.settings import load_settings
from touchpoint.stack import stack
from touchpoint.stack.kafka import jars_dir
from touchpoint.stack.registry import dist_dir


def test_share_downloads_links_what_the_source_has(tmp_path: Path) -> None:
    source, own = tmp_path / "main", tmp_path / "second"
    jars_dir(source).mkdir(parents=True)
    (jars_dir(source) / "kafka.jar").write_text("jar")
    dist_dir(own).mkdir(parents=True)  # already fetched here: left alone
    settings = load_settings(home=own)
    stack.share_downloads(settings, source)
    assert jars_dir(own).is_symlink() and (jars_dir(own) / "kafka.jar").read_text() == "jar"
    assert dist_dir(own).is_dir() and not dist_dir(own).is_symlink()
    stack.share_downloads(settings, source)  # idempotent
    assert jars_dir(own).resolve() == jars_dir(source).resolve()


def test_one_component_by_name(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    assert stack.component(settings, "postgres").name == "postgres"
    with pytest.raises(StackError, match="no stack component named 'zookeeper'"):
        stack.component(settings, "zookeeper")
