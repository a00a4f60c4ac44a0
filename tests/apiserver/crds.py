"""CustomResourceDefinitions (`apiextensions.k8s.io/v1`) and the custom resources they define.

Charts and operators bring their own kinds (Flux's GitRepositories and Kustomizations,
a chart's `crds/` directory), and kubectl, helm and the Python client's
`CustomObjectsApi` expect a CRD to be served the moment it exists, as a real
apiserver's apiextensions handler does. So the CRD is an ordinary `ResourceType`
whose writes are validated for the essentials (name = `<plural>.<group>`, scope,
names, one storage version, a schema per version, printer columns) and given the
status the naming and establishing controllers would (NamesAccepted, Established,
`acceptedNames`, `storedVersions`); and a `CrdController` listening to the store
turns each served version into a `ResourceType` (`custom=True`) in the registry, so
discovery, routing, tables, watch and OpenAPI serve it with nothing else to change.
Deleting the CRD removes its types and its objects. Custom objects are not checked
against the schema (unknown fields are kept); their `status` is dropped on create
when the version has a status subresource, as the real strategy does.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from tests.apiserver.resources import AGE, DNS_SUBDOMAIN, NAME, Column, Obj, Registry, ResourceType, age
from tests.apiserver.store import Event, ObjectStore, timestamp

GROUP = "apiextensions.k8s.io"
Problems = list[tuple[str, str]]
COLUMN_TYPES = ("integer", "number", "string", "boolean", "date")
PROTECTED_GROUPS = ("k8s.io", "kubernetes.io")
APPROVAL = "api-approved.kubernetes.io"
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


# -- JSONPath, as far as printer columns use it -------------------------------------------------------

_STEP = re.compile(
    r"\.(?P<field>[A-Za-z0-9_-]+)"
    r"|\[(?P<index>-?\d+|\*)\]"
    r"|\[['\"](?P<quoted>[^'\"]+)['\"]\]"
    r"|\[\?\(@(?P<path>(?:\.[A-Za-z0-9_-]+)+)\s*(?P<op>==|!=)\s*(?P<value>\"[^\"]*\"|'[^']*'|[^)\s]+)\s*\)\]"
)


def _literal(text: str) -> Any:
    if text[:1] in ("'", '"'):
        return text[1:-1]
    try:
        return json.loads(text)
    except ValueError:
        return text


def jsonpath(obj: Any, path: str) -> list[Any]:
    """Values at a CRD column's `jsonPath` (`.spec.url`, `.status.conditions[?(@.type=="Ready")].status`,
    `.items[0]`, `.metadata.annotations['a/b']`); a malformed path finds nothing."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    nodes, pos = [obj], 0
    while pos < len(path):
        m = _STEP.match(path, pos)
        if m is None:
            return []
        pos = m.end()
        found: list[Any] = []
        for node in nodes:
            if m["field"] or m["quoted"]:
                key = m["field"] or m["quoted"]
                if isinstance(node, dict) and key in node:
                    found.append(node[key])
            elif m["index"] is not None and isinstance(node, list):
                if m["index"] == "*":
                    found += node
                elif -len(node) <= int(m["index"]) < len(node):
                    found.append(node[int(m["index"])])
            elif m["path"] and isinstance(node, list):
                wanted = _literal(m["value"])
                for item in node:
                    got = jsonpath(item, m["path"])
                    if (bool(got) and got[0] == wanted) == (m["op"] == "=="):
                        found.append(item)
        nodes = found
    return nodes


def _cell(kind: str, value: Any, now: dt.datetime) -> Any:
    """`cellForJSONValue`: a cell of the column's type, or None (kubectl prints `<none>`)."""
    if value is None:
        return None
    if kind == "string":
        if isinstance(value, bool):
            return "true" if value else "false"
        return json.dumps(value) if isinstance(value, dict | list) else str(value)
    if kind == "integer" and isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind == "date" and isinstance(value, str):
        try:
            dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return "<invalid>"
        return age({"metadata": {"creationTimestamp": value}}, now)
    return None


