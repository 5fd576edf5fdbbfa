"""derive's checks in a project's own tests: verify_module / assert_verified (api.py), the pytest
plugin (plugin.py, registered through the pytest11 entry point) and the first-divergence
comparison (divergence.py) against a torch rebuild of the named intermediates (reference.py)."""

from derive.testing.api import CHECKS, assert_verified, verify_module

__all__ = ["CHECKS", "assert_verified", "verify_module"]
