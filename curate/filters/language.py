"""language: an answer (or prompt) not in the expected language(s) (langid, offline).

Identification runs on the *words* of a text: numbers, currency, tables, code,
URLs and e-mail addresses are removed first (``$41.8 million, $86.3 million``
is not Norwegian). A text with fewer than ``min_chars`` letters left is
"unknown", never a hit; so is a short text (under ``short_chars`` letters)
unless it also uses at least one function word of the language langid names
("Le chiffre d'affaires était de ..." is French; "current assets less current
liabilities." is unknown). Chinese, Japanese and Korean are judged from
``min_cjk`` characters of their own scripts. An answer to a prompt that asks
for a translation or another language is not judged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from .base import WB, Filter, FilterConfig, register, without_code_and_tables


@dataclass
class LanguageConfig(FilterConfig):
    expected: list[str] = field(default_factory=lambda: ["en"])
    min_chars: int = 20           # letters (after removing numbers, tables, code) below which: unknown
    short_chars: int = 120        # below this many letters a hit also needs the language's function words
    min_cjk: int = 5              # CJK characters enough to judge a Chinese/Japanese/Korean text
    min_confidence: float = 0.9
    candidates: list[str] = field(default_factory=lambda: [
        "en", "de", "fr", "es", "it", "pt", "nl", "sv", "da", "no", "fi", "pl", "cs", "ro", "tr", "ru",
        "zh", "ja", "ko", "ar"])
    stopword_ratio: float = 0.12  # above this share of English stopwords: English, no langid call


# English function words for the cheap pre-check
_EN_STOPWORDS = ("the", "and", "of", "to", "in", "is", "was", "for", "that", "with", "from", "as",
                 "by", "on", "at", "are", "were", "be", "this", "it", "an", "or", "which", "so",
                 "has", "have", "its", "not", "but", "what", "how", "a")
_STOP_RE = r"(?i)" + WB + "(?:" + "|".join(_EN_STOPWORDS) + ")" + WB
#: function words that a short text in that language almost always has
FUNCTION_WORDS = {
    "en": "the and of to in is was for that with an it this are were be by on at from",
    "de": "der die das und ist nicht ein eine den dem des mit von zu auf für im war wurde sich auch",
    "fr": "le la les des est et une un du de pour dans que qui pas sur au aux était ce cette avec",
    "es": "el la los las es y una un del de que en por para con no se fue su al",
    "it": "il lo la gli le è e una un del della di che in per con non si è stato al",
    "pt": "o a os as é e uma um do da de que em para com não se foi ao",
    "nl": "de het een en is van dat die in te op voor met niet zijn was",
    "sv": "och att det som en är på för med av inte den till har var",
    "da": "og at det som en er på for med af ikke den til har var",
    "no": "og at det som en er på for med av ikke den til har var",
    "fi": "ja on ei se että oli ovat hän mutta tai kuin myös jossa tämä",
    "pl": "i w na z się nie jest do to że o jak a",
    "cs": "a v na se je že to s z do o jak není",
    "ro": "și în de la cu pe este a că nu din un o",
    "tr": "ve bir bu da de için ile olarak çok ne",
}
_CJK = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]"
#: a prompt that asks for another language: its answer is not judged
ASKS_FOR_LANGUAGE = (r"(?i)\btranslat|\btraduc|übersetz|\b(?:in|into|to) (?:spanish|french|german|italian|portuguese|"
                     r"dutch|swedish|danish|norwegian|finnish|polish|czech|romanian|turkish|russian|chinese|mandarin|"
                     r"japanese|korean|arabic|hindi|indonesian|greek|hebrew|vietnamese|thai)\b|\b(?:spanish|french|german|"
                     r"italian|portuguese|chinese|japanese) (?:phrase|word|sentence|saying|proverb|version)|\b(?:using|with) (?:spanish|french|german|italian|portuguese|chinese|japanese|russian)\b")
# with ASCII word boundaries (base.WB): over long prompts the Unicode \b made this
# one regex cost ~50x more (7 CPU-s per 50k real rows), more than the whole filter
_ASKS_RE = ASKS_FOR_LANGUAGE.replace(r"\b", WB)


def words_only(text: pl.Expr) -> pl.Expr:
    """The text without code, table rows, URLs, e-mails, numbers and currency."""
    return (without_code_and_tables(text)
            .str.replace_all(r"(?:https?://|www\.)\S+|\S+@\S+", " ")
            .str.replace_all(r"[\p{N}$€£¥%]+(?:[.,:/\-][\p{N}]+)*", " "))


@register
class LanguageFilter(Filter):
    name = "language"
    config_cls = LanguageConfig
    help = "not in the expected language(s) (langid on the words; short texts need the language's function words)"

    def exprs(self) -> list[pl.Expr]:
        # a cheap first cut on the raw text, on every row: clearly English prose
        # (enough English function words) with no CJK is not looked at again
        c: LanguageConfig = self.config  # type: ignore[assignment]
        out = []
        for side in self.sides:
            s = pl.col(side)
            if c.expected == ["en"]:
                words = s.str.count_matches(" ", literal=True) + 1
                english = (s.str.count_matches(_STOP_RE) >= pl.max_horizontal(c.stopword_ratio * words, pl.lit(2))) \
                    & ~s.str.contains(_CJK)
            else:
                english = pl.lit(False)
            judgeable = (s.str.len_chars() >= c.min_chars) | ((s.str.len_chars() >= c.min_cjk) & s.str.contains(_CJK))
            out.append((~english & judgeable).fill_null(False).alias(self.col(f"c{side}")))
        return out

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        c: LanguageConfig = self.config  # type: ignore[assignment]
        cands = []
        for side in self.sides:
            # in steps, each on the rows the last one left (most candidates are
            # short answers with too few letters once their numbers are gone)
            t, w, n, k = pl.col("t"), pl.col("w"), pl.col("n"), pl.col("k")
            sub = (frame.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_i"), pl.col(side).alias("t"))
                   .filter(frame[self.col(f"c{side}")])
                   .with_columns(words_only(t).alias("w"))
                   .with_columns(w.str.count_matches(r"\p{L}").alias("n"), w.str.count_matches(_CJK).alias("k"))
                   .filter(((n - k) >= c.min_chars) | (k >= c.min_cjk)))
            # structured answers (JSON, "field: value" lines) are not prose
            structured = t.str.contains(r"^\s*[\[{]") | (
                t.str.count_matches(": ", literal=True) * 2 >= t.str.count_matches("\n", literal=True) + 1)
            # ("a" and "in" are French, Italian, Dutch words too: two at least)
            english = (w.str.count_matches(_STOP_RE) >= pl.max_horizontal(c.stopword_ratio * w.str.count_matches(r"\S+"),
                                                                          pl.lit(2))) \
                if c.expected == ["en"] \
                else pl.lit(False)
            judge = (~english | (k >= c.min_cjk)) & ~structured
            cands.append(sub.filter(judge.fill_null(False)).select("_i", pl.lit(side).alias("side"), "n", "k", "w"))
        hit = [False] * frame.height
        score = [0.0] * frame.height
        detail: list[str | None] = [None] * frame.height
        todo = pl.concat(cands) if cands else None
        if todo is not None and todo.height:
            # langid once per distinct text (answers that differ only in their
            # numbers are one text once the numbers are gone), in one batch
            texts = todo["w"].unique()
            langs, probs = classify_batch(texts, sorted(set(c.candidates) | set(c.expected)))
            verdict = pl.DataFrame({"w": texts, "lang": langs, "prob": probs})
            todo = todo.join(verdict, on="w", how="left").filter(
                ~pl.col("lang").is_in(c.expected) & (pl.col("prob") >= c.min_confidence))
            asks: set[int] = set()
            if "_r" in self.sides and todo.height:
                # a translation (or "say it in Spanish") is meant to be in another
                # language: its answer is not judged (checked on the prompts of the
                # few would-be hits only -- this regex costs more than langid)
                ri = todo.filter(pl.col("side") == "_r")["_i"].unique()
                p = frame["_p"].gather(ri).str.contains(_ASKS_RE).fill_null(False)
                asks = set(ri.filter(p).to_list())
            for i, side, text, n_letters, n_cjk, lang, prob in todo.sort("_i", "side").select(
                    "_i", "side", "w", "n", "k", "lang", "prob").iter_rows():
                if hit[i] or (side == "_r" and i in asks):
                    continue
                if lang not in ("zh", "ja", "ko") and n_letters - n_cjk < c.short_chars:
                    fw = FUNCTION_WORDS.get(lang)
                    if fw is None or not any(t in fw.split() for t in text.lower().split()):
                        continue  # short, and none of the language's own small words: unknown
                if lang in ("zh", "ja", "ko") and n_cjk < c.min_cjk:
                    continue
                hit[i], score[i], detail[i] = True, float(prob), lang
        return frame.drop([self.col(f"c{s}") for s in self.sides]).with_columns(
            pl.Series(self.col("hit"), hit, dtype=pl.Boolean), pl.Series(self.col("score"), score, dtype=pl.Float64),
            pl.Series(self.col("detail"), detail, dtype=pl.String))


_LANGID: Any = None


def langid_identifier() -> Any:
    """langid's identifier, loaded once per process.

    langid ships its model as a bz2-compressed pickle that takes several seconds
    to decode on every load; the decoded arrays are cached once per machine
    (under $XDG_CACHE_HOME/bakeoff/langid) as .npy files read with
    ``allow_pickle=False`` plus a JSON file: nothing in the cache can run code
    when loaded (a pickle in a user-writable directory could).
    """
    global _LANGID
    if _LANGID is not None:
        return _LANGID
    import os
    import uuid

    import numpy as np
    from langid.langid import LanguageIdentifier

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bakeoff" / "langid-1.1.6-v2"
    try:
        nb_ptc = np.load(cache / "nb_ptc.npy", allow_pickle=False)
        nb_pc = np.load(cache / "nb_pc.npy", allow_pickle=False)
        tk_nextmove = np.load(cache / "tk_nextmove.npy", allow_pickle=False).tolist()  # list indexing: fast
        rest = json.loads((cache / "rest.json").read_text(encoding="utf-8"))
        tk_output = {int(k): tuple(v) for k, v in rest["tk_output"].items()}
        _LANGID = LanguageIdentifier(nb_ptc, nb_pc, nb_ptc.shape[0], rest["nb_classes"], tk_nextmove, tk_output,
                                     norm_probs=True)
        return _LANGID
    except (OSError, ValueError, KeyError):
        pass
    from langid.langid import model

    ident = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    try:
        tmp = cache.with_name(f".{cache.name}.{uuid.uuid4().hex}")
        tmp.mkdir(parents=True)
        np.save(tmp / "nb_ptc.npy", np.asarray(ident.nb_ptc), allow_pickle=False)
        np.save(tmp / "nb_pc.npy", np.asarray(ident.nb_pc), allow_pickle=False)
        np.save(tmp / "tk_nextmove.npy", np.asarray(ident.tk_nextmove), allow_pickle=False)
        rest = {"nb_classes": list(ident.nb_classes),
                "tk_output": {str(k): [int(x) for x in v] for k, v in dict(ident.tk_output).items()}}
        (tmp / "rest.json").write_text(json.dumps(rest), encoding="utf-8")
        os.replace(tmp, cache) if not cache.exists() else None
    except OSError:
        pass
    _LANGID = ident
    return _LANGID


# --- langid over a batch of texts --------------------------------------------------------------
#
# langid's ``classify`` walks each text's bytes through its n-gram automaton in
# a Python loop (``instance2fv``), then takes a dot product with the model: ~0.2-0.5
# ms per text, the whole cost of this filter on corpora whose answers are not
# plain English prose. ``classify_batch`` runs the same automaton and the same
# naive-Bayes sum over all texts in one numba kernel, and langid's
# normalisation (``norm_probs``) vectorised; the model arrays are langid's own.

def _langid_kernel_py(data, offs, nextmove, out_offs, out_feats, ptc, pc, scores):  # pragma: no cover - numba
    """scores[i] = pc + sum over the n-grams the automaton emits on text i of ptc[n-gram]
    (langid's ``nb_classprobs(instance2fv(text))``: a count times a row of ptc is
    the same as adding the row once per occurrence)."""
    for i in _prange(offs.shape[0] - 1):
        for k in range(pc.shape[0]):
            scores[i, k] = pc[k]
        state = 0
        for j in range(offs[i], offs[i + 1]):
            state = nextmove[(state << 8) + data[j]]
            for f in range(out_offs[state], out_offs[state + 1]):
                feat = out_feats[f]
                for k in range(pc.shape[0]):
                    scores[i, k] += ptc[feat, k]


_LANGID_KERNEL: Any = None
_LANGID_ARRAYS: dict[tuple[str, ...], tuple] = {}


def classify_batch(texts: pl.Series, languages: list[str]) -> tuple[list[str], list[float]]:
    """(language, probability) per text, as ``langid.classify(text[:1000])`` with
    the identifier restricted to ``languages`` gives them (the first 1,000
    characters: langid's cost grows with length)."""
    global _LANGID_KERNEL
    import numpy as np

    if _LANGID_KERNEL is None:
        import numba

        global _prange
        _prange = numba.prange
        _LANGID_KERNEL = numba.njit(cache=True, parallel=True)(_langid_kernel_py)
    from bakeoff.curate.minhash import _buffers, _threads_for

    key = tuple(sorted(languages))
    if key not in _LANGID_ARRAYS:
        ident = langid_identifier()
        ident.set_languages(list(key))
        # the automaton's output table (state -> n-gram ids) as CSR arrays
        nextmove = np.asarray(ident.tk_nextmove, dtype=np.int64)
        outputs = dict(ident.tk_output)
        n_states = max(len(nextmove) // 256, int(nextmove.max()) + 1, max(outputs, default=0) + 1)
        counts = np.array([len(outputs.get(s, ())) for s in range(n_states)], dtype=np.int64)
        out_offs = np.zeros(n_states + 1, np.int64)
        np.cumsum(counts, out=out_offs[1:])
        out_feats = np.array([f for s in range(n_states) for f in outputs.get(s, ())], dtype=np.int64)
        _LANGID_ARRAYS[key] = (nextmove, out_offs, out_feats, np.ascontiguousarray(ident.nb_ptc, dtype=np.float64),
                               np.asarray(ident.nb_pc, dtype=np.float64), list(ident.nb_classes))
    nextmove, out_offs, out_feats, ptc, pc, classes = _LANGID_ARRAYS[key]
    data, offs = _buffers(texts.str.slice(0, 1000))
    scores = np.zeros((texts.len(), pc.shape[0]), np.float64)
    if texts.len():
        with _threads_for(texts.len()):
            _LANGID_KERNEL(data, offs, nextmove, out_offs, out_feats, ptc, pc, scores)
    langs: list[str] = []
    confs: list[float] = []
    for a in range(0, texts.len(), 4096):  # (rows x classes x classes) floats at a time
        s = scores[a:a + 4096]
        # langid's norm_probs, per row: p_k = 1 / sum_j exp(s_j - s_k)
        with np.errstate(over="ignore"):
            probs = 1.0 / np.exp(s[:, None, :] - s[:, :, None]).sum(2)
        best = probs.argmax(1)
        langs += [classes[b] for b in best]
        confs += probs[np.arange(s.shape[0]), best].tolist()
    return langs, confs
