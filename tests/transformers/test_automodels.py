"""LanguageModel with other AutoModel classes: ``AutoModelForSeq2SeqLM`` (T5),
``AutoModelForSequenceClassification`` (BERT, GPT-2) and ``AutoModelForMaskedLM`` (BERT).

Tiny seeded models saved with ``save_pretrained`` and loaded through ``from_pretrained``;
expected values from a separately loaded plain model, raw forward hooks and direct calls.
"""

import pytest
import torch
from transformers import (AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification,
                          AutoTokenizer)

from nnsight_core import BatchError, UnsupportedMethodError
from nnsight_core.testing import hook_count
from nnsight_transformers import LanguageModel
from nnsight_transformers.testing import tiny_checkpoint

SHORT, LONG = "Paris", "The Eiffel Tower is in the city of"


def _ids(tok, text):
    return tok(text, return_tensors="pt", return_token_type_ids=False)["input_ids"]


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    folder = tiny_checkpoint("t5", str(tmp_path_factory.mktemp("t5")))
    return folder, AutoModelForSeq2SeqLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_t5_trace_reads_encoder_and_decoder_like_raw_hooks(t5):
    folder, hf, tok = t5
    model = LanguageModel(folder, automodel=AutoModelForSeq2SeqLM)
    assert model.standard_names is False
    with model.trace(LONG):
        enc = model.encoder.block[1].output[0].save()
        dec = model.decoder.block[0].output[0].save()
        logits = model.output.logits.save()
    seen = {}
    handles = [hf.encoder.block[1].register_forward_hook(lambda m, a, o: seen.__setitem__("enc", o[0])),
               hf.decoder.block[0].register_forward_hook(lambda m, a, o: seen.__setitem__("dec", o[0]))]
    start = torch.tensor([[hf.config.decoder_start_token_id]])
    try:
        with torch.no_grad():
            expected = hf(input_ids=_ids(tok, LONG), decoder_input_ids=start).logits
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(enc.value, seen["enc"])
    torch.testing.assert_close(dec.value, seen["dec"])
    torch.testing.assert_close(logits.value, expected)
    assert hook_count(model._model) == 0


