"""HFBackend on a tiny random Llama (personatune.models.build_tiny_model: ChatML template, special tokens)."""

import pytest
import torch

from personatune.generation import BackendError, GenerationBackend
from personatune.generation.hf import HFBackend, encode_chat

LENGTHS = (1, 9, 3, 20, 5, 2, 14)  # unequal prompt lengths: batches need real left padding


def convs():
    return [[{"role": "user", "content": " ".join(["word"] * k) + f" #{i}"}] for i, k in enumerate(LENGTHS)]


@pytest.fixture(scope="module")
def tiny(tiny_varied):
    return tiny_varied


def reference_greedy(model, tok, conv, max_new_tokens):
    """One prompt, no padding at all, plain model.generate: the ground truth for greedy decoding."""
    ids = encode_chat(tok, conv)
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, len(ids):].tolist()
    return new[:next((i for i, t in enumerate(new) if t == tok.eos_token_id), len(new))]


def test_satisfies_protocol(tiny):
    assert isinstance(HFBackend(*tiny), GenerationBackend)


def test_batched_greedy_equals_sequential_and_keeps_order(tiny):
    model, tok = tiny
    batched = HFBackend(model, tok, batch_size=4).generate_ids(convs(), max_new_tokens=12, temperature=0.0)
    sequential = HFBackend(model, tok, batch_size=1).generate_ids(convs(), max_new_tokens=12, temperature=0.0)
    reference = [reference_greedy(model, tok, c, 12) for c in convs()]
    assert batched == sequential == [[r] for r in reference]
    assert len({tuple(r) for r in reference}) > 1  # prompts really produce different continuations
    texts = HFBackend(model, tok, batch_size=3).generate(convs(), max_new_tokens=12, temperature=0.0)
    assert [t[0] for t in texts] == [tok.decode(r, skip_special_tokens=True).strip() for r in reference]
    # Reversed input -> reversed output (results follow the caller's order, not the length sort).
    rev = HFBackend(model, tok, batch_size=4).generate(convs()[::-1], max_new_tokens=12, temperature=0.0)
    assert rev == texts[::-1]


def test_no_doubled_bos(tiny):
    _, tok = tiny
    ids = encode_chat(tok, convs()[0])
    if tok.bos_token_id is not None:
        assert ids[:2] != [tok.bos_token_id, tok.bos_token_id]
    rendered = tok.apply_chat_template(convs()[0], tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == rendered


def test_stops_at_eos(tiny):
    model, tok = tiny
    full = HFBackend(model, tok).generate_ids(convs()[:1], max_new_tokens=10, temperature=0.0)[0][0]
    stop = full[4]
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, stop]  # pretend that token is an EOS
    try:
        b = HFBackend(model, tok)
        got = b.generate_ids(convs()[:1], max_new_tokens=10, temperature=0.0)[0][0]
    finally:
        model.generation_config.eos_token_id = saved
    assert got == full[:full.index(stop)]
    assert b.last_stats["new_tokens"] == len(got)


def test_special_tokens_do_not_leak(tiny):
    model, tok = tiny
    special = tok.convert_tokens_to_ids("<|im_start|>") if "<|im_start|>" in tok.all_special_tokens else tok.all_special_ids[0]
    calls = {"n": 0}

    def every_other_step(module, inputs, output):
        # Force a special token on every second decoding step, for every row of the batch.
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            output = output.clone()
            output[..., special] += 1e4
        return output

    h = model.lm_head.register_forward_hook(every_other_step)
    try:
        b = HFBackend(model, tok, batch_size=4)
        ids = b.generate_ids(convs()[:3], max_new_tokens=8, temperature=0.0)
        calls["n"] = 0
        texts = b.generate(convs()[:3], max_new_tokens=8, temperature=0.0)
    finally:
        h.remove()
    assert all(special in r[0] for r in ids)  # the raw ids do contain the special token ...
    for r, t in zip(ids, texts):
        assert tok.convert_ids_to_tokens(special) not in t[0]  # ... the text does not
        assert t[0] == tok.decode([x for x in r[0] if x not in tok.all_special_ids], skip_special_tokens=True).strip()


def test_sampling_seeded_n_and_rng_untouched(tiny):
    model, tok = tiny
    b = HFBackend(model, tok, batch_size=2)
    before = torch.get_rng_state()
    a = b.generate(convs()[:3], max_new_tokens=8, temperature=1.0, top_p=0.95, n=3, seed=7)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is not consumed
    assert [len(x) for x in a] == [3, 3, 3]
    assert len(set(a[0])) > 1  # three different samples
    assert b.generate(convs()[:3], max_new_tokens=8, temperature=1.0, top_p=0.95, n=3, seed=7) == a
    assert b.generate(convs()[:3], max_new_tokens=8, temperature=1.0, top_p=0.95, n=3, seed=8) != a


def test_greedy_n_repeats(tiny):
    out = HFBackend(*tiny).generate(convs()[:2], max_new_tokens=6, temperature=0.0, n=3)
    assert [len(set(o)) for o in out] == [1, 1] and [len(o) for o in out] == [3, 3]


def test_bad_arguments(tiny):
    with pytest.raises(BackendError, match="batch_size"):
        HFBackend(*tiny, batch_size=0)
    with pytest.raises(BackendError, match="top_p"):
        HFBackend(*tiny).generate(convs(), max_new_tokens=4, temperature=1.0, top_p=0.0)


def test_explicit_cpu_device(tiny):
    b = HFBackend(*tiny, device="cpu")
    assert b.device.type == "cpu"
    assert len(b.generate(convs()[:1], max_new_tokens=4, temperature=0.0)[0]) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(tiny):
    import copy

    model, tok = tiny
    cpu = HFBackend(model, tok, batch_size=4).generate_ids(convs(), max_new_tokens=8, temperature=0.0)
    gpu = HFBackend(copy.deepcopy(model), tok, batch_size=4, device="cuda").generate_ids(convs(), max_new_tokens=8, temperature=0.0)
    assert gpu == cpu


def test_shared_prefill_gives_the_same_draws_as_num_return_sequences(tiny):
    model, tok = tiny
    # different prompt lengths in one batch: left padding and position ids must line up in the cached path
    cs = [[{"role": "system", "content": "You are a pirate captain. " * k}, {"role": "user", "content": f"question {k}?" * k}] for k in (1, 4, 9)]
    a = HFBackend(model, tok, batch_size=3, share_prefill=False).generate(cs, max_new_tokens=10, temperature=1.0, top_p=0.9, n=3, seed=5)
    b = HFBackend(model, tok, batch_size=3, share_prefill=True).generate(cs, max_new_tokens=10, temperature=1.0, top_p=0.9, n=3, seed=5)
    assert a == b
    assert len({x for per in b for x in per}) > 3  # real sampling: the draws differ from each other