def _column(doc: Obj) -> Column:
    path, kind = str(doc.get("jsonPath", "")), str(doc.get("type", "string"))

    def cell(obj: Obj, now: dt.datetime) -> Any:
        found = jsonpath(obj, path)
        return _cell(kind, found[0], now) if found else None

    return Column(
        str(doc.get("name", "")),
        cell,
        type=kind,
        format=str(doc.get("format", "")),
        description=str(doc.get("description", "")),
        priority=int(doc.get("priority", 0) or 0),
    )


# -- the CRD's own rules -------------------------------------------------------------------------------


def _dicts(value: object) -> list[Obj]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _spec(crd: Obj) -> Obj:
    spec = crd.get("spec")
    return spec if isinstance(spec, dict) else {}


def _names(crd: Obj) -> Obj:
    names = _spec(crd).get("names")
    return names if isinstance(names, dict) else {}


def _default_crd(crd: Obj) -> None:
    """v1 defaulting: singular and listKind from the kind, `None` conversion, `served`/`storage` false."""
    names, spec = _names(crd), _spec(crd)
    if isinstance(names.get("kind"), str) and names["kind"]:
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", names["kind"] + "List")
    if spec:
        spec.setdefault("conversion", {"strategy": "None"})
    for version in _dicts(spec.get("versions")):
        version.setdefault("served", False)
        version.setdefault("storage", False)


def _go_versions(versions: list[Obj]) -> str:
    """How the apiserver prints `spec.versions` in an Invalid value (Go's %#v, shortened)."""
    if not versions:
        return "[]apiextensions.CustomResourceDefinitionVersion(nil)"
    shown = ", ".join(
        f'apiextensions.CustomResourceDefinitionVersion{{Name:"{v.get("name", "")}", '
        f"Served:{str(bool(v.get('served'))).lower()}, Storage:{str(bool(v.get('storage'))).lower()}, ...}}"
        for v in versions
    )
    return f"[]apiextensions.CustomResourceDefinitionVersion{{{shown}}}"


def _dns_1035(value: object, where: str) -> Problems:
    if isinstance(value, str) and value and not (len(value) <= 63 and DNS_1035.match(value)):
        message = (
            f'Invalid value: "{value}": a DNS-1035 label must consist of lower case alphanumeric '
            "characters or '-', start with an alphabetic character, and end with an alphanumeric character"
        )
        return [(where, message)]
    return []


def _validate_names(names: Obj) -> Problems:
    problems: Problems = []
    for field in ("plural", "singular", "kind", "listKind"):
        if not names.get(field):
            problems.append((f"spec.names.{field}", "Required value"))
    problems += _dns_1035(names.get("plural"), "spec.names.plural")
    problems += _dns_1035(names.get("singular"), "spec.names.singular")
    for field in ("kind", "listKind"):
        value = names.get(field)
        if isinstance(value, str) and _dns_1035(value.lower(), ""):
            problems.append(
                (
                    f"spec.names.{field}",
                    f'Invalid value: "{value}": may have mixed case, but should otherwise match: '
                    "a DNS-1035 label",
                )
            )
    if names.get("kind") and names.get("kind") == names.get("listKind"):
        problems.append(
            (
                "spec.names.listKind",
                f'Invalid value: "{names["kind"]}": kind and listKind may not be the same',
            )
        )
    for i, short in enumerate(names.get("shortNames") or []):
        problems += _dns_1035(short, f"spec.names.shortNames[{i}]")
    return problems


def _validate_version(version: Obj, where: str) -> Problems:
    problems = _dns_1035(version.get("name"), f"{where}.name") if version.get("name") else []
    if not version.get("name"):
        problems.append((f"{where}.name", "Required value"))
    schema = version.get("schema")
    if not isinstance(schema, dict) or not isinstance(schema.get("openAPIV3Schema"), dict):
        problems.append((f"{where}.schema.openAPIV3Schema", "Required value: schemas are required"))
    for i, column in enumerate(_dicts(version.get("additionalPrinterColumns"))):
        at = f"{where}.additionalPrinterColumns[{i}]"
        if not column.get("name"):
            problems.append((f"{at}.name", "Required value"))
        if column.get("type") not in COLUMN_TYPES:
            listed = ", ".join(f'"{t}"' for t in COLUMN_TYPES)
            problems.append(
                (f"{at}.type", f'Unsupported value: "{column.get("type", "")}": supported values: {listed}')
            )
        if not column.get("jsonPath"):
            problems.append((f"{at}.jsonPath", "Required value"))
    return problems


