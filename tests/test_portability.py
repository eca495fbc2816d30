"""The workers run in every image, from Python 3.6 + torch 0.4.1 to the newest: check they can.

What the "Workers" issue asks, each checked on the real files:

* vermin (PyPI) finds no construct newer than Python 3.6 in workers/;
* workers/ imports only the standard library and torch (warpctc_pytorch only where its
  ImportError is caught); sweeps/ and analysis/ never import torch, not even through a
  workers module they import;
* every ``torch.*`` API a worker uses exists in torch 0.4.1 (tests/data/torch_0_4_1_api.txt,
  derived from the v0.4.1 sources) unless the use sits behind a feature check;
* every torch name a worker mentions, feature probes included, exists in 0.4.1 or in the
  installed torch (a misspelt ``hasattr(torch, "compiel")`` would never be true);
* no worker decides anything by comparing or splitting ``torch.__version__``.

The torch API rule, kept simple on purpose:

* A *use* is a dotted chain rooted at torch after resolving import aliases (``import torch.nn
  as nn``, ``from torch.nn import functional as F``, ``from torch.nn.utils.rnn import
  pack_padded_sequence``) and plain assignments of a chain (``cudnn = torch.backends.cudnn``),
  plus every ``from torch.x import y`` name and ``getattr(<chain>, "name")`` without a default.
* A use is *guarded* (exempt) when it sits in the branch of an ``if``/conditional expression
  that runs when the feature exists: the body of ``if hasattr(...)`` / ``if getattr(...)``
  (or of a name holding such an answer), the else of ``if not hasattr(...)`` or of
  ``if getattr(m, "x", None) is None``; after such a test in an ``and``; after
  ``if not hasattr(...): raise`` (or return/continue/break); in the body of a ``try`` whose
  handlers catch ImportError/ModuleNotFoundError/AttributeError/TypeError; or when it is an
  argument of hasattr/getattr itself (``getattr(torch.backends, "cuda", None)`` included).
  A name imported or assigned behind such a check carries it to all its uses.
* The other branch is the old-torch fallback, so it is checked like unguarded code.
* Not a guard: a check in another function whose verdict travels as a value (a string or a
  flag argument) to the use; the use must sit behind its own check, so a reader sees it.
* An unguarded chain is accepted when the list has it, or when a prefix of it is listed as a
  class (the rest is then attribute access on that class or its instances: torch.Tensor.xxx).
  Chains through a call (``torch.cuda.Event().record``) stop at the call.
"""
import ast
import functools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKERS = ROOT / "workers"
HOST_PACKAGES = [ROOT / "sweeps", ROOT / "analysis"]
API_LIST = ROOT / "tests" / "data" / "torch_0_4_1_api.txt"

# Exceptions that mean "this torch has no such thing": catching one is a feature check.
FEATURE_CHECK_EXCEPTIONS = {"ImportError", "ModuleNotFoundError", "AttributeError", "TypeError"}
# Optional third-party modules a worker may try, and what must be caught around the import.
OPTIONAL_WORKER_IMPORTS = {"warpctc_pytorch": {"ImportError", "ModuleNotFoundError"}}
# Callables that parse version strings; feeding torch.__version__ to one is version parsing.
VERSION_PARSERS = {"LooseVersion", "StrictVersion", "Version", "parse", "parse_version"}


# ---------------------------------------------------------------------------------------------
# Reading sources
# ---------------------------------------------------------------------------------------------

def python_files(folder):
    """Every .py file under ``folder``, recursively, in a stable order."""
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def relative(path):
    """``path`` as the report shows it: relative to the repository root."""
    return path.relative_to(ROOT).as_posix() if path.is_absolute() else str(path)


def parse_with_parents(source, filename):
    """The module AST, every node knowing its parent (``node.parent``)."""
    tree = ast.parse(source, filename=filename)
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child.parent = node
    return tree


@functools.cache
def parsed_file(path):
    """``parse_with_parents`` of a file, once per test run (the host check revisits files)."""
    return parse_with_parents(path.read_text(), str(path))


