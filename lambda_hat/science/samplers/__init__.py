"""Samplers on a generic flat-vector posterior: `sgld.build_sgld`, `hmc.build_hmc`,
`nuts.build_nuts` (both via `hmc.build_hmc_family`), `mclmc.build_mclmc`. Each returns a
pure ``run(key)`` of (chains, draws) traces; HMC/NUTS/MCLMC also return
``warmup_grad_evals`` (chains,), which `pipeline.sample_run` folds into `total_fge`."""
