"""IDs of valid sweeps, pinned: validation may refuse new inputs, never re-hash old ones.

Recorded on main before the issue-8 validation work (strict ints, bounds, closed-form
`target_params`). If one of these changes, every store holding it is orphaned."""

from pathlib import Path

import pytest
import yaml

from lambda_hat.planner import expand
from lambda_hat.sweep import load_sweep, sweep_from_dict

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXAMPLE_IDS = {
    "dln.yaml": {
        "targets": [
            "tgt_28ac39f26af9",
            "tgt_68f13e36fe71",
            "tgt_927d83b521a7",
            "tgt_a28fbad7cf43"
        ],
        "runs": [
            "run_a7b69553761d",
            "run_368a6f3aa644",
            "run_c201e4dcfcc1",
            "run_c54f8515af69",
            "run_85c1ba3b21c7",
            "run_177402b48222",
            "run_cae6742f8936",
            "run_0c9835f47dd7"
        ]
    },
    "trajectory_dln.yaml": {  # pinned when checkpoints were added (issue 24)
        "targets": ["tgt_0195148b5f0d", "tgt_dd60d461cafa", "tgt_ad74c5d3410b", "tgt_33e5160569a7",
                    "tgt_6aee1f8697c7", "tgt_54b4c3175a2d"],
        "runs": ["run_9da824e623e8", "run_f23275bb5038", "run_cdd3fcf596ef", "run_e2d875057e2b",
                 "run_707485080f02", "run_bf8f184b38ec"],
    },
    "noisy_dln.yaml": {
        "targets": ["tgt_ff08cea7beb6", "tgt_0ad6bcdbd183"],
        "runs": ["run_f88c3fa2d4c5", "run_1928c06d3b27"],
    },
    "normal_crossing.yaml": {
        "targets": ["tgt_507b7ab24214", "tgt_2a05df61d186", "tgt_cb8d39f6d508", "tgt_d51f342ab8d7",
                    "tgt_0454fc61b4f1", "tgt_13e30d6ec18d"],
        "runs": ["run_423e6d72765c", "run_1a521e75511c", "run_4ecbdae95b49", "run_a9f483ce95e9",
                 "run_3634c5167a9e", "run_d3575c6f8b12"],
    },
    "quick.yaml": {
        "targets": [
            "tgt_052e427b5268",
            "tgt_2e5641eb8db8"
        ],
        "runs": [
            "run_d16fc592fe1c",
            "run_7e28c2e2c4eb",
            "run_c2dac062808a",
            "run_fbe7e9f20ac9"
        ]
    },
    "per_sample.yaml": {  # pinned when per-example recording was added (issue 25)
        "targets": ["tgt_5fdf30ea1a23"],
        "runs": ["run_54a353a15c9b", "run_94583cc899bd", "run_58bec08fa0c6", "run_267dd04fb15e"],
    },
}


