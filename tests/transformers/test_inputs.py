"""Every input form of LanguageModel gives the logits plain Hugging Face gives on the same tokens."""

import pytest
import torch
from transformers import AutoModelForCausalLM, BatchEncoding

from nnsight_core import InputError

from tests.helpers import LONG, MID, SHORT, left_pad

ATOL = 1e-5


def trace_logits(lm, value, **invoke_kwargs):
    """Logits of one invoke holding ``value`` (the model's raw output, via the tracer)."""
    with torch.no_grad(), lm.trace() as tracer, tracer.invoke(value, **invoke_kwargs):
        pass
    return tracer.output.logits


def assert_rows_equal_solo(tiny, logits, rows):
    """Row i of a left-padded batch equals a solo plain-HF run of ``rows[i]`` on its real tokens."""
    assert logits.shape[0] == len(rows)
    width = logits.shape[1]
    assert width == max(r.shape[1] for r in rows)
    for i, ids in enumerate(rows):
        n = ids.shape[1]
        torch.testing.assert_close(logits[i:i + 1, width - n:], tiny.logits(ids), rtol=0, atol=1e-4,
                                   msg=lambda m, i=i: f"row {i}: {m}")


def test_token_counts_differ(tiny):
    # The prompts used throughout really have different lengths.
    counts = [tiny.ids(p).shape[1] for p in (SHORT, MID, LONG)]
    assert counts[0] < counts[1] < counts[2], counts


def test_str(lm, tiny):
    torch.testing.assert_close(trace_logits(lm, LONG), tiny.logits(tiny.ids(LONG)), rtol=0, atol=ATOL)


def test_str_given_to_trace_directly(lm, tiny):
    with torch.no_grad(), lm.trace(LONG):
        logits = lm.lm_head.output.save()
    torch.testing.assert_close(logits.value, tiny.logits(tiny.ids(LONG)), rtol=0, atol=ATOL)


def test_trace_false_returns_the_plain_output(lm, tiny):
    with torch.no_grad():
        out = lm.trace(MID, trace=False)
    torch.testing.assert_close(out.logits, tiny.logits(tiny.ids(MID)), rtol=0, atol=ATOL)


def test_list_of_str_of_different_lengths_in_one_invoke(lm, tiny):
    logits = trace_logits(lm, [SHORT, LONG])
    assert_rows_equal_solo(tiny, logits, [tiny.ids(SHORT), tiny.ids(LONG)])


def test_list_of_int(lm, tiny):
    ids = tiny.ids(MID)
    torch.testing.assert_close(trace_logits(lm, ids[0].tolist()), tiny.logits(ids), rtol=0, atol=ATOL)


def test_1d_tensor_is_one_row(lm, tiny):
    ids = tiny.ids(MID)
    logits = trace_logits(lm, ids[0])
    assert logits.shape[0] == 1
    torch.testing.assert_close(logits, tiny.logits(ids), rtol=0, atol=ATOL)


def test_1d_tensors_in_two_invokes_are_two_rows(lm, tiny):
    # Upstream #176: 1-D ids must become one row each, not be concatenated.
    a, b = tiny.ids(SHORT), tiny.ids(LONG)
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(a[0]):
            pass
        with tracer.invoke(b[0]):
            pass
    assert_rows_equal_solo(tiny, tracer.output.logits, [a, b])


def test_2d_tensor(lm, tiny):
    ids = tiny.ids(LONG)
    batch = torch.cat([ids, ids.flip(1)])
    logits = trace_logits(lm, batch)
    torch.testing.assert_close(logits, tiny.logits(batch), rtol=0, atol=ATOL)
    torch.testing.assert_close(logits[1:], tiny.logits(ids.flip(1)), rtol=0, atol=1e-4)


def test_list_of_lists_of_different_lengths(lm, tiny):
    a, b, c = tiny.ids(MID), tiny.ids(SHORT), tiny.ids(LONG)
    logits = trace_logits(lm, [a[0].tolist(), b[0].tolist(), c[0].tolist()])
    assert_rows_equal_solo(tiny, logits, [a, b, c])


