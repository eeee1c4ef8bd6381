"""The LightningModule of SIMU stage 2 and its baselines: manual optimisation, because a second-order
step needs an extra backward (on sampled labels) before the loss backward."""

from __future__ import annotations

import logging
import time

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import ModelParallelStrategy

from simu_lightning.distributed import load_from_rank0, local_bytes, parallelize
from simu_lightning.utils.errors import SimuError
from simu_lightning.unlearning.losses import Forward
from simu_lightning.models.architecture import Architecture, decoder_layers
from simu_lightning.models.heads import head_masks
from simu_lightning.optim.gnb import sampled_label_loss
from simu_lightning.unlearning.methods import Method

log = logging.getLogger(__name__)


def win_rate_summary(win_rates: list[float]) -> dict | None:
    """The median, least and largest of Sophia's win rates, over the steps that had one."""
    rates = sorted(r for r in win_rates if r == r)  # (NaN before the first estimate)
    if not rates:
        return None
    middle = len(rates) // 2
    median = rates[middle] if len(rates) % 2 else (rates[middle - 1] + rates[middle]) / 2
    return {"median_win_rate": median, "min_win_rate": rates[0], "max_win_rate": rates[-1], "steps": len(rates)}


class UnlearningModule(L.LightningModule):
    def __init__(
        self,
        model,
        method: Method,
        loss,
        architecture: Architecture,
        frozen_target=None,
        seed: int = 0,
        parallel: dict | None = None,
    ):
        super().__init__()
        self.parallel = dict(parallel or {})  # FSDP2 settings: mixed_precision, activation_checkpointing
        self.automatic_optimization = False
        self.model, self.method, self.loss, self.architecture = model.train(), method, loss, architecture
        if loss.needs_frozen_target and frozen_target is None:
            raise SimuError(f"loss {type(loss).__name__} needs a frozen copy of the target, and none was given")
        self.frozen_target = frozen_target.requires_grad_(False).eval() if frozen_target is not None else None
        self.seed = seed
        self.hessian_tokens = 0  # Sophia's bs: predicted tokens of the last estimation batch, all processes
        self.step_seconds = 0.0  # time in the unlearning steps themselves (the evaluations run beside them)
        self.win_rates: list[float] = []  # Sophia's win rate at every step: its health signal
        trainable = method.trainable_parameter_names(model, architecture)
        for name, param in model.named_parameters():
            param.requires_grad_(name in trainable)

    def configure_model(self) -> None:
        """Under Lightning's ModelParallelStrategy: shard the model (and NPO's frozen target) with
        FSDP2 over the strategy's device mesh. On one device the model stays whole, and
        parallel.activation_checkpointing applies all the same (mixed precision there is the trainer's
        bf16-mixed: pipeline/building.py)."""
        mesh = self.device_mesh if isinstance(self.trainer.strategy, ModelParallelStrategy) else None
        if mesh is None:
            if self.parallel.get("activation_checkpointing") is True:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            return
        if hasattr(next(self.model.parameters()), "device_mesh"):
            return
        # rank 0 alone read the target's weights (pipeline/prepare.py): its whole state, sent to every shard
        whole = self.model.state_dict() if self.global_rank == 0 else {}
        for model in (self.model, self.frozen_target):
            if model is not None:
                parallelize(
                    model,
                    list(decoder_layers(model, self.architecture)),
                    mesh,
                    self.parallel.get("mixed_precision"),
                    self.parallel.get("activation_checkpointing") is True,  # (auto is resolved before: fits.py)
                )
                load_from_rank0(model, whole, self.trainer.strategy.root_device)

    @property
    def compute_dtype(self) -> str:
        """The dtype the forward passes compute in: bfloat16 on a model sharded with
        parallel.mixed_precision=bf16 (FSDP2 all-gathers the parameters in bf16), the autocast dtype of a
        mixed-precision trainer (bf16-mixed, 16-mixed), else the weights' own (bf16-true converts them)."""
        sharded = any(hasattr(p, "device_mesh") for p in self.model.parameters())
        if sharded and self.parallel.get("mixed_precision") == "bf16":
            return "bfloat16"
        plugin = self.trainer.precision_plugin if self._trainer is not None else None
        if isinstance(plugin, MixedPrecision):
            return "bfloat16" if plugin.precision == "bf16-mixed" else "float16"
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["hessian_tokens"] = self.hessian_tokens  # Sophia's bs until the next estimate
        checkpoint["win_rates"] = self.win_rates
        checkpoint["step_seconds"] = self.step_seconds  # a resumed run reports the steps of both processes

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.hessian_tokens = checkpoint.get("hessian_tokens", 0)
        self.win_rates = list(checkpoint.get("win_rates", []))
        self.step_seconds = checkpoint.get("step_seconds", 0.0)

    def win_rate_summary(self) -> dict | None:
        """Sophia's win rate over the run (its authors keep it within 0.1-0.5), for results.json."""
        return win_rate_summary(self.win_rates)

    def memory_bytes(self) -> dict[str, int]:
        """What this process holds for the parameters and for the optimiser state (local shards)."""
        optimizer = self.trainer.optimizers[0]
        state = [
            t
            for part in getattr(optimizer, "parts", (optimizer,))  # the hybrid's halves keep their own state
            for per_param in part.state.values()
            for t in per_param.values()
            if isinstance(t, torch.Tensor) and t.dim() > 0
        ]
        return {"parameters": local_bytes(self.model.parameters()), "optimizer_state": local_bytes(state)}

    @property
    def second_order(self) -> bool:
        return hasattr(self.optimizers().optimizer, "update_hessian")

    def configure_optimizers(self):
        return self.method.optimizer([p for p in self.model.parameters() if p.requires_grad])

    def _masked_optimizer(self):
        optimizer = self.optimizers().optimizer
        if not hasattr(optimizer, "set_masks"):
            raise SimuError(
                f"method {self.method.name!r}: critical-neuron masks need a masked optimiser "
                f"(method/optimizer=sophia, adamw, sgd, signsgd, zo or hybrid), not {type(optimizer).__name__}"
            )
        return optimizer

    def set_critical_neurons(self, neurons: dict[str, torch.Tensor]) -> None:
        """Confine the optimiser's updates of each down projection to its critical neurons (one bool
        per neuron), as a single row or column that broadcasts over the weight."""
        optimizer = self._masked_optimizer()
        shape = [1, 1]
        shape[self.architecture.neuron_dim] = -1
        weights = {name: self.model.get_submodule(name).weight for name in neurons}
        optimizer.set_masks(
            {weights[name]: mask.view(shape) for name, mask in neurons.items() if weights[name].requires_grad}
        )

    def set_critical_heads(self, heads: dict[str, torch.Tensor]) -> None:
        """Confine the optimiser's updates of each layer's q/k/v/o to its critical heads (one bool per head,
        keyed by o_proj's name): their rows of q/k/v (and biases), their columns of o_proj (models/heads.py)."""
        optimizer = self._masked_optimizer()
        params = dict(self.model.named_parameters())
        masks = head_masks(self.model, self.architecture, heads)
        optimizer.set_masks({params[name]: mask for name, mask in masks.items() if params[name].requires_grad})

    def training_step(self, batch, batch_idx):
        start = time.perf_counter()
        try:
            loss = self.unlearning_step(batch)
        finally:
            seconds = time.perf_counter() - start
            self.step_seconds += seconds  # the steps alone: evaluations run between them
        # each step's own time (logs/metrics.csv, wandb): a slow step shows where it falls in the run
        self.log("time/step_s", seconds, on_step=True, on_epoch=False, batch_size=1)
        return loss

    def unlearning_step(self, batch):
        optimizer = self.optimizers()
        step_kwargs = {}
        if self.second_order:
            if self.global_step % self.method.hessian_interval == 0:
                self.estimate_hessian(batch, optimizer)
            step_kwargs["bs"] = self.hessian_tokens
        auto_rho = self.second_order and optimizer.optimizer.rho == "auto"
        if getattr(optimizer.optimizer, "zeroth_order", False):
            loss, terms = self.zeroth_order_step(batch, optimizer)
        else:
            loss, terms = self.objective(batch)
            self.refuse_non_finite(loss, "loss")
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step(**step_kwargs)
        if auto_rho and optimizer.optimizer.rho != "auto":
            log.info(
                "rho: auto chose rho = %.4g at step %d (win rate %.3f; target %.2f), fixed from now on",
                optimizer.optimizer.rho,
                self.global_step,
                optimizer.optimizer.win_rate,
                optimizer.optimizer.param_groups[0]["target_win_rate"],
            )
        logs = {
            "unlearn/loss": loss.detach(),
            **{f"unlearn/{k}": v.detach() for k, v in terms.items()},
            "optim/lr": optimizer.optimizer.param_groups[0]["lr"],
        }
        if self.second_order:
            sophia = optimizer.optimizer
            self.win_rates.append(float(sophia.win_rate))
            logs |= {
                "optim/clip_rate": sophia.clip_rate,
                "optim/win_rate": sophia.win_rate,
                "optim/hessian_mean": sophia.hessian_mean,
            }
            if isinstance(sophia.rho, float):
                logs["optim/rho"] = sophia.rho
        self.log_dict(logs, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(batch["forget"]["input_ids"]))
        return loss.detach()

    def objective(self, batch) -> tuple[torch.Tensor, dict]:
        """The loss to minimise on `batch` and its terms, at the model's current weights."""
        return self.loss(Forward(self.model, batch, self.frozen_target, self.captured_layers()))

    def zeroth_order_step(self, batch, optimizer) -> tuple[torch.Tensor, dict]:
        """A zeroth-order step (optim/zeroth_order.py): the loss at the weights (logged, checked finite), then
        the optimiser's own evaluations at perturbed weights; no backward pass."""
        with torch.no_grad():
            loss, terms = self.objective(batch)
            self.refuse_non_finite(loss, "loss")
            optimizer.step(loss=lambda: self.objective(batch)[0])
        return loss, terms

    def captured_layers(self) -> tuple | None:
        """The decoder layer (of the model and of the frozen target) whose output the objective reads."""
        index = getattr(self.loss, "capture_layer", None)
        if index is None:
            return None
        layers = [decoder_layers(m, self.architecture) for m in (self.model, self.frozen_target)]
        if not 0 <= index < len(layers[0]):
            raise SimuError(f"loss.layer={index}: the model has decoder layers 0 to {len(layers[0]) - 1}")
        return layers[0][index], layers[1][index] if self.frozen_target is not None else None

    def refuse_non_finite(self, value: torch.Tensor, what: str) -> None:
        """Stop the run, before any NaN or inf can reach the weights or the optimiser state, with a line
        naming the step (every process stops together: the decision is shared)."""
        bad = not bool(torch.isfinite(value.detach()).all())
        if self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            raise self.non_finite(what, value)

    def non_finite(self, what: str, value: torch.Tensor) -> SimuError:
        last = self.trainer.checkpoint_callback.last_model_path if self.trainer.checkpoint_callback else ""
        return SimuError(
            f"non-finite {what} ({value.item()}) at unlearning step {self.global_step} "
            f"(epoch {self.current_epoch}); the weights were not updated; "
            f"{'the last good checkpoint is ' + last if last else 'no checkpoint was written yet'}, "
            "and the evaluations so far are in curve.jsonl"
        )

    def estimate_hessian(self, batch, optimizer) -> None:
        """The GNB estimate: backprop the CE on labels sampled from the model's own softmax over the
        answer positions of the forget and retain batch, then h <- beta2 h + (1 - beta2) g^2.

        Each example's labels are drawn from its own generator, seeded by (seed, step, split, row), so
        the estimate does not depend on how the batch is split over processes. The loss is the mean
        over all processes' predicted tokens (data parallelism then averages the gradients)."""
        optimizer.zero_grad()
        parts = []
        for split_id, part in enumerate((batch["forget"], batch["retain"])):
            logits = self.model(
                input_ids=part["input_ids"], attention_mask=part["attention_mask"], position_ids=part["position_ids"]
            ).logits
            uniforms = self._uniforms(part["index"], split_id, part["input_ids"].shape[1] - 1, logits.device)
            parts.append(sampled_label_loss(logits, part["labels"], uniforms))
        # the predicted tokens of all processes (Sophia's bs) and whether a part is not finite, in one
        # collective and one read on the host (integers: under bf16-true the default dtype is bf16, which
        # counts exactly only to 256)
        local = torch.stack(
            [sum(count for _, count in parts), sum((~mean_ce.isfinite()).long() for mean_ce, _ in parts)]
        )
        total_tokens, non_finite = self.trainer.strategy.reduce(local, reduce_op="sum").tolist()
        loss = sum(mean_ce * count for mean_ce, count in parts) * (self.trainer.world_size / max(total_tokens, 1))
        if non_finite:
            raise self.non_finite("Hessian-estimate loss", loss)
        self.manual_backward(loss)
        # a batch with no answer token anywhere leaves h (and bs) as they were; so does an estimate that
        # overflowed under 16-mixed's grad scaler
        if total_tokens > 0 and self.unscale_hessian_gradients():
            optimizer.optimizer.update_hessian()
            self.hessian_tokens = total_tokens
        optimizer.zero_grad()

    def unscale_hessian_gradients(self) -> bool:
        """Under 16-mixed, `manual_backward` multiplied the GNB loss by the grad scaler's scale S, and the
        scaler unscales only at the loss step: divide the estimate's gradients by S here (h would grow by
        S^2), and say whether they are all finite (an overflow must not stay in h for ever). Every process
        takes the same decision."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is None:
            return True
        inverse = scaler.get_scale() ** -1
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        for param in self.model.parameters():
            if param.grad is not None:
                grad = param.grad.to_local() if hasattr(param.grad, "to_local") else param.grad
                grad.mul_(inverse)
                finite &= torch.isfinite(grad).all()
        overflowed = self.trainer.strategy.reduce_boolean_decision(not bool(finite), all=False)
        if overflowed:
            log.warning("step %d: the GNB estimate overflowed under 16-mixed; h kept as it was", self.global_step)
        return not overflowed

    def _uniforms(self, rows: torch.Tensor, split_id: int, length: int, device) -> torch.Tensor:
        return label_uniforms(rows, self.seed, self.global_step, split_id, length, device)


def label_uniforms(rows, seed: int, step: int, split_id: int, length: int, device) -> torch.Tensor:
    """The uniforms the GNB estimate samples labels from, one generator per (seed, step, split, row) (`rows`:
    the rows' indices, a list, as the module keeps them on the host, or a tensor). numpy's Generator streams
    are prefix-stable: a row's draws do not depend on the padded length."""
    rows = rows.tolist() if isinstance(rows, torch.Tensor) else rows
    draws = [np.random.default_rng([seed, step, split_id, row]).random(length) for row in rows]
    return torch.as_tensor(np.stack(draws), dtype=torch.float32, device=device)
