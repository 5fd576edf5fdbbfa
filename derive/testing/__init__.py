"""derive's checks in a project's own tests: verify_module / assert_verified (api.py) and the pytest
plugin (plugin.py, registered through the pytest11 entry point).  The first-divergence comparison
they report is derive.verify's (divergence.py, against the torch rebuild in named.py)."""

__all__ = ["CHECKS", "assert_verified", "verify_module"]


def __getattr__(name):
    # lazily: every pytest run in an environment with derive loads the plugin, and the plugin
    # must not import the generator (jinja, the targets) until a spec is actually checked
    if name in __all__:
        from derive.testing import api

        return getattr(api, name)
    raise AttributeError(f"module 'derive.testing' has no attribute {name!r}")
