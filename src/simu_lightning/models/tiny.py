"""The laptop model: a small OLMo-architecture causal LM and a byte-level BPE tokenizer trained on the
benchmark's own text, written as an ordinary Hugging Face folder so that it loads exactly like a hub
id or a local checkpoint would."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import OlmoConfig, OlmoForCausalLM, PreTrainedTokenizerFast

EOS, PAD = "<|endoftext|>", "<|padding|>"


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (the GPT-2 / OLMo family's scheme) learned from `texts`."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=PAD)


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    attention_dropout: float = 0.0,
) -> OlmoForCausalLM:
    import torch

    config = OlmoConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        attention_dropout=attention_dropout,
    )
    torch.manual_seed(seed)
    return OlmoForCausalLM(config)


def create(
    path: Path,
    texts: list[str],
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    seed: int = 0,
    attention_dropout: float = 0.0,
) -> None:
    """Write a freshly initialised tiny model and its tokenizer to `path` (`attention_dropout`, absent
    from conf/model/tiny.yaml so that the default's cache key stays as it is, gives the model the
    randomness in training that GPT-2's 0.1 dropout has: +model.tiny.attention_dropout=0.1)."""
    tokenizer = train_tokenizer(texts, vocab_size)
    model = build_model(
        tokenizer, hidden_size, num_layers, num_heads, intermediate_size, seed=seed, attention_dropout=attention_dropout
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