def test_dict_with_left_padded_mask(lm, tiny):
    rows = [tiny.ids(SHORT), tiny.ids(LONG)]
    ids, mask = left_pad(rows, tiny.eos)
    logits = trace_logits(lm, {"input_ids": ids, "attention_mask": mask})
    assert_rows_equal_solo(tiny, logits, rows)


def test_dict_with_right_padded_mask(lm, tiny):
    # Positions come from the mask, whichever side the user padded.
    short, long = tiny.ids(SHORT), tiny.ids(LONG)
    n, width = short.shape[1], long.shape[1]
    ids = torch.cat([torch.nn.functional.pad(short, (0, width - n), value=tiny.eos), long])
    mask = torch.cat([torch.nn.functional.pad(torch.ones_like(short), (0, width - n)), torch.ones_like(long)])
    logits = trace_logits(lm, {"input_ids": ids, "attention_mask": mask})
    torch.testing.assert_close(logits[:1, :n], tiny.logits(short), rtol=0, atol=1e-4)
    torch.testing.assert_close(logits[1:], tiny.logits(long), rtol=0, atol=1e-4)


def test_dict_without_mask(lm, tiny):
    ids = tiny.ids(MID)
    torch.testing.assert_close(trace_logits(lm, {"input_ids": ids}), tiny.logits(ids), rtol=0, atol=ATOL)


def test_batch_encoding(lm, tiny):
    rows = [tiny.ids(LONG), tiny.ids(SHORT), tiny.ids(MID)]
    ids, mask = left_pad(rows, tiny.eos)
    logits = trace_logits(lm, BatchEncoding({"input_ids": ids, "attention_mask": mask}))
    assert_rows_equal_solo(tiny, logits, rows)


def test_invoke_kwargs_go_to_the_tokenizer(lm, tiny):
    # Text inputs take tokenizer keyword arguments (here: truncation to 3 tokens).
    ids = tiny.ids(LONG)[:, :3]
    logits = trace_logits(lm, LONG, truncation=True, max_length=3)
    torch.testing.assert_close(logits, tiny.logits(ids), rtol=0, atol=ATOL)