def ancestors(node):
    """The enclosing nodes of ``node``, innermost first."""
    while hasattr(node, "parent"):
        node = node.parent
        yield node


def caught_names(handler):
    """Exception names an ``except`` clause catches (a bare except gives none: too broad)."""
    if handler.type is None:
        return set()
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return {t.attr if isinstance(t, ast.Attribute) else getattr(t, "id", "") for t in types}


def in_try_body_catching(node, wanted):
    """Whether ``node`` sits in the body of a try whose handlers catch one of ``wanted``."""
    child = node
    for parent in ancestors(node):
        if isinstance(parent, ast.Try) and child in parent.body:
            if any(caught_names(h) & wanted for h in parent.handlers):
                return True
        child = parent
    return False


# ---------------------------------------------------------------------------------------------
# The torch 0.4.1 API list
# ---------------------------------------------------------------------------------------------

def load_torch_api(path=API_LIST):
    """dotted name -> kind (module, class, function, attribute), as the data file lists them."""
    api = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, kind = line.split()
            api[name] = kind
    return api


def missing_from_api(chain, api):
    """None when ``chain`` exists under the rule above; else the reason it does not."""
    if chain in api:
        return None
    parts = chain.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in api:
            if api[prefix] == "class":
                return None
            return f"{prefix} ({api[prefix]}) has no {'.'.join(parts[end:])} in torch 0.4.1"
    return "not in torch 0.4.1"


# ---------------------------------------------------------------------------------------------
# Finding torch uses
# ---------------------------------------------------------------------------------------------

def is_feature_probe(node):
    """A hasattr(...) or getattr(...) call."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("hasattr", "getattr"))


def feature_flag_names(tree):
    """Names that hold a probe's answer: ``HAS_CTC = hasattr(nn, "CTCLoss")``,
    ``compile_fn = getattr(torch, "compile", None)``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                is_feature_probe(n) and (n.func.id == "hasattr" or len(n.args) == 3)
                for n in ast.walk(node.value)):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def contains_feature_probe(node, flag_names):
    """Whether an expression calls hasattr/getattr or reads a feature flag."""
    return any(is_feature_probe(n) or (isinstance(n, ast.Name) and n.id in flag_names)
               for n in ast.walk(node))


def probe_polarity(test, flag_names):
    """Which branch of a test has the feature: "body", "orelse", "both" (unclear) or None.

    ``hasattr(torch, "x")`` -> body; ``not hasattr(...)`` or ``getattr(m, "x", None) is None``
    -> orelse; a test without any probe -> None.
    """
    def flip(polarity):
        return {"body": "orelse", "orelse": "body"}.get(polarity, polarity)

    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return flip(probe_polarity(test.operand, flag_names))
    if (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value is None):
        inner = probe_polarity(test.left, flag_names)
        return flip(inner) if isinstance(test.ops[0], (ast.Is, ast.Eq)) else inner
    if isinstance(test, ast.BoolOp):
        found = {probe_polarity(v, flag_names) for v in test.values} - {None}
        return found.pop() if len(found) == 1 else ("both" if found else None)
    return "body" if contains_feature_probe(test, flag_names) else None


def always_exits(block):
    """Whether a statement block ends by leaving it (raise, return, continue, break)."""
    return bool(block) and isinstance(block[-1], (ast.Raise, ast.Return, ast.Continue,
                                                  ast.Break))


