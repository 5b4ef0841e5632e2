"""A renderer of the kustomize subset k8s/ uses, for tests on machines without kustomize.

Supported kustomization fields: ``resources`` (files and directories), ``namespace``,
``labels`` (metadata only: ``includeSelectors``/``includeTemplates`` false), ``images``
(``newName``/``newTag``), ``replicas`` and ``patches`` with inline JSON 6902 operations
(add, replace, remove) and a ``target`` of kind and name.  Anything else is refused, so the
manifests cannot drift into features this renderer would silently ignore; where `kubectl
kustomize` is installed a test checks that both render the same objects.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Final

import yaml

Doc = dict[str, Any]

SUPPORTED: Final = frozenset(
    {"apiVersion", "kind", "resources", "namespace", "labels", "images", "replicas", "patches"}
)
SCALABLE: Final = frozenset({"Deployment", "StatefulSet", "ReplicaSet"})


class KustomizeError(ValueError):
    """A kustomization this renderer does not support or cannot apply."""


def build(directory: Path) -> list[Doc]:
    """The objects `kustomize build DIRECTORY` renders."""
    path = directory / "kustomization.yaml"
    k = yaml.safe_load(path.read_text())
    unknown = set(k) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{path}: unsupported fields {sorted(unknown)}")
    docs: list[Doc] = []
    for entry in k.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            docs += build(target)
        else:
            docs += [d for d in yaml.safe_load_all(target.read_text()) if d]
    for patch in k.get("patches", []):
        _patch(docs, patch, path)
    if "namespace" in k:
        for doc in docs:
            doc["metadata"]["namespace"] = k["namespace"]
    for entry in k.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise KustomizeError(f"{path}: labels only on metadata are supported")
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(entry["pairs"])
    for image in k.get("images", []):
        for doc in docs:
            _set_image(doc, image)
    for entry in k.get("replicas", []):
        matched = [d for d in docs if d["kind"] in SCALABLE
                   and d["metadata"]["name"] == entry["name"]]
        if not matched:
            raise KustomizeError(f"{path}: replicas for unknown {entry['name']}")
        for doc in matched:
            doc["spec"]["replicas"] = entry["count"]
    return docs


def _patch(docs: list[Doc], patch: Doc, path: Path) -> None:
    target = patch.get("target", {})
    if set(target) - {"kind", "name"} or "patch" not in patch:
        raise KustomizeError(f"{path}: only inline JSON 6902 patches with kind/name targets")
    ops = yaml.safe_load(patch["patch"])
    matched = [d for d in docs if d["kind"] == target.get("kind", d["kind"])
               and d["metadata"]["name"] == target.get("name", d["metadata"]["name"])]
    if not matched:
        raise KustomizeError(f"{path}: patch target {target} matches nothing")
    for doc in matched:
        for op in ops:
            apply_json_patch(doc, op)


def apply_json_patch(doc: Doc, op: Doc) -> None:
    """One RFC 6902 operation (add, replace, remove) on ``doc``, in place."""
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]]
    if not tokens:
        raise KustomizeError("cannot patch the document root")
    parent: Any = doc
    for token in tokens[:-1]:
        parent = parent[int(token)] if isinstance(parent, list) else parent[token]
    last = tokens[-1]
    kind = op["op"]
    if kind not in ("add", "replace", "remove"):
        raise KustomizeError(f"unsupported JSON patch op {kind!r}")
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if kind == "add":
            parent.insert(index, copy.deepcopy(op["value"]))
        elif kind == "replace":
            parent[index] = copy.deepcopy(op["value"])
        else:
            del parent[index]
    else:
        if kind != "add" and last not in parent:
            raise KustomizeError(f"{op['path']}: nothing to {kind}")
        if kind == "remove":
            del parent[last]
        else:
            parent[last] = copy.deepcopy(op["value"])


def _set_image(doc: Doc, image: Doc) -> None:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        name, tag = _split_image(container["image"])
        if name != image["name"]:
            continue
        name = image.get("newName", name)
        tag = image.get("newTag", tag)
        container["image"] = f"{name}:{tag}" if tag else name


def _split_image(ref: str) -> tuple[str, str]:
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1:]
    return ref, ""
