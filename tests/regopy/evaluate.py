#!/usr/bin/env python3
"""Decide with a second, independent Rego engine: rego-cpp through its Python binding.

API used (regopy 1.5.2, PyPI `regopy`; microsoft/rego-cpp, wrappers/python/src/regopy/
interpreter.py): `regopy.Interpreter()`, `.add_module(name, source)`,
`.add_data_json(json_text)`, `.set_input(value)`, `.build(query, entrypoints) -> Bundle`
and `.query_bundle(bundle) -> Output` (the query compiled once per purpose: `.query(text)`
compiles every module again on each call, ~15 times slower), `len(output)`,
`output[0]["name"]` (a query binding as a Python value; Rego sets come back as lists),
`regopy.RegoError`, `regopy.__version__`. rego-cpp answers a `false` rule as undefined
(no result), so rules are read through comprehensions, which are never undefined.

Job on stdin: {"profile_dirs": [dir, ...], "cases": [{"purpose": p, "input": {...}}, ...]}.
The profiles are loaded as the verifier loads them for serving (appraisal/src/policy/
load.rs, `load_profiles`): a profile's `profile.toml` bases (`extends`, relative to it)
first, depth-first, each directory once; then the profile's own regular files in sorted
order: `*.rego` except `*_test.rego`, and `data.json` (a JSON object) deep-merged over the
data so far (objects key by key, anything else replaced). Modules are named
`<profile dir name>/<file>`. A purpose is decided as PolicySet::evaluate_value
(appraisal/src/policy/mod.rs) does: `data.teesql.<purpose>.allow` must be a boolean
(undefined = false), `.deny` and `.warn` sets of {code, message}, `.grants` optional; it
allows only when allow is true and deny is empty; a denial with no reason is
`not_allowed`; grants and warnings count only when allowed; an evaluation error is the
refusal `policy_error`.

Prints one JSON array on stdout, one entry per case:
{"allow": bool, "codes": [sorted deny codes], "warnings": [sorted warn codes],
 "grants": object or null, "error": text or null}.
"""

import json
import os
import re
import sys
import tomllib

import regopy
from regopy import Interpreter, RegoError

MAX_FILE = 1024 * 1024
MAX_FILES = 512
MAX_EXTENDS_DEPTH = 8
PURPOSE = re.compile(r"[a-z0-9_]{1,64}")


def read_small(path):
    size = os.path.getsize(path)
    if size > MAX_FILE:
        raise SystemExit(f"{path}: {size} bytes, more than {MAX_FILE}")
    with open(path, encoding="utf-8") as f:
        return f.read()