def test_t5_trace_takes_explicit_decoder_inputs(t5):
    folder, hf, tok = t5
    model = LanguageModel(folder, automodel=AutoModelForSeq2SeqLM)
    decoder_ids = torch.tensor([[1, 5, 9]])
    with model.trace(LONG, decoder_input_ids=decoder_ids):
        logits = model.output.logits.save()
    with torch.no_grad():
        expected = hf(input_ids=_ids(tok, LONG), decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(logits.value, expected)


def test_t5_token_indexing_on_encoder_values_is_per_invoke(t5):
    folder, hf, tok = t5
    model = LanguageModel(folder, automodel=AutoModelForSeq2SeqLM)
    with model.trace() as tracer:
        with tracer.invoke(SHORT):
            short_first = model.encoder.block[0].output[0].t[0].save()
            short_last = model.encoder.final_layer_norm.output.t[-1].save()
        with tracer.invoke(LONG):
            long_last = model.encoder.final_layer_norm.output.t[-1].save()
    for text, (first, last) in ((SHORT, (short_first, short_last)), (LONG, (None, long_last))):
        seen = {}
        handles = [hf.encoder.block[0].register_forward_hook(lambda m, a, o: seen.__setitem__("b0", o[0])),
                   hf.encoder.final_layer_norm.register_forward_hook(lambda m, a, o: seen.__setitem__("n", o))]
        try:
            with torch.no_grad():
                hf.encoder(input_ids=_ids(tok, text))
        finally:
            for h in handles:
                h.remove()
        torch.testing.assert_close(last.value, seen["n"][:, -1], atol=1e-5, rtol=1e-4)
        if first is not None:
            torch.testing.assert_close(first.value, seen["b0"][:, 0], atol=1e-5, rtol=1e-4)


def test_t5_generate_with_a_per_step_decoder_intervention_equals_raw_hooks(t5):
    folder, hf, tok = t5
    model = LanguageModel(folder, automodel=AutoModelForSeq2SeqLM)
    with model.generate(LONG, max_new_tokens=3):
        steps = model.decoder.block[1].all().output[0].save()     # a list: one per step
        model.lm_head.next().output[:, -1, 7] = 1e4               # step 1 only: force token 7
        encoded = model.encoder.output.last_hidden_state.save()   # the encoder runs once
        ids = model.generator.output.save()

    seen, calls = [], []

    def force_second(m, a, o):
        calls.append(1)
        if len(calls) == 2:
            o = o.clone()
            o[:, -1, 7] = 1e4
        return o

    handles = [hf.decoder.block[1].register_forward_hook(lambda m, a, o: seen.append(o[0])),
               hf.lm_head.register_forward_hook(force_second)]
    try:
        with torch.no_grad():
            expected = hf.generate(input_ids=_ids(tok, LONG), max_new_tokens=3, do_sample=False,
                                   pad_token_id=tok.pad_token_id)
            plain_encoded = hf.encoder(input_ids=_ids(tok, LONG)).last_hidden_state
    finally:
        for h in handles:
            h.remove()
    assert ids.value.tolist() == expected.tolist() and ids.value[0, 2].item() == 7
    assert len(steps.value) == len(seen) == 3
    for got, want in zip(steps.value, seen):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(encoded.value, plain_encoded)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_sequence_classifier_reads_and_edits_logits_like_raw_hooks(arch, tmp_path):
    folder = tiny_checkpoint(arch, str(tmp_path), automodel=AutoModelForSequenceClassification)
    hf = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    head = "classifier" if arch == "bert" else "score"
    model = LanguageModel(folder, automodel=AutoModelForSequenceClassification)
    with model.trace(LONG):
        logits = model.output.logits.save()
    with torch.no_grad():
        expected = hf(input_ids=_ids(tok, LONG)).logits
    torch.testing.assert_close(logits.value, expected)
    with model.trace(LONG):
        getattr(model, head).output[:, 0] = 5.0
        edited = model.output.logits.save()
    def edit(m, a, o):
        o = o.clone()
        o[:, 0] = 5.0
        return o
    handle = getattr(hf, head).register_forward_hook(edit)
    try:
        with torch.no_grad():
            raw = hf(input_ids=_ids(tok, LONG)).logits
    finally:
        handle.remove()
    torch.testing.assert_close(edited.value, raw)
    assert edited.value.shape == (1, hf.config.num_labels)


def test_bert_classifier_refuses_left_padding_and_batches_equal_lengths(tmp_path):
    folder = tiny_checkpoint("bert", str(tmp_path), automodel=AutoModelForSequenceClassification)
    hf = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    model = LanguageModel(folder, automodel=AutoModelForSequenceClassification)
    # BERT's pooler reads token 0, which left padding would make a pad token: a clear error.
    with pytest.raises(BatchError, match=r"BertForSequenceClassification pools its first token"):
        with model.trace() as tracer:
            with tracer.invoke(SHORT):
                model.output.logits.save()
            with tracer.invoke(LONG):
                model.output.logits.save()
    assert hook_count(model._model) == 0
    other = "The Colosseum is in the city of"
    assert _ids(tok, other).shape == _ids(tok, LONG).shape
    with model.trace() as tracer:
        with tracer.invoke(other):
            first = model.output.logits.save()
        with tracer.invoke(LONG):
            second = model.output.logits.save()
    with torch.no_grad():
        torch.testing.assert_close(first.value, hf(input_ids=_ids(tok, other)).logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(second.value, hf(input_ids=_ids(tok, LONG)).logits, atol=1e-5, rtol=1e-4)


def test_masked_lm_reads_a_layer_and_the_mask_logits(tmp_path):
    folder = tiny_checkpoint("bert", str(tmp_path), automodel=AutoModelForMaskedLM)
    hf = AutoModelForMaskedLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    text = f"The Eiffel Tower is in the city of {tok.mask_token}"
    model = LanguageModel(folder, automodel=AutoModelForMaskedLM)
    with model.trace(text):
        hidden = model.bert.encoder.layer[1].output.save()
        at_mask = model.output.logits.t[-1].save()
    seen = {}
    handle = hf.bert.encoder.layer[1].register_forward_hook(lambda m, a, o: seen.__setitem__("h", o))
    try:
        with torch.no_grad():
            logits = hf(input_ids=_ids(tok, text)).logits
    finally:
        handle.remove()
    want = seen["h"][0] if isinstance(seen["h"], tuple) else seen["h"]
    got = hidden.value[0] if isinstance(hidden.value, tuple) else hidden.value
    torch.testing.assert_close(got, want)
    assert _ids(tok, text)[0, -1].item() == tok.mask_token_id
    torch.testing.assert_close(at_mask.value, logits[:, -1])


@pytest.mark.parametrize("automodel", [AutoModelForSequenceClassification, AutoModelForMaskedLM])
def test_generate_on_a_model_that_cannot_generate_is_a_clear_error(automodel, tmp_path):
    folder = tiny_checkpoint("bert", str(tmp_path), automodel=automodel)
    model = LanguageModel(folder, automodel=automodel)
    with pytest.raises(UnsupportedMethodError, match=rf"Bert\w+ cannot generate.*automodel={automodel.__name__}"
                                                     r".*use model\.trace"):
        model.generate(LONG, max_new_tokens=2)
    with model.trace(LONG):                       # nothing left behind: the next trace works
        out = model.output.logits.save()
    assert out.value.shape[0] == 1 and hook_count(model._model) == 0


def test_gpt2_classifier_batches_invokes_of_different_lengths(tmp_path):
    # GPT-2 has no pad token; its classifier pools the last real token through
    # config.pad_token_id and refuses batches without one. LanguageModel gives it the
    # tokenizer's pad token, so left-padded invokes batch and each matches a lone run.
    folder = tiny_checkpoint("gpt2", str(tmp_path), automodel=AutoModelForSequenceClassification)
    hf = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert hf.config.pad_token_id is None
    model = LanguageModel(folder, automodel=AutoModelForSequenceClassification)
    with model.trace() as tracer:
        with tracer.invoke(SHORT):
            short = model.output.logits.save()
        with tracer.invoke(LONG):
            long = model.output.logits.save()
    assert model._model.config.pad_token_id == model.tokenizer.pad_token_id
    with torch.no_grad():
        torch.testing.assert_close(short.value, hf(input_ids=_ids(tok, SHORT)).logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(long.value, hf(input_ids=_ids(tok, LONG)).logits, atol=1e-5, rtol=1e-4)
