"""Issue 8, case by case: every malformed sweep found by hand is refused up front with one line
naming the file, the entry and the field; `lh plan` exits 2 and writes nothing; nothing hangs."""

import os
import time

import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app
from lambda_hat.planner import expand
from lambda_hat.sweep import MAX_SWEEP_BYTES, SweepError, load_sweep, sweep_from_dict

T = "targets: [{model: small, data: small}]\n"
S = "samplers: [{name: hmc}]\n"
# Nine levels of nine aliases: 1.1 KB that expand to 9^9 values (the bomb hung in
# the grid-point labels, which print the values).
ALIAS_BOMB = "targets:\n  - model: small\n    grid:\n      seed:\n        - &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"        - &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
) + S

# (name, sweep text or bytes, fragment the one-line message must contain)
TRACEBACKS = [
    ("target seed above 2^53", "targets: [{model: small, seed: 9007199254740993}]\n" + S,
     "targets[0]: seed: Input should be less than or equal to 9007199254740991"),
    ("sampler seed above 2^53", T + "samplers: [{name: hmc, seed: 9007199254740993}]\n",
     "samplers[0] (hmc): seed: Input should be less than or equal to 9007199254740991"),
    ("training steps above 2^53", "targets: [{model: small, overrides: {training: {steps: 9007199254740993}}}]\n" + S,
     "targets[0]: training.steps: Input should be less than or equal to 9007199254740991"),
    ("sgld steps above 2^53", T + "samplers: [{name: sgld, steps: 9007199254740993}]\n",
     "samplers[0] (sgld): steps: Input should be less than or equal to 9007199254740991"),
    ("negative seed below -2^53", "targets: [{model: small, seed: -9007199254740993}]\n" + S,
     "targets[0]: seed: Input should be greater than or equal to -9007199254740991"),
    ("dotted grid key into a list",
     "targets: [{model: small, overrides: {model: {widths: [4, 4]}}, grid: {model.widths.x: [1]}}]\n" + S,
     "targets[0] grid{model.widths.x=1}: grid.model.widths.x: widths is a list, not a mapping"),
    ("overrides a list, with a dotted grid key", "targets: [{model: small, overrides: [1], grid: {training.steps: [10]}}]\n" + S,
     "targets[0]: overrides: must be a mapping of section -> fields, got a list"),
    ("sampler posterior a string, with a posterior grid",
     T + "samplers: [{name: hmc, posterior: abc, grid: {posterior.gamma: [1.0]}}]\n",
     "samplers[0] (hmc): posterior: must be a mapping of posterior fields, got a string"),
    ("integer grid key on a target", "targets: [{model: small, grid: {1: [2]}}]\n" + S,
     "targets[0]: grid.1: keys must be strings"),
    ("integer grid key on a sampler", T + "samplers: [{name: hmc, grid: {1: [2]}}]\n",
     "samplers[0]: grid.1: keys must be strings"),
    ("a Latin-1 byte", b"targets: [{model: small, seed: 1}] # caf\xe9\n" + S.encode(),
     "line 1, column 41: not UTF-8 text (byte 0xe9)"),
    ("a UTF-16 byte-order mark", "\ufeff".encode("utf-16-le") + (T + S).encode("utf-16-le"),
     "is UTF-16 or UTF-32 text (it starts with a byte-order mark)"),
]
ACCEPTED_SILENTLY = [
    ("duplicate top-level key", T + T + S, "targets: duplicate key (first on line 1)"),
    ("duplicate key in an entry", "targets: [{model: small, seed: 1, seed: 2}]\n" + S,
     "targets[0]: seed: duplicate key (first on line 1)"),
    ("duplicate key in a block entry", T + "samplers:\n  - name: hmc\n    chains: 2\n    chains: 3\n",
     "samplers[0]: chains: duplicate key (first on line 4)"),
    ("target overrides: false", "targets: [{model: small, overrides: false}]\n" + S,
     "targets[0]: overrides: must be a mapping of section -> fields, got a boolean"),
    ("sampler overrides: false", T + "samplers: [{name: hmc, overrides: false}]\n",
     "samplers[0] (hmc): overrides: must be a mapping of sampler fields, got a boolean"),
    ('posterior: ""', T + "samplers: [{name: hmc, posterior: ''}]\n",
     "samplers[0] (hmc): posterior: must be a mapping of posterior fields, got a string"),
    ("chains: true", T + "samplers: [{name: hmc, chains: true}]\n", "samplers[0] (hmc): chains: Input should be a number, not true"),
    ("target seed: true", "targets: [{model: small, seed: true}]\n" + S, "targets[0]: seed: Input should be a number, not true"),
    ("sampler seed: false", T + "samplers: [{name: hmc, seed: false}]\n", "samplers[0] (hmc): seed: Input should be a number, not false"),
    ("step_size: true", T + "samplers: [{name: sgld, step_size: true}]\n", "samplers[0] (sgld): step_size: Input should be a number"),
    ("bias: 1", "targets: [{model: {bias: 1}}]\n" + S, "targets[0]: model.bias: Input should be a valid boolean"),
    ("a training preset (there are none)", "targets: [{model: small, training: fast}]\n" + S,
     "targets[0]: training: must be a mapping (there are no presets), got a string"),
]
FAILING_AT_RUN_TIME = [
    ("n_data: 1e12", "targets: [{model: small, data: {n_data: 1000000000000}}]\n" + S,
     "targets[0]: data.n_data: building this target needs at least 167.3 TiB of memory"),
    ("n_data: 1.0e+12 as a float", "targets: [{model: small, data: {n_data: 1.0e+12}}]\n" + S,
     "targets[0]: data.n_data: building this target needs at least"),
    ("traces of a run beyond any node", T + "samplers: [{name: hmc, chains: 1000, draws: 10000000}]\n",
     "samplers[0] (hmc): draws: a run on targets[0] needs at least 894.1 GiB of memory (traces 894.1 GiB"),
    ("chain states beyond any node", "targets: [{model: {target_params: 100000000}}]\nsamplers: [{name: nuts, chains: 10000}]\n",
     "samplers[0] (nuts): chains: a run on targets[0] needs at least"),
    ("mixture_k beyond any node", "targets: [{model: small, data: {x_dist: mixture, mixture_k: 100000000000}}]\n" + S,
     "targets[0]: data.mixture_k: building this target needs at least"),
    ("MCLMC on a one-parameter target", "targets: [{model: {kind: dln, widths: [1, 1]}}]\nsamplers: [{name: hmc}, {name: mclmc}]\n",
     "samplers[1] (mclmc): name: mclmc needs targets of at least 2 parameters, but targets[0] has 1 (model dln [1, 1])"),
    ("MCLMC on a one-parameter target in a grid",
     "targets: [{model: {kind: dln, widths: [2, 2]}, grid: {model.widths: [[2, 2], [1, 1]]}}]\nsamplers: [{name: mclmc}]\n",
     "samplers[0] (mclmc): name: mclmc needs targets of at least 2 parameters, but targets[0] grid{model.widths=[1, 1]} has 1"),
]
HANGS = [
    ("a grid of 10^7 runs",
     "targets: [{model: small, grid: {seed: [" + ", ".join(map(str, range(10_000))) + "]}}]\n"
     "samplers: [{name: hmc, grid: {seed: [" + ", ".join(map(str, range(1000))) + "]}}]\n",
     "targets[0]: grid: the sweep expands to 10,000,000 runs (10,000 targets x 1,000 sampler settings), "
     "more than the limit of 1,000,000 (max_runs)"),
    ("a 1.1 KB YAML alias bomb", ALIAS_BOMB, "targets[0]: grid.seed[6]: YAML aliases expand this to more than 1,000,000 values"),
    ("a recursive alias", "targets: &t [{model: small, grid: {seed: *t}}]\n" + S, "an alias refers to a node that contains it"),
    ("nesting past the depth limit", "targets: [{model: small, grid: {seed: " + "[" * 200 + "]" * 200 + "}}]\n" + S,
     "nested more than 64 levels deep"),
    ("a file over 1 MiB", T + S + "#" * MAX_SWEEP_BYTES + "\n", f"a sweep file may have at most {MAX_SWEEP_BYTES:,}"),
]
ODD_YAML = [
    ("a date", "targets: [{model: small, seed: 2024-02-30}]\n" + S, "targets[0]: seed: YAML tag !!timestamp is not allowed"),
    ("binary", T + "samplers: [{name: !!binary aG1j}]\n", "samplers[0]: name: YAML tag !!binary is not allowed"),
    ("a custom tag", T + "samplers: [{name: !python/name:os.system hmc}]\n", "samplers[0]: name: YAML tag"),
    ("a null key", "targets: [{model: small, ~: 1}]\n" + S, "targets[0]: ~: keys must be strings"),
    ("two documents", T + S + "---\n" + T + S, "malformed YAML: expected a single document"),
    ("a huge integer literal", "targets: [{model: small, seed: " + "9" * 5000 + "}]\n" + S,
     "targets[0]: seed: integer of 5,000 characters"),
    ("an unknown sampler that is a list", T + "samplers: [{name: [hmc]}]\n", "samplers[0] (['hmc']): name: unknown sampler ['hmc']"),
    ("a grid value that is not a list", T + "samplers: [{name: hmc, grid: {seed: 3}}]\n",
     "samplers[0] (hmc): grid.seed: must be a non-empty list of values, got an integer"),
    ("an empty grid key part", "targets: [{model: small, grid: {training.: [1]}}]\n" + S,
     "targets[0]: grid.training.: does not name a field of this entry"),
    # An explicit key (`? key`): YAML caps implicit ones at 1,024 characters.
    ("a 100 KB unknown key", "targets:\n  - model:\n      ? " + "k" * 100_000 + "\n      : 1\n" + S,
     "targets[0]: model.kkkkk"),
    ("a 100 KB model kind", "targets: [{model: {kind: " + "k" * 100_000 + "}}]\n" + S, "targets[0]: model: Input tag"),
    ("float64 with x64 off, named by entry", "jax_enable_x64: false\n" + T + "samplers: [{name: sgld}, {name: hmc, dtype: float64}]\n",
     "samplers[1] (hmc): dtype: float64 requested but jax_enable_x64 is false"),
]
CASES = TRACEBACKS + ACCEPTED_SILENTLY + FAILING_AT_RUN_TIME + HANGS + ODD_YAML


