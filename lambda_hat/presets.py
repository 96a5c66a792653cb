"""Named presets, as data. A preset is a partial spec that the sweep loader fills in first."""

MODEL_PRESETS: dict[str, dict] = {
    # ~50 parameters: 4 -> 4 -> 4 -> 1 (45 parameters), Lambda-Hat's `small`.
    "small": {"in_dim": 4, "out_dim": 1, "depth": 2, "activation": "relu", "bias": True, "init": "he", "target_params": 50},
    # ~10k parameters: 32 -> 62 -> 62 -> 62 -> 1 (9,921 parameters), Lambda-Hat's `base`.
    "base": {"in_dim": 32, "out_dim": 1, "depth": 3, "activation": "relu", "bias": True, "init": "he", "target_params": 10000},
}

DATA_PRESETS: dict[str, dict] = {
    "small": {"n_data": 100, "n_test": 100},
    "base": {"n_data": 20000, "n_test": 2000},
}

# `_null`: the teacher has the student's architecture and independent random weights.
TEACHER_PRESETS: dict[str, dict] = {
    "_null": {},
    "small": {"depth": 2, "activation": "relu"},
    "base": {"depth": 3, "activation": "relu"},
}

PRESETS = {"model": MODEL_PRESETS, "data": DATA_PRESETS, "teacher": TEACHER_PRESETS}