BAD_INPUTS = {
    "float tensor": torch.rand(1, 4),
    "int": 5,
    "empty string": "",
    "empty list": [],
    "3-D tensor": torch.zeros(1, 2, 3, dtype=torch.long),
    "empty 2-D tensor": torch.zeros(1, 0, dtype=torch.long),
    "mixed list": ["Hello", 3],
    "dict without input_ids": {"attention_mask": torch.ones(1, 3, dtype=torch.long)},
    "dict with unknown key": {"input_ids": torch.ones(1, 3, dtype=torch.long), "pixels": 1},
    "mask shape mismatch": {"input_ids": torch.ones(1, 3, dtype=torch.long),
                            "attention_mask": torch.ones(1, 4, dtype=torch.long)},
    "None": None,
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_raises_input_error(lm, tiny, name):
    with pytest.raises(InputError), lm.trace(BAD_INPUTS[name]):
        pass
    # The model still works afterwards.
    torch.testing.assert_close(trace_logits(lm, SHORT), tiny.logits(tiny.ids(SHORT)), rtol=0, atol=ATOL)


def test_kwargs_with_token_ids_raise_input_error(lm):
    with pytest.raises(InputError, match="tokenizer"), lm.trace() as tracer, \
            tracer.invoke([1, 2, 3], max_length=2):
        pass


def test_two_positional_inputs_in_one_invoke_raise_input_error(lm):
    with pytest.raises(InputError, match="one input"), lm.trace() as tracer, \
            tracer.invoke(SHORT, LONG):
        pass


def test_input_error_is_a_value_error(lm):
    with pytest.raises(ValueError), lm.trace(torch.rand(3)):
        pass


def test_batch_encoding_of_lists_keeps_its_attention_mask(lm, tiny):
    rows = [tiny.ids(SHORT), tiny.ids(LONG)]
    ids, mask = left_pad(rows, tiny.eos)
    encoding = BatchEncoding({"input_ids": ids.tolist(), "attention_mask": mask.tolist()})
    logits = trace_logits(lm, encoding)
    assert_rows_equal_solo(tiny, logits, rows)


def test_invoke_kwarg_padding_is_honoured_or_refused_clearly(lm, tiny):
    try:
        logits = trace_logits(lm, SHORT, padding="max_length", max_length=10)
    except InputError as error:
        assert "padding" in str(error)
    else:
        n = tiny.ids(SHORT).shape[1]
        torch.testing.assert_close(logits[:, -n:], tiny.logits(tiny.ids(SHORT)), rtol=0, atol=1e-4)


def test_an_empty_prompt_among_prompts_is_refused(lm):
    with pytest.raises(InputError, match="no tokens"), lm.trace(["", "Paris is"]):
        pass


def test_invoke_kwargs_cannot_change_padding_side_or_tensor_type(lm):
    with pytest.raises(InputError, match="padding_side"), lm.trace("Paris", invoker_args={"return_tensors": "np"}):
        pass


# -- keyword arguments of trace() and generate() -----------------------------------------------------


def test_an_unknown_trace_keyword_raises_input_error_naming_it(lm, tiny):
    if tiny.arch == "llama":
        tiny.logits(tiny.ids(SHORT), foo=1)   # plain HF swallows it: **kwargs: Unpack[TransformersKwargs]
    cls = type(tiny.hf).__name__
    with pytest.raises(InputError) as info, lm.trace(SHORT, foo=1):
        lm.lm_head.output.save()
    message = str(info.value)
    assert f"{cls}.forward() takes no keyword argument 'foo' (given to trace())" in message, message
    assert all(name in message for name in ("input_ids", "use_cache", "output_hidden_states", "labels"))
    with pytest.raises(InputError, match="Did you mean 'output_hidden_states'"), \
            lm.trace(SHORT, output_hiden_states=True):
        pass
    # No stale state: the next trace equals plain HF.
    torch.testing.assert_close(trace_logits(lm, SHORT), tiny.logits(tiny.ids(SHORT)), rtol=0, atol=ATOL)


def test_keywords_forward_takes_named_or_through_its_kwargs_still_work(lm, tiny):
    ids = tiny.ids(LONG)
    # transformers hooks a model for good on its first output_hidden_states=True: not on tiny.hf.
    hf = AutoModelForCausalLM.from_pretrained(tiny.folder).eval()
    with torch.no_grad():
        plain = hf(input_ids=ids, output_hidden_states=True, labels=ids)
        plain_tuple = hf(input_ids=ids, return_dict=False, logits_to_keep=1)
    with torch.no_grad(), lm.trace(LONG, output_hidden_states=True, labels=ids) as tracer:
        pass
    out = tracer.output
    torch.testing.assert_close(out.logits, plain.logits, rtol=0, atol=ATOL)
    torch.testing.assert_close(out.loss, plain.loss, rtol=0, atol=ATOL)
    assert len(out.hidden_states) == len(plain.hidden_states) == 3
    for mine, theirs in zip(out.hidden_states, plain.hidden_states):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=ATOL)
    as_tuple = lm.trace(LONG, return_dict=False, logits_to_keep=1, trace=False)
    assert isinstance(as_tuple, tuple) and as_tuple[0].shape[1] == 1
    torch.testing.assert_close(as_tuple[0], plain_tuple[0], rtol=0, atol=ATOL)


def test_an_unknown_generate_keyword_raises_input_error_naming_it(lm, tiny):
    cls = type(tiny.hf).__name__
    with pytest.raises(InputError) as info, lm.generate(SHORT, max_new_tokens=2, foo=1):
        lm.generator.output.save()
    message = str(info.value)
    assert f"{cls}.generate() takes no keyword argument 'foo' (given to generate())" in message, message
    assert "GenerationConfig" in message and "use_cache" in message
    with pytest.raises(InputError, match="Did you mean 'max_new_tokens'"), lm.generate(SHORT, max_new_tokes=2):
        pass


def test_generation_keywords_still_work(lm, tiny):
    ids = tiny.ids(MID)
    options = {"max_new_tokens": 4, "do_sample": False, "repetition_penalty": 1.5, "min_new_tokens": 4,
               "use_cache": True, "return_dict_in_generate": False}
    with torch.no_grad():
        expected = tiny.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                    pad_token_id=tiny.eos, **options)
    with torch.no_grad(), lm.generate(MID, **options):
        generated = lm.generator.output.save()
    assert torch.equal(generated.value, expected)