def _write(tmp_path, content) -> str:
    path = tmp_path / "sweep.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


def _assert_one_line(err: SweepError, path: str, fragment: str) -> None:
    msg = str(err)
    assert "\n" not in msg and len(msg) < 600, msg
    assert msg.startswith(path + ": "), msg
    assert fragment in msg, msg


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name,content,fragment", CASES, ids=[c[0] for c in CASES])
def test_refused_in_process(tmp_path, name, content, fragment):
    path = _write(tmp_path, content)
    start = time.perf_counter()
    with pytest.raises(SweepError) as info:
        expand(load_sweep(path))
    assert time.perf_counter() - start < 5, "refusing must be immediate"
    _assert_one_line(info.value, path, fragment)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name,content,fragment", CASES, ids=[c[0] for c in CASES])
def test_lh_plan_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, name, content, fragment):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, content)
    result = CliRunner().invoke(app, ["plan", "sweep.yaml", "--store", "store"])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "sweep.yaml: " in lines[0] and fragment in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]


@pytest.mark.timeout(10)
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "sweep.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SweepError) as info:
        load_sweep(fifo)
    _assert_one_line(info.value, str(fifo), "is a FIFO, not a sweep file")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("path,fragment", [("/dev/zero", "is a device, not a sweep file"), ("/", "is a directory")])
