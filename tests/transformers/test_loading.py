"""Meta loading (no weights read until dispatch), dispatch, repr and the tokenizer set-up."""

import threading

import pytest
import torch
import transformers.modeling_layers
import transformers.modeling_utils
from nnsight_transformers import LanguageModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from nnsight_core import ModelKeyError

from tests.helpers import LONG, SHORT


@pytest.fixture
def reads(monkeypatch):
    """Every weight file transformers 5 opens (it reads safetensors through ``safe_open``) and every
    ``AutoModelForCausalLM.from_pretrained`` call."""
    log = {"files": [], "from_pretrained": 0}
    for module in (transformers.modeling_utils, transformers.modeling_layers):
        original = module.safe_open

        def spy(path, *args, _original=original, **kwargs):
            log["files"].append(str(path))
            return _original(path, *args, **kwargs)

        monkeypatch.setattr(module, "safe_open", spy)
    original_fp = AutoModelForCausalLM.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        log["from_pretrained"] += 1
        return original_fp(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(from_pretrained))
    return log


def devices(lm):
    return {p.device.type for p in lm._model.parameters()}


def test_the_spy_sees_plain_weight_loading(reads, tiny):
    # The spies really observe weight loading (so the zero counts below mean something).
    AutoModelForCausalLM.from_pretrained(tiny.folder)
    assert reads["from_pretrained"] == 1
    assert any(f.endswith(".safetensors") for f in reads["files"])


def test_lazy_load_reads_no_weights_until_the_first_trace(reads, tiny):
    lm = LanguageModel(tiny.folder)
    assert devices(lm) == {"meta"}
    assert lm.dispatched is False
    assert reads == {"files": [], "from_pretrained": 0}
    assert repr(lm) == repr(tiny.hf)
    assert str(lm) == str(tiny.hf)
    layer = lm.transformer.h[1] if tiny.arch == "gpt2" else lm.model.layers[1]   # envoy taken before dispatch
    assert lm.config.vocab_size == tiny.hf.config.vocab_size
    assert reads == {"files": [], "from_pretrained": 0}

    with torch.no_grad(), lm.trace(LONG):
        hidden = layer.output.save()
        logits = lm.lm_head.output.save()
    assert lm.dispatched is True
    assert devices(lm) == {"cpu"}
    assert reads["from_pretrained"] == 1
    assert any(f.endswith(".safetensors") for f in reads["files"])
    torch.testing.assert_close(logits.value, tiny.logits(tiny.ids(LONG)), rtol=0, atol=1e-5)
    assert hidden.value.shape[:2] == tiny.ids(LONG).shape
    assert repr(lm) == repr(tiny.hf)

    with torch.no_grad(), lm.trace(SHORT):
        pass
    assert reads["from_pretrained"] == 1  # loaded once


def test_trace_false_dispatches(reads, tiny):
    lm = LanguageModel(tiny.folder)
    with torch.no_grad():
        out = lm.trace(SHORT, trace=False)
    assert lm.dispatched and reads["from_pretrained"] == 1
    torch.testing.assert_close(out.logits, tiny.logits(tiny.ids(SHORT)), rtol=0, atol=1e-5)


def test_dispatch_true_loads_at_once(reads, tiny):
    lm = LanguageModel(tiny.folder, dispatch=True)
    assert lm.dispatched is True
    assert devices(lm) == {"cpu"}
    assert reads["from_pretrained"] == 1 and reads["files"]
    for name, value in lm._model.state_dict().items():
        torch.testing.assert_close(value, tiny.hf.state_dict()[name], rtol=0, atol=0)


def test_dispatch_model_method(reads, tiny):
    lm = LanguageModel(tiny.folder)
    lm.dispatch_model()
    lm.dispatch_model()  # no-op once dispatched
    assert lm.dispatched and reads["from_pretrained"] == 1
    assert devices(lm) == {"cpu"}


def test_from_pretrained_kwargs_apply_at_dispatch(tiny):
    lm = LanguageModel(tiny.folder, dtype=torch.float64)
    assert {p.dtype for p in lm._model.parameters()} == {torch.float64}   # the meta skeleton too
    with torch.no_grad(), lm.trace(SHORT):
        assert lm.lm_head.output.dtype == torch.float64                  # scanned before dispatch
        logits = lm.lm_head.output.save()
    assert {p.dtype for p in lm._model.parameters()} == {torch.float64}
    assert logits.value.dtype == torch.float64
    hf64 = AutoModelForCausalLM.from_pretrained(tiny.folder, dtype=torch.float64)
    with torch.no_grad():
        expected = hf64(input_ids=tiny.ids(SHORT)).logits
    torch.testing.assert_close(logits.value, expected, rtol=0, atol=1e-10)


def plain_logits(module, tiny, prompt):
    with torch.no_grad():
        return module(input_ids=tiny.ids(prompt)).logits


def test_to_dtype_before_dispatch_applies_to_the_loaded_weights(tiny):
    lm = LanguageModel(tiny.folder).to(torch.float64)
    assert not lm.dispatched and devices(lm) == {"meta"}
    assert {p.dtype for p in lm._model.parameters()} == {torch.float64}   # the skeleton, for scans
    with torch.no_grad(), lm.trace(SHORT):
        assert lm.lm_head.output.dtype == torch.float64                  # scanned before dispatch
        logits = lm.lm_head.output.save()
    assert {p.dtype for p in lm._model.parameters()} == {torch.float64} and devices(lm) == {"cpu"}
    assert logits.value.dtype == torch.float64
    expected = plain_logits(AutoModelForCausalLM.from_pretrained(tiny.folder).to(torch.float64), tiny, SHORT)
    torch.testing.assert_close(logits.value, expected, rtol=0, atol=1e-12)


