import torch

from simu_lightning.data.formatting import IGNORE_INDEX, collate, encode_example, encode_prompt


def test_only_answer_tokens_are_labelled(tiny_model, prompt_format):
    _, tokenizer = tiny_model
    question, answer = "Where was Ada Brill born?", "Ada Brill was born in Tolford."
    example = encode_example(tokenizer, prompt_format, question, answer, max_length=64)
    prompt_length = len(encode_prompt(tokenizer, prompt_format, question))
    labels = example["labels"]
    assert labels[:prompt_length] == [IGNORE_INDEX] * prompt_length
    assert IGNORE_INDEX not in labels[prompt_length:]
    assert labels[prompt_length:] == example["input_ids"][prompt_length:]
    assert tokenizer.decode(labels[prompt_length:-1]) == " " + answer
    assert labels[-1] == tokenizer.eos_token_id


def test_long_answers_are_cut_but_prompts_are_not(tiny_model, prompt_format):
    _, tokenizer = tiny_model
    prompt = encode_prompt(tokenizer, prompt_format, "Who?")
    example = encode_example(tokenizer, prompt_format, "Who?", "word " * 100, max_length=len(prompt) + 3)
    assert len(example["input_ids"]) == len(prompt) + 3
    assert example["input_ids"][: len(prompt)] == prompt
    # a prompt longer than max_length is kept whole, with one answer token to learn from
    assert len(encode_example(tokenizer, prompt_format, "Who?", "word", max_length=2)["input_ids"]) == len(prompt) + 1


def test_padding_keeps_positions_and_ignores_padded_labels():
    examples = [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    right = collate(examples, pad_token_id=0)
    # nothing predicts a sequence's first token, so its label is never scored (left-padded, a pad would)
    assert right["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    left = collate(examples, pad_token_id=0, padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]
    # the real token of the short example sits at position 0 either way
    assert left["position_ids"][1, -1].item() == 0 and right["position_ids"][1, 0].item() == 0
    assert torch.equal(left["position_ids"][0], torch.tensor([0, 1, 2]))


def llama2_style_tokenizer():
    """A sentencepiece-style BPE tokenizer laid out as Llama-2's fast tokenizer is (a "▁" prepended to the
    text, spaces replaced by "▁"), trained here on a few QA lines: the layout in which an answer tokenised
    on its own starts with a lone "▁" that the joint text never has."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "Question: Where was Ada Brill born?\nAnswer: Ada Brill was born in Tolford.",
        "Question: What is the capital of France?\nAnswer: Paris is the capital.",
    ] * 20
    spm = Tokenizer(models.BPE(unk_token="<unk>"))
    spm.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    spm.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    spm.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=150, special_tokens=["<unk>", "<s>", "</s>"]))
    spm.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=spm, bos_token="<s>", eos_token="</s>", pad_token="<unk>", unk_token="<unk>"
    )


def test_answers_are_tokenised_with_their_prompt_as_a_target_trained_on_the_joint_text_saw_them(prompt_format):
    tokenizer = llama2_style_tokenizer()
    question, answer = "What is the capital of France?", "Paris is the capital."
    alone = tokenizer.convert_ids_to_tokens(
        tokenizer(prompt_format.answer_prefix + answer, add_special_tokens=False)["input_ids"]
    )
    assert alone[:2] == ["▁", "▁Paris"]  # the mismatch: tokenised apart, the answer starts with a lone "▁"
    joint = tokenizer(prompt_format.prompt(question) + prompt_format.answer_prefix + answer)["input_ids"]
    example = encode_example(tokenizer, prompt_format, question, answer, max_length=64)
    assert example["input_ids"] == joint + [tokenizer.eos_token_id]
    answer_start = example["labels"].index(next(label for label in example["labels"] if label != IGNORE_INDEX))
    assert tokenizer.convert_ids_to_tokens(example["labels"][answer_start:]) == [
        "▁Paris",
        "▁is",
        "▁the",
        "▁capital.",
        "</s>",
    ]
    assert example["input_ids"][:answer_start] == encode_prompt(
        tokenizer, prompt_format, question
    )  # generation's prompt
