"""A loss added as docs/extending.md says, from outside the package: one class and one YAML node
(tests/conf/loss/toy.yaml). Ascend on forget, descend on retain with a weight, and log their gap."""

from __future__ import annotations


class ToyGap:
    needs_frozen_target = False

    def __init__(self, retain_weight: float):
        self.retain_weight = retain_weight

    def __call__(self, forward):
        forget, retain = forward.nll("forget").mean.mean(), forward.nll("retain").mean.mean()
        return -forget + self.retain_weight * retain, {"forget": forget, "retain": retain, "gap": forget - retain}