# Valid sweeps touching every resolution path: presets, target_params, teacher widths, grids, dln.
CORPUS = {
    "lambda_hat_experiments": """\
store_root: "runs"
jax_enable_x64: true
targets:
  - { model: small, data: small, teacher: _null, seed: 42 }
  - { model: base,  data: base,  teacher: _null, seed: 43, overrides: { training: { steps: 10000 } } }
samplers:
  - { name: hmc }
  - { name: sgld, overrides: { step_size: 1e-6, eval_every: 50 }, seed: 12345 }
""",
    "all_samplers_defaults": """\
targets: [{model: small}]
samplers: [{name: sgld}, {name: hmc}, {name: nuts}, {name: mclmc}]
""",
    "float32": """\
jax_enable_x64: false
targets: [{model: small, data: small, teacher: small}]
samplers: [{name: sgld, precond: adam}, {name: mclmc, overrides: {tune: false, L: 2.0}}]
""",
    "target_params_mlp": """\
targets:
  - model: {target_params: 1}
  - model: {target_params: 7, depth: 1}
  - model: {target_params: 1000, in_dim: 3, out_dim: 2, depth: 3}
  - model: {target_params: 123456, in_dim: 17, out_dim: 5, depth: 4, bias: false}
  - model: {target_params: 99999999, in_dim: 2, out_dim: 1, depth: 2}
  - model: {target_params: 50, depth: 1, bias: false}
  - model: {in_dim: 8, depth: 3}
  - model: {target_params: 2000, depth: 1, in_dim: 10, out_dim: 10}
samplers: [{name: hmc}]
""",
    "teacher_depth_differs": """\
targets:
  - {model: small, teacher: base}
  - {model: base, data: small, teacher: small}
  - {model: {depth: 4, target_params: 321}, teacher: {depth: 1, activation: tanh}}
  - {model: {depth: 2, widths: [7, 3]}, teacher: {depth: 3}}
samplers: [{name: sgld, seed: 7}]
""",
    "grids_and_overrides": """\
targets:
  - model: small
    data: small
    overrides: {training: {steps: 100.0, learning_rate: 1e-2}, data: {noise_scale: 0.3}}
    grid: {seed: [-5, 0, 9007199254740991], training.learning_rate: [0.1, 0.2], data.x_dist: [gauss_iso, mixture]}
samplers:
  - {name: sgld, grid: {step_size: [1e-5, 1e-6], seed: [1, 2]}, posterior: {gamma: 1.0}}
  - {name: hmc, grid: {posterior.gamma: [0.0, 10.0], posterior.beta_mode: [fixed]}, overrides: {draws: 8, warmup: 0}}
  - {name: nuts, seed: -3, chains: 1, overrides: {max_num_doublings: 3}}
""",
    "dln": """\
targets:
  - {model: {kind: dln, widths: [5, 3, 5]}, data: {n_data: 1000}, grid: {teacher.rank: [0, 1, 3]}}
  - {model: {kind: dln, widths: [4, 3, 8]}, teacher: {rank: 0}, w_star: trained}
  - {model: {kind: dln, widths: [10, 10]}, teacher: null}
samplers: [{name: mclmc, seed: 3}, {name: hmc, posterior: {beta0: 2.5, gamma: 100}}]
""",
}