def merge(base, over):
    """Deep merge, as load.rs `merge`: objects merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        for k, v in over.items():
            base[k] = merge(base[k], v) if k in base else v
        return base
    return over


class Loader:
    def __init__(self):
        self.modules = []  # (display path, source), in load order
        self.data = {}
        self.seen = set()
        self.files = 0

    def count(self, path):
        self.files += 1
        if self.files > MAX_FILES:
            raise SystemExit(f"{path}: more than {MAX_FILES} policy files")

    def profile(self, directory, depth):
        canonical = os.path.realpath(directory)
        if not os.path.isdir(canonical):
            raise SystemExit(f"policy directory {directory}: not a directory")
        if canonical in self.seen:
            return  # already loaded as a base of another profile
        self.seen.add(canonical)
        if depth > MAX_EXTENDS_DEPTH:
            raise SystemExit(f"policy directory {directory}: extends is nested deeper than {MAX_EXTENDS_DEPTH}")
        name = os.path.basename(canonical) or "policies"
        toml_path = os.path.join(canonical, "profile.toml")
        if os.path.isfile(toml_path):
            profile = tomllib.loads(read_small(toml_path))
            unknown = set(profile) - {"extends"}
            if unknown:
                raise SystemExit(f"{toml_path}: unknown fields {sorted(unknown)}")
            for base in profile.get("extends", []):
                self.profile(os.path.join(canonical, base), depth + 1)
            self.count(toml_path)
        entries = sorted(
            os.path.join(canonical, e)
            for e in os.listdir(canonical)
            if os.path.isfile(os.path.join(canonical, e))
        )
        for path in entries:
            file_name = os.path.basename(path)
            if file_name.endswith(".rego"):
                if file_name.endswith("_test.rego"):
                    continue  # tests load only for `policy test`
                self.count(path)
                self.modules.append((f"{name}/{file_name}", read_small(path)))
            elif file_name == "data.json":
                value = json.loads(read_small(path))
                if not isinstance(value, dict):
                    raise SystemExit(f"{path}: must be a JSON object")
                self.data = merge(self.data, value)
                self.count(path)


def load(profile_dirs):
    if not profile_dirs:
        raise SystemExit("no policy directory given")
    loader = Loader()
    for d in profile_dirs:
        loader.profile(d, 0)
    return loader


def codes_of(value, rule):
    """The codes of a deny or warn set, read as [code, message is a string] pairs."""
    out = []
    for r in value:
        if not (isinstance(r, list) and len(r) == 2 and isinstance(r[0], str) and r[1] is True):
            raise ValueError(f"{rule} must be a set of {{code, message}} objects, got {json.dumps(value)[:200]}")
        out.append(r[0])
    return sorted(out)


def decision_query(purpose):
    pkg = f"data.teesql.{purpose}"
    # One query for the four rules; a comprehension is [] where its rule is undefined.
    # Reasons come back as codes only: in rego-cpp 1.5.2, sprintf("v=%s", [s]) with a
    # computed s (concat(", ", ["a", "b"]), a function's result) gives 'v="a, b"' (the
    # argument's quotes kept, count 8), which its JSON output does not escape, so an
    # output carrying such a message is not JSON that regopy can read. Messages are words
    # for people (README: match on code); the verifier dedups (code, message) pairs, and
    # a set iterated here yields each pair once.
    query = (
        "out := {"
        f'"allow": [x | x := {pkg}.allow], '
        f'"deny": [[d.code, is_string(d.message)] | some d in {pkg}.deny], '
        f'"deny_count": count([1 | some d in {pkg}.deny]), '
        f'"warn": [[d.code, is_string(d.message)] | some d in {pkg}.warn], '
        f'"warn_count": count([1 | some d in {pkg}.warn]), '
        f'"grants": [x | x := {pkg}.grants]'
        "}"
    )
    return query


def decide(interpreter, bundles, purpose, claims):
    if not PURPOSE.fullmatch(purpose):
        raise ValueError(f"purpose {purpose!r} is not a valid name")
    if purpose not in bundles:
        bundles[purpose] = interpreter.build(decision_query(purpose), [])
    interpreter.set_input(claims)
    output = interpreter.query_bundle(bundles[purpose])
    if len(output) != 1:
        raise ValueError(f"query gave {len(output)} results: {output}")
    got = output[0]["out"]
    allow = got["allow"][0] if got["allow"] else False
    if not isinstance(allow, bool):
        raise ValueError(f"allow must be a boolean, got {json.dumps(allow)[:200]}")
    deny = codes_of(got["deny"], "deny")
    warn = codes_of(got["warn"], "warn")
    if len(deny) != got["deny_count"] or len(warn) != got["warn_count"]:
        raise ValueError("deny and warn must be sets of {code, message} objects")
    allowed = allow and not deny
    if not allowed and not deny:
        deny = ["not_allowed"]
    grants = got["grants"][0] if got["grants"] and allowed else None
    return {
        "allow": allowed,
        "codes": [] if allowed else deny,
        "warnings": warn if allowed else [],
        "grants": grants,
        "error": None,
    }


def located(error, sources):
    """rego-cpp's error dump, `(error N:<module>|<offset>|<length> (errormsg N:<text>)`,
    as `<module>:<line>:<column>: <text>: <source text>` lines."""
    out = []
    for m in re.finditer(r"\(error \d+:([^|]+)\|(\d+)\|(\d+)\s*\(errormsg \d+:([^)]*)\)", str(error)):
        name, offset, length, text = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        source = sources.get(name, "")
        line = source.count("\n", 0, offset) + 1
        column = offset - (source.rfind("\n", 0, offset) + 1) + 1
        snippet = source[offset:offset + length].split("\n")
        out.append(f"{name}:{line}:{column}: {text}: {snippet[0].strip()}{' ...' if len(snippet) > 1 else ''}")
    return "\n".join(dict.fromkeys(out)) or str(error)


def main():
    job = json.load(sys.stdin)
    loaded = load(job["profile_dirs"])
    interpreter = Interpreter()
    sources = dict(loaded.modules)
    for name, source in loaded.modules:
        try:
            interpreter.add_module(name, source)
        except RegoError as e:
            raise SystemExit(f"rego-cpp (regopy {regopy.__version__}) refuses {name}:\n{located(e, sources)}")
    interpreter.add_data_json(json.dumps(loaded.data))
    out = []
    bundles = {}
    for case in job["cases"]:
        try:
            out.append(decide(interpreter, bundles, case["purpose"], case["input"]))
        except (RegoError, ValueError) as e:
            out.append({
                "allow": False,
                "codes": ["policy_error"],
                "warnings": [],
                "grants": None,
                "error": f"{type(e).__name__}: {e}",
            })
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    print(f"regopy {regopy.__version__}: {len(out)} decisions", file=sys.stderr)


if __name__ == "__main__":
    main()
