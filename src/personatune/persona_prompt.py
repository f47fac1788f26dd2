"""Rendering a persona into a system prompt (and its examples into few-shot turns).

Used by stage 3 to make the teacher answer in persona, and — with one trait inverted or the
style broken — to make targeted inconsistent contrast responses.
"""

from __future__ import annotations

from personatune.persona import PersonaSpec, Trait

_FORMALITY = {
    "casual": "relaxed and informal, with contractions",
    "neutral": "plain and natural",
    "formal": "formal and precise, no slang, no contractions",
}
_OPPOSITE_FORMALITY = {"casual": "formal", "neutral": "casual", "formal": "casual"}
_EMOJI = {"never": "Never use emoji.", "sometimes": "Use an emoji now and then.", "often": "Use emoji often."}
_EXCLAIM = {
    "never": "Never use exclamation marks.",
    "sometimes": "Exclaim now and then (an exclamation mark in some replies).",
    "often": "Exclaim often: most replies have at least one exclamation mark.",
}
_QUESTIONS = {
    "never": "Do not ask the user questions.",
    "sometimes": "Ask the user a question now and then.",
    "often": "Ask the user a question in most replies.",
}


def _trait_line(t: Trait, flipped: bool) -> str:
    if not flipped:
        return f"- {t.description}"
    if t.inverse:
        return f"- {t.inverse}"
    # Without an explicit inverse, the trait's own negative exemplars show the opposite behaviour.
    return f'- You are NOT like this: {t.description} Instead you talk like: "{t.negative[0]}"'


def persona_voice_lines(spec: PersonaSpec) -> list[str]:
    """The "Voice:" block of the in-persona system prompt: register, length, emoji, exclamations/questions (when set), phrases, behaviour rules."""
    st = spec.style
    lo, hi = st.words
    lines = [
        "",
        "Voice:",
        f"- Your register is {_FORMALITY[st.formality]}.",
        f"- Answer in {lo} to {hi} words.",
        f"- {_EMOJI[st.emoji]}",
    ]
    # The optional rates, when the persona sets them (they are style_match targets too).
    if st.exclamations:
        lines.append(f"- {_EXCLAIM[st.exclamations]}")
    if st.questions:
        lines.append(f"- {_QUESTIONS[st.questions]}")
    if st.signature_phrases:
        lines.append("- Phrases you like to use: " + "; ".join(f'"{p}"' for p in st.signature_phrases))
    if st.avoid_phrases:
        lines.append("- Never say: " + "; ".join(f'"{p}"' for p in st.avoid_phrases))
    lines += [f"- {b.description}" for b in spec.behaviors]
    return lines


