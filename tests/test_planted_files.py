"""Files nobody of ours wrote, planted in the store (a FIFO or a link where a lease or an
artifact goes): never opened, never written through."""

import os
import threading

from lambda_hat.store.artifacts import quarantine
from lambda_hat.store.claims import Claims


def test_a_fifo_planted_as_a_lease_is_never_opened(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes: the lease reader must not."""
    os.mkfifo(tmp_path / "run_aaaaaaaaaaaa.lease")
    result = {}
    reader = threading.Thread(target=lambda: result.update(h=Claims(tmp_path).holder("run_aaaaaaaaaaaa")), daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # unblock the thread before failing, so the test run can end
        fd = os.open(tmp_path / "run_aaaaaaaaaaaa.lease", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    assert not reader.is_alive(), "reading a FIFO lease blocked"
    assert "h" in result


def test_quarantine_moves_a_linked_artifact_as_the_link_and_writes_nothing_through_it(tmp_path):
    outside = tmp_path / "thesis"
    outside.mkdir()
    (outside / "chapter.tex").write_text("precious\n")
    runs = tmp_path / "store" / "runs"
    runs.mkdir(parents=True)
    (runs / "run_aaaaaaaaaaaa").symlink_to(outside)
    dest = quarantine(runs / "run_aaaaaaaaaaaa", tmp_path / "store" / ".quarantine", "damaged")
    assert dest is not None and dest.is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["chapter.tex"]
    assert (outside / "chapter.tex").read_text() == "precious\n"
