"""Rebuild tests/data/torch_0_4_1_api.txt from a git checkout of the PyTorch v0.4.1 sources.

torch 0.4.1 cannot be installed on the test machines (no wheel for their Python), so the list
of what existed in it is derived once from its source tree and stored as data. The derivation
reads files with ``git show <commit>:<path>`` and never imports or runs any of them:

* every public Python module under torch/ (no path part starting with "_", no torch/legacy,
  no tests): its top-level def/class/assignment names, the names it imports from other torch
  modules, ``from .x import *`` expanded through x's ``__all__`` (or its public names), its
  ``__all__`` entries, and the class-body names of a ``sys.modules[__name__] = Cls(...)``
  replacement (how torch.backends.cudnn exposes ``enabled``/``benchmark``/``deterministic``);
* torch/_torch_docs.py: every ``add_docstr(torch.NAME, ...)``, i.e. the documented functions
  that torch/__init__.py copies from ``torch._C._VariableFunctions``;
* the C++ that fills ``torch._C`` (re-exported by ``from torch._C import *``): the public
  entries of the method table in torch/csrc/Module.cpp, the ``PyModule_AddObject`` names
  (dtype, device, layout, Size, Generator, has_cudnn, ...), the dtype names of
  torch/csrc/utils/tensor_dtypes.cpp, the layouts of tensor_layouts.cpp and the tensor type
  classes of torch/csrc/tensor/python_tensor.cpp (torch[.cuda][.sparse].<Scalar>Tensor);
* setup.py's create_version_file, which writes torch/version.py.

Output: one ``dotted.name kind`` per line, kind being module, class, function or attribute.

Usage (the commit and git directory used for the stored file are in its header):

    python tests/data/build_torch_0_4_1_api.py --git-dir PATH/.git --commit 39e5e5683 \
        --tag-commit a24163a95edb193ff7b06e98cd69bf7cfd4c0d2f > tests/data/torch_0_4_1_api.txt
"""
import argparse
import ast
import re
import subprocess
import sys

# The Lua-Torch port was deprecated and is no API anyone should reach for; tests are no API.
SKIPPED_PREFIXES = ("torch/legacy/", "torch/utils/trainer/")

# The eight scalar types of python_tensor.cpp, and the modules its get_module() puts them in.
SCALAR_TYPES = ["Double", "Float", "Half", "Long", "Int", "Short", "Char", "Byte"]
TENSOR_TYPE_MODULES = ["torch", "torch.cuda", "torch.sparse", "torch.cuda.sparse"]


def git_show(git_dir, commit, path):
    """The text of ``path`` at ``commit``."""
    return subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:{path}"],
                          check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True).stdout


def git_python_files(git_dir, commit):
    """Every public torch/**/*.py path at ``commit``."""
    listing = subprocess.run(["git", "--git-dir", git_dir, "ls-tree", "-r", "--name-only",
                              commit, "torch"], check=True, stdout=subprocess.PIPE,
                             text=True).stdout.split()
    paths = []
    for path in listing:
        if not path.endswith(".py") or path.startswith(SKIPPED_PREFIXES):
            continue
        parts = path[:-3].split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") or p.startswith("test") for p in parts):
            continue
        paths.append(path)
    return paths


