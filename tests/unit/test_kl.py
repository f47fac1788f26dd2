import copy

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from personatune.kl import sequence_kls, summarize_kls, token_kl


def tiny(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=64)
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
