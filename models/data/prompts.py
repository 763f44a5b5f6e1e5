"""Prompt templates and decoding limits of the paper's VL evaluator (TRI's vlm-evaluation).

A template is text holding `{question}`, replaced by a record's question (or, for referring
expressions, the sentence). A benchmark file's task takes the template of its metric family unless
the study names one (`[eval.prompt]`); generation decodes greedily up to `MAX_NEW_TOKENS` unless the
record or the study (`[eval.max_new_tokens]`) says otherwise. vlm-evaluation's LLaVA-style turn
starts with a newline after the image; here the image tokens and `<user>` come first, so the
templates start with the question itself. The built-in world's tasks keep their own prompts.
"""

from __future__ import annotations

QUESTION = "{question}"  # the bare question: text tasks and files whose family has no template
SHORT_ANSWER = "Answer the question using a single word or phrase."
VQA_PROMPT = QUESTION + "\n" + SHORT_ANSWER
VIZWIZ_PROMPT = (QUESTION + "\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n"
                 + SHORT_ANSWER)
REFEXP_PROMPT = 'Please provide the bounding box coordinate of the region this sentence describes: "{question}"'

# metric family (models.metrics.FAMILIES) -> vlm-evaluation's template for that benchmark
FAMILY_PROMPTS = {"vqa": VQA_PROMPT, "textvqa": VQA_PROMPT, "gqa": VQA_PROMPT, "exact_match": VQA_PROMPT,
                  "pope": VQA_PROMPT,
                  "vizwiz": VIZWIZ_PROMPT, "refexp": REFEXP_PROMPT, "ocid_ref": REFEXP_PROMPT}
MAX_NEW_TOKENS = 128  # vlm-evaluation's generation limit (greedy: do_sample False)


def template_problem(template: str) -> str | None:
    """Why `template` cannot be used (None when it can)."""
    if "{question}" not in template:
        return f"a prompt template must hold {{question}}, got {template!r}"
    return None


def render(template: str, question: str) -> str:
    """The prompt text of one question (a plain replacement: questions may hold braces)."""
    return template.replace("{question}", question)


def family_template(family: str) -> str:
    return FAMILY_PROMPTS.get(family, QUESTION)