def dotted(node):
    """``a.b.c`` for a Name/Attribute chain, else None (a call or subscript breaks it)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def torch_aliases(tree, flag_names):
    """(local name -> the torch chain it stands for, the names bound behind a feature check).

    Imports and plain assignments of a chain make aliases; a name imported or assigned
    behind a feature check (try/except ImportError around the import) carries that guard to
    every later use of it.
    """
    aliases = {}
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "torch":
                    continue
                if alias.asname:
                    aliases[alias.asname] = alias.name
                    if is_guarded(node, flag_names):
                        guarded.add(alias.asname)
                else:  # import torch.nn binds the name torch
                    aliases["torch"] = "torch"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "torch":
                continue
            for alias in node.names:
                if alias.name != "*":
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                    if is_guarded(node, flag_names):
                        guarded.add(alias.asname or alias.name)
    # cudnn = torch.backends.cudnn: follow it, unless the name is also bound to anything else.
    assigned = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(node.value)
                    if is_guarded(node, flag_names):
                        guarded.add(target.id)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For, ast.NamedExpr,
                               ast.With)):
            targets = ([item.optional_vars for item in node.items if item.optional_vars]
                       if isinstance(node, ast.With) else [node.target])
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        assigned.setdefault(name.id, []).append(None)
    for _ in range(3):  # a = torch.backends; b = a.cudnn
        for name, values in assigned.items():
            chains = {resolve_chain(v, aliases) if v is not None else None for v in values}
            if len(chains) == 1 and None not in chains and name not in aliases:
                aliases[name] = chains.pop()
                if any(dotted(v).split(".")[0] in guarded for v in values):
                    guarded.add(name)
    return aliases, guarded & set(aliases)


def resolve_chain(node, aliases):
    """The torch chain an expression names, or None."""
    text = dotted(node)
    if text is None:
        return None
    head, _, rest = text.partition(".")
    if head not in aliases:
        return None
    return aliases[head] + ("." + rest if rest else "")


def listed(value):
    """A statement block as a list; an IfExp's branch is one expression, not a block."""
    return value if isinstance(value, list) else []


def is_guarded(node, flag_names):
    """Whether a use sits behind a feature check (see the module docstring)."""
    child = node
    for parent in ancestors(node):
        if is_feature_probe(parent) and child in parent.args:
            return True
        if isinstance(parent, (ast.If, ast.IfExp, ast.While)) and child is not parent.test:
            # the branch where the feature exists: the body of `if hasattr(...)`, the else
            # of `if not hasattr(...)`; the other branch is the old-torch path, checked.
            branch = "body" if (child is parent.body or child in listed(parent.body)) else "orelse"
            if probe_polarity(parent.test, flag_names) in (branch, "both"):
                return True
        if isinstance(parent, ast.BoolOp) and child in parent.values:
            # `hasattr(torch, "x") and torch.x()`, `not hasattr(torch, "x") or torch.x()`
            runs_when = "body" if isinstance(parent.op, ast.And) else "orelse"
            before = parent.values[:parent.values.index(child)]
            if any(probe_polarity(v, flag_names) in (runs_when, "both") for v in before):
                return True
        for field in ("body", "orelse", "finalbody"):
            # `if not hasattr(torch, "compile"): raise Unsupported(...)` guards what follows
            block = getattr(parent, field, None)
            if isinstance(block, list) and child in block:
                for earlier in block[:block.index(child)]:
                    if (isinstance(earlier, ast.If) and not earlier.orelse
                            and always_exits(earlier.body)
                            and probe_polarity(earlier.test, flag_names) in ("orelse", "both")):
                        return True
        if isinstance(parent, ast.Try) and child in parent.body:
            if any(caught_names(h) & FEATURE_CHECK_EXCEPTIONS for h in parent.handlers):
                return True
        child = parent
    return False


