"""The "latest sweep" registry, and how a caller learns which sweeps it launched."""

from __future__ import annotations

from hpcjobs.launching import registry


def test_each_launches_block_hears_of_its_own_sweeps_and_the_process_of_all(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.STATE_DIR_ENV, str(tmp_path / "state"))
    monkeypatch.setattr(registry, "_registered_here", [])  # as in a fresh process
    first, second = tmp_path / "a", tmp_path / "b"
    with registry.launches() as launched:
        registry.register(first)
    assert launched == [first.resolve()]
    # The process's list held the same sweeps as the block's: leaving the block dropped its own.
    with registry.launches() as outer, registry.launches() as inner:
        registry.register(second)
    assert outer == inner == [second.resolve()]
    assert registry.registered_by_this_process() == [first.resolve(), second.resolve()]
    assert (tmp_path / "state" / registry.REGISTRY_FILE).read_text().count("\n") == 2
