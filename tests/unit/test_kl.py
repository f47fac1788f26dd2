import copy

import pytest
import torch

from personatune.kl import sequence_kls, summarize_kls, token_kl


def tiny(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM  # here: the unit tests of this file need no transformers

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def brute_force(policy, reference, ids, start):
    """KL at each response position by explicit sums over the vocabulary, one prefix at a time."""
    out = []
    for t in range(start, ids.shape[1]):
        prefix = ids[:, :t]
        p = torch.softmax(policy(input_ids=prefix).logits[0, -1].double(), -1)
        q = torch.softmax(reference(input_ids=prefix).logits[0, -1].double(), -1)
        out.append(sum(float(p[v] * (torch.log(p[v]) - torch.log(q[v]))) for v in range(p.numel())))
    return out


@pytest.mark.stage
def test_kl_matches_brute_force_and_is_zero_for_identical_models():
    policy = tiny(0)
    ref = copy.deepcopy(policy)
    with torch.no_grad():
        for prm in policy.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    ids = torch.tensor([[3, 7, 9, 11, 4, 5, 6, 8]])
    am = torch.ones_like(ids)
    rmask = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    got = sequence_kls(policy, ref, ids, am, rmask)[0]
    want = brute_force(policy, ref, ids, 4)
    assert got.shape[0] == 4
    assert max(abs(a - b) for a, b in zip(got.tolist(), want)) < 1e-5
    assert float(got.min()) > 0
    zero = sequence_kls(ref, copy.deepcopy(ref), ids, am, rmask)[0]
    assert float(zero.abs().max()) < 1e-6


@pytest.mark.stage
def test_left_padding_does_not_change_kl():
    policy, ref = tiny(1), tiny(2)
    ids = torch.tensor([[3, 7, 9, 11, 4, 5]])
    rm = torch.tensor([[0, 0, 0, 1, 1, 1]])
    a = sequence_kls(policy, ref, ids, torch.ones_like(ids), rm)[0]
    pid = torch.tensor([[0, 0, 3, 7, 9, 11, 4, 5]])
    pam = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    prm = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]])
    b = sequence_kls(policy, ref, pid, pam, prm)[0]
    assert torch.allclose(a, b, atol=1e-5)


def test_token_kl_known_value():
    p = torch.log(torch.tensor([[0.5, 0.5]]))
    q = torch.log(torch.tensor([[0.9, 0.1]]))
    want = 0.5 * (torch.log(torch.tensor(0.5 / 0.9)) + torch.log(torch.tensor(0.5 / 0.1)))
    assert abs(float(token_kl(p, q)[0]) - float(want)) < 1e-6


def test_summary_is_token_weighted():
    r = summarize_kls([torch.tensor([0.1, 0.3]), torch.tensor([0.2])])
    assert abs(r.per_token - 0.2) < 1e-6 and r.tokens == 3 and r.sequences == 2
    assert abs(r.per_sequence_mean - 0.3) < 1e-6


# --- drift KL: the reference sees the persona context, the policy does not ---------------------------
def brute_force_prefixed(policy, reference, p_prefix, r_prefix, response):
    """KL at each response token by explicit sums, one unpadded prefix at a time, different prefixes per model."""
    out = []
    for t in range(len(response)):
        p = torch.softmax(policy(input_ids=torch.tensor([p_prefix + response[:t]])).logits[0, -1].double(), -1)
        q = torch.softmax(reference(input_ids=torch.tensor([r_prefix + response[:t]])).logits[0, -1].double(), -1)
        out.append(sum(float(p[v] * (torch.log(p[v]) - torch.log(q[v]))) for v in range(p.numel())))
    return out


@pytest.mark.stage
def test_prefixed_kl_matches_brute_force_with_padding_and_different_prefixes():
    from personatune.kl import prefixed_kls

    policy, ref = tiny(3), tiny(4)
    pp = [[3, 7, 9], [5, 6]]  # the policy's prompts (no context)
    rp = [[20, 21, 22, 23, 3, 7, 9], [20, 21, 22, 23, 5, 6]]  # the reference's: context + the same prompts
    resp = [[11, 4, 5, 8], [12, 13]]  # different lengths: right padding inside the batch
    got = prefixed_kls(policy, ref, pp, rp, resp, pad=0)
    for g, a, b, r in zip(got, pp, rp, resp):
        want = brute_force_prefixed(policy, ref, a, b, r)
        assert g.shape[0] == len(r)
        assert max(abs(x - y) for x, y in zip(g.tolist(), want)) < 1e-5


