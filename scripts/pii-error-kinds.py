#!/usr/bin/env python3
"""Sorts the served `pii` task's strict errors into kinds.

Reads the output of
  vsr eval --task pii --model models/pii --data ../shared/datasets --errors 1000
on stdin (every text whose served spans differ from the gold, then the
report) and prints how many missed (-) and extra (+) spans each kind holds,
and the strict micro-F1 with the presidio templates' two conventions read
the templates' way. Analysis only: nothing here changes what is served.

Kinds that are the data generator's, not the model's:
  * `St.` after a template address: the template writes
    "{{building_number}} {{street_name}} St." and the gold leaves "St." out;
    the head marks the whole address ("... 130 St.").
  * "Texas" written into one template's text and not marked in the gold.
  * one first name filled six times into a list ("Raina, Raina, ... and
    Raina"): the head marks lists of different names (checked with
    `vsr eval --text`), not this one.
"""
import re
import sys

TITLE = re.compile(r"^(Mr|Ms|Mrs|Dr|Miss)\.? ")
ST_SUFFIX = re.compile(r" [Ss]t\.?$")
# CoNLL sentences (wikigold) are space-tokenized: punctuation stands alone.
CONLL = re.compile(r" [.,;:?!)]( |\"$|$)")


def parse(lines):
    texts, report, cur = [], [], None
    for line in lines:
        if line.startswith('"'):
            cur = {"text": line, "missed": [], "extra": []}
            texts.append(cur)
        elif line.startswith(("  - ", "  + ")) and cur is not None:
            kind, span = line[4:].split("\t", 1)
            cur["missed" if line[2] == "-" else "extra"].append((kind, span[1:-1]))
        else:
            cur = None
            report.append(line)
    return texts, report


def served_totals(report):
    """Gold and predicted span counts of the 'as served' type table."""
    gold = pred = 0
    served = False
    for line in report:
        if line.startswith("as served (head"):
            served = True
        elif served and line.startswith("| ") and not line.startswith("| type"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            gold, pred = gold + int(cells[1]), pred + int(cells[2])
        elif served and line.startswith("as served, per source"):
            break
    return gold, pred


def main():
    texts, report = parse(sys.stdin.read().split("\n"))
    counts = {}

    def add(kind, missed=0, extra=0):
        c = counts.setdefault(kind, [0, 0])
        c[0] += missed
        c[1] += extra

    for t in texts:
        missed, extra = list(t["missed"]), list(t["extra"])
        for kind, span in list(extra):
            base = ST_SUFFIX.sub("", span)
            if kind == "STREET_ADDRESS" and base != span and (kind, base) in missed:
                missed.remove((kind, base))
                extra.remove((kind, span))
                add("template: `St.` after the address", 1, 1)
            elif kind == "GPE" and span.lower() == "texas" and "songwriters" in t["text"]:
                extra.remove((kind, span))
                add("template: unmarked `Texas`", 0, 1)
        for kind, span in list(missed):
            if kind == "PERSON" and t["text"].count(span + ",") >= 3:
                missed.remove((kind, span))
                add("template: one name repeated six times", 1, 0)
            elif kind == "PERSON" and TITLE.match(span) and (kind, TITLE.sub("", span)) in extra:
                missed.remove((kind, span))
                extra.remove((kind, TITLE.sub("", span)))
                add("title (`Ms.`) inside the gold name", 1, 1)
        source = "wikigold" if CONLL.search(t["text"]) else "presidio"
        for kind, _ in missed:
            add(f"{source}: {kind}", 1, 0)
        for kind, _ in extra:
            add(f"{source}: {kind}", 0, 1)

    gold, pred = served_totals(report)
    fn = sum(c[0] for c in counts.values())
    fp = sum(c[1] for c in counts.values())
    tp = gold - fn
    if gold == 0 or tp != pred - fp:
        sys.exit("the --errors listing is incomplete (raise --errors) or the report is missing")

    print("| kind | missed (-) | extra (+) |\n|---|---:|---:|")
    for kind, (m, e) in sorted(counts.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {kind} | {m} | {e} |")

    def f1(tp, gold, pred):
        p, r = tp / pred, tp / gold
        return p, r, 2 * p * r / (p + r)

    print("\nstrict micro P %.3f R %.3f F1 %.3f as scored" % f1(tp, gold, pred))
    st = counts.get("template: `St.` after the address", [0, 0])[0]
    texas = counts.get("template: unmarked `Texas`", [0, 0])[1]
    # `St.`: the head's span counts as the gold's; Texas: the gold gains the span.
    print(
        "strict micro P %.3f R %.3f F1 %.3f with the two template conventions read the templates' way"
        % f1(tp + st + texas, gold + texas, pred)
    )


if __name__ == "__main__":
    main()
