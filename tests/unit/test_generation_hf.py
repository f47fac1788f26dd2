"""HFBackend on a tiny random Llama (personatune.models.build_tiny_model: ChatML template, special tokens)."""

import pytest
import torch

from personatune.generation import BackendError, GenerationBackend
from personatune.generation.hf import HFBackend, PrefillOptions, encode_chat

# Every test here runs a tiny in-process model (a backend, or the app serving one): the stage tier.
pytestmark = pytest.mark.stage

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
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    new = out[0, len(ids) :].tolist()
    return new[: next((i for i, t in enumerate(new) if t == tok.eos_token_id), len(new))]


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
    assert got == full[: full.index(stop)]
    assert b.last_stats["new_tokens"] == len(got)


def test_special_tokens_do_not_leak(tiny):
    model, tok = tiny
    special = (
        tok.convert_tokens_to_ids("<|im_start|>")
        if "<|im_start|>" in tok.all_special_tokens
        else tok.all_special_ids[0]
    )
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
def test_cuda_matches_cpu(tiny):
    import copy

    model, tok = tiny
    cpu = HFBackend(model, tok, batch_size=4).generate_ids(convs(), max_new_tokens=8, temperature=0.0)
    gpu = HFBackend(copy.deepcopy(model), tok, batch_size=4, device="cuda").generate_ids(
        convs(), max_new_tokens=8, temperature=0.0
    )
    assert gpu == cpu


def test_shared_prefill_gives_the_same_draws_as_num_return_sequences(tiny):
    model, tok = tiny
    # different prompt lengths in one batch: left padding and position ids must line up in the cached path
    cs = [
        [
            {"role": "system", "content": "You are a pirate captain. " * k},
            {"role": "user", "content": f"question {k}?" * k},
        ]
        for k in (1, 4, 9)
    ]
    a = HFBackend(model, tok, batch_size=3, prefill=PrefillOptions(share_prefill=False)).generate(
        cs, max_new_tokens=10, temperature=1.0, top_p=0.9, n=3, seed=5
    )
    b = HFBackend(model, tok, batch_size=3, prefill=PrefillOptions(share_prefill=True)).generate(
        cs, max_new_tokens=10, temperature=1.0, top_p=0.9, n=3, seed=5
    )
    assert a == b
    assert len({x for per in b for x in per}) > 3  # real sampling: the draws differ from each other


def persona_convs():
    """Stage-3-like prompts: a long shared system prompt and few-shot turns, then user turns of unequal length;
    two prompts behind a second system prompt (another context group) and one multi-turn prompt."""
    system = "You are Captain Nova, a cheerful starship captain who loves the sea of stars. " * 3
    shots = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Ahoy, matey! Welcome aboard the ship."},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "Shipshape and ready to sail!"},
    ]
    out = [
        [{"role": "system", "content": system}, *shots, {"role": "user", "content": " ".join(["word"] * k) + f" #{k}"}]
        for k in LENGTHS
    ]
    out += [
        [
            {"role": "system", "content": system + " Keep it short."},
            *shots,
            {"role": "user", "content": f"question {k}?"},
        ]
        for k in (2, 7)
    ]
    out.append(
        [
            {"role": "system", "content": system},
            *shots,
            {"role": "user", "content": "Tell me more."},
            {"role": "assistant", "content": "The stars are wide!"},
            {"role": "user", "content": "And then?"},
        ]
    )
    return out


def test_shared_prefix_gives_the_greedy_output_of_the_plain_path(tiny):
    """The optimized path (prefix prefilled once, one prefix copy attended by every sequence, prefix kept
    between calls) must not change what the model says: greedy ids equal the plain path's and a lone
    unpadded model.generate's, for every batch size, and on a second call served from the kept prefix."""
    model, tok = tiny
    cs = persona_convs()
    plain_backend = HFBackend(model, tok, batch_size=4, prefill=PrefillOptions(share_prefix=False))
    plain = plain_backend.generate_ids(cs, max_new_tokens=12, temperature=0.0)
    assert plain == [[reference_greedy(model, tok, c, 12)] for c in cs]
    assert len({tuple(r[0]) for r in plain}) > 1
    for kw in (
        {"batch_size": 4},
        {"batch_size": 1},
        {"batch_size": 16},
        {"batch_size": 4, "prefill": PrefillOptions(shared_attention=False)},
    ):
        b = HFBackend(model, tok, prefix_cache=2, **kw)
        assert b.generate_ids(cs, max_new_tokens=12, temperature=0.0) == plain, kw
        # the prefix was shared (less of it with one batch mixing both system prompts)
        assert b.last_stats["prefill_tokens"] < plain_backend.last_stats["prefill_tokens"] / (
            1 if kw["batch_size"] == 16 else 2
        ), kw
        first = b.last_stats["prefill_tokens"]
        assert b.generate_ids(cs[::-1], max_new_tokens=12, temperature=0.0) == plain[::-1], (
            kw
        )  # kept prefixes, caller's order
        assert b.last_stats["prefill_tokens"] < first, kw


def test_shared_prefix_gives_the_same_draws_with_the_same_batches(tiny):
    model, tok = tiny
    cs = persona_convs()[: len(LENGTHS)]  # one context: the plain path and the shared one form the same batches
    a = HFBackend(model, tok, batch_size=3, prefill=PrefillOptions(share_prefix=False)).generate(
        cs, max_new_tokens=10, temperature=1.0, top_p=0.9, n=3, seed=5
    )
    b = HFBackend(model, tok, batch_size=3).generate(cs, max_new_tokens=10, temperature=1.0, top_p=0.9, n=3, seed=5)
    assert a == b
    assert len({x for per in b for x in per}) > 3


def test_kept_prefix_is_dropped_when_the_weights_change(tiny):
    import copy

    model, tok = tiny
    model = copy.deepcopy(model)
    cs = persona_convs()
    b = HFBackend(model, tok, batch_size=4, prefix_cache=4)
    before = b.generate_ids(cs, max_new_tokens=8, temperature=0.0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(1.5)  # an in-place update, as an optimizer step
    after = b.generate_ids(cs, max_new_tokens=8, temperature=0.0)
    assert after == HFBackend(model, tok, batch_size=4, prefill=PrefillOptions(share_prefix=False)).generate_ids(
        cs, max_new_tokens=8, temperature=0.0
    )
    assert after != before


def test_bad_prefix_cache(tiny):
    with pytest.raises(BackendError, match="prefix_cache"):
        HFBackend(*tiny, prefix_cache=-1)


def test_batches_end_where_the_shared_prefix_would_be_lost(tiny):
    """Two unrelated system prompts in one call: each gets its own batch (and its own shared prefix), even
    though both fit in one batch; the outputs are still the plain path's."""
    model, tok = tiny
    a = persona_convs()[:3]
    b = [
        [
            {"role": "system", "content": "Numbers like 1, 2, 3, 10, 42 and 100 appear in many questions. " * 3},
            {"role": "user", "content": f"question {k}?"},
        ]
        for k in (1, 4, 9)
    ]
    calls = []
    got = HFBackend(model, tok, batch_size=16, progress=lambda d, t: calls.append((d, t))).generate_ids(
        a + b, max_new_tokens=8, temperature=0.0
    )
    assert calls == [(3, 6), (6, 6)]
    assert got == HFBackend(model, tok, batch_size=16, prefill=PrefillOptions(share_prefix=False)).generate_ids(
        a + b, max_new_tokens=8, temperature=0.0
    )
