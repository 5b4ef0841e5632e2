"""The naming rules of stanzad's metrics, checked on what a service really exposes.

``stanzad_<component>_<thing>_<unit>``; counters end in ``_total``; base units (seconds,
bytes); label names from a small fixed set, label values never a JID or an address.  Other
families may only come from prometheus_client's default collectors (process_*, python_*).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

# presence, roster, s2s, offline: the services that come next (issue 6 names their metrics);
# cluster, tls: what shared/cluster and shared/tls report for any service (issue 25's alerts).
COMPONENTS: Final = frozenset(
    {"cm", "router", "admin", "bus", "store", "presence", "roster", "s2s", "offline", "process",
     "cluster", "tls", "archive"}
)
LABELS: Final = frozenset(
    {"service", "operation", "kind", "outcome", "result", "mechanism", "condition", "code",
     "type", "direction", "limit", "reason", "scope", "generation",
     "transport", "endpoint", "status"}  # each a small fixed set (status: HTTP codes we send)
)
BUILTIN_LABELS: Final = frozenset({"le", "quantile"})
HISTOGRAM_UNITS: Final = ("_seconds", "_bytes", "_messages", "_sessions")
NOT_BASE_UNITS: Final = frozenset({
    "ms", "us", "ns", "millis", "milliseconds", "microseconds", "nanoseconds", "minutes",
    "hours", "days", "kb", "kib", "mb", "mib", "kilobytes", "megabytes", "bits", "percent",
})
TIME_WORDS: Final = frozenset({"duration", "latency", "time", "age"})
DEFAULT_COLLECTORS: Final = ("process_", "python_")
NAME: Final = re.compile(r"^stanzad_([a-z0-9]+)_([a-z0-9]+(?:_[a-z0-9]+)*)$")


def families(text: str) -> list[Metric]:
    return list(text_string_to_metric_families(text))


def exposed_names(fams: Iterable[Metric]) -> set[str]:
    """Every series name a query may use: sample names plus the suffixes of each type."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                "_created"), "summary": ("_count", "_sum", "_created"), "gauge": ("",)}
    out: set[str] = set()
    for fam in fams:
        out.add(fam.name)
        out.update(fam.name + s for s in suffixes.get(fam.type, ("",)))
        out.update(s.name for s in fam.samples)
    return out


def problems(fam: Metric) -> list[str]:
    """What is wrong with one metric family; empty when it follows the rules."""
    name = fam.name
    if not name.startswith("stanzad_"):
        if name.startswith(DEFAULT_COLLECTORS):
            return []
        return [f"{name}: not stanzad_* and not a default collector"]
    out: list[str] = []
    match = NAME.match(name)
    if match is None:
        return [f"{name}: not stanzad_<component>_<thing>_<unit> in lower snake case"]
    component, rest = match.groups()
    words = rest.split("_")
    if component not in COMPONENTS:
        out.append(f"{name}: unknown component {component!r}")
    if not fam.documentation.strip():
        out.append(f"{name}: no HELP text")
    if NOT_BASE_UNITS & set(words):
        out.append(f"{name}: not a base unit ({', '.join(sorted(NOT_BASE_UNITS & set(words)))})")
    if TIME_WORDS & set(words) and words[-1] != "seconds":
        out.append(f"{name}: a time must be in seconds (end in _seconds)")
    if "total" in words and fam.type == "counter":
        out.append(f"{name}: '_total' inside a counter's name")
    if fam.type == "counter":
        bad = [s.name for s in fam.samples if not s.name.endswith(("_total", "_created"))]
        if bad:
            out.append(f"{name}: counter samples not ending in _total: {bad}")
    elif fam.type in ("gauge", "untyped") and words[-1] in ("total", "count", "sum", "bucket"):
        out.append(f"{name}: a {fam.type} must not end in _{words[-1]}")
    elif fam.type in ("histogram", "summary") and not name.endswith(HISTOGRAM_UNITS):
        out.append(f"{name}: a {fam.type} must end in a unit: {', '.join(HISTOGRAM_UNITS)}")
    for sample in fam.samples:
        for label, value in sample.labels.items():
            if label not in LABELS | BUILTIN_LABELS:
                out.append(f"{name}: label {label!r} is not one of {sorted(LABELS)}")
            elif _looks_personal(value):
                out.append(f"{name}: label {label}={value!r} looks like a JID or an address")
    return out


def type_line_problems(text: str) -> list[str]:
    """Counters end in ``_total`` as exposed (the parser adds the suffix when it is missing,
    so this reads the ``# TYPE`` lines themselves); other types never do."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4 or parts[:2] != ["#", "TYPE"]:
            continue
        name, kind = parts[2], parts[3]
        if kind == "counter" and not name.endswith("_total"):
            out.append(f"{name}: a counter must end in _total")
        elif kind != "counter" and name.endswith("_total"):
            out.append(f"{name}: a {kind} must not end in _total")
    return out


def _looks_personal(value: str) -> bool:
    if "@" in value or len(value) > 64:
        return True
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return False
    return True
