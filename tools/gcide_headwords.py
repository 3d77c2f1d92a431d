#!/usr/bin/env python3
"""Builds a question/answer document set from Debian's GCIDE dictionary (package dict-gcide).

Purpose: a retrieval / context-compression task with a one-word answer that the document
does not give away. Each kept dictionary entry becomes one record
    {"text": <the definition, headword and pronunciation removed>, "answer": <the headword>}
so a model shown the text (or an embedding of it) has to produce the word being defined.
That default mode needs the decoder's own knowledge of words: the answer is not in the
context, so a wrong answer may be the decoder's ignorance as much as the compression's loss.

--keep-headword makes the *recall* variant instead: the text is the entry WITH its headword in
front, "<headword>, <the same cleaned text>" ("Abdicative, a. [L. abdicativus.] Causing, or
implying, abdication. [R.] --Bailey."). The answer is then in the context, so the task
measures whether a compressed context still preserves it, not whether the decoder knows the
word. In this mode the "headword_in_text" filter below is off (it only exists to stop copying
in the default mode); every other step, filter and the shuffle are the same, so the part after
"<headword>, " is exactly the default mode's text for every entry that mode keeps.

--reverse makes the *definition* variant, the other direction: the text is the headword alone
and the answer is the start of its definition, the default mode's text with its leading
grammar (part-of-speech labels "a.", "v. t.", "n.; pl.", bracketed etymologies, parenthesized
field labels, {inflected forms}) removed, up to the first sentence end or ";" and at most
--answer-words words ("Abdicative" -> "Causing, or implying, abdication"). Records whose
remaining answer has fewer than 2 words, or still starts with a bracket that the --max-chars cut
left open, are skipped ("answer_short"). Built from exactly the
default mode's records, so it inherits every filter, and the same shuffle seed orders them.

Input: the dictd pair /usr/share/dictd/gcide.dict.dz (dictzip, which is gzip-readable) and
gcide.index beside it. Each index line is "headword<TAB>offset<TAB>length" with offset and
length in dictd's base64 (alphabet A-Z a-z 0-9 + /, most significant digit first). The index
gives exact entry boundaries; splitting the text on layout alone misfires (see
data/corpus.cpp, which reads the same files for `condense prepare --corpus gcide`). Several
headwords can point at one entry (aliases, "Sciara mali" -> the "Apple" entry): entries are
deduplicated by (offset, length) and the headword is read from the entry's own first line.

An entry looks like
    Abdicative \\Ab"di*ca*tive\\, a. [L. abdicativus.]
       Causing, or implying, abdication. [R.] --Bailey.
       [1913 Webster]
and yields answer "Abdicative" and text "a. [L. abdicativus.] Causing, or implying,
abdication. [R.] --Bailey.". Steps, in order (each skip is counted by reason):
  - header entries (headword "00-database-*" / "00database*") are dropped by (offset, length),
    which also drops their alias headwords (00-gcide-*, 00-web1913-*);
  - answer = the first line's text before its first " \\" (the pronunciation group, which must
    close on that line); entries without one are skipped ("no_pronunciation"), as are
    headwords with a space ("headword_space") or outside 3..24 characters ("headword_length");
  - text = the rest of the entry: every \\pronunciation\\ group is removed, with the phonetic
    respelling in parentheses that may follow it ("Click \\Click\\ (kl[i^]k), v. i."), also
    those of variant spellings ("Abettor \\A*bet"tor\\, Abetter \\A*bet"ter\\") and of run-on
    forms on later lines; lines that are only a bracketed tag ("[1913 Webster]", "[PJC]",
    "[Webster 1913 Suppl.]", also "[Obs.]" alone on a line) are dropped; a line that starts
    with a source tag followed by text loses the tag, and the whole line goes when the text is
    not a "-- {derived form}" run-on: GCIDE's source runs the NEXT entry's headword onto the
    tag line ("[1913 Webster] Sociologic" ends the "Socinianize" entry), which would leak a
    neighbour's answer; a source tag ending a line of text goes too. Whitespace is collapsed
    to single spaces, the leading ", " left by the removed headword is stripped, and the text
    is cut at a word boundary to --max-chars; texts under 20 characters are skipped
    ("text_short");
  - entries whose text contains the headword as a whole word (case-insensitive) are skipped
    ("headword_in_text"): answering them is copying. With --keep-headword they are kept and
    counted as "repeats_headword" instead (not a skip), and every text gets "<headword>, " in
    front; --max-chars bounds the cleaned text, so such a text can be up to
    len(headword) + 2 characters longer.
Records are shuffled with random.Random(--seed) (dictionary order would put a tail split
entirely in the late alphabet), then cut to --max-documents. Because the cut comes after the
shuffle, the first N records of a full run equal a run with --max-documents N (same seed).

Output: JSONL, one {"text", "answer"} object per line, UTF-8, written to a temporary file
beside --out and renamed over it, so a failed run never leaves a partial file. A one-line
summary (kept and skipped counts, as key=value) goes to stderr; with --keep-headword it starts
"mode=recall", lists no headword_in_text skip, and gives repeats_headword=N after "not skipped:"
(eligible records whose text after the prefix contains the headword, which the default mode
would have skipped).
"""
import argparse
import gzip
import json
import os
import random
import re
import sys

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
B64_DIGIT = {c: i for i, c in enumerate(B64)}

