"""Splits rendered Kubernetes manifests into the kinds kubernetes-validate has schemas for and
the Prometheus Operator's custom resources (monitoring.coreos.com), which it has none for, and
checks the latter against what they refer to:

- PodMonitor: its selector matches the pod template of at least one rendered Deployment, and
  each endpoint's `port` is a named container port of every pod it selects;
- PrometheusRule: its `spec` is exactly deploy/prometheus/herald-rules.yml, the file
  `promtool check rules` and `promtool test rules` check (scripts/prometheus-rules);
- any other kind of that group fails: nothing checks it.

usage: split-crds.py RENDERED.yaml BUILTIN_OUT.yaml RULES_FILE
Writes the built-in kinds to BUILTIN_OUT.yaml, prints what it checked, exits 1 on a problem.
"""
import sys

import yaml

rendered, builtin_out, rules_file = sys.argv[1:]
with open(rendered) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
with open(rules_file) as f:
    rules = yaml.safe_load(f)

builtin, custom = [], []
for doc in docs:
    group = doc.get("apiVersion", "").split("/")[0]
    (custom if group == "monitoring.coreos.com" else builtin).append(doc)
with open(builtin_out, "w") as f:
    yaml.safe_dump_all(builtin, f, sort_keys=False)

pod_templates = [
    (d["metadata"]["name"], d["spec"]["template"])
    for d in builtin
    if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet")
]
problems = []
for doc in custom:
    kind, name = doc["kind"], doc["metadata"]["name"]
    if kind == "PodMonitor":
        wanted = doc["spec"]["selector"]["matchLabels"]
        selected = [
            (workload, t)
            for workload, t in pod_templates
            if all(t["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
        ]
        if not selected:
            problems.append(f"PodMonitor {name}: selects no pod template")
        for endpoint in doc["spec"]["podMetricsEndpoints"]:
            for workload, template in selected:
                ports = {
                    p.get("name")
                    for c in template["spec"]["containers"]
                    for p in c.get("ports", [])
                }
                if endpoint["port"] not in ports:
                    problems.append(
                        f"PodMonitor {name}: {workload} has no container port {endpoint['port']!r}"
                    )
        print(f"PodMonitor {name}: selects {', '.join(w for w, _ in selected)}")
    elif kind == "PrometheusRule":
        if doc["spec"] != rules:
            problems.append(
                f"PrometheusRule {name}: spec differs from {rules_file} "
                "(scripts/prometheus-rules --write)"
            )
        count = sum(len(g["rules"]) for g in doc["spec"]["groups"])
        print(f"PrometheusRule {name}: {count} rules, the same as {rules_file}")
    else:
        problems.append(f"{kind} {name}: no check for this kind")

for problem in problems:
    print(problem, file=sys.stderr)
sys.exit(1 if problems else 0)
