"""Samplers on a generic flat-vector posterior (see `sgld.build_sgld`, `hmc.build_hmc`)."""
