"""What one unlearning step's passes hold beyond the weights, gradients and optimiser state: the tensors
autograd saves for the backward, counted from the shapes of a Llama-style decoder layer (OLMo, Llama,
Mistral, Qwen2), and the logits with their float32 log-softmax.

Each term is a tensor the Hugging Face layer saves, in bytes per token (the counts were read off
`torch.autograd.graph.saved_tensors_hooks` on these layers, and the totals are checked against measured
peaks in tests/test_memory_plan.py):

- a norm keeps its float32 input (LayerNorm: with mean and rstd; RMSNorm: with rstd, and its normalised
  input when its weight trains);
- a linear layer keeps its input only when its weight trains (for the weight's gradient); under autocast
  each linear casts its float32 input to bf16 itself, so q, k and v keep three copies;
- attention keeps q, k and v with the key/value heads repeated to every query head (Hugging Face repeats
  them whenever a padding mask is passed, as it is for padded batches), its output, and with sdpa the
  log-sum-exp and the float mask sdpa converts the boolean padding mask to (in every layer); eager
  attention keeps the L x L probabilities in float32 (and their bf16 copy under bf16);
- the gated MLP keeps the gate and up outputs and the activation, and its product when down_proj trains.

A step runs the passes of `UnlearningModule`: for Sophia the GNB estimate (forward of the forget and the
retain batch, labels sampled from the softmax, one backward), then the loss (forward of both, one
backward); both batches' activations are alive together at the end of each forward.
"""

from __future__ import annotations

from dataclasses import dataclass

from simu_lightning.memory.shape import ModelShape

FLOAT32 = 4


@dataclass(frozen=True)
class Numerics:
    """How the passes compute: "fp32", "autocast" (bf16 matmuls over float32 weights, norms and softmax in
    float32) or "bf16" (bf16 weights: bf16-true, or FSDP's bf16 all-gathers)."""

    mode: str

    @property
    def compute(self) -> int:
        """Bytes of a matmul's output."""
        return FLOAT32 if self.mode == "fp32" else 2

    @property
    def residual(self) -> int:
        """Bytes of the residual stream (a float32 residual plus a bf16 attention output stays float32)."""
        return 2 if self.mode == "bf16" else FLOAT32


@dataclass(frozen=True)
class Trainable:
    """Which of a decoder layer's weights train (the method's choice; the same in every layer)."""

    qkv: int  # how many of q, k, v
    o: bool
    gate_up: int  # how many of gate, up
    down: bool
    norms: bool
    final_norm: bool
    lm_head: bool  # the output head's weight (the embeddings' when tied)


@dataclass(frozen=True)
class Batches:
    """Rows one process runs per step and their (padded) length."""

    forget: int
    retain: int
    length: int

    @property
    def forget_tokens(self) -> int:
        return self.forget * self.length

    @property
    def retain_tokens(self) -> int:
        return self.retain * self.length

    def scored(self, tokens: int) -> int:
        """Positions that predict a label: planned as every position but each row's last (an upper bound:
        only answer tokens are scored)."""
        return tokens * (self.length - 1) // self.length


def norm_bytes(shape: ModelShape, numerics: Numerics, weight_trains: bool) -> int:
    h = shape.hidden_size
    if shape.norm == "layer":  # F.layer_norm on x.float(): its float32 input, mean and rstd
        return FLOAT32 * h + 2 * FLOAT32
    kept = FLOAT32 * h + FLOAT32  # x in float32 and rstd
    if weight_trains:  # the normalised input, for the weight's gradient (cast back to bf16 under bf16)
        kept += (2 if numerics.mode == "bf16" else FLOAT32) * h
    return kept


def input_bytes(shape: ModelShape, numerics: Numerics, trained: int) -> int:
    """The input a group of linear layers reading one tensor keeps, `trained` of them training."""
    h = shape.hidden_size
    if numerics.mode == "autocast":
        return trained * 2 * h
    return (numerics.compute if trained else 0) * h


def attention_bytes(shape: ModelShape, numerics: Numerics, length: int, o_trains: bool) -> int:
    c, heads, width = numerics.compute, shape.num_heads, shape.num_heads * shape.head_dim
    qkv = 3 * width * c  # at every query head
    if shape.attn_implementation == "eager":  # the output is o_proj's input, kept only for o_proj's weight
        probabilities = FLOAT32 * heads * length + (2 * heads * length if c == 2 else 0)
        return qkv + probabilities + (width * c if o_trains else 0)
    return qkv + width * c + FLOAT32 * heads + c * length  # sdpa keeps its output, log-sum-exp, the float mask


