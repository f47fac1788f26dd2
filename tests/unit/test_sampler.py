"""NucleusSampler draws from transformers' temperature + top-p distribution (personatune.generation.sampler)."""

import pytest
import torch
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from personatune.generation.sampler import NucleusSampler, nucleus


def hf_probs(scores, temperature, top_p):
    """transformers' sampling distribution: TemperatureLogitsWarper, TopPLogitsWarper, softmax (do_sample=True)."""
    s = TemperatureLogitsWarper(temperature)(None, scores.clone())
    if top_p < 1:
        s = TopPLogitsWarper(top_p)(None, s)
    return torch.softmax(s, dim=-1)


def dense(probs, ids, vocab):
    return torch.zeros(probs.shape[0], vocab).scatter_add_(-1, ids, probs)


def rows(vocab=500):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, vocab, generator=g)
    scale = torch.tensor([[0.3], [1.0], [2.0], [4.0], [8.0], [0.05]])  # near-flat to very peaked rows
    s = base * scale
    s[3, 7] = float("-inf")  # a token another processor masked (min_new_tokens on EOS)
    return s


@pytest.mark.parametrize("temperature,top_p", [(0.8, 0.95), (1.0, 0.9), (0.5, 0.5), (1.3, 0.99)])
@pytest.mark.parametrize("candidates", [4, 64, 256])
def test_nucleus_is_transformers_distribution(temperature, top_p, candidates):
    scores = rows()
    probs, ids = nucleus(scores, temperature, top_p, candidates)
    want = hf_probs(scores, temperature, top_p)
    assert torch.allclose(dense(probs, ids, scores.shape[1]), want, atol=1e-6)
    # the near-flat row's nucleus holds hundreds of tokens: with 4 or 64 candidates it is found over the whole vocabulary
    assert int((want[5] > 0).sum()) > 64


def test_draws_follow_the_nucleus_and_argmax_takes_them():
    scores = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.06, 0.04]]))
    torch.manual_seed(3)
    sampler = NucleusSampler(1.0, top_p=0.85, candidates=2)
    draws = []
    for _ in range(6000):
        out = sampler(None, scores)
        assert int(torch.isfinite(out).sum()) == 1  # one token left; greedy decoding takes it
        draws.append(int(out.argmax()))
    freq = torch.bincount(torch.tensor(draws), minlength=5).float() / len(draws)
    want = torch.tensor([0.5, 0.25, 0.15, 0.0, 0.0]) / 0.9  # the nucleus of 0.85: the three tokens holding 0.90
    assert freq[3:].sum() == 0
    assert torch.allclose(freq, want, atol=0.025)


def test_top_p_one_samples_the_whole_distribution():
    scores = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    torch.manual_seed(4)
    s = NucleusSampler(2.0)
    freq = torch.bincount(torch.tensor([int(s(None, scores).argmax()) for _ in range(6000)]), minlength=4) / 6000
    assert torch.allclose(freq.float(), torch.softmax(scores[0] / 2.0, -1), atol=0.025)


def test_bad_parameters():
    with pytest.raises(ValueError, match="temperature"):
        NucleusSampler(0.0)
    with pytest.raises(ValueError, match="top_p"):
        NucleusSampler(1.0, top_p=1.5)
