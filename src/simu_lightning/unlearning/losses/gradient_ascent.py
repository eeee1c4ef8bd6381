"""Gradient ascent: loss = -L_forget, the forget term alone."""

from __future__ import annotations


class GradientAscent:
    needs_frozen_target = False

    def __call__(self, forward):
        forget_nll = forward.nll("forget").mean.mean()
        return -forget_nll, {"forget_nll": forget_nll}
