"""Nothing damaged is ever counted: what a job reads is checked first. A damaged target is
quarantined by the run that finds it (so the next execute rebuilds it); a run's work dir whose
checkpoint is another run's, damaged, or counts draws its traces lack is discarded, never
resumed from. Real stores, real Zarr files, real worker entry points and CLI processes."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from lambda_hat.errors import TargetDamaged
from lambda_hat.execute.apps import run_sampler_job
from lambda_hat.store.worker import SegmentStore
from lambda_hat.science.pipeline import Checkpoint
from lambda_hat.store.layout import ARRAYS_ZIP
from lambda_hat.store.store import Store
from test_store import fill_store


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    ex, _ = fill_store(root)
    st = Store(root)
    st.reconcile()
    return st, ex


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


@pytest.mark.parametrize("damage", [_flip_a_byte, _truncate])
def test_a_damaged_target_is_quarantined_by_the_run_that_reads_it(store, tmp_path, damage):
    st, ex = store
    run = ex.runs[1]
    tid = run.spec.target_id
    damage(st.layout.target_dir(tid) / ARRAYS_ZIP)
    st.layout.run_dir(run.run_id).rename(tmp_path / "moved")  # so the run is still to do
    # The planner sees its files changed since they were indexed, checks them and leaves it out
    # (test_damaged_arrays.py); a job that was planned before the damage still reads it:
    assert tid not in st.snapshot([tid], []).target_ids
    with pytest.raises(TargetDamaged) as caught:
        run_sampler_job(run.spec.model_dump(mode="json"), str(st.root), str(tmp_path / "l.log"),
                        str(tmp_path / "l.err"))
    message = str(caught.value)
    assert message == (f"target {tid} was damaged (checksum mismatch {ARRAYS_ZIP}): quarantined; "
                       "it is rebuilt on the next execute"), message
    assert caught.value.target_id == tid and "\n" not in message
    assert not st.layout.target_dir(tid).exists()
    moved = [p for p in st.layout.quarantine_dir.iterdir() if p.name.startswith(tid)]
    assert len(moved) == 1 and "checksum mismatch" in (moved[0] / ".quarantine-reason").read_text()
    # The next plan sees it missing (it and its runs are redone), with or without a reconcile first.
    assert tid not in st.snapshot([tid], []).target_ids
    st.reconcile()
    assert tid not in st.snapshot([tid], []).target_ids
    # A second run on it, started before the quarantine, says so in one line too.
    with pytest.raises(TargetDamaged, match=rf"target {tid} is missing .*rebuilt on the next execute"):
        run_sampler_job(run.spec.model_dump(mode="json"), str(st.root), str(tmp_path / "m.log"),
                        str(tmp_path / "m.err"))


def test_an_intact_target_is_never_quarantined(store, tmp_path):
    st, ex = store
    run = ex.runs[1]
    st.layout.run_dir(run.run_id).rename(tmp_path / "moved")
    with pytest.raises(KeyError) as caught:  # the fake target has no Y to sample with: it fails after the read
        run_sampler_job(run.spec.model_dump(mode="json"), str(st.root), str(tmp_path / "l.log"), str(tmp_path / "l.err"))
    assert not isinstance(caught.value, TargetDamaged)
    assert st.layout.target_dir(run.spec.target_id).is_dir()
    assert not st.layout.quarantine_dir.exists() or not list(st.layout.quarantine_dir.iterdir())


# ---------------------------------------------------------------- checkpoints (SegmentStore)

CHAINS, SEG = 2, 5


def _segments(work_dir: Path, n_segments: int, seed: int = 0) -> list:
    """Checkpoints and traces of `n_segments` segments, persisted to `work_dir` as a worker does."""
    rng = np.random.default_rng(seed)
    seg = SegmentStore(work_dir, interval_s=0.0)
    out = []
    for i in range(1, n_segments + 1):
        ckpt = Checkpoint(i * SEG, [rng.normal(size=(CHAINS, 3)), rng.integers(0, 2**31, size=(CHAINS, 2))],
                          0.25, 1.0, 0.1 * i)
        traces = {"llc": rng.normal(size=(CHAINS, SEG)), "loss": rng.normal(size=(CHAINS, SEG)).astype(np.float32)}
        seg.on_segment(ckpt, traces)
        out.append((ckpt, traces))
    return out


def _resume(work_dir: Path, capsys):
    loaded = SegmentStore(work_dir, interval_s=0.0).load()
    return loaded, capsys.readouterr().out


def test_a_checkpoint_resumes_with_exactly_its_draws(tmp_path, capsys):
    work = tmp_path / ".work" / "run_aaaaaaaaaaaa"
    segments = _segments(work, 3)
    (ckpt, traces), log = _resume(work, capsys)
    assert log == "" and ckpt.draws_done == 3 * SEG
    for name in ("llc", "loss"):
        np.testing.assert_array_equal(traces[name], np.concatenate([t[name] for _, t in segments], axis=1))
    for a, b in zip(ckpt.leaves, segments[-1][0].leaves):
        np.testing.assert_array_equal(a, b)
    # Resumed, then persisted further: the new checkpoint checks out too.
    seg = SegmentStore(work, interval_s=0.0)
    ckpt, _ = seg.load()
    seg.on_segment(Checkpoint(ckpt.draws_done + SEG, ckpt.leaves, 0.25, 1.0, 0.5),
                   {"llc": np.ones((CHAINS, SEG)), "loss": np.ones((CHAINS, SEG), np.float32)})
    (again, traces), _ = _resume(work, capsys)
    assert again.draws_done == 4 * SEG and traces["llc"].shape == (CHAINS, 4 * SEG)


def test_another_runs_checkpoint_is_discarded(tmp_path, capsys):
    other = tmp_path / ".work" / "run_bbbbbbbbbbbb"
    _segments(other, 3)
    mine = tmp_path / ".work" / "run_aaaaaaaaaaaa"
    shutil.copytree(other, mine)  # another run's work dir copied in
    loaded, log = _resume(mine, capsys)
    assert loaded is None and not mine.exists()
    assert log.count("\n") == 1 and "run_bbbbbbbbbbbb" in log and "starting over" in log, log
    # and its checkpoint file alone, next to traces of this run
    _segments(mine, 3, seed=1)
    shutil.copy(other / SegmentStore.CHECKPOINT, mine / SegmentStore.CHECKPOINT)
    assert _resume(mine, capsys)[0] is None and not mine.exists()


def test_traces_shorter_than_their_checkpoint_are_discarded(tmp_path, capsys):
    import zarr

    work = tmp_path / ".work" / "run_aaaaaaaaaaaa"
    _segments(work, 3)
    root = zarr.open_group(str(work / SegmentStore.TRACES), mode="a", zarr_format=3)
    root["llc"].resize((CHAINS, 2 * SEG))  # shortened below the checkpoint's 15 draws
    loaded, log = _resume(work, capsys)
    assert loaded is None and not work.exists()
    assert "trace llc holds 10 draws, the checkpoint counts 15" in log and log.count("\n") == 1, log


@pytest.mark.parametrize("what", ["trace", "leaf", "draws_done", "no checksum"])
def test_edited_checkpoints_and_traces_are_discarded(tmp_path, capsys, what):
    import zarr

    work = tmp_path / ".work" / "run_aaaaaaaaaaaa"
    _segments(work, 3)
    path = work / SegmentStore.CHECKPOINT
    if what == "trace":
        root = zarr.open_group(str(work / SegmentStore.TRACES), mode="a", zarr_format=3)
        root["loss"][1, 7] = 123.0
    else:
        with np.load(path) as f:
            fields = dict(f)
        if what == "leaf":
            fields["leaf_0"] = fields["leaf_0"] + 1e-9
        elif what == "draws_done":
            fields["draws_done"] = np.asarray(2 * SEG)  # as if the checkpoint counted fewer draws
        else:  # an older lambda-hat's checkpoint: nothing to check it against
            del fields["run_id"], fields["digest"]
        with open(path, "wb") as f:
            np.savez(f, **fields)
    loaded, log = _resume(work, capsys)
    assert loaded is None and not work.exists() and log.count("\n") == 1 and "starting over" in log, log


def test_a_damaged_checkpoint_file_is_discarded(tmp_path, capsys):
    work = tmp_path / ".work" / "run_aaaaaaaaaaaa"
    _segments(work, 2)
    _truncate(work / SegmentStore.CHECKPOINT)
    loaded, log = _resume(work, capsys)
    assert loaded is None and not work.exists() and "starting over" in log


@pytest.mark.parametrize("planted", ["traces.zarr", "traces.zarr/loss", "checkpoint.npz", "progress.json"])
def test_a_link_planted_in_a_work_dir_is_never_written_through(tmp_path, capsys, planted):
    """A symbolic link planted inside a run's work directory (as its traces group, one trace's
    array, or its checkpoint) pointing out of the store: the work dir is discarded when the run
    starts, and sampling writes nothing where the link pointed (it wrote Zarr chunks there)."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("keep")
    work = tmp_path / ".work" / "run_aaaaaaaaaaaa"
    (work / planted).parent.mkdir(parents=True)
    os.symlink(victim, work / planted)
    seg = SegmentStore(work, interval_s=0.0, draws=3 * SEG)
    log = capsys.readouterr().out
    assert f"{planted} is a symbolic link" in log and "starting over" in log, log
    assert seg.load() is None
    rng = np.random.default_rng(0)
    for i in range(1, 4):
        seg.on_segment(Checkpoint(i * SEG, [rng.normal(size=(CHAINS, 3))], 0.25, 1.0, 0.1 * i),
                       {"loss": rng.normal(size=(CHAINS, SEG)).astype(np.float32)})
    assert sorted(p.name for p in victim.iterdir()) == ["thesis.tex"]
    assert not (work / planted).is_symlink() and SegmentStore(work, interval_s=0.0).load()[0].draws_done == 3 * SEG


