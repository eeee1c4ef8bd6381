"""A toy attack family, as a user would add one: a file with a class, and a node under
robustness.families (tests/conf/robustness/toy.yaml)."""

from dataclasses import dataclass

import torch


@dataclass
class ToyAttack:
    """Shift every weight of a copy of the model by `shift`, and evaluate the copy on every split."""

    shift: float = 0.5
    needs_retain_model = False

    def before(self, context, retain_model=None) -> dict:
        context.record("toy_target", {"device": {"type": str(context.device)}}, [])
        return {"shift": self.shift}  # what `after` reads of its baselines, handed over by the stage

    def after(self, context, found=None) -> None:
        import copy

        context.record("toy_found", {"before": found}, [])

        shifted = copy.deepcopy(context.model)
        with torch.no_grad():
            for param in shifted.parameters():
                param.add_(self.shift)
        context.evaluate("toy", shifted, context.benchmark)
