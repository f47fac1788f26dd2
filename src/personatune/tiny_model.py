"""The `tiny` model: a 2-layer Llama with a byte-level BPE tokenizer trained in-process on an embedded corpus.

For tests and examples: no download, < 1 s, deterministic per seed, and the same ChatML turn markers and special
token ids 0-2 as SmolLM2-135M-Instruct, so code tested on `tiny` sees the real chat format.
"""

from __future__ import annotations

import functools
from typing import Any

# ChatML exactly as SmolLM2-135M-Instruct renders it, minus the default "You are SmolLM" system turn
# (tiny sequences stay short). Same turn markers, so code tested on `tiny` sees the real format.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Same ids 0-2 as SmolLM2; tiny gets a dedicated pad so padding is never confused with end-of-turn.
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
TINY_VOCAB_SIZE = 1024


_TINY_SENTENCES = """\
Hello, how are you today? I am fine, thank you for asking.
Can you help me with my homework? Of course, let us look at it together.
The weather is lovely this morning, with clear skies and a light breeze.
I feel a little sad today, but talking to a friend always helps.
What is two plus two? Two plus two is four.
Tell me a joke about computers. Why did the computer sneeze? It caught a virus.
Where should I travel this summer? The mountains are quiet and the sea is warm.
Please recommend a good book about the stars and the planets.
Good morning! I hope you slept well and had a nice breakfast.
The assistant answers questions politely, clearly and with patience.
You are a helpful assistant. Answer briefly and stay in character.
Ahoy, friend! The ship sails at dawn, so pack your maps and your courage.
Thank you so much, that was really useful. You are welcome, happy to help.
I do not know the answer, but I can suggest where to look for it.
Please explain this code to me line by line, and keep it simple.
The function returns a list of numbers sorted from small to large.
Water boils at one hundred degrees Celsius at sea level.
The cat sat on the warm window sill and watched the birds outside.
My favourite colour is blue, like the ocean on a calm summer day.
Let me think about that for a moment before I answer.
Sorry, I cannot help with that request, but here is something I can do.
Summarise the story in three short sentences, please.
Once upon a time, a curious robot wanted to learn how to paint.
The train leaves at nine o'clock, so we should arrive by noon.
Is it safe to eat raw cookie dough? It is better to bake it first.
He laughed, she smiled, and everyone enjoyed the long dinner.
Numbers like 1, 2, 3, 10, 42 and 100 appear in many questions.
What does this error mean? It means the file could not be found.
Be kind, be curious, and always double check your facts.
The system message sets the persona; the user asks; the assistant replies.
"""
_SUBJECTS = (
    "I",
    "You",
    "We",
    "They",
    "My friend",
    "The teacher",
    "Our captain",
    "The little robot",
    "A curious student",
    "The old sailor",
)
_ACTIONS = (
    "really like",
    "often read about",
    "want to learn",
    "enjoy talking about",
    "never forget",
    "sometimes dream of",
    "always ask about",
    "happily explain",
)
_OBJECTS = (
    "the stars at night",
    "cooking simple meals",
    "the history of ships",
    "music and poetry",
    "friendly animals",
    "solving hard puzzles",
    "the weather",
    "writing clean code",
)


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """Train the tiny byte-level BPE once per process (a few ms) and keep its serialized form."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    # A few hundred sentences: the hand-written lines plus every subject/action/object combination.
    corpus = _TINY_SENTENCES.splitlines() + [f"{s} {a} {o}." for s in _SUBJECTS for a in _ACTIONS for o in _OBJECTS]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # bytes: any text encodes, no unknowns
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    return bpe.to_str()


def build_tiny_tokenizer() -> Any:
    """A fresh PreTrainedTokenizerFast for the tiny model: byte-level BPE, ChatML template, dedicated pad.

    Special tokens as in SmolLM2: `<|endoftext|>` (unk, id 0), `<|im_start|>` (bos, 1), `<|im_end|>` (eos, 2),
    plus `<|pad|>` (3). Nothing is added on encode (no post-processor), like SmolLM2.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    start, end, pad, unk = "<|im_start|>", "<|im_end|>", "<|pad|>", "<|endoftext|>"
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        bos_token=start,
        eos_token=end,
        pad_token=pad,
        unk_token=unk,
        model_max_length=4096,
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def build_tiny_model(seed: int = 0) -> tuple[Any, Any]:
    """A tiny random Llama (64 hidden, 2 layers, 4 heads, tied embeddings, a 4096-token window: the persona context alone is ~1,100 of its character-level tokens) and its in-process tokenizer.

    Args:
        seed: weight-initialisation seed; the same seed gives identical weights. The global torch RNG is
            left as it was.

    Returns:
        (model in eval mode on CPU in float32, tokenizer). Trainable by TRL SFT/DPO/GRPO; round-trips
        through `save_model` / `load_model_and_tokenizer`.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    return model.eval(), tok