def test_to_calls_before_dispatch_apply_in_order(tiny):
    # float16 then float64: the weights keep float16's rounding, which float64 alone would not have.
    lm = LanguageModel(tiny.folder).to(torch.float16).to(dtype=torch.float64)
    with torch.no_grad(), lm.trace(LONG):
        logits = lm.lm_head.output.save()
    plain = AutoModelForCausalLM.from_pretrained(tiny.folder).to(torch.float16).to(dtype=torch.float64)
    expected = plain_logits(plain, tiny, LONG)
    torch.testing.assert_close(logits.value, expected, rtol=0, atol=1e-12)
    direct = AutoModelForCausalLM.from_pretrained(tiny.folder).to(torch.float64)
    assert (expected - plain_logits(direct, tiny, LONG)).abs().max() > 1e-6   # float16 mattered


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")], ids=["str", "device"])
def test_to_device_before_dispatch_works(tiny, device):
    lm = LanguageModel(tiny.folder)
    assert lm.to(device) is lm and devices(lm) == {"meta"}
    with torch.no_grad(), lm.trace(SHORT):
        logits = lm.lm_head.output.save()
    assert devices(lm) == {"cpu"}
    torch.testing.assert_close(logits.value, tiny.logits(tiny.ids(SHORT)), rtol=0, atol=1e-5)


def test_to_with_bad_arguments_before_dispatch_raises_as_torch_does(tiny):
    plain = AutoModelForCausalLM.from_pretrained(tiny.folder)
    for args in [(torch.int64,), ("nonsense",)]:
        with pytest.raises(Exception) as expected:
            plain.to(*args)
        with pytest.raises(type(expected.value)):
            LanguageModel(tiny.folder).to(*args)


def test_module_without_tokenizer_raises_model_key_error(tiny):
    module = AutoModelForCausalLM.from_pretrained(tiny.folder)
    with pytest.raises(ModelKeyError, match="tokenizer="):
        LanguageModel(module)


def test_module_with_tokenizer(tiny):
    module = AutoModelForCausalLM.from_pretrained(tiny.folder)
    tok = AutoTokenizer.from_pretrained(tiny.folder)
    lm = LanguageModel(module, tokenizer=tok)
    assert lm.dispatched and lm._model is module and lm.tokenizer is tok
    assert tok.padding_side == "left" and tok.pad_token == tok.eos_token
    with torch.no_grad(), lm.trace(LONG):
        logits = lm.lm_head.output.save()
    torch.testing.assert_close(logits.value, tiny.logits(tiny.ids(LONG)), rtol=0, atol=1e-5)


def test_bad_model_key_raises_model_key_error():
    with pytest.raises(ModelKeyError):
        LanguageModel(123)


def test_tokenizer_pads_left_with_eos(tiny):
    assert tiny.tok.pad_token is None  # the checkpoint has no pad token on purpose
    lm = LanguageModel(tiny.folder)
    tok = lm.tokenizer
    assert tok.padding_side == "left"
    assert tok.pad_token == tok.eos_token == "<eos>"
    assert tok.pad_token_id == tiny.eos
    batch = tok([SHORT, LONG], padding=True)
    n = len(tiny.ids(SHORT)[0])
    width = len(tiny.ids(LONG)[0])
    assert batch["input_ids"][0] == [tiny.eos] * (width - n) + tiny.ids(SHORT)[0].tolist()
    assert batch["attention_mask"][0] == [0] * (width - n) + [1] * n


def test_an_existing_pad_token_is_kept(tiny):
    tok = AutoTokenizer.from_pretrained(tiny.folder)
    tok.pad_token = "<unk>"
    tok.padding_side = "right"
    lm = LanguageModel(tiny.folder, tokenizer=tok)
    assert lm.tokenizer is tok
    assert tok.pad_token == "<unk>" and tok.padding_side == "left"
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(SHORT):
            pass
        with tracer.invoke(LONG):
            pass
    n = tiny.ids(SHORT).shape[1]
    torch.testing.assert_close(tracer.output.logits[:1, -n:], tiny.logits(tiny.ids(SHORT)),
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("built_in", ["main thread", "each thread"])
def test_wrappers_loading_in_several_threads_at_once_load_the_right_weights(tiny, built_in):
    # transformers' loading is not thread-safe (plain from_pretrained from several threads at once
    # gives wrongly initialised models), so the expected values come from tiny.hf, loaded alone in
    # the main thread; the wrappers' skeleton builds and loads are serialised process-wide.
    threads = 4
    models = [LanguageModel(tiny.folder) if built_in == "main thread" else None for _ in range(threads)]
    prompts = [SHORT, LONG, SHORT, LONG]
    results, errors = [None] * threads, []
    barrier = threading.Barrier(threads)

    def work(i):
        try:
            barrier.wait()
            if models[i] is None:
                models[i] = LanguageModel(tiny.folder)
            with torch.no_grad(), models[i].trace(prompts[i]):
                results[i] = models[i].lm_head.output.save()
        except BaseException as error:  # noqa: BLE001 - reported below, in the main thread
            errors.append(error)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    for model, prompt, result in zip(models, prompts, results):
        assert model.dispatched and devices(model) == {"cpu"}
        torch.testing.assert_close(result.value, tiny.logits(tiny.ids(prompt)), rtol=0, atol=1e-5)
        for name, param in tiny.hf.state_dict().items():
            torch.testing.assert_close(model._model.state_dict()[name], param, rtol=0, atol=0, msg=name)
