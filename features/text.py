"""Verbatim analysis from a shipped lexicon: topic flags and a sentiment score.

Nothing is downloaded at run time; the word lists below are the model. They are small on
purpose, so a data scientist can read and extend them.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from churnflow.vocabulary import TOPICS


POSITIVE = ("great", "love", "excellent", "helpful", "easy", "fast", "amazing", "recommend", "reliable", "smooth", "happy", "thanks", "good", "valuable")
NEGATIVE = ("bad", "terrible", "slow", "frustrat", "annoy", "hate", "useless", "broken", "confusing", "expensive", "disappoint", "cancel", "worse", "poor", "waiting", "bug", "crash", "error")

_WORD = re.compile(r"[a-z']+")


def topic_flags(comments: pd.Series) -> pd.DataFrame:
    """One boolean column per topic: does the comment mention it?"""
    text = comments.fillna("").str.lower()
    return pd.DataFrame({topic: text.str.contains("|".join(map(re.escape, words)), regex=True) for topic, words in TOPICS.items()}, index=comments.index)


def sentiment(comments: pd.Series) -> pd.Series:
    """(positive hits - negative hits) / hits, in [-1, 1]; NaN for empty comments."""
    text = comments.fillna("").str.lower()
    pos = sum(text.str.count(re.escape(w)) for w in POSITIVE)
    neg = sum(text.str.count(re.escape(w)) for w in NEGATIVE)
    total = pos + neg
    score = (pos - neg) / total.where(total > 0)
    return score.where(text.str.len() > 0, np.nan).astype(float)