CORPUS_IDS = {
    "lambda_hat_experiments": {
        "targets": [
            "tgt_0242f47dfcba",
            "tgt_3869f066f514"
        ],
        "runs": [
            "run_58c91401732e",
            "run_b21f4471cc75",
            "run_0d96d4dabe67",
            "run_4be3426cd758"
        ]
    },
    "all_samplers_defaults": {
        "targets": [
            "tgt_ced0f1aa653f"
        ],
        "runs": [
            "run_f0f4429d39a2",
            "run_49c8d4c4b279",
            "run_22c443c20c25",
            "run_7f1bce4d324b"
        ]
    },
    "float32": {
        "targets": [
            "tgt_4797ea8b4dc7"
        ],
        "runs": [
            "run_12c1e8c2a1c2",
            "run_f560b62d6b44"
        ]
    },
    "target_params_mlp": {
        "targets": [
            "tgt_7473c72d63f3",
            "tgt_289a844d974a",
            "tgt_a490c60aed9d",
            "tgt_9968ce3ba33d",
            "tgt_bde56a9f8057",
            "tgt_38cc10b67341",
            "tgt_ba23f3a074c9",
            "tgt_c470eedcb27a"
        ],
        "runs": [
            "run_91963250ed60",
            "run_75a3a7aa4d6a",
            "run_31fc2d985b1a",
            "run_862afb04c012",
            "run_4aa49e299e2b",
            "run_289eb9febb86",
            "run_4b896fee2a2a",
            "run_45e62225e046"
        ]
    },
    "teacher_depth_differs": {
        "targets": [
            "tgt_74b01ac3b2a9",
            "tgt_304da238f40a",
            "tgt_e82d918ccd2e",
            "tgt_0e39d4b40a7b"
        ],
        "runs": [
            "run_49c6bf934f7f",
            "run_120c2d6a7ed5",
            "run_7debda08c1e6",
            "run_7b831464984a"
        ]
    },
    "grids_and_overrides": {
        "targets": [
            "tgt_d04da9dec0f3",
            "tgt_6fbc239291ff",
            "tgt_30c34bf636c4",
            "tgt_3c088fe87f4c",
            "tgt_c8a04b929598",
            "tgt_ad961bb584a3",
            "tgt_15ffe8ec6736",
            "tgt_e17c9ce49363",
            "tgt_55759efae6ce",
            "tgt_0c85f07b2e7b",
            "tgt_90273e60aa75",
            "tgt_9e70357ea47a"
        ],
        "runs": [
            "run_a7ee009346ea",
            "run_ea1d2ca91eb3",
            "run_9e9c3669fab3",
            "run_cda62deb2553",
            "run_450f1968043f",
            "run_da4f39883465",
            "run_c90b08c2d1a0",
            "run_12a103080122",
            "run_18ef64f9da73",
            "run_da731804aadd",
            "run_e11c143546b8",
            "run_782e7d1bbd0a",
            "run_e0c0f3028f86",
            "run_c050105ef728",
            "run_46ebabcf341c",
            "run_ee023419c76a",
            "run_867cb1c0ad9f",
            "run_77971ca5d9e9",
            "run_e8f90ac07c7e",
            "run_87dbfbd79706",
            "run_c3d6df63d81b",
            "run_0039e3313101",
            "run_969812ece727",
            "run_24cda29ba1be",
            "run_1f9217a886a2",
            "run_e300e2ab2acd",
            "run_6b98ef377d4e",
            "run_be8b2e74988c",
            "run_a8dc398059cd",
            "run_335d7ea2fdb1",
            "run_bb9d94bedd6a",
            "run_588d52c7800e",
            "run_b0b9dd136695",
            "run_8ce37cc1bd51",
            "run_bd9a15fe7fa9",
            "run_17c4db7a4132",
            "run_5bd0a46e0d8a",
            "run_8e1a6286fc61",
            "run_80ce0cacd462",
            "run_2d1029e111ea",
            "run_726af9b676e2",
            "run_a7b52c1c5556",
            "run_0eb0e80aa786",
            "run_02b2f6a6b519",
            "run_f287e91dda2c",
            "run_b64bd70c6d1f",
            "run_26d5b96ba54a",
            "run_426b0d0379bb",
            "run_9ccbf0e53d09",
            "run_9ebdd616974e",
            "run_d58e226cf500",
            "run_539a33014716",
            "run_862e4afc0e51",
            "run_8fd79fd6d825",
            "run_f1e16e5ae317",
            "run_0d2eaa7a1fae",
            "run_22e8433a1b27",
            "run_c8868e8764b9",
            "run_6b4569e3bb4f",
            "run_47a3972d3fab",
            "run_53a5dc8037e1",
            "run_be43e9ab8a7f",
            "run_7e3dd93f7559",
            "run_26a94005a1e2",
            "run_8fc7b8504e35",
            "run_6d94611f8e74",
            "run_dc908ff14662",
            "run_eafd0ab0501e",
            "run_2cef03fcf51b",
            "run_ee77a275b868",
            "run_7c07c737994e",
            "run_4f1aef3316d5",
            "run_b00dbca1e29f",
            "run_e6b4377029c6",
            "run_2a2dc258296c",
            "run_f3f677f96125",
            "run_5e187865f94a",
            "run_c0a76afa286a",
            "run_145ca38a6903",
            "run_595b379ce1d6",
            "run_abd535478621",
            "run_b6dc6d12a663",
            "run_a2133dd25f64",
            "run_8c297e8e4771"
        ]
    },
    "dln": {
        "targets": [
            "tgt_36a1d2f87ca3",
            "tgt_8e1a085c2e52",
            "tgt_1dd11bb852ec",
            "tgt_bfce777ca57a",
            "tgt_9e8b1995d665"
        ],
        "runs": [
            "run_a152ed5d3c87",
            "run_2903d967b1f3",
            "run_fda04ccabbaf",
            "run_211669204b2e",
            "run_7e33059bb69f",
            "run_8c292989e32f",
            "run_013df0e13db6",
            "run_ef00122590c0",
            "run_00d690db8ff2",
            "run_16ca3dc1b875"
        ]
    }
}


def _ids(expanded) -> dict:
    return {"targets": [t.target_id for t in expanded.targets], "runs": [r.run_id for r in expanded.runs]}


@pytest.mark.parametrize("name", sorted(EXAMPLE_IDS))
def test_example_ids_unchanged(name):
    # quick.yaml's budgets changed after these were recorded (issue 9): its 0.1 text is kept.
    path = Path(__file__).parent / "data" / "quick-0.1.yaml" if name == "quick.yaml" else EXAMPLES / name
    assert _ids(expand(load_sweep(path))) == EXAMPLE_IDS[name]


def test_every_example_is_pinned():
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(EXAMPLE_IDS)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_ids_unchanged(name, write_yaml):
    assert _ids(expand(load_sweep(write_yaml(CORPUS[name])))) == CORPUS_IDS[name]
    assert _ids(expand(sweep_from_dict(yaml.safe_load(CORPUS[name])))) == CORPUS_IDS[name]
