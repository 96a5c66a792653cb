"""Teacher-student regression data.

X is drawn from ``data.x_dist``; Y = teacher(X) + noise (``data.noise_model``). The
distribution's own random parameters (mixture centers, the manifold embedding) are drawn
once from their own key, so train and test sets come from the same distribution.

x_dist
  gauss_iso        N(0, I)
  gauss_aniso      N(0, diag(cov_decay**i)), i = 0..in_dim-1
  mixture          equal-weight mixture of `mixture_k` unit Gaussians whose centers are
                   mixture_spread · N(0, I)
  lowdim_manifold  z ~ N(0, I_k), k = x_dim_latent, X = z @ A with A ~ N(0, 1/k) of shape
                   (k, in_dim) (a random linear k-dim subspace)
  heavy_tail       i.i.d. Student-t(student_df) coordinates (unscaled)
noise_model
  gauss      noise_scale · N(0, 1)
  hetero     noise_scale · (1 + hetero_scale·‖x‖₂) · N(0, 1)   (per row)
  student_t  noise_scale · t(student_df)
  outliers   noise_scale · N(0, 1), except that a Bernoulli(outlier_frac) subset of rows
             gets outlier_scale · N(0, 1) instead
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .models import init_mlp, mlp_apply


def make_x_sampler(key, data, in_dim: int, dtype):
    """Return ``sample(key, n) -> (n, in_dim)`` for ``data.x_dist``."""
    kind = data.x_dist
    if kind == "gauss_iso":
        return lambda k, n: jax.random.normal(k, (n, in_dim), dtype)
    if kind == "gauss_aniso":
        std = jnp.sqrt(data.cov_decay ** jnp.arange(in_dim, dtype=dtype)).astype(dtype)
        return lambda k, n: jax.random.normal(k, (n, in_dim), dtype) * std
    if kind == "mixture":
        centers = data.mixture_spread * jax.random.normal(key, (data.mixture_k, in_dim), dtype)

        def sample(k, n):
            kc, kz = jax.random.split(k)
            c = jax.random.randint(kc, (n,), 0, data.mixture_k)
            return centers[c] + jax.random.normal(kz, (n, in_dim), dtype)

        return sample
    if kind == "lowdim_manifold":
        kdim = data.x_dim_latent
        A = jax.random.normal(key, (kdim, in_dim), dtype) / jnp.sqrt(jnp.asarray(kdim, dtype))
        return lambda k, n: jax.random.normal(k, (n, kdim), dtype) @ A
    if kind == "heavy_tail":
        return lambda k, n: jax.random.t(k, data.student_df, (n, in_dim), dtype)
    raise NotImplementedError(f"data.x_dist={kind!r} is not implemented")


def sample_noise(key, X, out_dim: int, data, dtype):
    n = X.shape[0]
    kind = data.noise_model
    k1, k2 = jax.random.split(key)
    if kind == "gauss":
        return data.noise_scale * jax.random.normal(k1, (n, out_dim), dtype)
    if kind == "hetero":
        scale = data.noise_scale * (1.0 + data.hetero_scale * jnp.linalg.norm(X, axis=1, keepdims=True))
        return scale * jax.random.normal(k1, (n, out_dim), dtype)
    if kind == "student_t":
        return data.noise_scale * jax.random.t(k1, data.student_df, (n, out_dim), dtype)
    if kind == "outliers":
        kb, kg, ko = jax.random.split(key, 3)
        is_out = jax.random.bernoulli(kb, data.outlier_frac, (n, 1))
        base = data.noise_scale * jax.random.normal(kg, (n, out_dim), dtype)
        out = data.outlier_scale * jax.random.normal(ko, (n, out_dim), dtype)
        return jnp.where(is_out, out, base)
    raise NotImplementedError(f"data.noise_model={kind!r} is not implemented")


def make_teacher(key, spec, dtype):
    """Teacher params and activation from the (resolved) TeacherSpec; init/bias as the student."""
    t, m = spec.teacher, spec.model
    if t.dropout_rate > 0:
        raise NotImplementedError(
            f"teacher.dropout_rate={t.dropout_rate} > 0 is not implemented (only 0.0 is supported)"
        )
    dims = [m.in_dim, *t.widths, m.out_dim]
    return init_mlp(key, dims, init=m.init, bias=m.bias, dtype=dtype), t.activation


def make_dataset(key, spec, dtype, return_teacher: bool = False):
    """(X, Y, X_test, Y_test) for a TargetSpec; `key` is the data key of the target.
    With `return_teacher`, the teacher's params are appended."""
    m, d = spec.model, spec.data
    k_dist, k_teacher, k_x, k_xt, k_n, k_nt = jax.random.split(key, 6)
    teacher, t_act = make_teacher(k_teacher, spec, dtype)
    sample_x = make_x_sampler(k_dist, d, m.in_dim, dtype)
    X = sample_x(k_x, d.n_data).astype(dtype)
    X_test = sample_x(k_xt, d.n_test).astype(dtype)
    Y = (mlp_apply(teacher, X, t_act) + sample_noise(k_n, X, m.out_dim, d, dtype)).astype(dtype)
    Y_test = (mlp_apply(teacher, X_test, t_act) + sample_noise(k_nt, X_test, m.out_dim, d, dtype)).astype(dtype)
    return (X, Y, X_test, Y_test, teacher) if return_teacher else (X, Y, X_test, Y_test)