# A pronunciation group: backslash, up to 80 non-backslash characters, backslash, with the
# phonetic respelling in parentheses that often follows it ("Click \Click\ (kl[i^]k), v. i.").
# A parenthesis whose content ends in "." is a subject label ("(Zool.)") and stays. The
# bounds keep a stray lone backslash from swallowing a paragraph; the leading whitespace goes
# too, so "Abettor \A*bet"tor\, Abetter" becomes "Abettor, Abetter".
PRONUNCIATION = re.compile(r"[ \t]*\\[^\\]{0,80}\\(?:[ \t\n]*\([^)]{0,80}[^).]\))?")
TAG_ONLY = re.compile(r"^\[[^\]]*\]$")
# Source tags (where a definition came from), as opposed to usage labels like [Obs.] or [R.].
SOURCE_TAG_PREFIX = re.compile(r"^\[[^\]]*(?:Webster|WordNet|PJC|Century|RDH)[^\]]*\]\s*")
SOURCE_TAG_SUFFIX = re.compile(r"\s*\[[^\]]*(?:Webster|WordNet|PJC|Century|RDH)[^\]]*\]$")
MIN_HEADWORD, MAX_HEADWORD, MIN_TEXT = 3, 24, 20
SKIP_REASONS = ("header", "duplicate", "no_pronunciation", "headword_space", "headword_length",
                "text_short", "headword_in_text")
# --reverse: a part-of-speech label ("a.", "v.", "t.", "pl.") at the start of a definition.
POS_LABEL = re.compile(r"[A-Za-z]{1,5}\.")
SENTENCE_END = re.compile(r"[.;](?:\s|$)")
CLOSING = {"[": "]", "(": ")", "{": "}"}


def strip_leading_grammar(text):
    """Drops what a definition starts with before its first sense, repeatedly: part-of-speech
    labels, bracketed etymologies, parenthesized labels and {inflected forms} (balanced, as
    etymologies nest accents like "['e]"), and the punctuation between them."""
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace() or c in ";,&:":
            i += 1
        elif c in CLOSING:
            depth, j = 0, i
            while j < len(text):
                if text[j] == c:
                    depth += 1
                elif text[j] == CLOSING[c]:
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if j == len(text):  # unbalanced: leave the rest alone
                break
            i = j + 1
        elif (m := POS_LABEL.match(text, i)) and (m.end() == len(text) or not text[m.end()].isalpha()):
            i = m.end()
        else:
            break
    return text[i:]


def definition_answer(text, max_words):
    """The start of a default-mode text's definition (see --reverse), or None if under 2 words."""
    rest = strip_leading_grammar(text)
    if rest[:1] in CLOSING:  # a bracket the --max-chars cut left open: no sense to take
        return None
    m = SENTENCE_END.search(rest)
    answer = " ".join((rest[: m.start()] if m else rest).split()[:max_words]).rstrip(" ,:&")
    return answer if len(answer.split()) >= 2 else None


def fail(msg):
    print(f"gcide_headwords: error: {msg}", file=sys.stderr)
    sys.exit(1)


