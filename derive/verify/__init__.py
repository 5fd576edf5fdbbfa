"""Generated code against independent references: torch.autograd (reference.py), finite differences (checks.py)."""

from derive.verify.checks import (SENTINEL, Check, Report, padded, random_params, rel_err, sample,
                                  sentinels_intact, unmasked_memory_ops, verify)

__all__ = ["SENTINEL", "Check", "Report", "padded", "random_params", "rel_err", "sample", "sentinels_intact",
           "unmasked_memory_ops", "verify"]