def test_a_link_planted_while_the_run_samples_is_never_written_through(tmp_path, capsys):
    """The run's work dir checked once at its start left a window: a link planted after the
    first flush (here the traces group replaced by a link out of the store) was written through
    by the next. Every flush checks again: the work dir is discarded, nothing lands outside,
    and the run goes on without a checkpoint (a resume starts over)."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("keep")
    work = tmp_path / ".work" / "run_aaaaaaaaaaaa"
    seg = SegmentStore(work, interval_s=0.0, draws=4 * SEG)
    rng = np.random.default_rng(0)

    def segment(i):
        seg.on_segment(Checkpoint(i * SEG, [rng.normal(size=(CHAINS, 3))], 0.25, 1.0, 0.1 * i),
                       {"loss": rng.normal(size=(CHAINS, SEG)).astype(np.float32)})

    segment(1)
    assert (work / SegmentStore.CHECKPOINT).is_file()
    shutil.rmtree(work / SegmentStore.TRACES)
    os.symlink(victim, work / SegmentStore.TRACES)
    segment(2)
    segment(3)
    assert sorted(p.name for p in victim.iterdir()) == ["thesis.tex"]
    assert "traces.zarr is a symbolic link" in capsys.readouterr().out
    assert SegmentStore(work, interval_s=0.0).load() is None


def test_traces_without_a_checkpoint_are_not_appended_to(tmp_path, capsys):
    """A work dir holding a traces group but no checkpoint (planted, or another run's copied in)
    counts no draws: it is removed, never extended, so no stale draw reaches a run's traces."""
    other = tmp_path / ".work" / "run_bbbbbbbbbbbb"
    _segments(other, 3, seed=1)
    mine = tmp_path / ".work" / "run_aaaaaaaaaaaa"
    shutil.copytree(other / SegmentStore.TRACES, mine / SegmentStore.TRACES)
    seg = SegmentStore(mine, interval_s=0.0)
    assert seg.load() is None and not mine.exists()
    segments = _segments(mine, 2)
    (ckpt, traces), _ = _resume(mine, capsys)
    np.testing.assert_array_equal(traces["llc"], np.concatenate([t["llc"] for _, t in segments], axis=1))


def test_checkpoint_names_its_run(tmp_path):
    work = tmp_path / ".work" / "run_aaaaaaaaaaaa"
    _segments(work, 1)
    with np.load(work / SegmentStore.CHECKPOINT) as f:
        assert str(f["run_id"]) == "run_aaaaaaaaaaaa"
        assert set(json.loads(str(f["traces_sha256"]))) == {"llc", "loss"}


@pytest.mark.slow  # two `lh execute` (~20-40 s each on 2 busy cores)
def test_a_damaged_target_is_rebuilt_within_the_execute_that_finds_it(tmp_path):
    """Through the real CLI: a flipped byte changes the target's files stamp, so the execute's
    reconcile checks it whole, quarantines it and the same execute rebuilds it (bit for bit: its
    stored run stays valid) before the new run samples it; exit 0, the store verifies clean. (A
    target damaged after the reconcile is found by the run that reads it:
    test_store_safety.test_worker_refuses_a_damaged_target.)"""
    from lhproc import lh, sgld_sweep

    (tmp_path / "s1.yaml").write_text(sgld_sweep([1]))
    lh(tmp_path, "execute", "s1.yaml", "--workers", "1")
    [target] = (tmp_path / "store" / "targets").iterdir()
    _flip_a_byte(target / ARRAYS_ZIP)
    (tmp_path / "s2.yaml").write_text(sgld_sweep([1, 2]))
    found = lh(tmp_path, "execute", "s2.yaml", "--workers", "1")  # exit 0
    out = " ".join(found.stdout.split())
    assert f"quarantined {target.name} (checksum mismatch {ARRAYS_ZIP}); it will be redone" in out, out
    assert "1 target to build, 1 run to sample, 1 cached" in out, out
    assert "2 jobs completed, 0 failed" in out, out  # the target rebuilt, the new run
    assert "FAILED" not in out, out
    assert (target / "manifest.json").is_file()
    quarantined = [q for q in (tmp_path / "store" / ".quarantine").iterdir() if q.name.startswith(target.name)]
    assert len(quarantined) == 1, quarantined  # rebuilt once, not in a loop
    plan = json.loads(lh(tmp_path, "plan", "s2.yaml", "--json").stdout)
    assert plan["targets_to_build"] == [] and plan["runs_to_sample"] == [], plan
    assert lh(tmp_path, "verify", "--store", "store", check=False).returncode == 0


@pytest.mark.parametrize("planted", ["fifo", "symlink"])
def test_the_driver_never_opens_a_planted_progress_file(tmp_path, planted):
    """The driver reads progress.json every second while a run samples: a FIFO planted there
    blocked it for good in open(2) (lh execute hung), a link was read out of the store."""
    import threading

    from lambda_hat.store.worker import read_progress

    work = tmp_path / ".work" / "run_aaaaaaaaaaaa"
    work.mkdir(parents=True)
    outside = tmp_path / "outside.json"
    outside.write_text('{"draws_done": 5, "draws": 10}')
    if planted == "fifo":
        os.mkfifo(work / SegmentStore.PROGRESS)
    else:
        os.symlink(outside, work / SegmentStore.PROGRESS)
    got = []
    reader = threading.Thread(target=lambda: got.append(read_progress(work)), daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive() and got == [None]
