"""A worker pool's claims: each task taken once, and a claim costs a name, not an inode."""

from __future__ import annotations

import errno
import os

import pytest

from hpcjobs.sweepdir import pools


def test_a_task_is_claimed_once_and_claims_share_the_workers_inode(tmp_path):
    assert pools.claim(tmp_path, 0, worker=0)
    assert not pools.claim(tmp_path, 0, worker=1)  # taken: the other worker gets False
    assert pools.claim(tmp_path, 1, worker=1) and pools.claim(tmp_path, 2, worker=0)
    assert all(pools.is_claimed(tmp_path, i) for i in (0, 1, 2))
    assert not pools.is_claimed(tmp_path, 3)
    claims = tmp_path / "claims"
    # worker 0's two claims are one inode, which says who claimed them
    assert os.stat(claims / "0").st_ino == os.stat(claims / "2").st_ino
    assert os.stat(claims / "0").st_ino != os.stat(claims / "1").st_ino
    assert [(claims / str(i)).read_text() for i in (0, 1, 2)] == ["0\n", "1\n", "0\n"]
    assert pools.takeovers(tmp_path, 0) == 0  # the workers' own files are no takeover


def test_at_the_link_limit_claims_link_to_a_new_file(tmp_path, monkeypatch):
    assert pools.claim(tmp_path, 0, worker=0)
    first = os.stat(tmp_path / "claims" / "0").st_ino
    link = os.link

    def full(src, dst):
        if os.path.basename(src) == ".worker0":
            raise OSError(errno.EMLINK, "Too many links")
        return link(src, dst)

    monkeypatch.setattr(os, "link", full)
    assert pools.claim(tmp_path, 1, worker=0) and not pools.claim(tmp_path, 1, worker=1)
    assert pools.claim(tmp_path, 2, worker=0)
    second = os.stat(tmp_path / "claims" / "1").st_ino
    assert second != first and os.stat(tmp_path / "claims" / "2").st_ino == second
    assert (tmp_path / "claims" / "1").read_text() == "0\n"


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP])
def test_without_hard_links_a_claim_is_an_exclusive_file(tmp_path, monkeypatch, code):
    def refused(src, dst):
        raise OSError(code, "links not supported")

    monkeypatch.setattr(os, "link", refused)
    assert pools.claim(tmp_path, 0, worker=1)
    assert not pools.claim(tmp_path, 0, worker=0)
    assert (tmp_path / "claims" / "0").read_text() == "1\n"


def test_a_link_sent_again_by_nfs_is_still_the_workers_claim(tmp_path, monkeypatch):
    # NFS may send a link again whose first reply was lost: the second says EEXIST for the
    # name the first made. The claim is this worker's (its own inode), not another's.
    link = os.link

    def retransmitted(src, dst):
        link(src, dst)
        raise FileExistsError(errno.EEXIST, "File exists")

    monkeypatch.setattr(os, "link", retransmitted)
    assert pools.claim(tmp_path, 0, worker=0)
    assert not pools.claim(tmp_path, 0, worker=1)  # another worker's link: not its claim
    assert (tmp_path / "claims" / "0").read_text() == "0\n"


def test_an_event_after_a_torn_line_is_read(tmp_path):
    # A worker killed mid-line leaves part of one; the next writer (its replacement, or the
    # launcher recording how its run ended) starts a line of its own.
    pools.Journal(tmp_path, 0).write("claim", task=3, takeover=0)
    journal = tmp_path / "workers" / "0.jsonl"
    with open(journal, "a") as f:
        f.write('{"event": "end", "ta')
    pools.Journal(tmp_path, 0).write("end", task=3, state="failed")
    assert [e["event"] for e in pools.read_events(journal)] == ["claim", "end"]
    assert pools.read_pool(tmp_path).workers[0].running is None


def test_a_reader_kept_across_polls_says_what_a_fresh_read_says(tmp_path):
    """The launcher's PoolReader parses only new lines at each poll; after every step it must
    say what read_pool (every journal from its start) says: half-written lines, torn ones, two
    workers, a takeover and a start again included."""
    reader = pools.PoolReader(tmp_path)
    journals = {k: tmp_path / "workers" / f"{k}.jsonl" for k in (0, 1)}

    def same() -> None:
        assert reader.read() == pools.read_pool(tmp_path)

    same()  # no journal yet
    pools.Journal(tmp_path, 0).write("start", worker=0, job_id="local_worker_0", host="h", pid=9)
    same()
    pools.Journal(tmp_path, 0).write("claim", task=0, takeover=0)
    with open(journals[0], "a") as f:  # being written as the reader reads
        f.write('{"event": "end", "task": 0, "state": "comp')
    same()
    assert reader.read().workers[0].running == 0
    with open(journals[0], "a") as f:
        f.write('leted", "time": 1.0, "seconds": 0.5}\n')
    same()
    assert reader.read().ended[0]["state"] == "completed"
    pools.Journal(tmp_path, 1).write("claim", task=1, takeover=0)
    with open(journals[1], "a") as f:  # its worker killed mid-line
        f.write('{"event": "end", "ta')
    same()
    pools.Journal(tmp_path, 1).write(
        "end", task=1, state="failed"
    )  # its line, on a line of its own
    pools.Journal(tmp_path, 0).write("claim", task=1, takeover=1)  # a takeover: under way again
    same()
    view = reader.read()
    assert view.claimed_by[1] == 0 and 1 not in view.ended and view.workers[1].running is None
    pools.Journal(tmp_path, 0).write("end", task=1, state="completed", seconds=0.1)
    pools.Journal(tmp_path, 0).write("stop", reason="no task left")
    pools.Journal(tmp_path, 0).write("start", worker=0, job_id="local_worker_0", host="h", pid=10)
    same()
    view = reader.read()
    assert view.ended[1]["state"] == "completed" and view.workers[0].starts == 2
    assert view.durations() == [0.5, 0.1]