def torch_uses(source, filename="<source>"):
    """Every (line, chain, guarded) use of a torch API in ``source``."""
    tree = parse_with_parents(source, filename)
    flag_names = feature_flag_names(tree)
    aliases, guarded_names = torch_aliases(tree, flag_names)

    def bound_behind_a_check(node):
        return dotted(node) is not None and dotted(node).split(".")[0] in guarded_names

    def guarded(node):
        return is_guarded(node, flag_names) or bound_behind_a_check(node)

    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "torch":
            for alias in node.names:
                name = node.module if alias.name == "*" else f"{node.module}.{alias.name}"
                uses.append((node.lineno, name, guarded(node)))
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "torch":
                    uses.append((node.lineno, alias.name, guarded(node)))
            continue
        if isinstance(node, (ast.Attribute, ast.Name)):
            if isinstance(getattr(node, "parent", None), ast.Attribute):
                continue  # only the longest chain counts: torch.nn.LSTM, not torch.nn too
            chain = resolve_chain(node, aliases)
            if chain is not None and not (isinstance(node, ast.Name) and chain == "torch"):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    continue  # the alias assignment itself
                uses.append((node.lineno, chain, guarded(node)))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "getattr" and len(node.args) == 2 and not node.keywords
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            base = resolve_chain(node.args[0], aliases)
            if base is not None:  # getattr(torch, "compile") without a default is a use
                uses.append((node.lineno, f"{base}.{node.args[1].value}",
                             guarded(node) or bound_behind_a_check(node.args[0])))
    return sorted(uses)


def torch_api_violations(source, filename, api):
    """'file:line: chain: why' for every unguarded torch use missing from ``api``."""
    found = []
    for line, chain, guarded in torch_uses(source, filename):
        why = None if guarded else missing_from_api(chain, api)
        if why:
            found.append(f"{filename}:{line}: {chain}: {why}; put it behind a feature check "
                         f"(hasattr/getattr or try/except AttributeError) or use an 0.4.1 API")
    return found


def feature_probes(source, filename="<source>"):
    """(line, chain) for every hasattr/getattr that asks a torch object for a named feature."""
    tree = parse_with_parents(source, filename)
    aliases, _ = torch_aliases(tree, feature_flag_names(tree))
    found = []
    for node in ast.walk(tree):
        if (is_feature_probe(node) and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            base = resolve_chain(node.args[0], aliases)
            if base is not None:
                found.append((node.lineno, f"{base}.{node.args[1].value}"))
    return found


def exists_in_installed_torch(chain):
    """Whether ``chain`` resolves in the torch installed here (submodules imported on demand)."""
    import importlib

    obj = importlib.import_module("torch")
    parts = chain.split(".")
    for index, part in enumerate(parts[1:], start=1):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module(".".join(parts[:index + 1]))
        except ImportError:
            return False
    return True


def names_that_exist_nowhere(source, filename, api):
    """Torch names a worker mentions (guarded or not, probes too) that neither torch 0.4.1 nor
    the installed torch has: a typo, or a feature check that can never be true."""
    mentioned = [(line, chain) for line, chain, _ in torch_uses(source, filename)]
    mentioned += feature_probes(source, filename)
    return [f"{filename}:{line}: {chain} exists neither in torch 0.4.1 nor in the installed "
            f"torch; a typo?" for line, chain in sorted(set(mentioned))
            if missing_from_api(chain, api) and not exists_in_installed_torch(chain)]


# ---------------------------------------------------------------------------------------------
# Imports and version parsing
# ---------------------------------------------------------------------------------------------

def worker_import_violations(source, filename):
    """Imports of anything but the standard library, torch and the workers package itself."""
    tree = parse_with_parents(source, filename)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module]
        else:
            continue  # relative imports stay inside workers/
        for module in modules:
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top == "torch":
                continue
            if top in OPTIONAL_WORKER_IMPORTS:
                if in_try_body_catching(node, OPTIONAL_WORKER_IMPORTS[top]):
                    continue
                found.append(f"{filename}:{node.lineno}: {module} is optional: import it "
                             f"inside try/except ImportError")
                continue
            found.append(f"{filename}:{node.lineno}: {module} is neither the standard library "
                         f"nor torch; workers run in images that have nothing else")
    return found


def runs_at_import_time(node):
    """Whether importing the module executes ``node`` (it is in no function body)."""
    return not any(isinstance(a, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                   for a in ancestors(node))


def imported_modules(tree, at_import_time_only=False):
    """(line, module[, level, names]) for every import, __import__ and import_module call.

    Every depth by default (a lazy import inside a function counts); with
    ``at_import_time_only``, only what importing the module itself runs.
    """
    found = []
    for node in ast.walk(tree):
        if at_import_time_only and not runs_at_import_time(node):
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or "", node.level,
                          [alias.name for alias in node.names]))
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and (getattr(node.func, "id", None) == "__import__"
                   or getattr(node.func, "attr", None) == "import_module")):
            found.append((node.lineno, node.args[0].value))
    return found


