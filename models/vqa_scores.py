"""Open-answer VQA scoring as the paper's evaluator (TRI's vlm-evaluation) runs it, one scorer each:

- VQAv2 (vlm-evaluation's refactor of the official evaluator, by way of LAVIS): the prediction is
  normalised for whitespace, punctuation, number words, articles and contractions; each annotator's
  answer for punctuation only (no lower-casing, no strip). Then the leave-one-out soft accuracy:
  for each annotator in turn, min(1, matches among the other nine / 3), averaged.
- TextVQA (the M4C / EvalAI evaluator vlm-evaluation calls): both sides through EvalAI's answer
  processor (lower-case, commas and question marks dropped, "'s" split off, then the same steps).
- VizWiz (the VizWiz evaluator Prismatic ships): only the prediction is normalised, with VizWiz's
  own contraction table (most apostrophes written as backticks); annotators' answers stay raw.

The quirks are kept on purpose, so numbers match the paper's: the period pattern is meant to spare
decimal points but drops every period not followed by a digit, and the evaluators pass `re.UNICODE`
(32) where `re.sub` takes its count, so at most 32 periods go. docs/evaluation.md says where the
evaluators disagree and which one we follow. Pure functions, no torch.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

CONTRACTIONS = dict(pair.split(":") for pair in """
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've
couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've
hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's
howd:how'd howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd
itd've:it'd've it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't
mightnt've:mightn't've mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've
neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at
'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've she's:she's shouldve:should've
shouldnt:shouldn't shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd
somebodyd've:somebody'd've somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's
someoned:someone'd someoned've:someone'd've someone'dve:someone'd've someonell:someone'll
someones:someone's somethingd:something'd somethingd've:something'd've something'dve:something'd've
somethingll:something'll thats:that's thered:there'd thered've:there'd've there'dve:there'd've
therere:there're theres:there's theyd:they'd theyd've:they'd've they'dve:they'd've theyll:they'll
theyre:they're theyve:they've twas:'twas wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've
werent:weren't whatll:what'll whatre:what're whats:what's whatve:what've whens:when's whered:where'd
wheres:where's whereve:where've whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll whos:who's
whove:who've whyll:why'll whyre:why're whys:why's wont:won't wouldve:would've wouldnt:wouldn't
wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll
yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've
you'dve:you'd've youll:you'll youre:you're youve:you've""".split())

# VizWiz's table is the same with apostrophes written as backticks, except these keys and values.
_VIZWIZ_KEEP_KEY = frozenset({"couldn'tve", "hadn'tve"})
_VIZWIZ_KEEP_VALUE = frozenset({"aint", "arent", "cant", "couldve", "couldnt", "weve", "wheres", "whove"})
VIZWIZ_CONTRACTIONS = {(k if k in _VIZWIZ_KEEP_KEY else k.replace("'", "`")):
                       (v if k in _VIZWIZ_KEEP_VALUE else v.replace("'", "`")) for k, v in CONTRACTIONS.items()}

NUMBER_WORDS = {"none": "0"} | {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
               ",", "?", "!")
COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")  # VQAv2's and VizWiz's "1,000"-style test
_M4C_COMMA_IN_NUMBER = re.compile(r"(?<=\d)(,)+(?=\d)")  # TextVQA's (its commas are gone by then)
_PERIOD = re.compile(r"\.(?!\d)")  # what `(?!<=\d)(\.)(?!\d)` matches: its first group is a lookahead
_PERIODS_REMOVED = int(re.UNICODE)  # the flag lands in re.sub's `count`: at most 32 periods go


def punctuation(text: str, comma_in_number: re.Pattern = COMMA_IN_NUMBER) -> str:
    """Drop a mark where it touches a space (or the text has a 1,000-style number), else space it;
    then drop up to 32 periods not followed by a digit."""
    out, joined_number = text, comma_in_number.search(text) is not None
    for mark in PUNCTUATION:
        out = out.replace(mark, "" if (mark + " " in text or " " + mark in text or joined_number) else " ")
    return _PERIOD.sub("", out, count=_PERIODS_REMOVED)


def digits_articles(text: str, contractions: Mapping[str, str] = CONTRACTIONS) -> str:
    """Lower-case; number words become digits; articles go; missing apostrophes come back."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(contractions.get(w, w) for w in words if w not in ARTICLES)


def _whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(text: str) -> str:
    """A VQAv2 prediction as the evaluator compares it: whitespace, punctuation, number words,
    articles, contractions."""
    return digits_articles(punctuation(_whitespace(text)))


def normalize_textvqa_answer(text: str) -> str:
    """EvalAI's answer processor (TextVQA), for predictions and annotators' answers alike."""
    tokenized = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return digits_articles(punctuation(_whitespace(tokenized), _M4C_COMMA_IN_NUMBER))


def normalize_vizwiz_answer(text: str) -> str:
    """A VizWiz prediction as VizWiz's evaluator compares it (its own contraction table)."""
    return digits_articles(punctuation(_whitespace(text)), VIZWIZ_CONTRACTIONS)


def leave_one_out(prediction: str, answers: Sequence[str]) -> float:
    """For each annotator left out in turn, min(1, others who gave `prediction` / 3); the mean."""
    if not answers:
        raise ValueError("a VQA accuracy needs at least one annotator answer")
    same = [a == prediction for a in answers]
    hits = sum(same)
    return sum(min(1.0, (hits - s) / 3.0) for s in same) / len(same)


def vqav2_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """vlm-evaluation's VQAv2 accuracy of one prediction (annotators' answers: punctuation only)."""
    return leave_one_out(normalize_vqa_answer(prediction), [punctuation(a) for a in answers])


def textvqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """vlm-evaluation's TextVQA accuracy (M4C evaluator: both sides fully processed)."""
    return leave_one_out(normalize_textvqa_answer(prediction), [normalize_textvqa_answer(a) for a in answers])


def vizwiz_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Prismatic's VizWiz accuracy (only the prediction is normalised)."""
    return leave_one_out(normalize_vizwiz_answer(prediction), list(answers))
