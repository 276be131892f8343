"""Writes a small labelled clustering set (JSON lines {"text", "label"}) for `llm2vec eval clustering`
from WikiText-2 (assets/wikitext-2, CC BY-SA 3.0): the paragraphs of an article are one cluster, the
article's title its label. Standard library only.

    python3 scripts/make_wikitext_clustering.py [--raw assets/wikitext-2/wiki.test.raw] [--articles 12]
        [--paragraphs 8] [--min-words 40] --out build/wikitext_clustering.jsonl

Takes, in file order, the first `articles` articles with at least `paragraphs` paragraphs of at least
`min-words` words, and their first `paragraphs` such paragraphs. WikiText's tokenisation (" @-@ ",
spaces before punctuation) is kept as it is.
"""
import argparse
import json
import re

p = argparse.ArgumentParser()
p.add_argument("--raw", default="assets/wikitext-2/wiki.test.raw")
p.add_argument("--articles", type=int, default=12)
p.add_argument("--paragraphs", type=int, default=8)
p.add_argument("--min-words", type=int, default=40)
p.add_argument("--out", required=True)
a = p.parse_args()

heading = re.compile(r"^ = ([^=].*[^=]) = $")
articles, title = [], None
with open(a.raw, encoding="utf-8") as f:
    for line in f:
        line = line.rstrip("\n")
        m = heading.match(line)
        if m:
            title = m.group(1).strip()
            articles.append((title, []))
        elif title is not None and line.strip() and not line.startswith(" = ") and len(line.split()) >= a.min_words:
            articles[-1][1].append(line.strip())

chosen = [(t, ps[: a.paragraphs]) for t, ps in articles if len(ps) >= a.paragraphs][: a.articles]
if len(chosen) < 2:
    raise SystemExit(f"{a.raw}: fewer than 2 articles with {a.paragraphs} paragraphs of {a.min_words} words")
with open(a.out, "w", encoding="utf-8") as f:
    for t, ps in chosen:
        for para in ps:
            f.write(json.dumps({"text": para, "label": t}, ensure_ascii=False) + "\n")
print(f"wrote {a.out}: {len(chosen)} articles x {a.paragraphs} paragraphs")