def project_module_path(module):
    """The file of a project module (workers.config -> workers/config.py), or None."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_of(path):
    """(dotted module name, whether it is a package) of a project file."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts), path.name == "__init__.py"


def project_imports(path, at_import_time_only):
    """(line, module, project file) for each project module ``path`` imports, packages too."""
    name, is_package = module_of(path)
    tree = parsed_file(path)
    found = []
    for entry in imported_modules(tree, at_import_time_only):
        line, module = entry[0], entry[1]
        targets = [module]
        if len(entry) == 4:  # from ... import names: each name may be a submodule
            level, names = entry[2], entry[3]
            if level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (level - 1)]
                module = ".".join(base + ([module] if module else []))
            targets = [module] + [f"{module}.{n}" for n in names if n != "*"]
        for target in targets:
            parts = target.split(".")
            # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            for end in range(1, len(parts) + 1):
                file = project_module_path(".".join(parts[:end]))
                if file is not None:
                    found.append((line, ".".join(parts[:end]), file))
    return found


def torch_import_lines(path, at_import_time_only):
    """Lines of ``path`` that import torch directly."""
    tree = parsed_file(path)
    return [entry[0] for entry in imported_modules(tree, at_import_time_only)
            if entry[1].split(".")[0] == "torch" and (len(entry) < 4 or entry[2] == 0)]


def host_torch_violations(path):
    """How host module ``path`` reaches an import of torch.

    Its own imports count at any depth (a lazy ``import torch`` in a function too); the
    project modules it imports count by what importing them runs, so a workers module may
    keep ``import torch`` inside the function that runs a workload.
    """
    found = [f"{relative(path)}:{line}: imports torch"
             for line in torch_import_lines(path, at_import_time_only=False)]
    seen = {path}
    queue = [(path, [])]
    while queue:
        current, trail = queue.pop(0)
        for line, module, file in project_imports(current, at_import_time_only=bool(trail)):
            if file in seen:
                continue
            seen.add(file)
            step = trail + [f"{relative(current)}:{line} imports {module}"]
            lines = torch_import_lines(file, at_import_time_only=True)
            if lines:
                found.append(" -> ".join(step) + f", whose line {lines[0]} imports torch")
            queue.append((file, step))
    return found


def version_parsing_violations(source, filename):
    """Uses of __version__ that compare, index, split or parse it."""
    tree = parse_with_parents(source, filename)
    found = []
    for node in ast.walk(tree):
        is_version = (isinstance(node, ast.Attribute) and node.attr == "__version__") or (
            isinstance(node, ast.Name) and node.id == "__version__")
        if not is_version:
            continue
        parent = node.parent
        how = None
        if isinstance(parent, ast.Compare):
            how = "compared"
        elif isinstance(parent, ast.Subscript) and parent.value is node:
            how = "indexed"
        elif isinstance(parent, ast.Attribute) and parent.value is node:
            how = f".{parent.attr} called on it"
        elif isinstance(parent, ast.Call) and node in parent.args:
            func = parent.func.attr if isinstance(parent.func, ast.Attribute) else getattr(
                parent.func, "id", "")
            if func in VERSION_PARSERS:
                how = f"parsed by {func}"
        if how:
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node)} is {how}; detect the "
                         f"feature (hasattr / try-except) instead of reading the version")
    return found


# ---------------------------------------------------------------------------------------------
# vermin
# ---------------------------------------------------------------------------------------------

def vermin_command():
    """The vermin console script next to this Python, else on PATH, else its main()."""
    script = Path(sys.executable).with_name("vermin")
    if script.exists():
        return [str(script)]
    if shutil.which("vermin"):
        return [shutil.which("vermin")]
    return [sys.executable, "-c", "import sys; from vermin import main; sys.exit(main())"]


