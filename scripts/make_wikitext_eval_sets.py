"""Small labelled evaluation sets from WikiText-2 (assets/wikitext-2, CC BY-SA 3.0) for development of
`llm2vec eval clustering`, `eval classification` and `eval retrieval`. Standard library only. WikiText's tokenisation
(" @-@ ", spaces around punctuation) is kept as it is.

    python3 scripts/make_wikitext_eval_sets.py clustering --out build/wiki_clusters.jsonl
        [--articles 12] [--paragraphs 8]
  JSON lines {"text", "label"}: the first `paragraphs` paragraphs of the first `articles` articles that
  have that many, each labelled with its article's title (one cluster per article).

    python3 scripts/make_wikitext_eval_sets.py classification --out build/wiki_topics [--articles 12]
        [--paragraphs 12] [--train 8]
  OUT/train.jsonl and OUT/test.jsonl {"text", "label"}: of the first `articles` articles with
  `paragraphs` paragraphs, the first `train` paragraphs for training, the rest for testing.

    python3 scripts/make_wikitext_eval_sets.py retrieval --out build/wiki_beir [--every 4]
  A BEIR directory (corpus.jsonl, queries.jsonl, qrels/test.tsv): every paragraph is a document (its
  article's title as the title); for every `every`-th one, its first sentence is a query whose one
  relevant document is the rest of the paragraph (the sentence removed, so the match is not verbatim).

Both take --raw (default assets/wikitext-2/wiki.test.raw) and --min-words (default 40): the shortest
paragraph used.
"""
import argparse
import json
import os
import re


def articles(raw, min_words):
    """[(title, [paragraph, ...])] in file order, paragraphs of at least min_words words."""
    heading = re.compile(r"^ = ([^=].*[^=]) = $")
    out = []
    with open(raw, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            m = heading.match(line)
            if m:
                out.append((m.group(1).strip(), []))
            elif out and line.strip() and not line.startswith(" = ") and len(line.split()) >= min_words:
                out[-1][1].append(line.strip())
    return out


def clustering(a):
    chosen = [(t, ps[: a.paragraphs]) for t, ps in articles(a.raw, a.min_words) if len(ps) >= a.paragraphs]
    chosen = chosen[: a.articles]
    if len(chosen) < 2:
        raise SystemExit(f"{a.raw}: fewer than 2 articles with {a.paragraphs} paragraphs of {a.min_words} words")
    with open(a.out, "w", encoding="utf-8") as f:
        for t, ps in chosen:
            for para in ps:
                f.write(json.dumps({"text": para, "label": t}, ensure_ascii=False) + "\n")
    print(f"wrote {a.out}: {len(chosen)} articles x {a.paragraphs} paragraphs")


def classification(a):
    chosen = [(t, ps[: a.paragraphs]) for t, ps in articles(a.raw, a.min_words) if len(ps) >= a.paragraphs]
    chosen = chosen[: a.articles]
    if len(chosen) < 2 or not 0 < a.train < a.paragraphs:
        raise SystemExit(f"{a.raw}: fewer than 2 articles with {a.paragraphs} paragraphs, or --train not below it")
    os.makedirs(a.out, exist_ok=True)
    for name, part in (("train", slice(0, a.train)), ("test", slice(a.train, a.paragraphs))):
        with open(os.path.join(a.out, name + ".jsonl"), "w", encoding="utf-8") as f:
            for t, ps in chosen:
                for para in ps[part]:
                    f.write(json.dumps({"text": para, "label": t}, ensure_ascii=False) + "\n")
    print(f"wrote {a.out}: {len(chosen)} articles, {a.train} + {a.paragraphs - a.train} paragraphs each")


def retrieval(a):
    docs, queries = [], []
    for title, paragraphs in articles(a.raw, a.min_words):
        for text in paragraphs:
            doc_id = f"p{len(docs)}"
            cut = text.find(" . ")  # WikiText separates sentences as " . "
            if len(docs) % a.every == 0 and 0 < cut < len(text) - 40:
                queries.append(({"_id": f"q{len(queries)}", "text": text[: cut + 2]}, doc_id))
                text = text[cut + 3:]
            docs.append({"_id": doc_id, "title": title, "text": text})
    os.makedirs(os.path.join(a.out, "qrels"), exist_ok=True)
    with open(os.path.join(a.out, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    with open(os.path.join(a.out, "queries.jsonl"), "w", encoding="utf-8") as f:
        for q, _ in queries:
            f.write(json.dumps(q, ensure_ascii=False) + "\n")
    with open(os.path.join(a.out, "qrels", "test.tsv"), "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q, d in queries:
            f.write(f"{q['_id']}\t{d}\t1\n")
    print(f"wrote {a.out}: {len(docs)} documents, {len(queries)} queries")


p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
sub = p.add_subparsers(dest="task", required=True)
for name in ("clustering", "classification", "retrieval"):
    s = sub.add_parser(name)
    s.add_argument("--raw", default="assets/wikitext-2/wiki.test.raw")
    s.add_argument("--min-words", type=int, default=40)
    s.add_argument("--out", required=True)
    if name != "retrieval":
        s.add_argument("--articles", type=int, default=12)
        s.add_argument("--paragraphs", type=int, default=8 if name == "clustering" else 12)
    if name == "classification":
        s.add_argument("--train", type=int, default=8)
    else:
        s.add_argument("--every", type=int, default=4)
a = p.parse_args()
{"clustering": clustering, "classification": classification, "retrieval": retrieval}[a.task](a)
