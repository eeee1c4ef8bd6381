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
    assert example["input_ids"][:len(prompt)] == prompt
    # a prompt longer than max_length is kept whole, with one answer token to learn from
    assert len(encode_example(tokenizer, prompt_format, "Who?", "word", max_length=2)["input_ids"]) == len(prompt) + 1


def test_padding_keeps_positions_and_ignores_padded_labels():
    examples = [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    right = collate(examples, pad_token_id=0)
    assert right["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    left = collate(examples, pad_token_id=0, padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    # the real token of the short example sits at position 0 either way
    assert left["position_ids"][1, -1].item() == 0 and right["position_ids"][1, 0].item() == 0
    assert torch.equal(left["position_ids"][0], torch.tensor([0, 1, 2]))