def layer_bytes(shape: ModelShape, numerics: Numerics, trainable: Trainable, length: int) -> int:
    """What one decoder layer keeps for its backward, per token."""
    f = shape.intermediate_size
    mlp = (3 + int(trainable.down)) * f * numerics.compute
    return (
        norm_bytes(shape, numerics, trainable.norms)
        + input_bytes(shape, numerics, trainable.qkv)
        + attention_bytes(shape, numerics, length, trainable.o)
        + norm_bytes(shape, numerics, trainable.norms)
        + input_bytes(shape, numerics, trainable.gate_up)
        + mlp
    )


def root_bytes(shape: ModelShape, numerics: Numerics, trainable: Trainable) -> int:
    """Per token, outside the layers: the rotary cos and sin, the final norm, the output head's input."""
    return (
        2 * shape.head_dim * FLOAT32
        + norm_bytes(shape, numerics, trainable.final_norm)
        + input_bytes(shape, numerics, int(trainable.lm_head))
    )


def working_bytes(shape: ModelShape, numerics: Numerics) -> int:
    """Per token, the gradients a layer's backward holds at once (the MLP's: down's input, the activation,
    the up and gate outputs) beyond what it frees."""
    return 3 * shape.intermediate_size * numerics.compute


@dataclass(frozen=True)
class Pass:
    """The peak of one forward + backward over the step's batches, in parts."""

    layers: int  # what the decoder layers keep (with checkpointing: each layer's input)
    logits: int  # logits, float32 log-softmax and the transients around them, at their peak
    layer_backward: int  # one layer's backward: its gradients at work (checkpointed: and its recomputation)
    weight_casts: int  # autocast: the bf16 copies of the weights that the backward keeps

    @property
    def total(self) -> int:
        return self.layers + max(self.logits, self.layer_backward) + self.weight_casts


def pass_peak(
    shape: ModelShape,
    numerics: Numerics,
    trainable: Trainable,
    batches: Batches,
    tokens: list[int],
    logits: int,
    checkpointing: bool,
    casts: int,
) -> Pass:
    """A forward of every batch in `tokens` (with gradients) and one backward. Every batch's activations
    are alive at the end of the forwards; the logits' peak lies there or at the start of the backward; a
    layer's backward (with checkpointing: its recomputation first) comes after the logits' are freed."""
    full = layer_bytes(shape, numerics, trainable, batches.length)
    kept = numerics.residual * shape.hidden_size if checkpointing else full
    layers = sum(tokens) * (shape.num_layers * kept + root_bytes(shape, numerics, trainable))
    largest = max(tokens)
    backward = largest * ((full if checkpointing else 0) + working_bytes(shape, numerics))
    return Pass(layers, logits, backward, casts)


def loss_logits(shape: ModelShape, numerics: Numerics, tokens: list[int], frozen_tokens: int) -> int:
    """The loss pass: `Forward` keeps each batch's logits until the loss is computed, and the float32
    log-softmax of each is saved; it is computed from a float32 contiguous copy of the shifted logits (the
    upcast under bf16, the kernel's contiguous input under fp32), which exists while it runs. At the
    backward's start the gradients of the gather and of the log-softmax of one batch exist together. A
    frozen target's logits (no gradient) are kept too, with their log-softmax for a moment."""
    vocab, c = shape.vocab_size, numerics.compute
    held = sum(tokens) * (c + FLOAT32) * vocab + frozen_tokens * c * vocab
    transient = max(tokens[-1] * FLOAT32, frozen_tokens * 2 * FLOAT32) * vocab
    backward = (sum(tokens) * FLOAT32 + 2 * FLOAT32 * max(tokens)) * vocab
    return max(held + transient, backward)


def hessian_logits(shape: ModelShape, numerics: Numerics, batches: Batches, tokens: list[int]) -> int:
    """The GNB pass (gnb.py): each batch's scored logits are copied out, softmaxed and summed into a CDF
    to sample labels (no gradient), then their cross-entropy saves a float32 log-softmax; the last
    batch's logits stay referenced through the backward."""
    vocab, c = shape.vocab_size, numerics.compute
    upcast = FLOAT32 if c == 2 else 0
    saved, peak = 0, 0
    for n in tokens:
        scored = batches.scored(n)
        peak = max(peak, saved + (n * c + scored * (c + upcast + 2 * FLOAT32)) * vocab)
        saved += scored * FLOAT32 * vocab
    backward = saved + (tokens[-1] * c + 2 * FLOAT32 * batches.scored(max(tokens))) * vocab
    return max(peak, backward)
