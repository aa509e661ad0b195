"""The codec starts without CompressAI's point-cloud parts, and CompressAI stays whole (compressml._imports)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

HEAVY = ("torch_geometric", "torchvision", "torch._dynamo", "pytorch_lightning", "hydra", "omegaconf", "matplotlib")


def run(code: str, **env) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, check=False, env={**os.environ, **env}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_codec_path_imports_none_of_the_heavy_packages_and_compressai_stays_whole():
    out = run(f"""
        import sys
        import compressml.codec.files, compressml.cli
        from compressml.codec.files import CodecModel
        from compressml.premade import resolve_model
        CodecModel.load(resolve_model("lae-q1"))
        print("loaded:", sorted(m for m in {HEAVY!r} if m in sys.modules))
        print("scipy.stats:", type(sys.modules["scipy.stats"]).__name__)
        import compressai
        from compressai.datasets import ImageFolder          # deferred module, completed on use
        from compressai.transforms import RGB2YCbCr
        from compressai.registry import TRANSFORMS, DATASETS
        assert "RandomCrop" in TRANSFORMS and "Compose" in TRANSFORMS and "NormalizeScale" in TRANSFORMS  # torchvision, torch_geometric
        assert "ModelNetDataset" in DATASETS and "ImageFolder" in DATASETS
        assert type(compressai.datasets).__name__ == "module" and compressai.datasets.ImageFolder is ImageFolder
        import compressai.zoo
        net = compressai.zoo.mbt2018_mean(quality=1, pretrained=False)
        net.update(force=True)                                # the Gaussian quantile: scipy.stats, loaded now
        import scipy.stats
        print("whole:", type(net).__name__, len(TRANSFORMS) > 50, scipy.stats.norm.ppf(0.5))
    """)
    assert "loaded: []" in out and "scipy.stats: _DeferredModule" in out
    assert "whole: MeanScaleHyperprior True 0.0" in out


def test_transforms_registered_before_the_table_is_read_are_kept():
    from compressml._imports import LazyTransforms

    class Mine:
        pass

    table = LazyTransforms()
    table["Compose"] = Mine  # what register_transform does, before anything reads the table
    assert table["Compose"] is Mine  # registered names win over the libraries' classes
    assert "RandomCrop" in table and "NormalizeScale" in table  # torchvision's, torch_geometric's
    assert len(table) == len(list(table)) == len(dict(table)) > 50


def test_another_compressai_version_gets_its_own_registry(monkeypatch):
    import importlib.machinery

    import compressai.registry

    from compressml import _imports

    monkeypatch.setattr(_imports, "_compressai_initializing", lambda: True)
    finder = _imports._CompressAIFinder()
    ours = finder.find_spec(_imports.REGISTRY, compressai.registry.__path__)
    assert isinstance(ours.loader, _imports._RegistryLoader)  # the file the hook was written for
    monkeypatch.setattr(_imports, "REGISTRY_SHA256", set())
    theirs = finder.find_spec(_imports.REGISTRY, compressai.registry.__path__)
    assert isinstance(theirs.loader, importlib.machinery.SourceFileLoader)  # imported as it is
    assert isinstance(finder.find_spec("compressai.datasets", compressai.__path__).loader, _imports._DeferringLoader)
    monkeypatch.setattr(_imports, "_compressai_initializing", lambda: False)
    assert finder.find_spec("compressai.datasets", compressai.__path__) is None  # inert outside CompressAI's own import


def test_the_hook_can_be_switched_off():
    out = run(
        """
        import sys
        import compressml, compressai
        from compressai.registry import TRANSFORMS
        print(type(TRANSFORMS).__name__, "torch_geometric" in sys.modules)
    """,
        COMPRESSML_EAGER_IMPORTS="1",
    )
    assert "dict True" in out