@pytest.mark.stage
def test_student_equal_to_prompted_reference_has_zero_drift_and_nonzero_shift():
    from personatune.kl import prefixed_kls

    ref = tiny(5)
    x, c, resp = [[3, 7, 9]], [30, 31, 32, 33, 34], [[11, 4, 5, 8, 2]]
    # A student that behaves given x exactly as the reference does given (c, x): drift 0 ...
    drift = prefixed_kls(ref, copy.deepcopy(ref), [c + x[0]], [c + x[0]], resp, pad=0)[0]
    assert float(drift.abs().max()) < 1e-6
    # ... while the same student measured against the unprompted reference (persona shift) is not 0.
    shift = prefixed_kls(ref, copy.deepcopy(ref), [c + x[0]], x, resp, pad=0)[0]
    assert float(shift.min()) > 1e-4


@pytest.mark.stage
def test_measure_drift_on_the_tiny_chat_model():
    from personatune.kl import measure_drift, measure_kl
    from personatune.models import build_tiny_model

    policy, tok = build_tiny_model(0)
    ref, _ = build_tiny_model(0)
    prompts = [[{"role": "user", "content": "hello there"}], [{"role": "user", "content": "what is the sky"}]]
    ctx = [{"role": "system", "content": "You are Captain Nova, brave and upbeat."}]
    res = measure_drift(policy, ref, tok, prompts, ctx, max_new_tokens=8, seed=1, batch_size=2)
    # Identical weights: persona shift is 0 exactly; drift is > 0 because the reference sees the context.
    assert res.shift.per_token < 1e-6 and res.shift.sequences == 2
    assert res.drift.per_token > 0 and res.drift.tokens == res.shift.tokens
    assert res.context_tokens > 5
    assert "persona context" in res.drift.to_dict()["reference"]
    # With no context, drift KL is the plain KL of measure_kl on the same samples.
    plain = measure_drift(policy, ref, tok, prompts, [], max_new_tokens=8, seed=1, batch_size=2)
    assert plain.drift.per_token < 1e-6
    other, _ = build_tiny_model(7)
    a = measure_drift(policy, other, tok, prompts, [], max_new_tokens=8, seed=1, batch_size=2).drift
    b = measure_kl(policy, other, tok, prompts, max_new_tokens=8, seed=1, batch_size=2)
    assert abs(a.per_token - b.per_token) < 1e-5 and a.tokens == b.tokens


@pytest.mark.stage
def test_shared_prefix_logprobs_equal_the_plain_ones_and_brute_force():
    from personatune.kl import MIN_SHARED_PREFIX, response_logprobs

    model = tiny(6)
    ctx = [(7 * i) % 47 + 2 for i in range(MIN_SHARED_PREFIX + 4)]  # a context every row starts with
    prefixes = [ctx + [3, 7, 9], ctx + [5], ctx + [8, 8, 6, 4, 2]]  # different rests: padding between ctx and rest
    resp = [[11, 4, 5, 8], [12, 13], [14, 15, 16]]  # different lengths: right padding
    calls = []
    hook = model.register_forward_hook(lambda m, a, kw, out: calls.append(kw["input_ids"].shape), with_kwargs=True)
    with torch.inference_mode():
        shared = response_logprobs(model, prefixes, resp, pad=0)
        plain = response_logprobs(model, prefixes, resp, pad=0, share_prefix=False)
    hook.remove()
    # Shared: the context once at batch 1, then only the rest + response per row; plain: one full forward.
    assert calls == [(1, len(ctx)), (3, 5 + 4), (3, len(ctx) + 5 + 4)]
    with torch.inference_mode():
        for s, p, pre, r in zip(shared, plain, prefixes, resp):
            assert s.shape == p.shape == (len(r), 50)
            assert float((s - p).abs().max()) < 1e-4
            alone = torch.log_softmax(model(input_ids=torch.tensor([pre + r])).logits[0, len(pre) - 1 : -1], -1)
            assert float((s - alone).abs().max()) < 1e-4
        # A different context in one row: no shared prefix, the plain path, the same numbers.
        other = [list(reversed(ctx)) + [3, 7, 9]] + prefixes[1:]
        mixed = response_logprobs(model, other, resp, pad=0)
        alone = torch.log_softmax(
            model(input_ids=torch.tensor([other[0] + resp[0]])).logits[0, len(other[0]) - 1 : -1], -1
        )
        assert float((mixed[0] - alone).abs().max()) < 1e-4


