"""How compressml imports CompressAI quickly (issue: a codec that starts in seconds).

``import compressai`` runs the whole package's ``__init__``, which imports its point-cloud
datasets and transforms and its transform registry; those pull in ``torch_geometric``,
``torchvision`` and, through them, ``torch._dynamo`` and ``sympy``: about 8 s on a 2-core CPU,
against about 0.3 s for what coding an image needs (the entropy models, the rANS coder, the image
models). This module installs an import hook, once, before compressml's first import of
CompressAI, that changes *when* those parts run, not what they are:

- ``compressai.datasets`` and ``compressai.transforms`` are bound as *deferred* modules: their
  code runs at the first access to anything in them (``compressai.datasets.ImageFolder``, ``from
  compressai.transforms import RGB2YCbCr``, ``dir(...)``), exactly as it would have at import;
  their submodules import normally.
- ``scipy.stats``, which CompressAI's entropy models import for one function (the Gaussian quantile
  used when CDF tables are rebuilt), is deferred the same way when CompressAI's import brings it in.
- ``compressai.registry.transforms``' ``TRANSFORMS`` (every torchvision and torch_geometric
  transform class by name, plus CompressAI's registered ones) is filled at its first read instead
  of at import. The hook does this only when that file is the one it was written for (its hash);
  any other CompressAI version is imported unchanged (correct, only slower).

So ``import compressai`` afterwards in the same process still gives the whole package; the one
visible difference is that the datasets which ``compressai.datasets`` registers (ImageFolder,
Vimeo90kDataset, the point-cloud ones, ...) appear in ``compressai.registry.DATASETS`` once that
module is first used (``import compressai.datasets`` does not count: use a name in it). CompressAI's
source is neither copied nor modified. Set ``COMPRESSML_EAGER_IMPORTS=1`` to switch the hook off.
The hook acts only while CompressAI's ``__init__`` runs (nothing when CompressAI was imported
before compressml).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import threading
import types

DEFERRED = ("compressai.datasets", "compressai.transforms")
# imported by CompressAI's entropy models for one call (the Gaussian quantile when CDF tables are
# rebuilt, GaussianConditional.update): loaded at that call instead (about 1 s on 2 cores)
DEFERRED_THIRD_PARTY = ("scipy.stats",)
REGISTRY = "compressai.registry.transforms"
# sha256 of compressai/registry/transforms.py (CompressAI 1.2.8) that LazyTransforms mirrors
REGISTRY_SHA256 = {"fc71fb21c81279675485cfae83aa1d5b72f7f8b9bfc522374f2505691ba80146"}


class _DeferredModule(types.ModuleType):
    """A module whose code runs at the first access to a name it does not have yet (submodules
    found on its path are imported on their own, as the import system would)."""

    def __getattr__(self, name: str):
        if name == "__all__":  # `from module import *` asks for it: the module's own answer
            _complete(self)
            return getattr(self, name)
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        path = self.__dict__.get("__path__")
        if path is not None and importlib.machinery.PathFinder.find_spec(f"{self.__name__}.{name}", path) is not None:
            return importlib.import_module(f"{self.__name__}.{name}")
        _complete(self)
        return getattr(self, name)

    def __dir__(self):
        _complete(self)
        return list(self.__dict__)


_LOCK = threading.RLock()  # one thread runs a deferred module's code; the others wait for it


def _complete(module: types.ModuleType) -> None:
    """Run a deferred module's code now (once; again at the next use if it failed)."""
    if type(module) is not _DeferredModule:
        return
    with _LOCK:
        if type(module) is not _DeferredModule:
            return
        module.__class__ = types.ModuleType  # its own code reads its attributes while it runs
        try:
            module.__spec__.loader_state["loader"].exec_module(module)
        except BaseException:
            module.__class__ = _DeferredModule
            raise


class _DeferringLoader(importlib.abc.Loader):
    def __init__(self, real: importlib.abc.Loader):
        self.real = real

    def create_module(self, spec):
        return _DeferredModule(spec.name)

    def exec_module(self, module) -> None:
        module.__spec__.loader_state = {"loader": self.real}


class LazyTransforms(dict):
    """CompressAI's ``TRANSFORMS`` (torchvision's and torch_geometric's transform classes by name,
    then the ones registered with ``register_transform``), filled at its first read."""

    _filled = False
    _filling = False  # reads while it fills (its own copy, the modules it completes) see what is there

    def _fill(self) -> None:
        if self._filled:
            return
        with _LOCK:  # other threads wait here; this thread's own reads while it fills get through
            if self._filled or self._filling:
                return
            self._filling = True
            try:
                for name in DEFERRED:  # what they register with register_transform belongs in the table too
                    if name in sys.modules:
                        _complete(sys.modules[name])
                import torch_geometric.transforms
                import torchvision.transforms

                registered = dict.copy(self)
                for module in (torchvision.transforms, torch_geometric.transforms):
                    dict.update(self, {k: v for k, v in module.__dict__.items() if k[0].isupper()})
                dict.update(self, registered)  # registered names win, as when they are registered after import
                self._filled = True
            finally:
                self._filling = False


def _reading(name: str):
    method = getattr(dict, name)

    def read(self, *args, **kwargs):
        self._fill()
        return method(self, *args, **kwargs)

    read.__name__ = name
    return read


for _name in (
    "__getitem__",
    "__contains__",
    "__iter__",
    "__len__",
    "__repr__",
    "__eq__",
    "__ne__",
    "__or__",
    "__ror__",
    "__reversed__",
    "get",
    "keys",
    "values",
    "items",
    "copy",
    "pop",
    "popitem",
    "setdefault",
):
    setattr(LazyTransforms, _name, _reading(_name))
LazyTransforms.__hash__ = None  # type: ignore[assignment]


class _RegistryLoader(importlib.abc.Loader):
    """``compressai.registry.transforms`` with a :class:`LazyTransforms` (same names, same behaviour)."""

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        transforms = LazyTransforms()

        def register_transform(name: str):
            """Decorator for registering a transform."""

            def decorator(cls):
                transforms[name] = cls
                return cls

            return decorator

        module.TRANSFORMS = transforms
        module.register_transform = register_transform
        module.__all__ = ["TRANSFORMS", "register_transform"]


def _compressai_initializing() -> bool:
    module = sys.modules.get("compressai")
    return module is not None and bool(getattr(module.__spec__, "_initializing", False))


class _CompressAIFinder(importlib.abc.MetaPathFinder):
    """Acts only while ``compressai/__init__`` runs; inert before and after."""

    def find_spec(self, name, path, target=None):
        if not (name.startswith("compressai.") or name in DEFERRED_THIRD_PARTY) or not _compressai_initializing():
            return None
        if name in DEFERRED or name in DEFERRED_THIRD_PARTY:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and spec.loader is not None:
                spec.loader = _DeferringLoader(spec.loader)
            return spec
        if name == REGISTRY:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or not spec.origin or _sha256(spec.origin) not in REGISTRY_SHA256:
                return spec  # another CompressAI: imported as it is
            return importlib.machinery.ModuleSpec(name, _RegistryLoader(), origin=spec.origin)
        return None


def _sha256(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


_FINDER = _CompressAIFinder()


def install() -> None:
    """Install the hook (compressml's ``__init__`` does), unless switched off."""
    if os.environ.get("COMPRESSML_EAGER_IMPORTS") or _FINDER in sys.meta_path:
        return
    sys.meta_path.insert(0, _FINDER)
