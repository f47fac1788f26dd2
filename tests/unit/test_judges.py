"""LLM judges: OpenAIJudge against a real HTTP server on 127.0.0.1; HFJudge on a tiny random Llama."""

import math

import pytest
import torch

from personatune.errors import DataError
from personatune.generation.cache import ResponseCache
from personatune.generation.hf import encode_chat
from personatune.persona import PersonaSpec
from personatune.scoring.judges import HFJudge, OpenAIJudge, answer_from_text, rubric_messages, yes_probability
from tests.fake_openai_server import FakeOpenAIServer


def persona():
    return PersonaSpec.model_validate(
        {
            "name": "Pip",
            "summary": "A cheerful ship's cat who narrates life at sea.",
            "traits": [
                {
                    "id": "curious",
                    "description": "Asks questions and wants to know how things work.",
                    "positive": [
                        "Ooh, what does that lever do?",
                        "How do the sails know where to go?",
                        "Tell me more!",
                    ],
                    "negative": ["I don't care how it works.", "Whatever, not interested.", "No need to explain."],
                },
                {
                    "id": "cheerful",
                    "description": "Upbeat and warm, sees the bright side.",
                    "positive": [
                        "What a lovely morning!",
                        "We'll be fine, look at that sunset!",
                        "Hooray, fish for dinner!",
                    ],
                    "negative": ["Everything is awful.", "I hate this voyage.", "Nothing ever goes right."],
                    "inverse": "Gloomy and sour.",
                },
            ],
        }
    )


TEXTS = ["What is that rope for? Tell me!", "Ugh, rain again.", "Lovely day."]
PROMPTS = ["Look at the mast.", None, "How are you?"]


def is_violation_question(body):
    return "Question: does the reply go against" in body["messages"][-1]["content"]


# --- rubric and answer parsing --------------------------------------------------------------------
def test_rubric_has_trait_exemplars_reply_and_question():
    p = persona()
    m = rubric_messages(p, p.trait("cheerful"), "Lovely day.", "How are you?", "expressed")
    user = m[-1]["content"]
    for part in [
        "Upbeat and warm",
        "Gloomy and sour",
        '"What a lovely morning!"',
        '"Everything is awful."',
        "Lovely day.",
        'The user said: "How are you?"',
        'express the trait "cheerful"',
        "Yes or No",
    ]:
        assert part in user
    assert '"Hooray, fish for dinner!"' not in user  # exemplars=2 by default
    v = rubric_messages(p, p.trait("cheerful"), "Lovely day.", None, "violated")[-1]["content"]
    assert "go against" in v and "The user said" not in v


def test_yes_probability_and_text_answers():
    alts = [("Yes", math.log(0.6)), (" yes", math.log(0.1)), ("No", math.log(0.2)), ("Maybe", math.log(0.1))]
    assert yes_probability(alts) == pytest.approx(0.7 / 0.9)
    assert yes_probability([["**NO", math.log(0.3)], [" Yes", math.log(0.1)]]) == pytest.approx(0.25)
    assert yes_probability([("Maybe", -0.1)]) is None
    assert [answer_from_text(t) for t in ["Yes.", " **No**", "no way", "Perhaps", ""]] == [1.0, 0.0, 0.0, None, None]


# --- OpenAIJudge ----------------------------------------------------------------------------------
@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


def test_openai_judge_from_logprobs(server):
    def lps(body):
        if is_violation_question(body):
            return [("\n", math.log(0.2)), ("No", math.log(0.5)), ("Yes", math.log(0.25))]  # -> 1/3
        if "rope" in body["messages"][-1]["content"]:
            return [
                ("Yes", math.log(0.6)),
                (" yes", math.log(0.1)),
                ("No", math.log(0.2)),
                ("Maybe", math.log(0.1)),
            ]  # -> 7/9
        return [("No", math.log(0.9)), ("Yes", math.log(0.1))]  # -> 0.1

    server.logprobs_fn = lps
    server.responder = lambda body: "Maybe"  # the text would be undetermined: the numbers must come from logprobs
    j = OpenAIJudge(server.base_url, "judge-model", concurrency=4)
    out = j.judge(persona(), TEXTS, PROMPTS)
    assert len(out) == 3 and all(set(o) == {"curious", "cheerful"} for o in out)
    assert out[0]["curious"] == pytest.approx((0.7 / 0.9, 1 / 3))
    assert out[1]["cheerful"] == pytest.approx((0.1, 1 / 3))
    assert len(server.requests) == 3 * 2 * 2  # texts x traits x questions
    body = server.requests[0]
    assert body["logprobs"] is True and body["top_logprobs"] == 10 and body["temperature"] == 0.0
    assert j.stats == {"logprobs": 12, "text": 0, "undetermined": 0}


def test_openai_judge_text_fallback_without_logprobs(server):
    server.responder = lambda body: "No." if is_violation_question(body) else "Yes"
    j = OpenAIJudge(server.base_url, "judge-model")
    out = j.judge(persona(), TEXTS[:2])
    assert out == [{"curious": (1.0, 0.0), "cheerful": (1.0, 0.0)}] * 2
    assert j.stats["text"] == 8 and j.stats["logprobs"] == 0


