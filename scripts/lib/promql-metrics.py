"""Checks that every PromQL expression of the Grafana dashboard and of the alerting rules names
only metrics Herald exports.

usage: promql-metrics.py DASHBOARD.json RULES.yml METRICS_TEXT...

METRICS_TEXT are /metrics bodies scraped from a running Herald. The exported names are derived
from their `# TYPE` lines, so a metric with no sample yet (a labelled counter nobody bumped)
counts too: a gauge is its own name; a counter NAME is sampled as NAME_total (whether the line
says NAME, as OpenMetrics does, or NAME_total, as Prometheus text does); a histogram as
NAME_bucket, NAME_sum and NAME_count. Sample lines add their own names.

Metric names are found by taking PromQL apart far enough for Herald's expressions: strings,
label matchers, durations and the label lists of by/without/on/ignoring/group_* are dropped,
then every identifier that is not a keyword or followed by `(` is a metric name. An identifier
that is not Herald's fails the check, so a panel on some other exporter's metric is caught too.
"""
import json
import re
import sys

import yaml

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "offset", "bool", "inf", "nan", "atan2"}

dashboard_file, rules_file, *metric_files = sys.argv[1:]


def exported_names(texts):
    names = set()
    for text in texts:
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()[:4]
                if kind == "counter":
                    base = name[: -len("_total")] if name.endswith("_total") else name
                    names.update({base + "_total", base + "_created"})
                elif kind == "histogram":
                    names.update({name + "_bucket", name + "_sum", name + "_count", name + "_created"})
                elif kind == "summary":
                    names.update({name, name + "_sum", name + "_count", name + "_created"})
                else:
                    names.add(name)
            elif line and not line.startswith("#"):
                names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def metric_names(expr):
    e = re.sub(r'"(\\.|[^"\\])*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\boffset\s+\S+", " ", e)
    e = re.sub(r"\$\w+", " ", e)
    found = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if word.lower() in KEYWORDS or rest.startswith("("):
            continue
        # A number's exponent or a duration's unit is not a name.
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue
        found.add(word)
    return found


def dashboard_exprs(node, where="dashboard"):
    if isinstance(node, dict):
        title = node.get("title", where)
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield f"dashboard panel {title!r}", value
            else:
                yield from dashboard_exprs(value, title)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_exprs(item, where)


texts = []
for path in metric_files:
    with open(path) as f:
        texts.append(f.read())
exported = exported_names(texts)
herald = sorted(n for n in exported if n.startswith("herald_"))
if not herald:
    sys.exit("no herald_ metric in the scraped bodies: is Herald running?")

with open(dashboard_file) as f:
    dashboard = json.load(f)
exprs = list(dashboard_exprs(dashboard))
with open(rules_file) as f:
    for group in yaml.safe_load(f)["groups"]:
        for rule in group["rules"]:
            exprs.append((f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]))

problems, used = [], set()
for where, expr in exprs:
    names = metric_names(expr)
    if not names:
        problems.append(f"{where}: no metric found in {expr!r}")
    for name in sorted(names - exported):
        problems.append(f"{where}: {name} is not a metric Herald exports")
    used |= names

print(f"{len(exprs)} expressions use {len(used & exported)} of the {len(herald)} names Herald exports")
unused = sorted(set(n for n in herald if not n.endswith("_created")) - used)
if unused:
    print("exported but used by no panel or rule: " + ", ".join(unused))
for problem in problems:
    print(problem, file=sys.stderr)
sys.exit(1 if problems else 0)