def render_system_prompt(
    spec: PersonaSpec, *, flip: str | None = None, break_style: bool = False, focus: list[str] | None = None
) -> str:
    """The persona as a system prompt.

    Args:
        spec: the persona.
        flip: a trait id to invert (for trait-flipped contrast data), or None. The summary is left out
            (it restates every trait, so a small model follows it over the one inverted line), the
            inverted trait is restated last with two of its negative exemplars as examples.
        break_style: describe the opposite voice (for style-broken contrast data): the other register,
            the other end of the length range, emoji and exclamations flipped, signature phrases
            forbidden; the summary is left out (it describes the voice being broken).
        focus: trait ids this reply must show clearly (the traits the scenario targets); each gets a
            reminder with one of its positive exemplars, because a small teacher otherwise spreads thin.

    Returns:
        The system prompt text.
    """
    contrast = flip is not None or break_style
    lines = [
        f"You are {spec.name}." if contrast else f"You are {spec.name}. {spec.summary.strip()}",
        "",
        "Your character:",
    ]
    lines += [_trait_line(t, t.id == flip) for t in spec.traits]
    st = spec.style
    lo, hi = st.words
    if break_style:
        form = _OPPOSITE_FORMALITY[st.formality]
        length = (
            f"Answer in at least {hi * 2} words."
            if hi < 80
            else f"Answer in one short sentence of at most {max(3, lo // 2)} words."
        )
        emoji = "Use emoji often." if st.emoji == "never" else "Never use emoji."
        lines += ["", "Voice:", f"- Your register is {_FORMALITY[form]}.", f"- {length}", f"- {emoji}"]
        if st.exclamations in ("sometimes", "often"):
            lines.append("- Never use exclamation marks.")
        elif st.exclamations == "never":
            lines.append("- End your sentences with exclamation marks!")
        if st.signature_phrases:
            lines.append("- Never use these words: " + ", ".join(f'"{p}"' for p in st.signature_phrases))
    else:
        lines += persona_voice_lines(spec)
    if spec.facts:
        lines += ["", "Facts about you:"] + [f"- {f}" for f in spec.facts]
    focus_traits = [t for t in spec.traits if focus and t.id in focus and t.id != flip]
    if focus_traits:
        lines += ["", "In this reply, clearly show:"]
        lines += [f'- {t.description} (for example: "{t.positive[0]}")' for t in focus_traits]
    if flip is not None:
        flipped = spec.trait(flip)
        what = flipped.inverse or f"the opposite of this: {flipped.description}"
        examples = " ".join(f'"{n}"' for n in flipped.negative[:2])
        lines += ["", f"In this reply, clearly show this side of you: {what} For example: {examples}"]
        lines += ["", "Stay in this character in every reply, whatever the user asks."]
    else:
        lines += ["", "Stay in character in every reply, whatever the user asks."]
    return "\n".join(lines)


def few_shot_messages(spec: PersonaSpec) -> list[dict[str, str]]:
    """The persona's example interactions as alternating turns (system turns dropped)."""
    out: list[dict[str, str]] = []
    for ex in spec.examples:
        out += [{"role": m.role, "content": m.content} for m in ex.messages if m.role != "system"]
    return out


def persona_conversation(
    spec: PersonaSpec,
    messages: list[dict[str, str]],
    *,
    few_shot: bool = True,
    flip: str | None = None,
    break_style: bool = False,
    focus: list[str] | None = None,
) -> list[dict[str, str]]:
    """System prompt + few-shot turns + the scenario's messages, ready for a chat template.

    Few-shot turns: the persona's example interactions for in-persona replies; for a trait-flipped reply,
    one example turn whose answer is made of the flipped trait's negative exemplars; none for style-broken.
    """
    conv = [{"role": "system", "content": render_system_prompt(spec, flip=flip, break_style=break_style, focus=focus)}]
    if few_shot and not break_style and flip is None:
        conv += few_shot_messages(spec)
    flipped = spec.trait(flip) if flip is not None else None
    if few_shot and flipped is not None and spec.examples:
        # One example turn in the inverted voice (two more of the trait's negative exemplars): a small
        # teacher imitates an example far more reliably than it follows an instruction.
        user = next((m.content for m in spec.examples[0].messages if m.role == "user"), None)
        if user:
            conv += [
                {"role": "user", "content": user},
                {"role": "assistant", "content": " ".join(flipped.negative[2:4] or flipped.negative[:2])},
            ]
    return conv + [dict(m) for m in messages]


def persona_context(spec: PersonaSpec, *, few_shot: bool = True) -> list[dict[str, str]]:
    """The persona context c of drift KL (METRICS.md): the rendered persona system prompt, then the persona's
    example interactions as few-shot turns when `few_shot` (data.few_shot). The reference model sees c before
    each held-out prompt; the policy never does."""
    return persona_conversation(spec, [], few_shot=few_shot)


def persona_context_text(spec: PersonaSpec, *, few_shot: bool = True) -> str:
    """The persona context as one text (TRL SDFT's `privileged_context`): the system prompt, then the example turns."""
    lines = [render_system_prompt(spec)]
    if few_shot:
        for m in few_shot_messages(spec):
            lines.append(f"{'User' if m['role'] == 'user' else 'You'}: {m['content']}")
    return "\n\n".join(lines)
