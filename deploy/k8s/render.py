#!/usr/bin/env python3
"""Renders a kustomization the way `kustomize build` (`kubectl kustomize`) does, for the
subset of kustomize that deploy/k8s uses, so the manifests can be validated where no
kustomize binary can be installed (it is not in PyPI, npm or Debian's stable packages):

  python3 deploy/k8s/render.py deploy/k8s/overlays/cpu > cpu.yaml

The subset, and nothing else (any other field stops it with an error naming the field):
- `resources`: YAML files (several documents each) and directories holding a
  kustomization.yaml, rendered recursively;
- `namespace`: set on every namespaced object and on ServiceAccount subjects of
  (Cluster)RoleBindings;
- `labels: [{pairs: {...}}]` (without includeSelectors/includeTemplates): added to
  metadata.labels of every object;
- `images: [{name, newName?, newTag?}]`: rewrites matching container images;
- `patches: [{path, target: {kind, name}}]`: strategic-merge patches (maps merge; lists
  of objects with a `name` merge by name, new items first; other lists are replaced);
- `configMapGenerator: [{name, files: [key=path | path], literals?}]` with
  `generatorOptions.disableNameSuffixHash: true`.
Requires PyYAML. tests/python/test_k8s_manifests.py compares it with `kubectl kustomize`
wherever kubectl is installed.
"""

import copy
import pathlib
import sys

import yaml

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass"}
KNOWN = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches",
         "configMapGenerator", "generatorOptions"}


class RenderError(Exception):
    pass


def render(root: pathlib.Path) -> list[dict]:
    """The objects of the kustomization in `root`."""
    kust = yaml.safe_load((root / "kustomization.yaml").read_text()) or {}
    unknown = set(kust) - KNOWN
    if unknown:
        raise RenderError(f"{root}/kustomization.yaml: unsupported fields {sorted(unknown)}")
    objects = []
    for entry in kust.get("resources", []):
        path = (root / entry).resolve()
        objects += render(path) if path.is_dir() else load_documents(path)
    objects += generate_config_maps(root, kust)
    for patch in kust.get("patches", []):
        apply_patch(root, objects, patch)
    for image in kust.get("images", []):
        set_image(objects, image)
    for group in kust.get("labels", []):
        if set(group) - {"pairs"}:
            raise RenderError(f"labels: only `pairs` is supported, got {sorted(group)}")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(group["pairs"])
    if "namespace" in kust:
        set_namespace(objects, kust["namespace"])
    return objects


def load_documents(path: pathlib.Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def generate_config_maps(root: pathlib.Path, kust: dict) -> list[dict]:
    generators = kust.get("configMapGenerator", [])
    if generators and not kust.get("generatorOptions", {}).get("disableNameSuffixHash"):
        raise RenderError("configMapGenerator needs generatorOptions.disableNameSuffixHash: true here")
    maps = []
    for gen in generators:
        if set(gen) - {"name", "files", "literals"}:
            raise RenderError(f"configMapGenerator: unsupported fields {sorted(set(gen) - {'name', 'files', 'literals'})}")
        data = {}
        for spec in gen.get("files", []):
            key, _, file = spec.rpartition("=")
            path = (root / file).resolve()
            if root.resolve() not in path.parents:
                raise RenderError(f"{file}: kustomize loads files only from below {root}")
            data[key or path.name] = path.read_text()
        for literal in gen.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        maps.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    return maps


def apply_patch(root: pathlib.Path, objects: list[dict], patch: dict) -> None:
    target = patch.get("target", {})
    if set(patch) - {"path", "target"} or set(target) - {"kind", "name"}:
        raise RenderError(f"patches: only path + target.kind/name are supported, got {patch}")
    body = yaml.safe_load((root / patch["path"]).read_text())
    matched = [o for o in objects if o["kind"] == target.get("kind", body["kind"])
               and o["metadata"]["name"] == target.get("name", body["metadata"]["name"])]
    if not matched:
        raise RenderError(f"patch {patch['path']}: no object matches {target}")
    for obj in matched:
        merged = merge(obj, body)
        obj.clear()
        obj.update(merged)


def merge(base, patch):
    """Strategic merge as kustomize does it for the fields used here."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = merge(out[key], value) if key in out else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(
            isinstance(i, dict) and "name" in i for i in base + patch):
        out = copy.deepcopy(base)
        new = []
        for item in patch:
            same = [n for n, b in enumerate(out) if b["name"] == item["name"]]
            if same:
                out[same[0]] = merge(out[same[0]], item)
            else:
                new.append(copy.deepcopy(item))
        return new + out  # kustomize puts the patch's new items first
    return copy.deepcopy(patch)


def pod_specs(obj: dict):
    spec = obj.get("spec", {})
    if "template" in spec:
        yield spec["template"].get("spec", {})


def set_image(objects: list[dict], image: dict) -> None:
    for obj in objects:
        for pod in pod_specs(obj):
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"


def set_namespace(objects: list[dict], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace
        if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for subject in obj.get("subjects", []):
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: render.py KUSTOMIZATION_DIR", file=sys.stderr)
        return 2
    try:
        objects = render(pathlib.Path(sys.argv[1]))
    except (RenderError, OSError, yaml.YAMLError, KeyError) as err:
        print(f"render.py: {err}", file=sys.stderr)
        return 1
    yaml.safe_dump_all(objects, sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