def test_openai_judge_server_rejecting_logprobs(server):
    server.reject_logprobs = True
    server.responder = lambda body: "yes" if is_violation_question(body) else "no"
    j = OpenAIJudge(server.base_url, "judge-model", concurrency=1, max_retries=0)
    out = j.judge(persona(), TEXTS[:1])
    assert out == [{"curious": (0.0, 1.0), "cheerful": (0.0, 1.0)}]
    assert sum(1 for b in server.requests if b.get("logprobs")) == 1  # one 400, then no more logprob requests
    # Several requests in flight when the first 400 arrives: each falls back, none fails.
    server.delay = 0.02
    j4 = OpenAIJudge(server.base_url, "judge-model", concurrency=4, max_retries=0)
    assert j4.judge(persona(), TEXTS) == [{"curious": (0.0, 1.0), "cheerful": (0.0, 1.0)}] * 3
    assert j4.stats["text"] == 12


def test_openai_judge_undetermined_leaves_trait_to_detectors(server):
    # Only the "cheerful" violation question gets an answer that is neither Yes nor No.
    server.responder = lambda body: (
        "I cannot say." if is_violation_question(body) and '"cheerful"' in body["messages"][-1]["content"] else "No"
    )
    j = OpenAIJudge(server.base_url, "judge-model")
    assert j.judge(persona(), ["hm"]) == [{"curious": (0.0, 0.0)}]
    assert j.stats["undetermined"] == 1


@pytest.mark.stage
def test_judges_satisfy_scorer_protocol(server, tiny):
    from personatune.scoring.scorer import Judge

    assert isinstance(OpenAIJudge(server.base_url, "m"), Judge)
    assert isinstance(HFJudge(*tiny), Judge)


def test_openai_judge_retries_and_cache(tmp_path, server):
    server.logprobs_fn = lambda body: [("Yes", math.log(0.3)), ("No", math.log(0.7))]
    server.fail_next(500, 429)
    j = OpenAIJudge(server.base_url, "judge-model", concurrency=2, cache=ResponseCache(tmp_path / "judge.jsonl"))
    first = j.judge(persona(), TEXTS, PROMPTS)
    assert len(server.requests) == 12 + 2
    assert all(v == pytest.approx((0.3, 0.3)) for o in first for v in o.values())
    server.requests.clear()
    again = OpenAIJudge(server.base_url, "judge-model", cache=ResponseCache(tmp_path / "judge.jsonl"))
    assert again.judge(persona(), TEXTS, PROMPTS) == first and server.requests == []


def test_prompts_length_mismatch(server):
    with pytest.raises(DataError, match="2 texts but 1 prompts"):
        OpenAIJudge(server.base_url, "m").judge(persona(), ["a", "b"], ["p"])


# --- HFJudge --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_varied):
    return tiny_varied


@pytest.mark.stage
def test_hf_judge_shape_range_and_batching(tiny):
    model, tok = tiny
    out = HFJudge(model, tok, batch_size=5).judge(persona(), TEXTS, PROMPTS)
    assert len(out) == 3 and all(set(o) == {"curious", "cheerful"} for o in out)
    flat = [p for o in out for pair in o.values() for p in pair]
    assert len(flat) == 12 and all(0.0 <= p <= 1.0 for p in flat)
    single = HFJudge(model, tok, batch_size=1).judge(persona(), TEXTS, PROMPTS)  # no padding at all
    for a, b in zip(out, single):
        for t in a:
            assert a[t] == pytest.approx(b[t], abs=1e-5)


@pytest.mark.stage
def test_hf_judge_matches_manual_logits(tiny):
    model, tok = tiny
    j = HFJudge(model, tok)
    p = persona()
    msgs = rubric_messages(p, p.trait("curious"), TEXTS[0], PROMPTS[0], "violated")
    ids = encode_chat(tok, msgs)
    with torch.inference_mode():
        probs = torch.softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
    yes, no = probs[j.yes_ids].sum().item(), probs[j.no_ids].sum().item()
    assert j.judge(p, TEXTS, PROMPTS)[0]["curious"][1] == pytest.approx(yes / (yes + no), rel=1e-4)
    # Every answer token starts a spelling of its answer.
    assert all("yes".startswith(tok.decode([i]).strip().lower()) for i in j.yes_ids)
    assert all("no".startswith(tok.decode([i]).strip().lower()) for i in j.no_ids)


@pytest.mark.stage
def test_hf_judge_follows_the_logits(tiny):
    model, tok = tiny
    j = HFJudge(model, tok, batch_size=4)
    boost = torch.zeros(model.config.vocab_size)
    boost[j.yes_ids] = 30.0
    h = model.lm_head.register_forward_hook(lambda m, i, o: o + boost)
    try:
        out = j.judge(persona(), TEXTS[:2])
    finally:
        h.remove()
    assert all(v > 0.999 for o in out for pair in o.values() for v in pair)


@pytest.mark.stage
def test_build_judge_from_config_args(tmp_path):
    from personatune.config import JudgeArgs
    from personatune.scoring.judges import build_judge

    assert build_judge(JudgeArgs()) is None  # backend none: detectors only
    hf = build_judge(JudgeArgs(backend="hf", model="tiny", exemplars=1))
    assert isinstance(hf, HFJudge) and hf.exemplars == 1
    oa = build_judge(JudgeArgs(backend="openai", base_url="http://127.0.0.1:9/v1", model="m"), cache_dir=tmp_path / "c")
    assert isinstance(oa, OpenAIJudge) and oa.backend.model == "m"
    with pytest.raises(ValueError, match="base_url"):
        JudgeArgs(backend="openai")
