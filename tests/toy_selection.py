"""A selection rule of the tests' own, written as docs/extending.md ("A selection rule") says: one class, named
in config by its import path (attribution.selection=toy_selection.SquaredActivation)."""

from simu_lightning.attribution.rules import SelectionRule


class SquaredActivation(SelectionRule):
    """A unit's score: its activation squared at each predicted answer token, summed over the forget set."""

    def attributions(self, model, projs, group, batch, betas, prefix, layout):
        return [betas[i] ** 2 for i in group]