def decode_b64(s, where):
    """dictd base64 number (most significant digit first) -> int; `where` names file:line."""
    if not s or len(s) > 10:
        fail(f"{where}: bad base64 number {s!r} (expected 1 to 10 digits of {B64})")
    v = 0
    for c in s:
        d = B64_DIGIT.get(c)
        if d is None:
            fail(f"{where}: bad base64 number {s!r} (digit {c!r} is not one of {B64})")
        v = v * 64 + d
    return v


def index_path_for(dict_path):
    for suffix in (".dict.dz", ".dict"):
        if dict_path.endswith(suffix) and len(dict_path) > len(suffix):
            return dict_path[: -len(suffix)] + ".index"
    fail(f"{dict_path}: expected a dictd file named *.dict.dz or *.dict (with its .index beside it)")


def read_entries(dict_path, counts):
    """Distinct non-header (offset, length) entries in dictionary order, and the text bytes."""
    index_path = index_path_for(dict_path)
    if not os.path.isfile(dict_path):
        fail(f"{dict_path}: no such file (Debian package dict-gcide installs it)")
    if not os.path.isfile(index_path):
        fail(f"{dict_path}: missing dictd index {index_path} beside it")
    try:
        with (gzip.open if dict_path.endswith(".dz") else open)(dict_path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        fail(f"{dict_path}: cannot decompress: {e}")
    pairs, header = [], set()  # (offset, length) per index line; header entries
    with open(index_path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not line:
                continue
            where = f"{index_path} line {line_no}"
            fields = line.split("\t")
            if len(fields) < 3:  # some indexes carry a 4th column; it is ignored
                fail(f"{where}: expected 'headword<TAB>offset<TAB>length', got {line[:80]!r}")
            off, length = decode_b64(fields[1], where), decode_b64(fields[2], where)
            if off + length > len(data):
                fail(f"{where}: entry [{off}, {off + length}) lies past the end of {dict_path} "
                     f"({len(data)} bytes): index and dictionary do not match")
            pairs.append((off, length))
            if fields[0].startswith(("00-database", "00database")):
                header.add((off, length))
    # Counted per index line: a header entry's own lines and its aliases' lines are "header";
    # every further line naming an already-seen entry is a "duplicate".
    entries = set(pairs) - header
    counts["header"] = sum(p in header for p in pairs)
    counts["duplicate"] = len(pairs) - counts["header"] - len(entries)
    return sorted(entries), data


def is_word_char(c):
    return c.isalnum() or c == "_"  # what the regex \w matches


def contains_word(text, word):
    """Whether `word` occurs in `text` case-insensitively with no word character either side
    (the regex (?<!\w)word(?!\w) with IGNORECASE; a compiled regex per entry would take most
    of the run time)."""
    t, w = text.lower(), word.lower()
    i = t.find(w)
    while i >= 0:
        j = i + len(w)
        if (i == 0 or not is_word_char(t[i - 1])) and (j == len(t) or not is_word_char(t[j])):
            return True
        i = t.find(w, i + 1)
    return False


def make_record(entry, max_chars, counts, keep_headword=False):
    """One dictionary entry's text -> {"text", "answer"}, or None (reason counted). With
    keep_headword the text is "<headword>, <cleaned text>" and a cleaned text containing the
    headword is kept (counted as "repeats_headword") instead of skipped."""
    lines = entry.strip("\r\n").split("\n")
    first = lines[0]
    start = first.find(" \\")
    close = first.find("\\", start + 2) if start >= 0 else -1
    if close < 0:
        counts["no_pronunciation"] += 1
        return None
    headword = first[:start].strip()
    if any(c.isspace() for c in headword):
        counts["headword_space"] += 1
        return None
    if not MIN_HEADWORD <= len(headword) <= MAX_HEADWORD:
        counts["headword_length"] += 1
        return None
    body = "\n".join([first[start:]] + lines[1:])  # the headword goes; pronunciations next
    body = PRONUNCIATION.sub("", body)
    kept_lines = []
    for line in body.split("\n"):
        s = line.strip()
        if s.startswith("["):  # (the test first: most lines are plain text)
            if TAG_ONLY.match(s):
                continue
            m = SOURCE_TAG_PREFIX.match(s)
            if m:
                s = s[m.end():]
                if not s.startswith("--"):  # a neighbour's headword run onto the tag line
                    continue
        if s.endswith("]"):  # "Syn: blabbermouth. [1913 Webster]": the source tag goes
            s = SOURCE_TAG_SUFFIX.sub("", s)
        kept_lines.append(s)
    text = " ".join(" ".join(kept_lines).split()).lstrip(",; ")
    if len(text) > max_chars:
        cut = text[: max_chars + 1].rfind(" ")  # +1: a space right after max_chars is fine
        text = (text[:cut] if cut > 0 else text[:max_chars]).rstrip()
    if len(text) < MIN_TEXT:
        counts["text_short"] += 1
        return None
    if contains_word(text, headword):
        if not keep_headword:
            counts["headword_in_text"] += 1
            return None
        counts["repeats_headword"] += 1
    if keep_headword:
        text = f"{headword}, {text}"
    return {"text": text, "answer": headword}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dict", default="/usr/share/dictd/gcide.dict.dz",
                    help="dictd dictionary (*.dict.dz or *.dict, with *.index beside it)")
    ap.add_argument("--out", required=True, help="output JSONL file")
    ap.add_argument("--max-chars", type=int, default=400,
                    help="cut each text at a word boundary to at most this many characters "
                         "(not counting the --keep-headword prefix)")
    ap.add_argument("--max-documents", type=int, default=0,
                    help="keep at most this many records after shuffling (0 = all)")
    ap.add_argument("--seed", type=int, default=1234, help="shuffle seed (random.Random)")
    ap.add_argument("--reverse", action="store_true",
                    help="definition variant: text = the headword, answer = the start of its "
                         "definition (at most --answer-words words)")
    ap.add_argument("--answer-words", type=int, default=12, help="--reverse: answer length cap")
    ap.add_argument("--keep-headword", action="store_true",
                    help="recall variant: text = '<headword>, <cleaned text>' and entries whose "
                         "text contains the headword are kept (the answer is in the context, so "
                         "this measures whether a compressed context preserves it; the default "
                         "mode needs the decoder's knowledge of words)")
    args = ap.parse_args()
    if args.max_chars < MIN_TEXT:
        fail(f"--max-chars {args.max_chars}: must be at least {MIN_TEXT} (shorter texts are skipped)")
    if args.max_documents < 0:
        fail(f"--max-documents {args.max_documents}: must be >= 0 (0 = all)")
    if args.reverse and args.keep_headword:
        fail("--reverse and --keep-headword are two different tasks; give one")
    if args.answer_words < 2:
        fail(f"--answer-words {args.answer_words}: must be at least 2")

    counts = {r: 0 for r in SKIP_REASONS}
    counts["repeats_headword"] = 0  # --keep-headword only: kept, not skipped
    entries, data = read_entries(args.dict, counts)
    records = []
    for off, length in entries:
        # Invalid UTF-8 (GCIDE has a few stray cp1252 bytes) becomes U+FFFD.
        rec = make_record(data[off:off + length].decode("utf-8", errors="replace"), args.max_chars,
                          counts, args.keep_headword)
        if rec is not None and args.reverse:
            answer = definition_answer(rec["text"], args.answer_words)
            if answer is None:
                counts["answer_short"] = counts.get("answer_short", 0) + 1
                rec = None
            else:
                rec = {"text": rec["answer"], "answer": answer}
        if rec is not None:
            records.append(rec)
    random.Random(args.seed).shuffle(records)
    eligible = len(records)
    if args.max_documents > 0:
        records = records[: args.max_documents]
    if not records:
        fail(f"{args.dict}: no entry survived the filters ({counts})")

    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        fail(f"--out {args.out}: directory {out_dir} does not exist")
    tmp = f"{args.out}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if args.keep_headword:  # the headword_in_text filter is off: no such skip to report
        skipped = " ".join(f"{r}={counts[r]}" for r in SKIP_REASONS if r != "headword_in_text")
        print(f"gcide_headwords: mode=recall entries={len(entries)} eligible={eligible} "
              f"kept={len(records)} skipped: {skipped} not skipped: "
              f"repeats_headword={counts['repeats_headword']} -> {args.out}", file=sys.stderr)
    else:
        reasons = SKIP_REASONS + (("answer_short",) if args.reverse else ())
        skipped = " ".join(f"{r}={counts.get(r, 0)}" for r in reasons)
        mode = "mode=reverse " if args.reverse else ""
        print(f"gcide_headwords: {mode}entries={len(entries)} eligible={eligible} kept={len(records)} "
              f"skipped: {skipped} -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
