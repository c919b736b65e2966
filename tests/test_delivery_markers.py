"""MarkerStore.collect: the markers of queue files that are gone are removed, nothing else."""

from __future__ import annotations

from pymailsys.delivery import mailbox


def test_collect_removes_only_markers_of_queue_files_that_are_gone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = mailbox.MarkerStore(str(tmp_path / "markers"))
    store.create()
    store.put("3C2B020CBB2.1764900000000000.120.0a1b2c3d", "1.V1I2M3.host")
    store.put("4D3C131DCC3.1764900000000000.120.0a1b2c3d", "2.V1I2M3.host")
    (tmp_path / "markers" / "not-a-marker").write_text("x")
    removed = store.collect(lambda queue_id: queue_id == "4D3C131DCC3")
    assert removed == 1
    assert sorted(store.keys()) == ["4D3C131DCC3.1764900000000000.120.0a1b2c3d", "not-a-marker"]
