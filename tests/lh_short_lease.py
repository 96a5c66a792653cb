"""`python tests/lh_short_lease.py ARGS…` is `lh ARGS…` with claims' lease TTL set to
$LH_TEST_CLAIM_TTL_S seconds, so that a test can watch a takeover from another host within
seconds rather than the default 120 s. claims.py has no setting for it (Claims takes `ttl_s`,
but Store.claims() never passes one), so the default of Claims.__init__ is replaced here."""

import os
import sys

from lambda_hat.store import claims

ttl_s = float(os.environ["LH_TEST_CLAIM_TTL_S"])
# (owner, ttl_s): the defaults of Claims.__init__ after self and claims_dir.
assert claims.Claims.__init__.__defaults__[1] == claims.TTL_S, claims.Claims.__init__.__defaults__
claims.Claims.__init__.__defaults__ = (None, ttl_s)

from lambda_hat.cli import main  # noqa: E402

main()