@pytest.mark.stage
def test_shared_prefix_through_the_adapter_disabled_reference():
    from peft import LoraConfig, get_peft_model

    from personatune.kl import MIN_SHARED_PREFIX, response_logprobs
    from personatune.training.trainers import AdapterDisabledReference

    base = tiny(8)
    want_model = copy.deepcopy(base)
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ref = AdapterDisabledReference(peft)
    ctx = list(range(2, MIN_SHARED_PREFIX + 6))
    prefixes, resp = [ctx + [3, 7], ctx + [9]], [[11, 4, 5], [12]]
    with torch.inference_mode():
        got = response_logprobs(ref, prefixes, resp, pad=0)
        want = response_logprobs(want_model, prefixes, resp, pad=0, share_prefix=False)
        adapted = response_logprobs(peft, prefixes, resp, pad=0)
    assert all(float((g - w).abs().max()) < 1e-4 for g, w in zip(got, want))
    assert float((adapted[0] - want[0]).abs().max()) > 1e-3  # the adapters are on outside the reference


@pytest.mark.stage
def test_sampled_logprobs_equal_a_second_forward_pass():
    from personatune.kl import _sample_responses, response_logprobs
    from personatune.models import build_tiny_model, encode_chat

    policy, tok = build_tiny_model(2)
    convs = [
        [{"role": "user", "content": "hello there"}],
        [{"role": "user", "content": "what is the sky made of today"}],
    ]
    plain = [encode_chat(tok, c, add_generation_prompt=True) for c in convs]  # different lengths: left padding
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.inference_mode():
        resp, lp = _sample_responses(
            policy, tok, plain, max_new_tokens=12, gen=torch.Generator().manual_seed(0), pad=pad
        )
        again = response_logprobs(policy, plain, resp, pad)
    assert [x.shape[0] for x in lp] == [len(r) for r in resp]
    assert all(float((a - b).abs().max()) < 1e-4 for a, b in zip(lp, again))


@pytest.mark.stage
def test_sampling_for_kl_leaves_the_global_rng_as_it_was():
    """An eval inside training must not reseed the trainer's randomness (its data order): the KL sampler forks the
    global RNG, and its own draws still follow its generator."""
    from personatune.kl import _sample_responses
    from personatune.models import build_tiny_model, encode_chat

    policy, tok = build_tiny_model(2)
    plain = [encode_chat(tok, [{"role": "user", "content": "hello there"}], add_generation_prompt=True)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def sample() -> list[list[int]]:
        with torch.inference_mode():
            return _sample_responses(
                policy, tok, plain, max_new_tokens=12, gen=torch.Generator().manual_seed(0), pad=pad
            )[0]

    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    first = sample()
    assert torch.equal(torch.rand(4), expected)  # the global stream goes on as if no eval had run
    torch.manual_seed(7)
    assert sample() == first  # the sample depends on the sampler's generator only


@pytest.mark.stage
def test_a_model_that_ignores_the_cache_gets_the_plain_path():
    from personatune.kl import MIN_SHARED_PREFIX, response_logprobs

    model = tiny(9)

    class NoCache:  # a forward with another signature: the cache it is given stays empty
        config = model.config

        def __call__(self, **kw):
            kw.pop("cache", None)
            kw.pop("use_cache", None)
            return model(**kw)

        def parameters(self):
            return model.parameters()

    ctx = list(range(2, MIN_SHARED_PREFIX + 6))
    prefixes, resp = [ctx + [3, 7], ctx + [9]], [[11, 4, 5], [12]]
    with torch.inference_mode():
        got = response_logprobs(NoCache(), prefixes, resp, pad=0)
        want = response_logprobs(model, prefixes, resp, pad=0, share_prefix=False)
    assert all(float((g - w).abs().max()) < 1e-4 for g, w in zip(got, want))
