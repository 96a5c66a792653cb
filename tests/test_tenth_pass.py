"""What the tenth adversarial pass broke: a store path starting with `~` (DuckDB read it as the
home directory, and wrote another store's index), lh calibrate's own outputs over a user's
files, and the rest of that pass's findings."""

import os

import pytest

from test_eighth_pass import USER_SWEEP, user_model  # noqa: F401
from test_fifth_pass import lh, store  # noqa: F401


def test_a_store_path_with_a_tilde_is_the_home_directory_never_another_store(tmp_path, store, monkeypatch):
    """`store_root: '~/x'` made a folder `./~/x` for the artifacts, while DuckDB, reading `~`
    as $HOME, wrote their index into `$HOME/x/index.duckdb`: another store's, replaced by
    `lh index rebuild`."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    os.rename(store, home / "x")
    index = (home / "x" / "index.duckdb").read_bytes()
    for given in (["--store", "~/x"],):
        result = lh("query", *given, "select count(*) as n from runs", "--format", "csv")
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[1] == "4"
    assert not (work / "~").exists()
    # a folder literally named `~` in the current directory is never mistaken for $HOME, nor the reverse
    from lambda_hat.store import index as index_module
    from lambda_hat.store.layout import StoreLayout

    literal = work / "~" / "y"
    literal.mkdir(parents=True)
    rel = StoreLayout(__import__("pathlib").Path("~") / "y")
    index_module.write(rel, [])
    assert (literal / "index.duckdb").is_file() and not (home / "y").exists()
    assert (home / "x" / "index.duckdb").read_bytes() == index


def test_an_unknown_users_home_is_bad_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = lh("status", "--store", "~no_such_user_here/x")
    assert result.exit_code == 2 and "no such user's home directory" in result.output, result.output
    assert os.listdir(tmp_path) == []


def test_calibrate_never_replaces_a_users_file_at_the_pilots_name(user_model):  # noqa: F811
    (user_model / "cal.pilots.yaml").write_text("my own notes\n")
    result = lh("calibrate", "cal.yaml", "--store", "st", "--workers", "1", "--logs", "logs")
    assert result.exit_code == 2, result.output
    assert "lh calibrate did not write" in result.stderr, result.stderr
    assert (user_model / "cal.pilots.yaml").read_text() == "my own notes\n"
    assert not (user_model / "logs").exists() and not (user_model / "st").exists()


def test_calibrate_never_replaces_a_users_file_at_the_calibrated_name_unless_named(user_model):  # noqa: F811
    (user_model / "cal.calibrated.yaml").write_text("targets: []\n")
    result = lh("calibrate", "cal.yaml", "--store", "st", "--workers", "1", "--logs", "logs")
    assert result.exit_code == 2 and "lh calibrate did not write" in result.stderr, result.output
    assert (user_model / "cal.calibrated.yaml").read_text() == "targets: []\n"


def test_calibrate_o_is_never_the_pilots_results_file(user_model):  # noqa: F811
    result = lh("calibrate", "cal.yaml", "--store", "st", "--workers", "1", "--logs", "logs",
                "-o", "results/cal-pilots.parquet")
    assert result.exit_code == 2, result.output
    assert "the pilots' results file" in result.stderr, result.stderr
    assert not (user_model / "logs").exists()


@pytest.mark.parametrize("settings,field", [({"partition": "gpu\necho INJECTED"}, "partition"),
                                            ({"account": "a b"}, "account"), ({"qos": "#x"}, "qos"),
                                            ({"address": "a b"}, "address"),
                                            ({"address": "no-such-host.invalid"}, "address"),
                                            ({"address": "fe80::1%$(id)"}, "address"),
                                            ({"address": "fe80::1%x\ntouch PWNED"}, "address")])
def test_slurm_names_and_the_address_are_checked_before_any_work(tmp_path, settings, field):
    """A newline in --partition ended its #SBATCH line and ran the rest as a command on the
    cluster; --address localhost reached Parsl, which took 2 minutes to fail with a traceback."""
    from lambda_hat.errors import BadInput
    from lambda_hat.execute.parsl_config import resolve_slurm_settings

    with pytest.raises(BadInput, match=f"--{field}: {field}: "):
        resolve_slurm_settings(None, settings, cwd=tmp_path)


def test_a_host_name_address_is_resolved_once_to_an_ip(tmp_path):
    from lambda_hat.execute.parsl_config import resolve_slurm_settings

    assert resolve_slurm_settings(None, {"address": "localhost"}, cwd=tmp_path).address == "127.0.0.1"
    assert resolve_slurm_settings(None, {"partition": "gpu,cpu-long"}, cwd=tmp_path).partition == "gpu,cpu-long"


@pytest.fixture
def full_disk(tmp_path, store):
    """The store on a tmpfs of 3 MB, filled to the last block; unmounted afterwards."""
    import shutil
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        shutil.copytree(store, mnt / "store", symlinks=True)
        with open(mnt / "fill", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        yield mnt / "store"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_is_one_line_never_a_traceback_nor_a_corrupt_index(full_disk):
    result = lh("index", "rebuild", "--store", full_disk)
    assert result.exit_code == 1, result.output
    assert "cannot be written (no space left on device)" in result.stderr, result.stderr
    assert "Traceback" not in result.output and "not a usable DuckDB index" not in result.output
    status = lh("status", "--store", full_disk)  # the index was not moved aside: it still answers
    assert status.exit_code == 0 and "runs     4" in status.output, status.output


def test_a_claim_that_cannot_be_written_leaves_nothing_in_the_claims_folder(full_disk):
    import errno

    from lambda_hat.store.claims import Claims

    claims = Claims(full_disk / ".claims")
    (full_disk / ".claims").mkdir(exist_ok=True)
    with pytest.raises(OSError) as err:
        claims.acquire("run_0123456789ab")
    assert err.value.errno == errno.ENOSPC
    assert os.listdir(full_disk / ".claims") == []


def test_promote_refuses_a_linked_trajectories_folder_before_drawing_anything(tmp_path, store):
    gallery, elsewhere = tmp_path / "gal", tmp_path / "elsewhere"
    gallery.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, gallery / "trajectories")
    result = lh("promote", "--store", store, "--outdir", gallery)
    assert result.exit_code == 2, result.output
    assert "trajectories" in result.stderr and "symbolic link" in result.stderr, result.stderr
    assert sorted(os.listdir(gallery)) == ["trajectories"] and os.listdir(elsewhere) == []


def test_status_shows_no_nul_marks_for_a_sparse_error_log(tmp_path, store):
    from lambda_hat.results import _last_line

    log = tmp_path / "x.err"
    with open(log, "wb") as f:
        f.write(b"ValueError: the real error\n")
        f.truncate(4096)  # a preallocated or sparse tail of NULs
    assert _last_line(log) == "ValueError: the real error"
    with open(log, "r+b") as f:
        f.truncate(1 << 20)
    assert _last_line(log) == ""  # no text in the tail read: nothing, never 160 replacement marks


def test_export_names_a_target_whose_arrays_are_damaged(tmp_path, store):
    """lh promote named it (exit 1); lh export wrote its runs with the target's columns, exit 0."""
    target = sorted(p for p in (store / "targets").iterdir() if p.name.startswith("tgt_"))[0]
    with open(target / "arrays.zarr.zip", "r+b") as f:  # one byte flipped, size and mtime kept
        st = os.fstat(f.fileno())
        f.seek(st.st_size // 2)
        b = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    os.utime(target / "arrays.zarr.zip", ns=(st.st_atime_ns, st.st_mtime_ns))
    result = lh("export", "--store", store, "-o", tmp_path / "all.csv")
    assert result.exit_code == 1, result.output
    assert target.name in result.stderr and "damaged" in result.stderr, result.stderr


def test_plan_json_carries_the_same_computation_pairs(tmp_path):
    import json

    sweep = tmp_path / "s.yaml"
    sweep.write_text(json.dumps({"targets": [{"model": "small", "data": "small"}],
                                 "samplers": [{"name": "sgld", "overrides": {"batch_size": 100}},
                                              {"name": "sgld", "overrides": {"batch_size": 500}}]}))
    result = lh("plan", sweep, "--store", tmp_path / "st", "--json")
    assert result.exit_code == 0, result.output
    pairs = json.loads(result.stdout)["same_computations"]
    assert len(pairs) == 1 and "batch_size" in pairs[0]["why"], pairs


# --- what the eleventh pass broke ---------------------------------------------------------------

def test_verify_finds_an_index_row_edited_in_the_duckdb_file(store):
    """lh query and lh status show the index: a row edited there (llc_mean, status) was served
    as the truth and lh verify said 0 problems."""
    import duckdb

    clean = lh("verify", "--store", store)
    assert clean.exit_code == 0, clean.output
    con = duckdb.connect(str(store / "index.duckdb"))
    run_id = con.execute("SELECT min(run_id) FROM runs").fetchone()[0]
    con.execute("UPDATE runs SET llc_mean = 99 WHERE run_id = ?", [run_id])
    con.close()
    result = lh("verify", "--store", store)
    assert result.exit_code == 1, result.output
    assert f"index row {run_id} differs from its manifest" in result.output, result.output
    named = lh("verify", run_id[:8], "--store", store)  # the named artifacts' rows too
    assert named.exit_code == 1 and f"index row {run_id} differs" in named.output, named.output
    rebuilt = lh("index", "rebuild", "--store", store)
    assert rebuilt.exit_code == 0 and lh("verify", "--store", store).exit_code == 0


def test_execute_refuses_an_interpreter_whose_path_a_shell_would_split_or_run(tmp_path, monkeypatch):
    """The workers' command line holds sys.executable unquoted: a space failed every block (127)."""
    import json
    import sys

    from test_store import SWEEP as STORE_SWEEP

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "my env" / "bin" / "python"))
    (tmp_path / "s.yaml").write_text(json.dumps(STORE_SWEEP))
    result = lh("execute", "s.yaml", "--store", tmp_path / "st")
    assert result.exit_code == 2, result.output
    assert "the Python interpreter" in result.stderr and "has a space" in result.stderr, result.stderr
    assert not (tmp_path / "st").exists()


def test_query_says_so_when_a_finished_run_has_no_index_row(store):
    import duckdb

    con = duckdb.connect(str(store / "index.duckdb"))
    run_id = con.execute("SELECT min(run_id) FROM runs").fetchone()[0]
    con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
    con.close()
    result = lh("query", "--store", store, "select count(*) as n from runs", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == "3"
    assert "1 run in the store is not in the index yet" in result.stderr, result.stderr
