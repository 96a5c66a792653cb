"""A store holding a plugin's artifacts, opened where the plugin is not loaded: nothing is
quarantined, collected or called damaged; it is indexed once the plugin is loaded again."""

import numpy as np

from lambda_hat.ids import resolved_spec
from lambda_hat.planner import expand
from lambda_hat.store.artifacts import write_artifact
from lambda_hat.store.store import Store
from lambda_hat.sweep import sweep_from_dict
from tests.test_registries import SWEEP, toy  # noqa: F401  (the fixture)
from tests.test_store import fake_manifest


def test_a_plugins_artifacts_survive_a_store_opened_without_it(tmp_path, toy):  # noqa: F811
    root = tmp_path / "store"
    st = Store(root)
    ex = expand(sweep_from_dict(SWEEP))
    t, r = ex.targets[0], ex.runs[0]
    write_artifact(st.layout.target_dir(t.target_id), {"X": np.arange(2.0)},
                   fake_manifest("target", t.target_id, resolved_spec(t.spec)))
    write_artifact(st.layout.run_dir(r.run_id), {"traces/llc": np.zeros((2, 2))},
                   fake_manifest("run", r.run_id, resolved_spec(r.spec)))

    from lambda_hat import registry

    kind, sampler = registry.model_kind("line"), registry.sampler("toy_langevin")
    registry.unregister_model_kind("line")
    registry.unregister_sampler("toy_langevin")
    try:
        rep = Store.open(root).reconcile()
        assert rep.quarantined == []
        assert sorted(p.name for p, _ in rep.needs_plugin) == sorted([t.target_id, r.run_id])
        assert all("LH_PLUGINS" in why for _, why in rep.needs_plugin)
        assert st.layout.target_dir(t.target_id).is_dir() and st.layout.run_dir(r.run_id).is_dir()
        findings = Store.open(root).verify().findings
        assert {f.path.name for f in findings if not f.serious} == {t.target_id, r.run_id}
        assert not [f for f in findings if f.serious], findings
        gc = Store.open(root).gc()
        assert gc.removed == []
    finally:
        registry.register_model_kind(kind)
        registry.register_sampler(sampler)
    rep = Store.open(root).reconcile()
    assert rep.needs_plugin == [] and rep.quarantined == [] and rep.indexed == 2