def test_devices_and_directories_are_refused(path, fragment):
    with pytest.raises(SweepError) as info:
        load_sweep(path)
    _assert_one_line(info.value, path, fragment)


def test_max_runs_is_a_keyword_and_counts_before_building(tmp_path):
    path = _write(tmp_path, "targets: [{model: small, grid: {seed: [1, 2, 3]}}]\nsamplers: [{name: hmc}, {name: sgld}]\n")
    assert len(expand(load_sweep(path, max_runs=6)).runs) == 6  # exactly at the limit: fine
    with pytest.raises(SweepError, match=r"targets\[0\]: grid: the sweep expands to 6 runs .* limit of 5 \(max_runs\)"):
        load_sweep(path, max_runs=5)
    # The count is the grids' product, taken before any point is built: 10^30 runs are refused
    # as fast as 10.
    huge = "targets: [{model: small, grid: {" + ", ".join(f"k{i}: [{', '.join(map(str, range(10)))}]" for i in range(30)) + "}}]\n"
    path = _write(tmp_path, huge + S)
    start = time.perf_counter()
    with pytest.raises(SweepError, match=r"expands to about 10\^30 runs"):
        load_sweep(path)
    assert time.perf_counter() - start < 1
    sweep = sweep_from_dict({"targets": [{"model": "small", "grid": {"seed": [1, 2]}}], "samplers": [{"name": "hmc"}]})
    with pytest.raises(SweepError, match="2 runs, more than the limit of 1"):
        expand(sweep, max_runs=1)


def test_many_target_params_targets_plan_fast(tmp_path):
    # Brute force took ~5 ms a target here (13 ms on the reporter's machine): 1,000 took 5-13 s.
    seeds = ", ".join(map(str, range(1000)))
    path = _write(tmp_path, f"targets: [{{model: {{target_params: 1000}}, data: small, grid: {{seed: [{seeds}]}}}}]\n" + S)
    start = time.perf_counter()
    expanded = expand(load_sweep(path))
    assert time.perf_counter() - start < 3
    assert len(expanded.targets) == 1000 and expanded.targets[0].spec.model.widths == [28, 28]


# Values at the edges that stay valid: refusing them would break sweeps that work today.
VALID = [
    "targets: [{model: small, seed: 9007199254740991}, {model: small, seed: -9007199254740991}]\n" + S,
    "targets: [{model: small, overrides: {training: {steps: 100.0}}}]\nsamplers: [{name: sgld, steps: 1.0e+4, warmup: 10}]\n",
    "targets: [{model: small, overrides: }]\nsamplers: [{name: hmc, posterior: , overrides: }]\n",
    "targets: [{model: small, overrides: null, grid: {training.steps: [10]}}]\n"
    "samplers: [{name: hmc, posterior: null, grid: {posterior.gamma: [2.0]}}]\n",
    "targets: [&t {model: small, seed: 1}, {<<: *t, seed: 2}]\n" + S,  # a merge key, then an override: no duplicate
    "\ufefftargets: [{model: small}]\n" + S,
    "targets: [{model: base, data: base}]\nsamplers: [{name: nuts, chains: 16, draws: 100000}]\n",
    "targets: [{model: {kind: dln, widths: [1, 1, 1]}}]\nsamplers: [{name: mclmc}]\n",
]


@pytest.mark.parametrize("text", VALID)
def test_edge_values_stay_valid(tmp_path, text):
    assert expand(load_sweep(_write(tmp_path, text))).runs