def run_vermin(target):
    """vermin's verdict on ``target`` for Python 3.6 and later: (exit code, its output)."""
    proc = subprocess.run(vermin_command() + ["-q", "--no-tips", "--violations", "-t=3.6-",
                                              str(target)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


@pytest.fixture(scope="module")
def vermin_available():
    """Fail (not skip) without vermin: a skipped portability check would pass silently."""
    try:
        import vermin  # noqa: F401
    except ImportError:
        pytest.fail("vermin is not installed; it is a test dependency: pip install -e '.[test]'")


# ---------------------------------------------------------------------------------------------
# The checks on the real tree
# ---------------------------------------------------------------------------------------------

def test_workers_are_python_3_6_compatible(vermin_available):
    returncode, output = run_vermin("workers")
    assert returncode == 0 and output == "", f"vermin found code newer than Python 3.6:\n{output}"


def test_vermin_reports_code_that_needs_python_3_8(vermin_available, tmp_path):
    """So the check above can fail: a walrus and dataclasses must be reported."""
    sample = tmp_path / "too_new.py"
    sample.write_text("import dataclasses\n\nif (n := 3) > 2:\n    print(n)\n")
    returncode, output = run_vermin(sample)
    assert returncode != 0
    assert "named expressions" in output and "dataclasses" in output, output


def test_workers_import_only_the_standard_library_and_torch():
    found = []
    for path in python_files(WORKERS):
        found += worker_import_violations(path.read_text(), relative(path))
    assert not found, "\n".join(found)


def test_sweeps_and_analysis_never_import_torch():
    found = []
    for package in HOST_PACKAGES:
        for path in python_files(package):
            found += host_torch_violations(path)
    assert not found, "the host side must not import torch:\n" + "\n".join(found)


def test_workers_use_only_torch_0_4_1_apis_unless_feature_checked():
    api = load_torch_api()
    found = []
    for path in python_files(WORKERS):
        found += torch_api_violations(path.read_text(), relative(path), api)
    assert not found, "\n".join(found)


def test_every_torch_name_in_the_workers_exists_in_some_torch():
    """A feature check on a misspelt name is silently never true; this catches it."""
    api = load_torch_api()
    found = []
    for path in python_files(WORKERS):
        found += names_that_exist_nowhere(path.read_text(), relative(path), api)
    assert not found, "\n".join(found)


def test_workers_never_parse_the_torch_version():
    found = []
    for path in python_files(WORKERS):
        found += version_parsing_violations(path.read_text(), relative(path))
    assert not found, "\n".join(found)


def test_api_list_is_torch_0_4_1():
    """The list has what 0.4.1 had and lacks what came later (CTCLoss arrived in 1.0)."""
    header = API_LIST.read_text().split("\ntorch ", 1)[0]
    assert "a24163a95edb193ff7b06e98cd69bf7cfd4c0d2f" in header
    api = load_torch_api()
    present = {"torch.nn.LSTM": "class", "torch.nn.LSTMCell": "class", "torch.Tensor": "class",
               "torch.nn.utils.clip_grad_norm_": "function", "torch.no_grad": "class",
               "torch.nn.functional.interpolate": "function", "torch.cuda.Event": "class",
               "torch.backends.cudnn.benchmark": "attribute", "torch.device": "class",
               "torch.float32": "attribute", "torch.version.cuda": "attribute"}
    assert {name: api.get(name) for name in present} == present
    for later in ["torch.nn.CTCLoss", "torch.nn.functional.ctc_loss", "torch.compile",
                  "torch.backends.cudnn.allow_tf32", "torch.use_deterministic_algorithms",
                  "torch.version.git_version", "torch.broadcast_tensors"]:
        assert later not in api, later


# ---------------------------------------------------------------------------------------------
# The checkers themselves, on small sources: each must flag what it is there to flag
# ---------------------------------------------------------------------------------------------

def violations_in(source):
    """The torch API check on a small source, as if it were a worker file."""
    return torch_api_violations(source, "sample.py", load_torch_api())


@pytest.mark.parametrize("source, chain", [
    ("import torch\ntorch.compile(f)\n", "torch.compile"),
    ("from torch import compile\n", "torch.compile"),
    ("import torch.nn as nn\nnn.CTCLoss()\n", "torch.nn.CTCLoss"),
    ("from torch.nn import functional as F\nF.ctc_loss(a, b, c, d)\n",
     "torch.nn.functional.ctc_loss"),
    ("from torch import nn\nnn.functional.ctc_loss(a, b, c, d)\n",
     "torch.nn.functional.ctc_loss"),
    ("import torch\ncudnn = torch.backends.cudnn\ncudnn.allow_tf32 = True\n",
     "torch.backends.cudnn.allow_tf32"),
    ("import torch\ndef f():\n    return getattr(torch, 'compile')\n", "torch.compile"),
    ("import torch\ntry:\n    torch.compile(f)\nexcept Exception:\n    pass\n", "torch.compile"),
    ("import torch\nif torch.cuda.is_available():\n    torch.compile(f)\n", "torch.compile"),
    ("import torch\nx = torch.float32.is_floating_point\n", "torch.float32.is_floating_point"),
    ("import torch\nif not hasattr(torch, 'compile'):\n    print('old torch')\n"
     "torch.compile(f)\n", "torch.compile"),
    ("import torch\nif hasattr(torch, 'compile'):\n    g = torch.compile(f)\nelse:\n"
     "    g = torch.jit.trace_module(f)\n", "torch.jit.trace_module"),
    ("import torch\ndef f(g):\n    if hasattr(torch, 'compile'):\n        return torch.compile(g)\n"
     "    return torch.jit.trace_module(g)\n", "torch.jit.trace_module"),
    ("import torch\ng = torch.jit.trace_module(f) if not hasattr(torch, 'compile') else f\n",
     "torch.jit.trace_module"),
    ("import torch\ng = not hasattr(torch, 'compile') and torch.jit.trace_module(f)\n",
     "torch.jit.trace_module"),
    ("import torch.nn as nn\n"
     "def backend():\n    return 'native' if hasattr(nn, 'CTCLoss') else None\n"
     "def make(name):\n    if name == 'native':\n        return nn.CTCLoss()\n",
     "torch.nn.CTCLoss"),
])
def test_checker_flags_unguarded_newer_apis(source, chain):
    found = violations_in(source)
    assert len(found) == 1 and f": {chain}:" in found[0], found


@pytest.mark.parametrize("source", [
    "import torch\nif hasattr(torch, 'compile'):\n    f = torch.compile(f)\n",
    "import torch\nf = torch.compile(f) if hasattr(torch, 'compile') else f\n",
    "import torch\nok = hasattr(torch, 'compile') and torch.compile(f)\n",
    "import torch\ng = not hasattr(torch, 'compile') or torch.compile(f)\n",
    "import torch\ntry:\n    torch.use_deterministic_algorithms(True)\nexcept AttributeError:\n"
    "    pass\n",
    "try:\n    from torch.nn import CTCLoss\nexcept ImportError:\n    CTCLoss = None\n",
    "import torch\ncompile_fn = getattr(torch, 'compile', None)\n",
    "import torch\ncudnn = torch.backends.cudnn\nif hasattr(cudnn, 'allow_tf32'):\n"
    "    cudnn.allow_tf32 = True\n",
    "import torch\nlstm = torch.nn.LSTM(4, 8)\n",
    "import torch\nstart = torch.cuda.Event(enable_timing=True)\nstart.record()\n",
    "import torch.nn as nn\nimport torch.nn.functional as F\n"
    "y = F.log_softmax(nn.Linear(2, 3)(x), dim=-1)\n",
    "from torch.nn.utils.rnn import pack_padded_sequence\np = pack_padded_sequence(x, lengths)\n",
    "import torch\nclass LM(torch.nn.Module):\n    pass\nn = torch.Tensor.dim\n",
    "import torch\ntorch.backends.cudnn.benchmark = True\nv = torch.version.cuda\n",
    "import torch\ndef f(g):\n    if not hasattr(torch, 'compile'):\n"
    "        raise RuntimeError('old')\n    return torch.compile(g)\n",
    "try:\n    from torch.nn import CTCLoss\nexcept ImportError:\n    CTCLoss = None\n"
    "loss = CTCLoss() if CTCLoss else None\n",
    "import torch.nn as nn\nHAS_CTC = hasattr(nn, 'CTCLoss')\n"
    "if HAS_CTC:\n    loss = nn.CTCLoss()\n",
    "import torch\nif not hasattr(torch, 'compile'):\n    g = f\nelse:\n    g = torch.compile(f)\n",
    "import torch\nc = getattr(torch, 'compile', None)\ng = f if c is None else torch.compile(f)\n",
])
def test_checker_accepts_0_4_1_apis_and_feature_checked_uses(source):
    assert violations_in(source) == []


@pytest.mark.parametrize("source, flagged", [
    ("import torch\nif hasattr(torch, 'compiel'):\n    f = torch.compiel(f)\n", True),
    ("import torch.nn as nn\nok = hasattr(nn, 'CTCLos')\n", True),
    ("import torch\nif hasattr(torch, 'compile'):\n    f = torch.compile(f)\n", False),
    ("import torch\nf = torch.nn.utils.clip_grad_norm\n", False),  # 0.4.1, gone later
])
def test_nowhere_checker(source, flagged):
    assert bool(names_that_exist_nowhere(source, "sample.py", load_torch_api())) == flagged


@pytest.mark.parametrize("source, flagged", [
    ("import numpy as np\n", True),
    ("import ray\n", True),
    ("from mlflow import log_metric\n", True),
    ("import warpctc_pytorch\n", True),
    ("try:\n    import warpctc_pytorch\nexcept Exception:\n    pass\n", True),
    ("try:\n    from warpctc_pytorch import CTCLoss\nexcept ImportError:\n    CTCLoss = None\n",
     False),
    ("import json, os\nimport torch.nn as nn\nfrom .protocol import BadConfig\n", False),
])
def test_import_checker(source, flagged):
    assert bool(worker_import_violations(source, "workers/sample.py")) == flagged


@pytest.mark.parametrize("source, flagged", [
    ("import torch\nmajor = int(torch.__version__.split('.')[0])\n", True),
    ("import torch\nold = torch.__version__ < '1.0'\n", True),
    ("import torch\nold = torch.__version__[0] == '0'\n", True),
    ("import torch\nold = torch.__version__.startswith('0.4')\n", True),
    ("import torch\nfrom distutils.version import LooseVersion\n"
     "v = LooseVersion(torch.__version__)\n", True),
    ("import torch\nreport = {'torch': torch.__version__}\n", False),
])
def test_version_parsing_checker(source, flagged):
    assert bool(version_parsing_violations(source, "sample.py")) == flagged


def test_host_check_finds_torch_through_a_workers_module(tmp_path, monkeypatch):
    """A host module that imports torch lazily, or via a worker module that does, is caught."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "__init__.py").write_text("")
    (tmp_path / "workers" / "config.py").write_text("import json\n")
    (tmp_path / "workers" / "runtime.py").write_text("import os\nimport torch\n")
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "__init__.py").write_text("")
    clean = tmp_path / "sweeps" / "clean.py"
    clean.write_text("from workers import config\n")
    lazy = tmp_path / "sweeps" / "lazy.py"
    lazy.write_text("def f():\n    import torch.nn\n")
    indirect = tmp_path / "sweeps" / "indirect.py"
    indirect.write_text("from workers.runtime import clock\n")
    assert host_torch_violations(clean) == []
    assert host_torch_violations(lazy) == ["sweeps/lazy.py:2: imports torch"]
    assert host_torch_violations(indirect) == [
        "sweeps/indirect.py:1 imports workers.runtime, whose line 2 imports torch"]