def module_name(path):
    """torch/nn/__init__.py -> torch.nn; torch/nn/init.py -> torch.nn.init."""
    parts = path[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


class ModuleInfo:
    """What one Python module binds at top level, before star imports are expanded."""

    def __init__(self, name, is_package, tree):
        self.name = name
        self.is_package = is_package
        self.class_body_names = class_body_names(tree)
        self.kinds = {}          # name -> module/class/function/attribute
        self.imported = {}       # name -> (source module, source name) for later kind lookup
        self.star_sources = []   # modules whose public names this one re-exports
        self.all_names = None    # the literal __all__, when there is one
        self.collect(tree.body)

    def resolve(self, level, module):
        """The absolute module of ``from <level dots><module> import``."""
        if level == 0:
            return module
        base = self.name.split(".")
        if not self.is_package:
            base = base[:-1]
        base = base[:len(base) - (level - 1)]
        return ".".join(base + ([module] if module else []))

    def collect(self, statements):
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.kinds[node.name] = "function"
            elif isinstance(node, ast.ClassDef):
                self.kinds[node.name] = "class"
            elif isinstance(node, ast.Assign):
                self.collect_assign(node)
            elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
                if node.target.id == "__all__":
                    self.all_names = (self.all_names or []) + literal_strings(node.value)
            elif isinstance(node, ast.ImportFrom):
                source = self.resolve(node.level, node.module)
                if not source or not source.startswith("torch"):
                    continue  # from functools import reduce: not torch's API
                for alias in node.names:
                    if alias.name == "*":
                        self.star_sources.append(source)
                        continue
                    bound = alias.asname or alias.name
                    self.kinds[bound] = "attribute"
                    self.imported[bound] = (source, alias.name)
            elif isinstance(node, (ast.If, ast.Try)):
                # Definitions under `if sys.version_info...` or try/except ImportError still
                # land at module level.
                for block in block_bodies(node):
                    self.collect(block)

    def collect_assign(self, node):
        for target in node.targets:
            if isinstance(target, ast.Name):
                if target.id == "__all__":
                    self.all_names = literal_strings(node.value)
                else:
                    self.kinds[target.id] = "attribute"
            elif isinstance(target, ast.Tuple):
                for element in target.elts:
                    if isinstance(element, ast.Name):
                        self.kinds[element.id] = "attribute"
            elif (isinstance(target, ast.Subscript) and isinstance(node.value, ast.Call)
                  and isinstance(node.value.func, ast.Name)
                  and ast.unparse(target.value) == "sys.modules"):
                # sys.modules[__name__] = CudnnModule(sys.modules[__name__]): the module
                # becomes an instance of that class, so its class attributes are module names.
                self.kinds.update({name: "attribute" for name in
                                   self.class_body_names.get(node.value.func.id, [])})


def block_bodies(node):
    if isinstance(node, ast.If):
        return [node.body, node.orelse]
    return [node.body, node.orelse, node.finalbody] + [h.body for h in node.handlers]


def class_body_names(tree):
    """Per top-level class: the names its body assigns (class attributes)."""
    names = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names[node.name] = [t.id for stmt in node.body if isinstance(stmt, ast.Assign)
                                for t in stmt.targets if isinstance(t, ast.Name)]
    return names


def literal_strings(node):
    """The string constants of a list/tuple literal (a comprehension gives none)."""
    if isinstance(node, (ast.List, ast.Tuple)):
        return [e.value for e in node.elts
                if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def python_modules(git_dir, commit):
    modules = {}
    for path in git_python_files(git_dir, commit):
        tree = ast.parse(git_show(git_dir, commit, path))
        info = ModuleInfo(module_name(path), path.endswith("__init__.py"), tree)
        modules[info.name] = info
    return modules


def public_names(modules, name, seen=None):
    """Name -> kind for module ``name``, star imports expanded, private names dropped."""
    seen = set() if seen is None else seen
    if name in seen or name not in modules:
        return {}
    seen.add(name)
    info = modules[name]
    names = dict(info.kinds)
    for source in info.star_sources:
        exported = public_names(modules, source, seen)
        source_all = modules[source].all_names if source in modules else None
        if source_all is not None:
            exported = {n: exported.get(n, "attribute") for n in source_all}
        names.update(exported)
    for n in info.all_names or []:
        names.setdefault(n, "attribute")
    return {n: k for n, k in names.items() if not n.startswith("_") or n == "__version__"}


def imported_kind(modules, module, name, depth=0):
    """Follow ``from x import name`` chains to the kind where the name is defined."""
    if depth > 10 or module not in modules:
        return None
    if f"{module}.{name}" in modules:
        return "module"
    info = modules[module]
    kind = info.kinds.get(name)
    if name in info.imported:
        source, source_name = info.imported[name]
        return imported_kind(modules, source, source_name, depth + 1) or kind
    if kind is None:
        for source in info.star_sources:
            found = imported_kind(modules, source, name, depth + 1)
            if found:
                return found
    return kind


def torch_docs_functions(git_dir, commit):
    """Every NAME of add_docstr(torch.NAME, ...) in torch/_torch_docs.py."""
    tree = ast.parse(git_show(git_dir, commit, "torch/_torch_docs.py"))
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "add_docstr" and node.args):
            target = ast.unparse(node.args[0])
            if target.startswith("torch.") and target.count(".") == 1:
                names.add(target.split(".", 1)[1])
    return names


def aten_torch_functions(git_dir, commit):
    """The torch.* functions generated from ATen, chosen the way v0.4.1's generator chose them.

    tools/autograd/gen_python_functions.py binds a declaration as ``torch.NAME`` when
    'function' is among its variants (native_functions.yaml defaults to method and function,
    Declarations.cwrap to method only), it is not an NN-mode declaration (those go to
    torch._C._nn) and its name matches none of SKIP_PYTHON_BINDINGS; ``NAME_out`` overloads
    join NAME. The ones it skips are bound by hand in python_torch_functions.cpp.
    """
    import yaml  # only this maintenance script needs it, never the tests

    generator = git_show(git_dir, commit, "tools/autograd/gen_python_functions.py")
    skip_block = generator.split("SKIP_PYTHON_BINDINGS = [", 1)[1].split("]", 1)[0]
    skip_patterns = re.findall(r"'([^']+)'", skip_block)

    candidates = []
    native = yaml.safe_load(git_show(git_dir, commit,
                                     "aten/src/ATen/native/native_functions.yaml"))
    for entry in native:
        variants = entry.get("variants", "method, function")
        if isinstance(variants, str):
            variants = [v.strip() for v in variants.split(",")]
        if "function" in variants:
            candidates.append(entry["func"].split("(", 1)[0].strip())
    cwrap = git_show(git_dir, commit, "aten/src/ATen/Declarations.cwrap")
    for chunk in re.findall(r"^\[\[\n(.*?)^\]\]", cwrap, flags=re.M | re.S):
        declaration = yaml.safe_load(chunk)
        variants = [declaration.get("variants", ["method"])]
        variants += [o.get("variants", []) for o in declaration.get("options", [])]
        flat = [v for group in variants
                for v in ([group] if isinstance(group, str) else group)]
        if "function" in flat:
            candidates.append(declaration["name"])

    names = set()
    for name in candidates:
        if any(re.match("^" + pattern + "$", name) for pattern in skip_patterns):
            continue
        if name.endswith("_out"):
            name = name[:-len("_out")]
        names.add(name)
    template = git_show(git_dir, commit, "tools/autograd/templates/python_torch_functions.cpp")
    names.update(re.findall(r'\{"([a-z]\w*)", \(PyCFunction\)', template))
    return {n for n in names if not n.startswith("_")}


def c_module_names(git_dir, commit):
    """Public names that torch/csrc puts into torch._C or straight into torch."""
    module_cpp = git_show(git_dir, commit, "torch/csrc/Module.cpp")
    table = module_cpp.split("static PyMethodDef TorchMethods[] = {", 1)[1].split("};", 1)[0]
    names = {n: "function" for n in re.findall(r'\{"([A-Za-z]\w*)"', table)}
    for path, kind in [("torch/csrc/Module.cpp", "attribute"), ("torch/csrc/Dtype.cpp", "class"),
                       ("torch/csrc/Device.cpp", "class"), ("torch/csrc/Layout.cpp", "class"),
                       ("torch/csrc/Size.cpp", "class"), ("torch/csrc/Generator.cpp", "class"),
                       ("torch/csrc/Exceptions.cpp", "class")]:
        text = git_show(git_dir, commit, path)
        for found in re.findall(r'PyModule_AddObject\(module, "([A-Za-z]\w*)"', text):
            names[found] = kind
    dtypes = git_show(git_dir, commit, "torch/csrc/utils/tensor_dtypes.cpp")
    switch = dtypes.split("getDtypeNames", 1)[1].split("void initializeDtypes", 1)[0]
    for pair in re.findall(r'make_pair\("(\w+)", "(\w*)"\)', switch):
        names.update({n: "attribute" for n in pair if n})
    layouts = git_show(git_dir, commit, "torch/csrc/utils/tensor_layouts.cpp")
    names.update({n: "attribute" for n in
                  re.findall(r'PyModule_AddObject\(torch_module, "(\w+)"', layouts)})
    return names


def tensor_type_classes(git_dir, commit):
    """torch.FloatTensor ... torch.cuda.sparse.ByteTensor, as python_tensor.cpp names them."""
    source = git_show(git_dir, commit, "torch/csrc/tensor/python_tensor.cpp")
    for module in TENSOR_TYPE_MODULES:  # fail loudly if the source no longer says so
        assert f'return "{module}";' in source, module
    types = git_show(git_dir, commit, "torch/csrc/utils/tensor_types.cpp")
    sparse_half_skipped = "ScalarType::Half && (backend == Backend::SparseCUDA" in types
    names = []
    for module in TENSOR_TYPE_MODULES:
        for scalar in SCALAR_TYPES:
            if scalar == "Half" and "sparse" in module and sparse_half_skipped:
                continue
            names.append(f"{module}.{scalar}Tensor")
    return names


def version_module_names(git_dir, commit):
    """What setup.py's create_version_file writes into torch/version.py."""
    setup = git_show(git_dir, commit, "setup.py")
    body = setup.split("class create_version_file", 1)[1].split("\nclass ", 1)[0]
    return re.findall(r'f\.write\("(\w+) = ', body)


def build(git_dir, commit):
    """dotted name -> kind for everything torch 0.4.1 exposes under the scanned modules."""
    modules = python_modules(git_dir, commit)
    api = {name: "module" for name in modules}
    for name in modules:
        for member, kind in public_names(modules, name).items():
            if kind == "attribute" and member in modules[name].imported:
                source, source_name = modules[name].imported[member]
                kind = imported_kind(modules, source, source_name) or kind
            elif kind == "attribute":
                for source in modules[name].star_sources:
                    kind = imported_kind(modules, source, member) or kind
            if f"{name}.{member}" in modules and member not in modules[name].kinds:
                # A submodule nobody rebinds; `from .spectral_norm import spectral_norm` in
                # the package rebinds the name to the function, which is what users get.
                kind = "module"
            api[f"{name}.{member}"] = kind
    for member, kind in c_module_names(git_dir, commit).items():
        api.setdefault(f"torch.{member}", kind)
    for member in torch_docs_functions(git_dir, commit) | aten_torch_functions(git_dir, commit):
        # torch/__init__.py copies these over same-named submodule attributes (torch.tensor
        # the function replaces torch.tensor the module), so the function is what users get.
        api[f"torch.{member}"] = "function"
    for dotted in tensor_type_classes(git_dir, commit):
        api[dotted] = "class"
    api["torch.version"] = "module"
    for member in version_module_names(git_dir, commit):
        api[f"torch.version.{member}"] = "attribute"
    # Where a package attribute shadows its submodule, the submodule's names are unreachable
    # through that dotted path (torch.nn.utils.spectral_norm.SpectralNorm is no attribute).
    shadowed = [n for n in modules if api.get(n) != "module"]
    return {n: k for n, k in api.items()
            if not any(n.startswith(prefix + ".") for prefix in shadowed)}


HEADER = """\
# Public torch.* names that exist in PyTorch 0.4.1, one "dotted.name kind" per line
# (kind: module, class, function, attribute). tests/test_portability.py checks every torch API
# the workers use without a feature check against this list.
#
# Release: tag v0.4.1 = pytorch/pytorch commit {tag_commit}
#   (a source build of the tag reports 0.5.0a0+a24163a: pytorch/pytorch issues #9926, #10814).
# Read from: {source}
#   git directory {git_dir}, commit {commit}.
#   pytorch/pytorch itself is too large to fetch here, so the tree was read from that import
#   of the v0.4.1 sources. Checked against the tag: its setup.py line 246 is
#   "version = '0.5.0a0'" as issue #9926 links blob/v0.4.1/setup.py#L246; its
#   torch/utils/data/dataloader.py lines 94-111 are the watchdog loop a report links at
#   blob/a24163a95edb.../dataloader.py#L94-L111; its torch/ files equal pytorch master of
#   17-19 July 2018 plus the 0.4.1 cherry-pick of #9500 (PR #9599), and torch.nn has no
#   CTCLoss (master added it on 31 July, after the branch).
#
# Files read (git show <commit>:<path>, parsed, never run):
#   torch/**/*.py except private (_x) paths, tests and torch/legacy ({n_python} files), among
#   them torch/__init__.py, torch/functional.py, torch/nn/__init__.py,
#   torch/nn/modules/__init__.py, torch/nn/functional.py, torch/nn/init.py,
#   torch/nn/utils/__init__.py, torch/nn/utils/rnn.py, torch/nn/utils/clip_grad.py,
#   torch/optim/__init__.py, torch/cuda/__init__.py, torch/backends/cudnn/__init__.py,
#   torch/autograd/__init__.py, torch/utils/data/__init__.py;
#   torch/_torch_docs.py (add_docstr(torch.NAME): the documented torch._C._VariableFunctions);
#   aten/src/ATen/native/native_functions.yaml, aten/src/ATen/Declarations.cwrap,
#   tools/autograd/gen_python_functions.py, tools/autograd/templates/python_torch_functions.cpp
#   (every torch._C._VariableFunctions function, chosen as v0.4.1's generator chose them);
#   torch/csrc/Module.cpp, Dtype.cpp, Device.cpp, Layout.cpp, Size.cpp, Generator.cpp,
#   Exceptions.cpp, utils/tensor_dtypes.cpp, utils/tensor_layouts.cpp,
#   tensor/python_tensor.cpp, utils/tensor_types.cpp (what torch._C and the tensor types add);
#   setup.py (create_version_file writes torch/version.py: {version_names} only, no git_version).
#
# How: tests/data/build_torch_0_4_1_api.py (its docstring says what counts as public).
# Tensor methods (x.item()) are out of scope: only module-level names rooted at torch.
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--git-dir", required=True, help="git directory holding the commit")
    parser.add_argument("--commit", required=True, help="commit whose tree is v0.4.1")
    parser.add_argument("--tag-commit", required=True, help="the commit the v0.4.1 tag names")
    parser.add_argument("--source", default="", help="where that git directory came from")
    args = parser.parse_args()
    try:
        commit = subprocess.run(["git", "--git-dir", args.git_dir, "rev-parse", "--verify",
                                 "--quiet", args.commit + "^{commit}"],
                                check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True).stdout.strip()
        api = build(args.git_dir, commit)
    except subprocess.CalledProcessError as error:
        sys.exit(f"error: git could not read {args.commit!r} from {args.git_dir!r} "
                 f"(exit {error.returncode}); is it a git directory holding the v0.4.1 tree?")
    sys.stdout.write(HEADER.format(
        tag_commit=args.tag_commit, source=args.source, git_dir=args.git_dir, commit=commit,
        n_python=len(git_python_files(args.git_dir, commit)),
        version_names=", ".join(version_module_names(args.git_dir, commit))))
    for name in sorted(api):
        sys.stdout.write(f"{name} {api[name]}\n")


if __name__ == "__main__":
    main()