def _protected(group: str) -> bool:
    return any(group == g or group.endswith("." + g) for g in PROTECTED_GROUPS)


def _validate_crd(crd: Obj) -> Problems:
    spec, names = _spec(crd), _names(crd)
    meta = crd["metadata"]
    group, plural, name = spec.get("group"), names.get("plural"), meta.get("name", "")
    problems: Problems = []
    if name != f"{plural}.{group}":
        problems.append(
            ("metadata.name", f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group')
        )
    if not group:
        problems.append(("spec.group", "Required value"))
    elif not isinstance(group, str) or not DNS_SUBDOMAIN.match(group) or "." not in group:
        problems.append(("spec.group", f'Invalid value: "{group}": should be a domain with at least one dot'))
    elif _protected(group) and not (meta.get("annotations") or {}).get(APPROVAL):
        problems.append(
            (
                f"metadata.annotations[{APPROVAL}]",
                f'Required value: protected groups must have approval annotation "{APPROVAL}", '
                "see https://github.com/kubernetes/enhancements/pull/1111",
            )
        )
    scope = spec.get("scope")
    if not scope:
        problems.append(("spec.scope", "Required value"))
    elif scope not in ("Cluster", "Namespaced"):
        problems.append(
            ("spec.scope", f'Unsupported value: "{scope}": supported values: "Cluster", "Namespaced"')
        )
    problems += _validate_names(names)
    versions = _dicts(spec.get("versions"))
    seen: set[str] = set()
    for i, version in enumerate(versions):
        problems += _validate_version(version, f"spec.versions[{i}]")
        if version.get("name") in seen:
            problems.append(
                (
                    "spec.versions",
                    f"Invalid value: {_go_versions(versions)}: must contain unique version names",
                )
            )
        seen.add(str(version.get("name")))
    if sum(1 for v in versions if v.get("storage") is True) != 1:
        problems.append(
            (
                "spec.versions",
                f"Invalid value: {_go_versions(versions)}: "
                "must have exactly one version marked as storage version",
            )
        )
    stored = (crd.get("status") or {}).get("storedVersions") or []
    for i, stored_version in enumerate(stored if isinstance(stored, list) else []):
        if stored_version not in seen:
            problems.append(
                (
                    f"status.storedVersions[{i}]",
                    f'Invalid value: "{stored_version}": must appear in spec.versions',
                )
            )
    return problems


def _validate_crd_update(old: Obj, new: Obj) -> Problems:
    problems: Problems = []
    for field in ("group", "scope"):
        before, after = _spec(old).get(field), _spec(new).get(field)
        if before != after:
            problems.append((f"spec.{field}", f'Invalid value: "{after}": field is immutable'))
    return problems


def _established(crd: Obj, _: dt.datetime) -> str:
    return str(crd["metadata"].get("creationTimestamp", ""))


CRDS = ResourceType(
    GROUP,
    "v1",
    "customresourcedefinitions",
    "customresourcedefinition",
    "CustomResourceDefinition",
    namespaced=False,
    short_names=("crd", "crds"),
    categories=("api-extensions",),
    default=_default_crd,
    validate=_validate_crd,
    validate_update=_validate_crd_update,
    columns=(NAME, Column("Created At", _established, type="date", description="the creation time")),
    subresources=("status",),
    generation=True,
)


# -- what a CRD serves --------------------------------------------------------------------------------


def _version_rank(name: str) -> tuple[int, int, int, str]:
    """Kube-aware version order (v1 > v1beta2 > v1alpha1 > other), as discovery prefers versions."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", name)
    if not m:
        return (3, 0, 0, name)
    stability = {None: 0, "beta": 1, "alpha": 2}[m[2]]
    return (stability, -int(m[1]), -int(m[3] or 0), name)


def custom_type(crd: Obj, version: Obj) -> ResourceType:
    spec, names = _spec(crd), _names(crd)
    subresources = version.get("subresources") or {}
    columns = tuple(_column(c) for c in _dicts(version.get("additionalPrinterColumns")))
    return ResourceType(
        str(spec.get("group")),
        str(version.get("name")),
        str(names.get("plural")),
        str(names.get("singular") or str(names.get("kind", "")).lower()),
        str(names.get("kind")),
        namespaced=spec.get("scope") == "Namespaced",
        short_names=tuple(names.get("shortNames") or ()),
        categories=tuple(names.get("categories") or ()),
        columns=(NAME, *columns) if columns else (NAME, AGE),
        subresources=("status",) if isinstance(subresources, dict) and "status" in subresources else (),
        generation=True,
        custom=True,
    )


def served_types(crd: Obj) -> list[ResourceType]:
    """One ResourceType per served version, the preferred (most stable, newest) first."""
    versions = [v for v in _dicts(_spec(crd).get("versions")) if v.get("served")]
    versions.sort(key=lambda v: _version_rank(str(v.get("name"))))
    return [custom_type(crd, v) for v in versions]


def _storage_type(crd: Obj) -> ResourceType:
    versions = _dicts(_spec(crd).get("versions"))
    return custom_type(crd, next((v for v in versions if v.get("storage")), versions[0] if versions else {}))


def _condition(kind: str, reason: str, message: str, since: str, before: list[Obj]) -> Obj:
    prior = next((c for c in before if c.get("type") == kind and c.get("status") == "True"), {})
    return {
        "type": kind,
        "status": "True",
        "lastTransitionTime": prior.get("lastTransitionTime", since),
        "reason": reason,
        "message": message,
    }


class CrdController:
    """What kube-apiserver's apiextensions controllers do, synchronously: the CRD's status on every
    write (a store mutator) and the registry kept in step with the CRDs (a store listener)."""

    def __init__(self, store: ObjectStore, registry: Registry) -> None:
        self.store, self.registry = store, registry
        store.mutators.append(self._admit)
        store.listen(self._on_event)

    def _admit(self, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        if rt.custom and old is None and "status" in rt.subresources:
            obj.pop("status", None)  # a create never sets the status of a kind with its own subresource
        if (rt.group, rt.plural) == (CRDS.group, CRDS.plural):
            self._set_status(obj, old)

    def _set_status(self, crd: Obj, old: Obj | None) -> None:
        status = {} if old is None else dict(crd.get("status") or {})
        before = _dicts(status.get("conditions"))
        since = timestamp(self.store.clock())
        names = _names(crd)
        storage = next((v.get("name") for v in _dicts(_spec(crd).get("versions")) if v.get("storage")), None)
        stored = [v for v in status.get("storedVersions") or [] if isinstance(v, str)]
        if storage and storage not in stored:
            stored.append(storage)
        accepted = ("plural", "singular", "shortNames", "kind", "listKind", "categories")
        crd["status"] = {
            **status,
            "conditions": [
                _condition("NamesAccepted", "NoConflicts", "no conflicts found", since, before),
                _condition(
                    "Established",
                    "InitialNamesAccepted",
                    "the initial names have been accepted",
                    since,
                    before,
                ),
            ],
            "acceptedNames": {k: names[k] for k in accepted if names.get(k)},
            "storedVersions": stored,
        }

    def _on_event(self, event: Event) -> None:
        if (event.group, event.plural) != (CRDS.group, CRDS.plural):
            return
        crd = event.obj
        group, plural = str(_spec(crd).get("group")), str(_names(crd).get("plural"))
        if event.type != "DELETED":
            self.registry.replace(group, plural, served_types(crd))
            return
        gone = self.registry.replace(group, plural, [])
        rt = gone[0] if gone else _storage_type(crd)
        for obj in self.store.list_all(group, plural):
            meta = obj["metadata"]
            self.store.delete(rt, meta.get("namespace"), meta["name"])
